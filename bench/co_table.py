"""Markdown table of the CO experiments written by bench/co_runs.sh.

    python bench/co_table.py [runs/co]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    report = json.loads((run / "report.json").read_text())
    monitor = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    monitor = [r for r in monitor if r["kind"] == "monitor"]
    co, final = report["co"], report["final"]
    best = co["best_checkpoint"]
    peak = max(monitor, key=lambda r: r["pgd_accuracy"])
    last = monitor[-1]
    onset = (f"step {co['onset_step']} (epoch {co['onset_epoch']}), {co['rule']['name']}" if co["detected"]
             else "none")
    return (f"| {run.name} | {'**CO**' if co['detected'] else 'no CO'} | {onset} "
            f"| {peak['pgd_accuracy']:.3f} @ {peak['step']} | {last['pgd_accuracy']:.3f} "
            f"| {last['fgsm_accuracy']:.3f} / {last['clean_accuracy']:.3f} "
            f"| {final['clean_accuracy']:.3f} | {final['robust_accuracy']:.3f} "
            f"| {best['final']['robust_accuracy']:.3f} (step {best['step']}) |")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/co")
    print("| run | verdict | onset | monitor PGD peak | monitor PGD last | monitor FGSM / clean last "
          "| final clean | final PGD-50-10 | best weights PGD-50-10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in sorted(p for p in root.iterdir() if (p / "report.json").exists()):
        print(row(run))


if __name__ == "__main__":
    main()
