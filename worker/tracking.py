"""What a job's MLflow run holds, as pure functions of the job, its metric rows and its report (no MLflow
here; ``worker.mlflow_run`` sends it from a background thread).

- params: the resolved spec flattened to dotted keys (``training.epsilon``); strings as they are, every other
  value as JSON (``8.0``, ``null``, ``true``), so the spec can be rebuilt from the run.
- metrics: each train, epoch and monitor row's numeric fields as ``<kind>/<field>`` at the row's step
  (``train/train_loss``, ``epoch/test_clean_accuracy``, ``monitor/pgd_accuracy``), and the report's final
  accuracies as ``final/clean_accuracy`` and ``final/robust_accuracy`` at the last step. Non-finite values
  are left out (MLflow would chart them as gaps anyway).
- tags: the request's own, then ``coscope.job_id``, ``coscope.team``, ``coscope.attempt``,
  ``coscope.co_verdict`` and ``coscope.co_onset_step``; ``coscope.logged_step.<kind>`` holds the last step
  logged per row kind, written in the same ``log_batch`` as the rows, so a resumed attempt skips the rows its
  trainer re-emits from the checkpoint (``new_rows``) and no step is logged twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ROW_KINDS = ("train", "epoch", "monitor", "recheck")  # recheck: a repeat of the last monitor check
INDEX_FIELDS = {"kind", "step", "epoch"}  # a row's coordinates, not measurements
WATERMARK_TAG = "coscope.logged_step."
TEAM_EXPERIMENT = "coscope/{team}"  # the default experiment (api.schemas.Tracking names the rule)
RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}  # job -> MLflow run status
BATCH_METRICS = 900  # MLflow's log_batch takes 1000 entities at most: metrics plus a few watermark tags
BATCH_PARAMS = 100  # and 100 params


@dataclass(frozen=True)
class TrackedJob:
    """The job row's fields a run needs (read once, at claim)."""

    id: str
    team: str
    name: str | None
    spec: dict[str, Any]
    tracking: dict[str, Any] = field(default_factory=dict)  # api.schemas.Tracking as JSON; {} = defaults

    @property
    def experiment(self) -> str:
        return self.tracking.get("experiment") or TEAM_EXPERIMENT.format(team=self.team)

    @property
    def run_name(self) -> str:
        return self.name or self.id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Leaves of a nested dict under dotted keys, as MLflow param values (always strings)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metric row's measurements, named ``<kind>/<field>``."""
    return {f"{row['kind']}/{key}": number for key, value in row.items()
            if key not in INDEX_FIELDS and (number := _number(value)) is not None}


def final_metrics(report: dict[str, Any]) -> dict[str, float]:
    final = report.get("final") or {}
    return {f"final/{key}": number for key in ("clean_accuracy", "robust_accuracy")
            if (number := _number(final.get(key))) is not None}


def last_step(report: dict[str, Any]) -> int:
    return int((report.get("steps") or {}).get("done") or 0)


Row = dict[str, Any]


def new_rows(rows: list[Row], marks: dict[str, int]) -> tuple[list[Row], dict[str, int]]:
    """The rows past their kind's last logged step (``marks``), and the marks once they are logged."""
    marks, kept = dict(marks), []
    for row in rows:
        if row["step"] > marks.get(row["kind"], -1):
            kept.append(row)
            marks[row["kind"]] = row["step"]
    return kept, marks


def marks_from_tags(tags: dict[str, str]) -> dict[str, int]:
    return {key[len(WATERMARK_TAG):]: int(value) for key, value in tags.items()
            if key.startswith(WATERMARK_TAG) and value.lstrip("-").isdigit()}


def mark_tags(marks: dict[str, int]) -> dict[str, str]:
    return {WATERMARK_TAG + kind: str(step) for kind, step in marks.items()}


def batches(rows: list[Row], limit: int = BATCH_METRICS) -> Iterator[list[Row]]:
    """Consecutive runs of rows with at most ``limit`` metrics each (a row is never split)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        count = len(row_metrics(row))
        if batch and size + count > limit:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += count
    if batch:
        yield batch


def run_tags(job: TrackedJob, attempt: int) -> dict[str, str]:
    """The request's tags, then ours (the API refuses request tags under ``coscope.`` and ``mlflow.``)."""
    return {**job.tracking.get("tags", {}), "coscope.job_id": job.id, "coscope.team": job.team,
            "coscope.attempt": str(attempt)}


def verdict_tags(co: dict[str, Any] | None) -> dict[str, str]:
    """The CO verdict (``core.co`` code), onset step and rescues of a report's (or a live onset event's) CO
    section."""
    if not co:
        return {}
    tags = {}
    if co.get("verdict"):
        tags["coscope.co_verdict"] = str(co["verdict"])
    if co.get("onset_step") is not None:
        tags["coscope.co_onset_step"] = str(co["onset_step"])
    if rescues := (co.get("rescue") or {}).get("rescues"):  # monitor.co_policy rescue
        tags["coscope.co_rescues"] = str(len(rescues))
        tags["coscope.co_rescued_at_step"] = str(rescues[0]["at_step"])
    return tags
