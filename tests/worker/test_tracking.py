"""What a job's MLflow run holds (worker.tracking): pure functions, closed-form expectations. The real server
tests are in tests/service/test_mlflow.py."""

from __future__ import annotations

import math

from worker.tracking import (
    TrackedJob,
    batches,
    final_metrics,
    flatten,
    mark_tags,
    marks_from_tags,
    new_rows,
    row_metrics,
    run_tags,
    verdict_tags,
)


def test_flatten_names_leaves_by_dotted_path_and_writes_json_values():
    spec = {"seed": 0, "dry_run": False, "dataset": {"name": "synthetic", "path": None, "mean": [0.5, 0.25]},
            "training": {"epsilon": 8.0, "schedule": {"kind": "cyclic", "warmup": 2}}, "extra": {}}
    assert flatten(spec) == {"seed": "0", "dry_run": "false", "dataset.name": "synthetic",
                             "dataset.path": "null", "dataset.mean": "[0.5, 0.25]", "training.epsilon": "8.0",
                             "training.schedule.kind": "cyclic", "training.schedule.warmup": "2",
                             "extra": "{}"}


def test_row_metrics_name_each_measurement_by_kind_and_skip_indices_flags_and_non_finite_values():
    row = {"kind": "monitor", "step": 40, "epoch": 1, "pgd_accuracy": 0.25, "checks": 3, "confirmed": True,
           "gradient_alignment": math.nan, "gap": math.inf, "note": "x", "missing": None}
    assert row_metrics(row) == {"monitor/pgd_accuracy": 0.25, "monitor/checks": 3.0}


def test_new_rows_keep_only_steps_past_each_kinds_last_logged_step():
    rows = [{"kind": "train", "step": s} for s in (3, 4, 5, 6)] + [{"kind": "epoch", "step": 4},
                                                                   {"kind": "monitor", "step": 4},
                                                                   {"kind": "epoch", "step": 8}]
    kept, marks = new_rows(rows, {"train": 4, "epoch": 4})
    assert [(row["kind"], row["step"]) for row in kept] == [("train", 5), ("train", 6), ("monitor", 4),
                                                            ("epoch", 8)]
    assert marks == {"train": 6, "epoch": 8, "monitor": 4}
    assert new_rows(rows, marks) == ([], marks)  # everything logged: a second pass sends nothing


def test_new_rows_drop_a_repeated_step_within_one_pass():
    kept, marks = new_rows([{"kind": "train", "step": 1}, {"kind": "train", "step": 1},
                            {"kind": "train", "step": 2}], {})
    assert [row["step"] for row in kept] == [1, 2] and marks == {"train": 2}


def test_marks_round_trip_through_run_tags_and_ignore_other_tags():
    marks = {"train": 12, "epoch": 8, "monitor": 0}
    tags = {**mark_tags(marks), "coscope.job_id": "j", "coscope.logged_step.bad": "x"}
    assert mark_tags(marks)["coscope.logged_step.train"] == "12"
    assert marks_from_tags(tags) == marks


def test_batches_never_split_a_row_and_stay_under_the_metric_limit():
    rows = [{"kind": "train", "step": s, "a": 1.0, "b": 2.0, "c": 3.0} for s in range(10)]  # 3 metrics each
    sizes = [len(batch) for batch in batches(rows, limit=7)]
    assert sizes == [2, 2, 2, 2, 2]
    assert [row for batch in batches(rows, limit=7) for row in batch] == rows
    assert list(batches([], limit=7)) == []


def test_final_metrics_and_verdict_tags_come_from_the_report():
    report = {"final": {"clean_accuracy": 0.5, "robust_accuracy": 0.125, "attack": {"steps": 10}},
              "co": {"verdict": "co", "onset_step": 120, "detected": True}}
    assert final_metrics(report) == {"final/clean_accuracy": 0.5, "final/robust_accuracy": 0.125}
    assert verdict_tags(report["co"]) == {"coscope.co_verdict": "co", "coscope.co_onset_step": "120"}
    assert verdict_tags({"verdict": "no_co", "onset_step": None}) == {"coscope.co_verdict": "no_co"}
    assert verdict_tags(None) == {} and final_metrics({"final": {"robust_accuracy": None}}) == {}


def test_run_tags_put_ours_after_the_requests_and_the_experiment_defaults_to_the_team():
    job = TrackedJob("id-1", "vision", None, {}, {"tags": {"owner": "ana", "stage": "dev"}})
    assert run_tags(job, 2) == {"owner": "ana", "stage": "dev", "coscope.job_id": "id-1",
                                "coscope.team": "vision", "coscope.attempt": "2"}
    assert (job.experiment, job.run_name) == ("coscope/vision", "id-1")
    named = TrackedJob("id-2", "vision", "fgsm eps 8", {}, {"experiment": "robustness"})
    assert (named.experiment, named.run_name) == ("robustness", "fgsm eps 8")
