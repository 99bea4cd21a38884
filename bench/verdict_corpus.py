"""The CO verdict measured against independent evidence (issue 21): every recorded real run, plus a constructed
set of traces for each known failure of the rules and its neighbours.

    python bench/verdict_corpus.py [RUNS_ROOT ...]      # default: bench/data/runs

Ground truth (docs/science.md, "What counts as a collapse", fixed before any rule was tuned): the held-out
checks the monitor makes on test images at every check (``monitor.test_images``) and the final PGD-50-10 of
the last weights. With S(u) = test FGSM - test PGD >= 0.10 and test PGD < 0.5 x test FGSM at check u:

- ``co`` at the earliest check t* from which S holds at every later check to the end of training, when the
  final PGD-50-10 accuracy of the last weights is also below half the last held-out FGSM accuracy;
- else ``never_robust`` when the held-out PGD accuracy never exceeded the largest class share of the
  held-out images plus 0.02;
- else ``no_co``.

The verdict under test is ``core.co.classify`` on the monitor's *training* images (what every run has); the
rules never see the held-out numbers. Printed: a confusion table of verdict against label, false and missed
CO (``suspected`` counts as missed: it is not a ``co``), and the onset error in checks of true collapses.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT

from core.co import chance_level, classify, monitor_rows
from core.spec import MonitorSpec

RUNS = ROOT / "bench" / "data" / "runs"
GAP, RATIO, NEVER_ROBUST_MARGIN = 0.10, 0.5, 0.02  # the ground truth's constants (docstring), not the spec's
LABELS = ("co", "no_co", "never_robust")


@dataclass
class Case:
    name: str
    checks: list[dict[str, Any]]  # monitor rows: training-image accuracies and held-out test_* accuracies
    final_robust: float | None  # final PGD-50-10 of the last weights
    chance: float = 0.1  # largest class share of the monitor's training images
    held_out_chance: float = 0.1  # and of its held-out test images
    settings: MonitorSpec = MonitorSpec()


def signature(fgsm: float, pgd: float) -> bool:
    return fgsm - pgd >= GAP - 1e-9 and pgd < RATIO * fgsm


def ground_truth(case: Case) -> tuple[str, int | None]:
    """(label, index of the onset check among the regular checks) from the held-out evidence alone."""
    checks = [row for row in case.checks if not row.get("repeat")]
    states = [signature(row["test_fgsm_accuracy"], row["test_pgd_accuracy"]) for row in checks]
    start = len(states)
    while start > 0 and states[start - 1]:
        start -= 1
    final_agrees = case.final_robust is not None and case.final_robust < RATIO * checks[-1]["test_fgsm_accuracy"]
    if start < len(states) and final_agrees:
        return "co", start
    if max(row["test_pgd_accuracy"] for row in checks) <= case.held_out_chance + NEVER_ROBUST_MARGIN:
        return "never_robust", None
    return "no_co", None


def judged(case: Case) -> tuple[str, int | None]:
    """(verdict code, index of its onset check among the regular checks) from the training-image checks."""
    verdict = classify(case.checks, case.settings, chance_level=case.chance)
    if verdict.onset is None or verdict.code not in ("co", "suspected"):
        return verdict.code, None
    steps = [row["step"] for row in case.checks if not row.get("repeat")]
    return verdict.code, steps.index(verdict.onset.onset_step)


# ---- real runs ---------------------------------------------------------------------------------------------


def real_cases(roots: Sequence[Path]) -> list[Case]:
    cases = []
    for report_path in sorted(path for root in roots for path in root.rglob("report.json")):
        run = report_path.parent
        report = json.loads(report_path.read_text())
        co = report.get("co") or {}
        rows = monitor_rows([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line])
        if not rows or "test_pgd_accuracy" not in rows[0] or co.get("stopped_early"):
            continue  # no held-out evidence, or not trained to the end
        counts, classes = co["monitor"], report["data"]["num_classes"]
        cases.append(Case(str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), rows,
                          report["final"]["robust_accuracy"],
                          chance_level(counts.get("class_counts"), classes),
                          chance_level(counts.get("test_class_counts"), classes),
                          MonitorSpec.model_validate(report["spec"]["monitor"])))
    return cases


# ---- constructed traces ------------------------------------------------------------------------------------


def trace(name: str, pgd: list[float], fgsm: list[float] | float, clean: list[float] | float, final: float,
          test_shift: float = -0.02, repeat: tuple[float, float] | None = None) -> Case:
    """A run whose held-out curve follows the training-image curve (test accuracies ``test_shift`` lower,
    as on real runs); ``repeat``: (pgd, fgsm) of a repeat of the last check."""
    n = len(pgd)
    fgsm = fgsm if isinstance(fgsm, list) else [fgsm] * n
    clean = clean if isinstance(clean, list) else [clean] * n
    rows = [{"step": 100 * (i + 1), "epoch": i, "clean_accuracy": clean[i], "fgsm_accuracy": fgsm[i],
             "pgd_accuracy": pgd[i], "test_clean_accuracy": max(0.0, clean[i] + test_shift),
             "test_fgsm_accuracy": max(0.0, fgsm[i] + test_shift),
             "test_pgd_accuracy": max(0.0, pgd[i] + test_shift * pgd[i])} for i in range(n)]
    if repeat is not None:
        rows.append({**rows[-1], "repeat": True, "pgd_accuracy": repeat[0], "fgsm_accuracy": repeat[1]})
    return Case(f"constructed/{name}", rows, final)


def constructed_cases() -> list[Case]:
    ramp = [0.10, 0.18, 0.24, 0.28, 0.30, 0.31, 0.32, 0.32]
    ramp_fgsm = [p + 0.08 for p in ramp]
    return [
        # 1. divergence: everything falls together (the review's class 1 and a slower one)
        trace("divergence-fast", [0.30, 0.34, 0.36, 0.12, 0.09, 0.08], [0.38, 0.42, 0.45, 0.15, 0.11, 0.10],
              [0.55, 0.60, 0.62, 0.20, 0.13, 0.12], final=0.07),
        trace("divergence-slow", [0.30, 0.28, 0.24, 0.19, 0.15, 0.12], [0.37, 0.35, 0.30, 0.24, 0.19, 0.15],
              [0.60, 0.55, 0.47, 0.38, 0.30, 0.22], final=0.10),
        # 2. collapses from modest peaks (FGSM below clean), and a deeper one
        trace("modest-peak-collapse", [0.09, 0.13, 0.15, 0.14, 0.03, 0.02, 0.01],
              [0.20, 0.24, 0.26, 0.27, 0.27, 0.28, 0.29], [0.26, 0.29, 0.31, 0.32, 0.33, 0.33, 0.34], final=0.01),
        trace("modest-peak-slide", [0.10, 0.12, 0.11, 0.08, 0.05, 0.03, 0.02],
              [0.20, 0.22, 0.23, 0.25, 0.27, 0.30, 0.33], 0.35, final=0.01),
        trace("robust-then-collapse", ramp[:5] + [0.02, 0.0, 0.0], ramp_fgsm[:5] + [0.7, 0.8, 0.85], 0.6,
              final=0.0),
        # 3. masking from the start, and its neighbour: never robust without the signature
        trace("masked-from-start", [0.09, 0.06, 0.03, 0.01, 0.0], [0.33, 0.47, 0.58, 0.66, 0.72],
              [0.31, 0.42, 0.50, 0.55, 0.60], final=0.0),
        trace("never-robust-flat", [0.08, 0.09, 0.10, 0.09, 0.10], [0.11, 0.12, 0.13, 0.12, 0.13], 0.25,
              final=0.09),
        # 4. a collapse at the last check, confirmed by the repeat of that check the trainer makes (without one,
        # as in runs from before it, the verdict is `suspected`: tests/core/test_co.py)
        trace("last-check-repeated", ramp[:-1] + [0.02], ramp_fgsm[:-1] + [0.6], 0.6, final=0.01,
              repeat=(0.03, 0.59)),
        trace("last-check-repeat-recovers", ramp[:-1] + [0.25], ramp_fgsm[:-1] + [0.6], 0.6, final=0.30,
              repeat=(0.31, 0.41)),
        # neighbours: noise, a one-check dip that recovers, collapse at the first check, high peak, ties
        trace("noise", [0.30, 0.33, 0.29, 0.34, 0.31, 0.32, 0.30, 0.33], [0.38, 0.41, 0.37, 0.42, 0.39, 0.40,
              0.38, 0.41], 0.6, final=0.29),
        trace("one-check-dip", [0.28, 0.31, 0.04, 0.30, 0.32, 0.33], [0.36, 0.39, 0.50, 0.38, 0.40, 0.41], 0.6,
              final=0.31),
        trace("collapse-at-first-check", [0.02, 0.01, 0.0, 0.0], [0.55, 0.62, 0.70, 0.75], 0.7, final=0.0),
        trace("high-peak-collapse", [0.45, 0.55, 0.60, 0.01, 0.0], [0.52, 0.62, 0.68, 0.92, 0.95], 0.8,
              final=0.0),
        trace("tie-ratio-half", [0.20, 0.22, 0.20, 0.20], [0.40, 0.44, 0.40, 0.40], 0.6, final=0.19,
              test_shift=0.0),
        trace("healthy-large-gap", [0.22, 0.24, 0.25, 0.25], [0.40, 0.42, 0.43, 0.44], 0.6, final=0.23),
    ]


# ---- the table ---------------------------------------------------------------------------------------------


def evaluate(cases: list[Case]) -> dict[str, Any]:
    confusion: Counter[tuple[str, str]] = Counter()
    errors, wrong = [], []
    for case in cases:
        (label, true_onset), (code, onset) = ground_truth(case), judged(case)
        confusion[(label, code)] += 1
        if label == "co" and code == "co":
            errors.append(abs(onset - true_onset))
        if (label == "co") != (code == "co"):
            wrong.append(f"{case.name}: label {label} (onset check {true_onset}), verdict {code} (check {onset})")
    false_co = sum(n for (label, code), n in confusion.items() if code == "co" and label != "co")
    missed = sum(n for (label, code), n in confusion.items() if label == "co" and code != "co")
    return {"confusion": confusion, "false_co": false_co, "missed_co": missed, "onset_errors": errors,
            "wrong": wrong, "cases": len(cases)}


def print_table(title: str, result: dict[str, Any]) -> None:
    codes = ("co", "suspected", "no_co", "never_robust")
    print(f"\n{title}: {result['cases']} runs\n")
    print("| label \\ verdict | " + " | ".join(codes) + " |\n|---|" + "---|" * len(codes))
    for label in LABELS:
        print(f"| {label} | " + " | ".join(str(result["confusion"][(label, code)]) for code in codes) + " |")
    errors = result["onset_errors"]
    median = f"{statistics.median(errors):g}" if errors else "n/a"
    print(f"\nfalse CO: {result['false_co']}, missed CO: {result['missed_co']}; onset error of true collapses "
          f"(checks): median {median}, max {max(errors, default='n/a')}, n = {len(errors)}")
    for line in result["wrong"]:
        print(f"- {line}")


def main() -> None:
    roots = [Path(arg) for arg in sys.argv[1:]] or [RUNS]
    real = real_cases(roots)
    print_table("Real runs (held-out checks)", evaluate(real))
    print_table("Constructed traces", evaluate(constructed_cases()))
    failed = evaluate(real + constructed_cases())
    sys.exit(1 if failed["false_co"] or failed["missed_co"] else 0)


if __name__ == "__main__":
    main()
