"""A job's status: one type for the store, the API's filters and the client (no SQLAlchemy import here)."""

from __future__ import annotations

from typing import Literal, get_args

# held: a sweep's child waiting inside its sweep for the team's quota (store.sweeps.release_held); never sent
JobStatus = Literal["held", "queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobStatus)
FINISHED_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")  # no transition leaves these
ACTIVE_STATES: tuple[str, ...] = ("queued", "running")  # count against a team's active-job quota
UNSENT_STATES: tuple[str, ...] = ("held", "queued")  # cancelled at once, never started

SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "partial"]
SWEEP_FINISHED_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "partial")
