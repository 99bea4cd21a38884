#!/usr/bin/env bash
# The CPU-scale CO experiments of the README: two settings x seeds 0, 1, 2, 15 epochs each, one at a time.
# Usage: bash bench/co_runs.sh [DATA_ROOT] [OUT_ROOT]    (about 5-6 minutes per run on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
data_root=${1:-../shared/data}
out_root=${2:-runs/co}
for seed in 0 1 2; do
  for example in plain-fgsm-eps8-15ep injected-beta8-fgsm-eps6-15ep; do
    spec=$(mktemp --suffix .yaml)
    sed "s/^seed: 0$/seed: $seed/" "examples/cpu/$example.yaml" > "$spec"
    .venv/bin/coscope train "$spec" --out "$out_root/$example-seed$seed" --data-root "$data_root" --quiet \
      > "$out_root-$example-seed$seed.log" 2>&1 || echo "FAILED $example seed $seed"
    rm -f "$spec"
  done
done
