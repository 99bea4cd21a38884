"""Retention: checkpoints of finished jobs are deleted after a number of days, and an admin deletes a finished
job with its rows and its run folder.

Checkpoint retention (``COSCOPE_CHECKPOINT_RETENTION_DAYS``, per team
``COSCOPE_TEAM_CHECKPOINT_RETENTION_DAYS``; unset: kept forever) deletes ``checkpoint.pt``, ``best.pt`` and
their half-written copies from the run folders of jobs that finished more than that many days ago (every
attempt's folder inside the job's), and stamps ``jobs.checkpoints_deleted_at`` so that a later pass skips the
job. Everything else stays: report.json, metrics.jsonl, summary.md, curves.png and every row. Only finished
jobs qualify (no state leaves ``FINISHED_STATES``, so no claimed attempt writes into their folders again).
Files go first and the stamp after, in the caller's transaction: a pass that dies in between repeats the
deletions (of files that are gone by then) and stamps next time. Two passes at once (two API replicas) delete
the same files, and the stamp is a conditional update.

Deleting a job (``delete_job``) removes its events, metrics rows and job row in the caller's transaction,
then its run folder; the route commits after both, so a failure to remove the folder rolls the rows back and a
retry finishes the work. Only a finished job that is no sweep's child is deleted: a sweep's table, heatmap,
size and status are built from every child, so a child is not deleted on its own.

No path here is built from anything but the artifacts folder and a job id, and a job id is used only when it
is one plain path component whose folder is a real directory (not a link) directly inside the artifacts
folder: nothing outside ``settings.artifacts`` is ever removed, whatever the row holds.

Like ``store.crud``, nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from store.models import NOT_A_CHANGE, Job, JobEvent, MetricRow, utcnow
from store.settings import Settings
from store.status import FINISHED_STATES

CHECKPOINTS = ("checkpoint.pt", "best.pt")  # core.trainer's names
RETENTION_BATCH = 500  # jobs per pass of the API's retention keeper and per admin call (by default)


@dataclass(frozen=True)
class Policy:
    """Days after which finished jobs lose their checkpoints: ``days`` for every team not in ``teams``,
    ``teams[team]`` for those (None: kept forever)."""

    days: float | None = None
    teams: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.checkpoint_retention_days, dict(settings.team_checkpoint_retention_days))

    @property
    def active(self) -> bool:
        return self.days is not None or any(days is not None for days in self.teams.values())

    def expired(self, now: dt.datetime) -> ColumnElement[bool] | None:
        """Jobs finished longer ago than their team's retention; None when nothing ever expires."""
        clauses = [and_(Job.team == team, Job.finished_at < now - dt.timedelta(days=days))
                   for team, days in sorted(self.teams.items()) if days is not None]
        if self.days is not None:
            cutoff = now - dt.timedelta(days=self.days)
            clauses.append(and_(Job.team.not_in(list(self.teams)), Job.finished_at < cutoff))
        return or_(*clauses) if clauses else None


@dataclass
class Removed:
    """What a deletion removed from the artifacts folder."""

    files: int = 0
    bytes: int = 0

    def add(self, other: Removed) -> None:
        self.files += other.files
        self.bytes += other.bytes


@dataclass
class Pruned(Removed):
    job_ids: list[str] = field(default_factory=list)  # jobs stamped by this pass (their checkpoints are gone)
    more: bool = False  # the batch was full: more jobs may be waiting


# ---- Paths ------------------------------------------------------------------------------------------


def run_folder(artifacts: Path, job_id: str) -> Path | None:
    """``artifacts/<job_id>`` if it is a real directory directly inside ``artifacts`` (links resolved on the
    artifacts side only), else None. An id that is not one plain path component (``..``, ``a/b``, NUL) never
    names a path, and a link in the job's place is not followed."""
    if not _plain_name(job_id):
        return None
    base = os.path.realpath(artifacts)
    path = os.path.join(base, job_id)
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):  # absent, name too long, permissions
        return None
    if not stat.S_ISDIR(mode) or os.path.dirname(os.path.realpath(path)) != base:
        return None
    return Path(path)


def _plain_name(job_id: str) -> bool:
    """One path component that names no other folder: not empty, '.', '..', and without separators or NUL."""
    return bool(job_id) and job_id not in {".", ".."} and not any(char in job_id for char in "/\\\x00")


def _is_checkpoint(name: str) -> bool:
    """A checkpoint, or a hidden partial copy of one (``core.checkpoint``'s ``.checkpoint.pt.PID.tmp``, the
    worker's ``.checkpoint.pt.PID.part``)."""
    return name in CHECKPOINTS or any(name.startswith(f".{checkpoint}.") for checkpoint in CHECKPOINTS)


