"""report.json's ``co`` verdict and summary.md, re-rendered (``render_run``) from scripted monitor checks of
a real tiny run folder: the codes, confirmation by a repeat check, held-out checks, old reports without class
counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.report import render_run
from core.trainer import train
from tests.conftest import tiny_spec


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(tiny_spec(training={"epochs": 1}), out)
    return out


def scripted(finished_run: Path, run: Path, pgd: list[float], fgsm: float = 0.8, *,
             final_robust: float | None = None, class_counts: list[int] | None = None,
             repeat_pgd: float | None = None, extra: dict | None = None) -> dict:
    """Copy the run folder with ``pgd`` as its monitor checks (clean 0.7; ``repeat_pgd``: a repeat of the
    last check; ``extra``: more keys on every check) and the given report fields."""
    shutil.copytree(finished_run, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checks = [(10 * (i + 1), p, False) for i, p in enumerate(pgd)]
    if repeat_pgd is not None:
        checks.append((10 * len(pgd), repeat_pgd, True))
    rows = [row for row in rows if row["kind"] != "monitor"] + [
        {"kind": "monitor", "step": step, "epoch": step // 10 - 1, "repeat": repeat, "clean_accuracy": 0.7,
         "fgsm_accuracy": fgsm, "pgd_accuracy": p, "gradient_alignment": 0.5, "linearity_error": 0.1,
         **(extra or {})} for step, p, repeat in checks]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = json.loads((run / "report.json").read_text())
    if final_robust is not None:
        report["final"]["robust_accuracy"] = final_robust
    if class_counts is None:
        del report["co"]["monitor"]["class_counts"]  # a report from before the counts were stored
    else:
        report["co"]["monitor"]["class_counts"] = class_counts
    (run / "report.json").write_text(json.dumps(report))
    return report


def rendered(run: Path) -> tuple[str, dict, str]:
    line = render_run(run)
    return line, json.loads((run / "report.json").read_text())["co"], (run / "summary.md").read_text()


def test_render_run_gives_a_run_never_above_chance_its_own_verdict(finished_run, tmp_path):
    scripted(finished_run, tmp_path / "run", [0.05, 0.08, 0.03, 0.02], fgsm=0.1, class_counts=[10] * 10)
    line, co, summary = rendered(tmp_path / "run")
    assert (co["verdict"], co["detected"], co["chance_level"]) == ("never_robust", False, pytest.approx(0.1))
    assert co["never_robust_level"] == pytest.approx(0.12)
    assert co["verdict_text"].startswith("Never robust, so no catastrophic overfitting")
    assert line == f"never_robust: {co['verdict_text']}"
    assert f"**Verdict.** `never_robust`: {co['verdict_text']}" in summary


def test_render_run_confirms_a_last_check_collapse_only_by_a_repeat_check(finished_run, tmp_path):
    pgd = [0.30, 0.45, 0.45, 0.02]  # wong_drop at the last check (step 40): level 0.25
    scripted(finished_run, tmp_path / "repeated", pgd, final_robust=0.30, class_counts=[10] * 10, repeat_pgd=0.03)
    _, co, summary = rendered(tmp_path / "repeated")
    assert (co["verdict"], co["detected"], co["onset_step"]) == ("co", True, 40)
    assert (co["confirmed_by"], co["confirmed_step"], co["rule"]["name"]) == ("repeat_check", 40, "wong_drop")
    assert "confirmed by a repeat of that last check" in summary
    # the final evaluation measures other images with another attack: it no longer confirms, however low
    scripted(finished_run, tmp_path / "low", pgd, final_robust=0.01, class_counts=[10] * 10)
    line, co, _ = rendered(tmp_path / "low")
    assert (co["verdict"], co["detected"], co["onset_step"], co["confirmed_by"]) == ("suspected", False, 40, None)
    assert line.startswith("suspected: Catastrophic overfitting suspected at step 40")


def test_render_run_takes_one_over_the_classes_without_class_counts(finished_run, tmp_path):
    pgd = [0.2, 0.25, 0.24]  # FGSM 0.3: no CO signature
    scripted(finished_run, tmp_path / "skewed", pgd, fgsm=0.3, class_counts=[30, 10, 10, 10, 10, 10, 10, 10])
    assert rendered(tmp_path / "skewed")[1]["verdict"] == "never_robust"  # a constant classifier: 30 %
    scripted(finished_run, tmp_path / "old", pgd, fgsm=0.3)
    _, co, _ = rendered(tmp_path / "old")
    assert (co["verdict"], co["chance_level"]) == ("no_co", pytest.approx(0.1))  # synthetic: 10 classes


def test_render_run_judges_the_held_out_checks_and_says_so(finished_run, tmp_path):
    held = {"test_clean_accuracy": 0.6, "test_fgsm_accuracy": 0.4, "test_pgd_accuracy": 0.3}
    scripted(finished_run, tmp_path / "held", [0.30, 0.45, 0.02, 0.01], class_counts=[10] * 10, extra=held)
    _, co, summary = rendered(tmp_path / "held")
    assert co["verdict"] == "co" and co["held_out"] == {"verdict": "no_co", "onset_step": None,
                                                         "peak_pgd_accuracy": 0.3}
    assert "the held-out check on test images differs (no collapse" in summary
