"""The paper's B2 pair at the paper's scale: FGSM-AT at eps 6 with a beta = 4 carrier and on plain images
(examples/paper/injected-fgsm.yaml and plain-fgsm.yaml: all 50,000 CIFAR-10 images, PreActResNet18 width
64, 30 epochs, batch 128), fp32, over seeds; each run end to end through `coscope train`.

    python bench/paper_setting.py [--seeds 0 1 2] [--jobs 2] [--precision fp32] [--device cuda]
                                  [--data-root ../shared/data] [--out runs/paper]
                                  [--max-steps N]   # cut short: a smoke run on a CPU

The monitor checks once per epoch (every 400 steps) on its 512 training images and 1,000 held-out test
images; the final PGD-50-10 attacks 1,000 class-stratified test images (the full 10,000, for the last and the
best weights, would cost more than the training itself). Runs resume like bench/claims.py. Prints the
claims-table rows: B2 holds when the carrier runs collapse and the plain control does not.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from common import ROOT, merged, record, train_into

PAIR = {"beta4": ROOT / "examples/paper/injected-fgsm.yaml", "plain": ROOT / "examples/paper/plain-fgsm.yaml"}
MEASURE = {"monitor": {"every_steps": 400, "test_images": 1000}, "evaluation": {"test_subset": 1000}}


def spec_for(arm: str, seed: int, precision: str, max_steps: int | None) -> dict:
    spec = merged(yaml.safe_load(PAIR[arm].read_text()), MEASURE)
    spec = merged(spec, {"seed": seed, "training": {"precision": precision, "max_steps": max_steps}})
    if max_steps:  # a smoke run: small evaluations too (clean accuracy over all 10,000 test images, twice, cost
        # a CPU thread 3.5 of a smoke run's 5 minutes at width 64)
        spec = merged(spec, {"dataset": {"test_subset": 256},
                             "evaluation": {"test_subset": 64, "pgd_steps": 2, "restarts": 1},
                             "monitor": {"test_images": 64, "train_images": 64}})
    return spec


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (two share an H200 well)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "paper")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    return parser


def main() -> None:
    args = arguments().parse_args()

    work = [(f"{arm}-eps6-{args.precision}-seed{seed}", spec_for(arm, seed, args.precision, args.max_steps))
            for seed in args.seeds for arm in PAIR]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(lambda job: train_into(job[1], args.out / job[0], args.data_root, args.device), work):
            print(line, flush=True)
    rows = [claim_row(args.out / name) for name, _ in work if (args.out / name / "report.json").exists()]
    print("\n| run | verdict | onset step | monitor test PGD peak | final clean | final PGD-50-10 | best-weights "
          "PGD-50-10 | train seconds | images/s |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(row for row, _ in rows))
    record(f"Paper B2 pair (eps 6, beta 4 and plain, 30 epochs, full data), {args.precision}, {args.device}",
           [pair for _, pair in rows])


def claim_row(run: Path) -> tuple[str, tuple[str, str]]:
    """A markdown row of one finished run, and its (name, summary) pair for docs/benchmarks.md."""
    report = json.loads((run / "report.json").read_text())
    co, final, timing = report["co"], report["final"], report["timing"]
    checks = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test_pgd = [row["test_pgd_accuracy"] for row in checks if row["kind"] == "monitor" and "test_pgd_accuracy" in row]
    best = co["best_checkpoint"].get("final") or {}
    cells = [run.name, co["verdict"], str(co.get("onset_step") or "-"),
             f"{max(test_pgd):.3f}" if test_pgd else "-", f"{final['clean_accuracy']:.3f}",
             f"{final['robust_accuracy']:.3f}", f"{best.get('robust_accuracy', float('nan')):.3f}",
             f"{timing['train_seconds']:.0f}", f"{timing['train_images_per_second']:.0f}"]
    summary = (f"{co['verdict']}, final clean {cells[4]} / PGD-50-10 {cells[5]}, "
               f"{cells[7]} s training ({cells[8]} img/s)")
    return "| " + " | ".join(cells) + " |", (run.name, summary)


if __name__ == "__main__":
    main()
