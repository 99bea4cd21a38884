#!/usr/bin/env bash
# Installs what is missing, then runs coscope. With no arguments: the quick-start training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- train examples/quickstart.yaml --out runs/quickstart
fi
exec .venv/bin/coscope "$@"
