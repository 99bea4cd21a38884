"""Markdown tables of finished runs (e.g. bench/ablation.py's): one row per run, the final robust accuracy
per class (PGD-50-10, and AutoAttack where the run measured it), and per group of runs (an ablation arm's
seeds) the verdicts and mean accuracies. Each run is re-rendered first (`coscope report`), so the verdicts are
today's rules applied to the stored monitor checks.

    python bench/co_table.py [RUNS_FOLDER]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.co import monitor_rows
from core.report import render_run


def row(run: Path) -> str:
    report = _report(run)
    monitor = monitor_rows([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()])
    co, final = report["co"], report["final"]
    best = co["best_checkpoint"]
    peak = max(monitor, key=lambda r: r["pgd_accuracy"])
    last = monitor[-1]
    onset = (f"step {co['onset_step']} (epoch {co['onset_epoch']}), {co['rule']['name']}"
             if co["verdict"] in ("co", "suspected") else "none")
    autoattack = f"{final['autoattack']['accuracy']:.3f}" if "autoattack" in final else "-"
    verdict = f"**{co['verdict']}**" if co["verdict"] == "co" else co["verdict"]
    return (f"| {run.name} | {verdict} | {onset} "
            f"| {peak['pgd_accuracy']:.3f} @ {peak['step']} | {last['pgd_accuracy']:.3f} "
            f"| {last['fgsm_accuracy']:.3f} / {last['clean_accuracy']:.3f} "
            f"| {final['clean_accuracy']:.3f} | {final['robust_accuracy']:.3f} "
            f"| {autoattack} "
            f"| {best['final']['robust_accuracy']:.3f} (step {best['step']}) |")


def class_row(run: Path) -> str:
    """Final robust accuracy per class: PGD, or "PGD / AutoAttack"."""
    final = _report(run)["final"]
    cells = [_fraction(c["robust_accuracy"]) for c in final["per_class"]]
    if "autoattack" in final:
        cells = [f"{cell} / {_fraction(c['robust_accuracy'])}"
                 for cell, c in zip(cells, final["autoattack"]["per_class"], strict=True)]
    return f"| {run.name} | " + " | ".join(cells) + " |"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def print_tables(runs: list[Path], groups: dict[str, list[Path]] | None = None) -> None:
    """The runs table, the per-class table and, for ``groups`` (name -> runs), the per-group summary."""
    for run in runs:
        render_run(run)
    print("| run | verdict | onset | monitor PGD peak | monitor PGD last | monitor FGSM / clean last "
          "| final clean | final PGD-50-10 | final AutoAttack | best weights PGD-50-10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(row(run))
    with_classes = [run for run in runs if _report(run)["final"].get("per_class")]
    if with_classes:
        names = [c["name"] for c in _report(with_classes[0])["final"]["per_class"]]
        print("\nFinal robust accuracy per class: PGD-50-10, or PGD-50-10 / AutoAttack\n")
        print("| run | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for run in with_classes:
            print(class_row(run))
    if groups:
        print("\n| arm | runs | verdicts | final clean (mean) | final PGD-50-10 (mean, min-max) |")
        print("|---|---|---|---|---|")
        for name, members in groups.items():
            print(group_row(name, [_report(run) for run in members]))


def group_row(name: str, reports: list[dict]) -> str:
    robust = [r["final"]["robust_accuracy"] for r in reports]
    clean = [r["final"]["clean_accuracy"] for r in reports]
    verdicts = ", ".join(r["co"]["verdict"] for r in reports)
    return (f"| {name} | {len(reports)} | {verdicts} | {sum(clean) / len(clean):.3f} "
            f"| {sum(robust) / len(robust):.3f} ({min(robust):.3f}-{max(robust):.3f}) |")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
    print_tables(sorted(p for p in root.iterdir() if (p / "report.json").exists()))


if __name__ == "__main__":
    main()
