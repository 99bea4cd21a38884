#!/usr/bin/env bash
# Installs what is missing: a virtual environment in .venv with coscope, its trainer ([worker]) and test tools.
# Re-running is cheap: packages are reinstalled only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.coscope-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  # plain pip on purpose: it takes the pinned torch/torchvision from the local disk where they lie
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[worker,test]' 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, core.trainer" # fail here, not in the tests
  cp pyproject.toml "$stamp"
fi
