"""Leading indicators of CO (issue 24), measured on the recorded runs of the verdict corpus: how many checks
before the held-out onset (bench/verdict_corpus.py's ground truth) each one fires, and how often it fires on
runs that never collapse. A rescue may use one as its trigger only if it fires earlier than the confirmed onset
with no more false alarms.

    python bench/leading_indicators.py [RUNS_ROOT ...]      # default: bench/data/runs

Each indicator fires at the first monitor check where (thresholds fixed here before looking at the runs, from
shared/reference/co-detection.md §2.3 and the papers it cites):
- alignment: gradient alignment cos(grad(x), grad(x + eta)) below 0.3 (GradAlign: ~0.1 after CO, 0.5+ before);
- ELLE: the linearity error above the mean + 2 standard deviations of the earlier checks (at least 3);
- FGSM > clean: a training row's FGSM (attacked) accuracy above its clean accuracy (Kim et al.), mapped to the
  first check at or after that row's step;
- carrier share: the share of the FGSM perturbation in the carrier span above 0.5 (injected runs only);
- confirmed onset: the verdict's onset (core.co), the baseline.
Lead = ground-truth onset check - firing check (positive: earlier). A run without a firing counts as "never".
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT
from verdict_corpus import RUNS, Case, ground_truth, judged, real_cases

ALIGNMENT, ELLE_SIGMAS, CARRIER_SHARE = 0.3, 2.0, 0.5


def regular(case: Case) -> list[dict[str, Any]]:
    return [row for row in case.checks if not row.get("repeat")]


def alignment(case: Case) -> int | None:
    return next((i for i, row in enumerate(regular(case)) if row["gradient_alignment"] < ALIGNMENT), None)


def elle(case: Case) -> int | None:
    errors = [row["linearity_error"] for row in regular(case)]
    for i in range(3, len(errors)):
        earlier = errors[:i]
        if errors[i] > statistics.mean(earlier) + ELLE_SIGMAS * statistics.pstdev(earlier):
            return i
    return None


def carrier_share(case: Case) -> int | None:
    rows = regular(case)
    if "fgsm_carrier_share" not in rows[0]:
        return None
    return next((i for i, row in enumerate(rows) if row["fgsm_carrier_share"] > CARRIER_SHARE), None)


def fgsm_above_clean(case: Case, train_rows: list[dict[str, Any]]) -> int | None:
    first = next((row["step"] for row in train_rows if row.get("train_clean_accuracy") is not None
                  and row["train_adv_accuracy"] > row["train_clean_accuracy"]), None)
    if first is None:
        return None
    return next((i for i, row in enumerate(regular(case)) if row["step"] >= first), None)


def confirmed_onset(case: Case) -> int | None:
    code, onset = judged(case)
    return onset if code == "co" else None


def measure(roots: list[Path]) -> dict[str, dict[str, Any]]:
    indicators: dict[str, Callable[..., int | None]] = {
        "alignment < 0.3": alignment, "ELLE > mean + 2 sd": elle, "FGSM > clean (training rows)": None,
        "carrier share > 0.5": carrier_share, "confirmed onset (the verdict)": confirmed_onset}
    results = {name: {"leads": [], "never": 0, "false_alarms": 0, "controls": 0} for name in indicators}
    for case in real_cases(roots):
        label, truth = ground_truth(case)
        history = [json.loads(line) for line in (ROOT / case.name / "metrics.jsonl").read_text().splitlines()]
        train_rows = [row for row in history if row["kind"] == "train"]
        for name, indicator in indicators.items():
            fired = fgsm_above_clean(case, train_rows) if indicator is None else indicator(case)
            if name.startswith("carrier") and "fgsm_carrier_share" not in regular(case)[0]:
                continue  # plain data: no carrier
            if label == "co":
                if fired is None:
                    results[name]["never"] += 1
                else:
                    results[name]["leads"].append(truth - fired)
            else:
                results[name]["controls"] += 1
                results[name]["false_alarms"] += fired is not None
    return results


def main() -> None:
    roots = [Path(arg) for arg in sys.argv[1:]] or [RUNS]
    print("| indicator | collapsing runs: lead in checks, median (min-max) | fired earlier than the onset | never "
          "fired | false alarms on runs without CO |\n|---|---|---|---|---|")
    for name, result in measure(roots).items():
        leads = result["leads"]
        spread = f"{statistics.median(leads):g} ({min(leads)} to {max(leads)})" if leads else "-"
        earlier = sum(lead > 0 for lead in leads)
        print(f"| {name} | {spread}, n = {len(leads)} | {earlier} | {result['never']} "
              f"| {result['false_alarms']} of {result['controls']} |")


if __name__ == "__main__":
    main()
