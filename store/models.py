"""The job store's tables (SQLAlchemy 2.0). The row is the source of truth; the broker only carries ids.

Indexes serve the queries that run at scale (``tests/store/test_scale.py``, ``bench/store_scale.py``): job
lists page in the index order (``created_at DESC, id``) per team, per team and status, or over all teams (a
tag filter uses a GIN index on PostgreSQL), and the reconciler finds expired leases and unsent or stale
queued jobs through ``status``-led indexes, so neither reads the whole table. ``store.db.get_engine``
creates missing tables and indexes at startup, so a store created by an older version gains these indexes on
the first start of this one (on PostgreSQL a plain ``CREATE INDEX``, which blocks writes to ``jobs`` while
it builds: seconds for 100,000 jobs). The single-column indexes of older versions (``ix_jobs_team``,
``ix_jobs_status``, ``ix_jobs_created_at``) are left in place; they are redundant now and may be dropped by
hand.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    cast,
    null,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.status import FINISHED_STATES, JOB_STATES  # noqa: F401 (re-exported for the store's users)


def utcnow() -> dt.datetime:
    """Naive UTC: SQLite stores no time zones, so every timestamp in the store is naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(10))  # member | admin
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the key; the key is never stored
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner_key_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    team: Mapped[str] = mapped_column(String(100))
    owner_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str] = mapped_column(String(20), default="cpu")
    spec: Mapped[dict[str, Any]] = mapped_column()  # the resolved spec: in a job's response, not in lists
    status: Mapped[str] = mapped_column(String(12), default="queued")
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # incremented by every claim
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # epoch, step, total_steps, eta_seconds
    co: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # live CO verdict so far
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # written once, at success; never in lists
    # numbers copied from the report at finish (REPORT_COLUMNS): /metrics averages the training throughput
    # (dry runs time no training: NULL) and lists show the final accuracies, without reading any report
    train_images_per_second: Mapped[float | None] = mapped_column(Float)
    final_clean_accuracy: Mapped[float | None] = mapped_column(Float)
    final_robust_accuracy: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    callback_url: Mapped[str | None] = mapped_column(String(2000))  # webhook; checked at submit and at send
    # MLflow: the request's experiment and extra tags (api.schemas.Tracking); None: the team's experiment
    tracking: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # every change a client can see (status, progress, metrics, verdict, report), by the writing host's clock
    # (lists' updated_after); lease renewals and broker bookkeeping keep it (NOT_A_CHANGE)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # the same changes in the store's commit order, for pollers (changed_after): every write sets it to NULL,
    # as it sets updated_at, and store.db.stamp_changes numbers it as the transaction's last statement before
    # the commit, from a counter (ChangeCounter) that stays locked until then. Host clocks play no part, and a
    # change that commits late gets a later number than every change committed before it.
    change_seq: Mapped[int | None] = mapped_column(BigInteger, onupdate=null())
    # a sweep's child: its sweep and its place there (seed-major: every cell's first seed comes first)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"))
    sweep_index: Mapped[int | None] = mapped_column(Integer)
    # when the retention deleted the run folder's checkpoints (store.retention); NULL: not yet, or never
    checkpoints_deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


NOT_A_CHANGE = {"updated_at": Job.updated_at, "change_seq": Job.change_seq}  # UPDATE values: keep the marks


class ChangeCounter(Base):
    """One row: the last number ``store.db.stamp_changes`` gave out (``Job.change_seq``). A transaction that
    changed jobs increments it just before its commit and holds the row until then, so numbers are handed out
    in commit order."""

    __tablename__ = "change_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Sweep(Base):
    """A grid of jobs submitted as one request (``api.routes.sweeps``). Its children are ordinary jobs with
    ``sweep_id`` set; the sweep's status is derived from theirs (``store.sweeps.sweep_status``) and written
    here by the sweep keeper, which also stamps ``finished_at`` once, when the last child finished."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("owner_key_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    team: Mapped[str] = mapped_column(String(100))
    owner_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    spec: Mapped[dict[str, Any]] = mapped_column()  # the base spec as submitted (children: spec + cell + seed)
    axes: Mapped[list[Any]] = mapped_column()  # [[dotted path, [values]], ...] in request order
    seeds: Mapped[list[Any]] = mapped_column()
    size: Mapped[int] = mapped_column(Integer)  # children: cells x seeds
    status: Mapped[str] = mapped_column(String(12), default="queued")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    callback_url: Mapped[str | None] = mapped_column(String(2000))  # sweep.finished webhook
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the sweep.finished delivery's outcome
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


Index("ix_sweeps_team_created", Sweep.team, Sweep.created_at.desc(), Sweep.id)
Index("ix_sweeps_created", Sweep.created_at.desc(), Sweep.id)
Index("ix_sweeps_status", Sweep.status)  # the keeper reads the unfinished ones


# Lists, newest first (crud.JOB_ORDER), paged in SQL: an index per filter the list endpoints take. The id in
# each key makes the page query index-only (crud.list_jobs picks the page's ids there, then reads 50 rows).
Index("ix_jobs_team_created", Job.team, Job.created_at.desc(), Job.id)
Index("ix_jobs_team_status_created", Job.team, Job.status, Job.created_at.desc(), Job.id)  # also quotas
Index("ix_jobs_created", Job.created_at.desc(), Job.id)  # admins' list of every team
# The tag filter (JSON containment, crud._has_tag) on PostgreSQL; SQLite, the embedded store, scans the tags.
Index("ix_jobs_tags", cast(Job.tags, JSONB), postgresql_using="gin").ddl_if(dialect="postgresql")
# The reconciler and the purge: running jobs by lease expiry, queued jobs by when their message was sent
# (NULL: never); few rows match, so each pass reads a handful of index entries whatever the table's size.
Index("ix_jobs_status_lease", Job.status, Job.lease_expires_at)
Index("ix_jobs_status_enqueued", Job.status, Job.enqueued_at)
# A sweep's children (its page, its table, its events) and the keeper's held children per team.
Index("ix_jobs_sweep", Job.sweep_id, Job.sweep_index)
Index("ix_jobs_status_team", Job.status, Job.team)
# Changes in commit order (crud.CHANGE_ORDER): pollers' changed_after, one index for every team (a poll reads
# the few changes after its cursor), and stamp_changes' look for this transaction's unnumbered rows (NULL).
Index("ix_jobs_change", Job.change_seq, Job.id)


class MetricRow(Base):
    """One row of the trainer's metrics.jsonl; unique per (job, kind, step), so a resumed attempt that
    re-emits a step overwrites instead of duplicating."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "kind", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(12))
    step: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column()


REPORT_COLUMNS = {"train_images_per_second": ("timing", "train_images_per_second"),
                  "final_clean_accuracy": ("final", "clean_accuracy"),
                  "final_robust_accuracy": ("final", "robust_accuracy")}  # Job column -> path in the report


def report_numbers(report: dict[str, Any]) -> dict[str, float | None]:
    """The ``REPORT_COLUMNS`` values of a report: None where the report has no number there."""
    values: dict[str, float | None] = {}
    for column, (section, name) in REPORT_COLUMNS.items():
        part = report.get(section)
        value = part.get(name) if isinstance(part, dict) else None
        values[column] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return values


class JobEvent(Base):
    """Server-Sent Events of a job; the autoincrement id is the SSE id, so Last-Event-ID resumes."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