def remove_checkpoints(artifacts: Path, job_id: str) -> Removed:
    """Delete the job's checkpoints (``CHECKPOINTS`` and partial writes of them) anywhere in its run folder,
    links included (the link itself, never its target); nothing else. Directories are not followed into when
    they are links."""
    removed = Removed()
    folder = run_folder(artifacts, job_id)
    if folder is None:
        return removed
    for parent, _, names in os.walk(folder, followlinks=False):
        for name in names:
            if _is_checkpoint(name):
                removed.add(_unlink(os.path.join(parent, name)))
    return removed


def remove_run_folder(artifacts: Path, job_id: str) -> Removed:
    """Delete the job's run folder and everything in it (a link in its place: the link alone)."""
    removed = Removed()
    if not _plain_name(job_id):
        return removed
    place = os.path.join(os.path.realpath(artifacts), job_id)
    if os.path.islink(place):
        return _unlink(place)
    folder = run_folder(artifacts, job_id)
    if folder is None:
        return removed
    for parent, folders, names in os.walk(folder, followlinks=False):
        links = [name for name in folders if os.path.islink(os.path.join(parent, name))]  # not entered
        for name in names + links:
            try:
                removed.add(Removed(1, os.lstat(os.path.join(parent, name)).st_size))
            except FileNotFoundError:
                pass
    shutil.rmtree(folder, onerror=_ignore_missing)  # fd-based on Linux: a link swapped in is not followed
    return removed


def _unlink(path: str) -> Removed:
    try:
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            return Removed()
        os.unlink(path)
    except FileNotFoundError:  # a concurrent pass removed it first
        return Removed()
    return Removed(1, info.st_size)


def _ignore_missing(function, path, exc_info) -> None:  # type: ignore[no-untyped-def]
    if not issubclass(exc_info[0], FileNotFoundError):  # a concurrent delete removed it first
        raise exc_info[1]


# ---- Checkpoint retention ---------------------------------------------------------------------------


def prune_checkpoints(session: Session, artifacts: Path, policy: Policy, *, team: str | None = None,
                      limit: int = RETENTION_BATCH, now: dt.datetime | None = None) -> Pruned:
    """One batch of the retention: the ``limit`` longest-finished jobs past ``policy`` (of ``team``, or every
    team) whose checkpoints are still there lose them, and are stamped."""
    pruned = Pruned()
    expired = policy.expired(now or utcnow())
    if expired is None:
        return pruned
    conditions = [Job.status.in_(FINISHED_STATES), Job.checkpoints_deleted_at.is_(None), expired]
    if team is not None:
        conditions.append(Job.team == team)
    ids = list(session.scalars(select(Job.id).where(*conditions).order_by(Job.finished_at, Job.id)
                               .limit(limit)))
    for job_id in ids:
        pruned.add(remove_checkpoints(artifacts, job_id))
    if ids:  # storage bookkeeping, not a change a client polls for: updated_at and change_seq stay
        stamped = session.execute(update(Job).where(Job.id.in_(ids), Job.checkpoints_deleted_at.is_(None))
                                  .values(checkpoints_deleted_at=utcnow(), **NOT_A_CHANGE)
                                  .returning(Job.id).execution_options(synchronize_session=False))
        pruned.job_ids = sorted(stamped.scalars())
    pruned.more = len(ids) == limit
    return pruned


# ---- Deleting a job ---------------------------------------------------------------------------------


class NotDeletable(Exception):
    """The job is gone, or no longer a finished job outside any sweep (a concurrent delete)."""


@dataclass
class Deleted(Removed):
    events: int = 0
    metrics: int = 0


def delete_job(session: Session, artifacts: Path, job: Job) -> Deleted:
    """Delete a finished, sweep-less job's rows (events, metrics, then the job) and then its run folder. The
    caller checks the job's status and sweep first, to say why not; ``NotDeletable`` if the row changed
    since (the caller's transaction must then roll back, as raising does)."""
    deleted = Deleted()
    # explicit, though the foreign keys cascade (PostgreSQL, and SQLite with foreign_keys=ON: store.db)
    deleted.events = _count(session.execute(delete(JobEvent).where(JobEvent.job_id == job.id)))
    deleted.metrics = _count(session.execute(delete(MetricRow).where(MetricRow.job_id == job.id)))
    gone = session.execute(delete(Job).where(Job.id == job.id, Job.status.in_(FINISHED_STATES),
                                             Job.sweep_id.is_(None)).execution_options(synchronize_session=False))
    if _count(gone) != 1:
        raise NotDeletable(job.id)
    session.expunge(job)
    deleted.add(remove_run_folder(artifacts, job.id))
    return deleted


def _count(result: Any) -> int:
    return int(result.rowcount)
