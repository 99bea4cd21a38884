#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite. Extra arguments go to pytest.
# Two test processes (COSCOPE_TEST_WORKERS; 0 runs in this one): most tests wait on servers, workers and
# sleeps, so two halve the wall time on 2 cores. --dist loadfile keeps each module in one process, as the
# module-scoped stacks and each module's own Redis DB (coscope.harness.REDIS_DBS) need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${COSCOPE_TEST_WORKERS:-2}" --dist loadfile "$@"
