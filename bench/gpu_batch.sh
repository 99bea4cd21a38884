#!/usr/bin/env bash
# One GPU lease's prepared batch (docs/benchmarks.md, docs/science.md): the benchmark suite's GPU throughput
# section alone, then in parallel, under a deadline, in order of priority:
#   1. the paper's B2 pair at the paper's scale (bench/paper_setting.py: run_all's gpu-paper section), seed 0,
#      then seeds 1 and 2 while the time measured for seed 0 still fits; bf16 training (PAPER_PRECISION) with
#      the monitor and evaluation in fp32, since an fp32 pair does not fit one 15-minute lease with the rest;
#   2. the full-data B2 runs of issue 22 at width 16 (bench/claims.py b2full, fp32);
#   3. the CPU-scale map, then the method arms (bench/claims.py map, arms).
# Every run resumes and records report.json + metrics.jsonl; at the deadline what still runs is killed and
# the records (no checkpoints, no plots) are packed into $OUT/runs.tgz with the logs.
#
#   OUT=/tmp/out BUDGET_S=540 bash bench/gpu_batch.sh     # on the lent machine, from the repository root
#
# Needs: the CIFAR-10 JPEG folder packed by `python bench/jpeg_pack.py pack ../shared/data/cifar10-jpeg
# .devdata/cifar10-jpeg.npz` (or DATA_ROOT with cifar10-jpeg/ in it), and wheels in .whl/ for what the
# machine's Python lacks (pydantic).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/runs/gpu-batch}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
SMOKE=${SMOKE:-}            # e.g. "--max-steps 3": a CPU rehearsal of the machinery
deadline=$((SECONDS + BUDGET_S))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 COSCOPE_CACHE_DIR=${COSCOPE_CACHE_DIR:-/tmp/coscope-cache}
log() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/batch.log"; }

PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
if [[ -z "${DATA_ROOT:-}" ]]; then
  DATA_ROOT=/tmp/coscope-data
  [[ -d $DATA_ROOT/cifar10-jpeg ]] || "$PY" bench/jpeg_pack.py unpack .devdata/cifar10-jpeg.npz "$DATA_ROOT/cifar10-jpeg"
fi
DATA_ROOT=$(realpath "$DATA_ROOT")
RUNS=${RUNS:-$PWD/runs}
mkdir -p "$RUNS/logs"  # packed with the runs: the tool brings back at most 8 files
"$PY" -c "
from pathlib import Path; from core.data import image_folder; image_folder(Path('$DATA_ROOT/cifar10-jpeg'))" \
  && log "data decoded and cached" || { log "data failed"; exit 1; }
{ nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } >"$OUT/machine.txt" 2>&1
git rev-parse HEAD >>"$OUT/machine.txt" 2>/dev/null

cat >/tmp/smoke.json <<'EOF2'
{"dataset": {"name": "synthetic", "synthetic_train_size": 256, "synthetic_test_size": 64},
 "intervention": {"kind": "inject", "beta": 4}, "model": {"width": 16},
 "training": {"epochs": 2, "max_steps": 3, "precision": "bf16"},
 "evaluation": {"test_subset": 16, "pgd_steps": 2, "restarts": 1},
 "monitor": {"every_steps": 2, "test_images": 16, "train_images": 16, "curvature_every_epochs": 1}}
EOF2
if ! timeout 180 "$PY" -m coscope.cli train /tmp/smoke.json --out /tmp/smoke-run --device "$DEVICE" --quiet \
    >"$OUT/smoke.log" 2>&1; then  # fail fast: a lease is too short to find a bug by waiting for every run
  log "smoke run FAILED: see smoke.log"; exit 1
fi
log "smoke run ok"

if [[ -n "${ONLY_CLAIMS:-}" ]]; then  # a short lease: one bench/claims.py group alone, e.g. corpus
  export CLAIMS_OUT=$RUNS/claims
  "$PY" bench/claims.py run "$ONLY_CLAIMS" --jobs "${MAP_JOBS:-12}" --device "$DEVICE" --data-root "$DATA_ROOT" \
    $SMOKE >>"$RUNS/logs/$ONLY_CLAIMS.log" 2>&1 &
  pids=($!)
  while ((SECONDS < deadline)) && [[ -n "$(jobs -r)" ]]; do sleep 5; done
  kill "${pids[@]}" 2>/dev/null; pkill -f "coscope.cli train"; sleep 2; pkill -9 -f "coscope.cli train"
  log "finished: $(find "$RUNS" -name report.json | wc -l) runs with a report"
  tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.png' -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
  exit 0
fi

log "throughput (alone on the device)"
if [[ -z "$SMOKE" ]]; then
  timeout 150 "$PY" bench/run_all.py --data-root "$DATA_ROOT" \
    --skip throughput-16 throughput-64 evaluation monitor memory service gpu-paper >"$OUT/throughput.log" 2>&1
  log "throughput exit $?"
fi

paper() {  # seed 0 of the pair, then the next seed while the last pair's time still fits before the deadline
  local seed started took code
  for seed in 0 1 2; do
    started=$SECONDS
    "$PY" bench/paper_setting.py --seeds "$seed" --jobs 2 --device "$DEVICE" --data-root "$DATA_ROOT" \
      --precision "${PAPER_PRECISION:-bf16}" --out "$RUNS/paper" $SMOKE >>"$RUNS/logs/paper.log" 2>&1
    code=$? took=$((SECONDS - started))
    log "paper seed $seed done in ${took}s (exit $code)"
    if ((SECONDS + took + 20 > deadline)); then log "paper: no time for another seed"; return; fi
  done
}
claims() { "$PY" bench/claims.py run "$@" --device "$DEVICE" --data-root "$DATA_ROOT" $SMOKE; }
export CLAIMS_OUT=$RUNS/claims

paper & pids=($!)
(claims b2full --only "*fp32*" --jobs 2 >>"$RUNS/logs/b2full.log" 2>&1; log "b2full done") & pids+=($!)
(claims map --jobs "${MAP_JOBS:-5}" >>"$RUNS/logs/map.log" 2>&1; log "map done"
 claims arms --jobs "${MAP_JOBS:-5}" >>"$RUNS/logs/arms.log" 2>&1; log "arms done") & pids+=($!)

while ((SECONDS < deadline)) && [[ -n "$(jobs -r)" ]]; do sleep 5; done
if [[ -n "$(jobs -r)" ]]; then
  log "deadline: stopping what still runs"
  kill "${pids[@]}" 2>/dev/null
  pkill -f "coscope.cli train"; pkill -f "bench/claims.py"; pkill -f "bench/paper_setting.py"; sleep 3
  pkill -9 -f "coscope.cli train"
fi
wait 2>/dev/null
log "finished: $(find "$RUNS" -name report.json | wc -l) runs with a report"
cp docs/benchmarks.md "$OUT/benchmarks.md"
tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.png' -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
ls -la "$OUT"
