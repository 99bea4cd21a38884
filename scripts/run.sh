#!/usr/bin/env bash
# Installs what is missing, then runs coscope. With no arguments: the service, embedded default
# (HTTP API on 127.0.0.1:8000 with a worker, SQLite job store and queue under ~/.coscope).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- serve
fi
exec .venv/bin/coscope "$@"
