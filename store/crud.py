"""Job-store operations shared by the API, the worker and the reconciler.

Worker writes are fenced by the attempt number: each one is a conditional UPDATE of the job row
(``WHERE id = ? AND attempt = ? AND status = 'running'``) in the same transaction as its inserts, so a
worker whose lease was taken over (a newer attempt claimed the job) gets ``StaleAttempt`` and stops,
and nothing it sends lands.

None of these functions commits: the caller's ``session_scope`` block is the unit of work (see ``store``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, cast, exists, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, load_only

from store.models import NOT_A_CHANGE, ApiKey, Job, JobEvent, MetricRow, report_numbers, utcnow
from store.status import ACTIVE_STATES, FINISHED_STATES, UNSENT_STATES

KEY_PREFIX = "cs_"


class StaleAttempt(Exception):
    """The job was claimed by a newer attempt (or finished); this worker's writes are refused."""


class IdempotencyMismatch(Exception):
    """The Idempotency-Key was used before with a different request body."""


class NotCancellable(Exception):
    """The job already finished."""


class QuotaExceeded(Exception):
    """The team already has its maximum number of queued and running jobs."""


# ---- Keys -------------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, team: str = "default", role: str = "member") -> tuple[ApiKey, str]:
    """A new API key; only its hash is stored, the key itself is returned once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, team=team, role=role, key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def key_for(session: Session, key: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return row if row is not None and not row.revoked else None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    row = session.get(ApiKey, key_id)
    if row is not None:
        row.revoked = True
        session.flush()
    return row


# ---- Jobs (API side) --------------------------------------------------------------------------------


def create_job(session: Session, owner: ApiKey, spec: dict[str, Any], *, name: str | None, tags: list[str],
               priority: int, queue: str, idempotency_key: str | None, request_hash: str,
               callback_url: str | None = None, max_active: int | None = None,
               tracking: dict[str, Any] | None = None) -> tuple[Job, bool]:
    """Insert a queued job, or return the one created earlier with the same idempotency key and body.
    With ``max_active``, a team already holding that many queued and running jobs gets ``QuotaExceeded``
    (a replay of an existing job does not count)."""
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.owner_key_id == owner.id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request_hash != request_hash:
                raise IdempotencyMismatch(idempotency_key)
            return existing, False
    if max_active is not None:
        lock_team(session, owner.team)  # until the commit: the count stays true until the insert lands
        if active_jobs(session, owner.team) >= max_active:
            raise QuotaExceeded(owner.team)
    job = Job(team=owner.team, owner_key_id=owner.id, spec=spec, name=name, tags=tags, priority=priority,
              queue=queue, idempotency_key=idempotency_key, request_hash=request_hash, status="queued",
              callback_url=callback_url, tracking=tracking)
    session.add(job)
    session.flush()  # a concurrent duplicate key fails here with IntegrityError
    add_event(session, job.id, 0, "status", {"status": "queued"})
    return job, True


def lock_team(session: Session, team: str) -> None:
    """Hold the team's bounds (active jobs, children waiting in sweeps) until this transaction ends. Every
    check-then-write of a team's counts takes it first (``create_job``, ``store.sweeps``), so two
    transactions, in one API process (a request and the sweep keeper) or in two replicas, never both pass a
    check that only one of them may pass. PostgreSQL: a transaction-scoped advisory lock keyed by the team;
    other teams do not wait. SQLite: the database's write lock, taken now (``BEGIN IMMEDIATE``) instead of at
    the first write, so the count is read under it. pysqlite's legacy transaction control begins a
    transaction only at the first INSERT, UPDATE or DELETE, so a transaction already open holds that lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(team_lock_key(team))))
        return
    connection = session.connection()
    if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits up to the busy timeout for other writers


def team_lock_key(team: str) -> int:
    """The team's advisory-lock key: a stable signed 64-bit hash (the same in every process and version)."""
    digest = hashlib.blake2b(f"coscope.team:{team}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def active_jobs(session: Session, team: str) -> int:
    """Queued and running jobs of the team."""
    return session.scalar(select(func.count()).select_from(Job)
                          .where(Job.team == team, Job.status.in_(ACTIVE_STATES))) or 0


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id)  # broker bookkeeping: no change a client sees
                    .values(enqueued_at=utcnow(), **NOT_A_CHANGE))


def get_team_job(session: Session, job_id: str, team: str | None) -> Job | None:
    """The job if it exists and belongs to ``team`` (None: any team, for admins)."""
    job = session.get(Job, job_id)
    if job is None or (team is not None and job.team != team):
        return None
    return job


JOB_ORDER = (Job.created_at.desc(), Job.id)  # newest first; the list indexes of store.models hold this order
# what a list entry shows: never the spec or the report
LIST_COLUMNS = (Job.id, Job.team, Job.name, Job.tags, Job.sweep_id, Job.priority, Job.queue, Job.status, Job.attempt,
                Job.progress, Job.co, Job.error_code, Job.error_message, Job.created_at, Job.started_at,
                Job.finished_at, Job.updated_at, Job.change_seq, Job.final_clean_accuracy,
                Job.final_robust_accuracy)
CHANGE_ORDER = (Job.change_seq, Job.id)  # a change feed: oldest change first, so a poller pages by its cursor


def list_jobs(session: Session, team: str | None, status: str | None, tag: str | None, limit: int,
              offset: int, *, created_after: dt.datetime | None = None,
              updated_after: dt.datetime | None = None,
              changed_after: tuple[int, str] | None = None) -> tuple[list[Job], int]:
    """One page of jobs, newest first, and how many match, both in SQL. The page's ids are picked from an
    index alone (``store.models``: team, status, created_at and id are in the key), then only those rows are
    read, and only ``LIST_COLUMNS`` of them: the other columns are not loaded, and reading one raises instead
    of querying the row again. The count is skipped when the page itself shows it (a short page).
    ``changed_after`` (a place in ``CHANGE_ORDER``: change_seq, id): the jobs after it, in that order."""
    conditions = []
    if team is not None:
        conditions.append(Job.team == team)
    if status is not None:
        conditions.append(Job.status == status)
    if tag is not None:
        conditions.append(_has_tag(session, tag))
    if created_after is not None:
        conditions.append(Job.created_at > created_after)
    if updated_after is not None:
        conditions.append(last_update(Job) > updated_after)
    order = JOB_ORDER
    if changed_after is not None:
        place = tuple_(*changed_after, types=[column.type for column in CHANGE_ORDER])
        conditions.append(tuple_(*CHANGE_ORDER) > place)  # a keyset: one range of ix_jobs_change
        order = CHANGE_ORDER
    page = select(Job.id).where(*conditions).order_by(*order).limit(limit).offset(offset)
    jobs = list(session.scalars(select(Job).options(load_only(*LIST_COLUMNS, raiseload=True))
                                .where(Job.id.in_(page.scalar_subquery())).order_by(*order)))
    if len(jobs) < limit and (jobs or offset == 0):
        return jobs, offset + len(jobs)
    return jobs, session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0


def last_update(job: type[Job]) -> ColumnElement[dt.datetime]:
    """When the job last changed as a client sees it (rows from before ``updated_at`` existed: created)."""
    return func.coalesce(job.updated_at, job.created_at)


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    """Whether the job's tags (a JSON list of strings) hold ``tag``: JSON containment on PostgreSQL, a
    ``json_each`` lookup on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(Job.tags, postgresql.JSONB).contains([tag])
    values = func.json_each(Job.tags).table_valued("value")
    return exists(select(1).select_from(values).where(values.c.value == tag))


def request_cancel(session: Session, job: Job) -> Job:
    """Held and queued jobs are cancelled at once (a later claim skips them); running ones stop at the next
    step."""
    if job.status in FINISHED_STATES:
        raise NotCancellable(job.status)
    if job.status in UNSENT_STATES:
        job.status, job.finished_at, job.cancel_requested = "cancelled", utcnow(), True
        add_event(session, job.id, job.attempt, "status", {"status": "cancelled"})
    else:
        job.cancel_requested = True
        add_event(session, job.id, job.attempt, "cancel_requested", {})
    session.flush()
    return job


def purge_queued(session: Session, queue: str | None = None) -> list[str]:
    """Cancel every queued job (of one queue, or all), sweeps' held children included, in one conditional
    UPDATE, so a job a worker claims meanwhile keeps running; a later claim skips the cancelled ones. Returns
    their ids."""
    condition = Job.status.in_(UNSENT_STATES)
    if queue is not None:
        condition = condition & (Job.queue == queue)
    rows = session.execute(update(Job).where(condition)
                           .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
                           .returning(Job.id, Job.attempt).execution_options(synchronize_session=False)).all()
    for job_id, attempt in rows:
        add_event(session, job_id, attempt, "status", {"status": "cancelled", "reason": "purged by an admin"})
    return [job_id for job_id, _ in rows]


def add_event(session: Session, job_id: str, attempt: int, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, type=kind, attempt=attempt, data=data))


def events_after(session: Session, job_id: str, after_id: int, limit: int = 500) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                                .order_by(JobEvent.id).limit(limit)))


def job_metrics(session: Session, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    query = select(MetricRow).where(MetricRow.job_id == job_id)
    if kind is not None:
        query = query.where(MetricRow.kind == kind)
    return [row.data for row in session.scalars(query.order_by(MetricRow.step, MetricRow.kind))]


def count_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())  # type: ignore[arg-type]


@dataclass(frozen=True)
class JobStats:
    """What Prometheus scrapes (``api.routes.health``), aggregated in SQL: no job row leaves the database."""

    by_status_and_queue: dict[tuple[str, str], int]
    succeeded_seconds: float  # total run time (started to finished) of succeeded jobs
    succeeded_timed: int
    mean_train_images_per_second: float | None  # over the jobs whose report times training (not dry runs)


def job_stats(session: Session) -> JobStats:
    """One pass over the table, grouped by status and queue."""
    if session.get_bind().dialect.name == "postgresql":
        seconds = func.extract("epoch", Job.finished_at - Job.started_at)
    else:
        seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    rate = Job.train_images_per_second
    groups = session.execute(select(Job.status, Job.queue, func.count(), func.sum(seconds),
                                    func.count(seconds), func.sum(rate), func.count(rate))
                             .group_by(Job.status, Job.queue)).all()
    succeeded = [group for group in groups if group[0] == "succeeded"]
    rates = sum(group[6] for group in groups)
    return JobStats({(status, queue): count for status, queue, count, *_ in groups},
                    sum(float(group[3] or 0.0) for group in succeeded), sum(group[4] for group in succeeded),
                    sum(float(group[5] or 0.0) for group in groups) / rates if rates else None)


# ---- Jobs (worker side) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | duplicate | finished | exhausted | missing
    attempt: int = 0


def claim(session: Session, job_id: str, worker: str, lease_seconds: float, max_attempts: int) -> Claim:
    """Compare-and-set: take a queued job (or a running one whose lease expired) as a new attempt."""
    now = utcnow()
    claimable = (Job.status == "queued") | ((Job.status == "running") & (Job.lease_expires_at < now))
    result = session.execute(
        update(Job).where(Job.id == job_id, claimable, Job.attempt < max_attempts, ~Job.cancel_requested)
        .values(status="running", attempt=Job.attempt + 1, lease_owner=worker,
                lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                started_at=func.coalesce(Job.started_at, now))
        .execution_options(synchronize_session=False))
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return Claim("missing")
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job_id, job.attempt, "status", {"status": "running", "attempt": job.attempt})
        return Claim("claimed", job.attempt)
    if job.status in FINISHED_STATES:
        return Claim("finished", job.attempt)
    if job.cancel_requested:
        _finish(session, job, "cancelled", None, None)
        return Claim("finished", job.attempt)
    if job.attempt >= max_attempts and not (job.status == "running" and job.lease_expires_at
                                            and job.lease_expires_at >= now):
        _finish(session, job, "failed", "attempts_exhausted",
                f"the job was started {job.attempt} times without finishing (limit {max_attempts})")
        return Claim("exhausted", job.attempt)
    return Claim("duplicate", job.attempt)  # another worker holds a live lease: exactly one trainer


def _fence(session: Session, job_id: str, attempt: int, /, **values: Any) -> None:
    """The conditional UPDATE every worker write starts with (it also row-locks the job until commit)."""
    values = values or {"attempt": Job.attempt}  # nothing to change: still take the lock and check
    result = session.execute(update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
                             .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleAttempt(f"job {job_id} attempt {attempt} no longer holds the job")


def heartbeat(session: Session, job_id: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease; return whether a cancel was requested."""
    _fence(session, job_id, attempt, lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds),
           **NOT_A_CHANGE)  # a lease renewal is no change a client sees
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record(session: Session, job_id: str, attempt: int, *, progress: dict[str, Any] | None = None,
           metrics: list[dict[str, Any]] = (), events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
           co: dict[str, Any] | None = None) -> None:
    """One fenced write of progress, metric rows (upserted per job/kind/step) and events."""
    values: dict[str, Any] = {}
    if progress is not None:
        values["progress"] = progress
    if co is not None:
        values["co"] = co
    _fence(session, job_id, attempt, **values)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for row in metrics:
        statement = insert(MetricRow).values(job_id=job_id, kind=row["kind"], step=row["step"], attempt=attempt,
                                             data=row)
        session.execute(statement.on_conflict_do_update(
            index_elements=["job_id", "kind", "step"], set_={"data": row, "attempt": attempt}))
    for kind, data in events:
        add_event(session, job_id, attempt, kind, data)


def finish(session: Session, job_id: str, attempt: int, status: str, *, report: dict[str, Any] | None = None,
           error_code: str | None = None, error_message: str | None = None) -> None:
    """Write the outcome once: fenced, so only the attempt holding the job can finish it."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_expires_at": None,
                              "error_code": error_code, "error_message": error_message}
    if report is not None:
        values["report"] = report
        values.update(report_numbers(report))
    _fence(session, job_id, attempt, **values)
    add_event(session, job_id, attempt, "status", {"status": status, "error_code": error_code,
                                                   "error_message": error_message})


def hand_back(session: Session, job_id: str, attempt: int) -> None:
    """A warm shutdown's hand-back (``worker.shutdown``): the attempt holding the job, having written a
    checkpoint, puts it back in the queue and gives its attempt back, so a deploy costs no attempt; the next
    claim is ``attempt`` again and resumes from that checkpoint. Fenced like every worker write. The job is
    left unsent (``enqueued_at`` NULL): the worker acks its message, and the reconciler sends a new one at
    its next pass."""
    _fence(session, job_id, attempt, status="queued", attempt=attempt - 1, lease_owner=None,
           lease_expires_at=None, enqueued_at=None)
    add_event(session, job_id, attempt, "status", {"status": "queued", "reason": "worker shutdown"})


def _finish(session: Session, job: Job, status: str, code: str | None, message: str | None) -> None:
    job.status, job.finished_at, job.error_code, job.error_message = status, utcnow(), code, message
    job.lease_expires_at = None
    add_event(session, job.id, job.attempt, "status", {"status": status, "error_code": code,
                                                       "error_message": message})


# ---- Reconciler -------------------------------------------------------------------------------------


def jobs_to_requeue(session: Session, max_attempts: int, finished: list[str] | None = None) -> list[str]:
    """Running jobs whose lease expired go back to queued (or fail past the attempt cap) and are listed for
    a new message, with queued jobs whose message was never sent (broker down at submit). The ids of jobs
    this pass finished (cancelled or failed) are appended to ``finished``."""
    now = utcnow()
    expired = session.execute(select(Job.id, Job.attempt, Job.cancel_requested)
                              .where(Job.status == "running", Job.lease_expires_at < now)).all()
    requeue: list[str] = []
    for job in expired:
        if job.cancel_requested:
            values: dict[str, Any] = {"status": "cancelled", "error_code": None, "error_message": None}
        elif job.attempt >= max_attempts:
            values = {"status": "failed", "error_code": "attempts_exhausted",
                      "error_message": f"the worker was lost {job.attempt} times (limit {max_attempts})"}
        else:
            values = {"status": "queued", "lease_owner": None}
        if values["status"] != "queued":
            values.update(finished_at=now, lease_expires_at=None)
        # conditional on what was read: a worker that claims or renews the job meanwhile wins
        result = session.execute(update(Job).where(Job.id == job.id, Job.attempt == job.attempt,
                                                   Job.status == "running", Job.lease_expires_at < now)
                                 .values(**values).execution_options(synchronize_session=False))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue
        event = {"status": values["status"]}
        if values["status"] == "queued":
            event["reason"] = "lease expired"
            requeue.append(job.id)
        else:
            event.update(error_code=values["error_code"], error_message=values["error_message"])
            if finished is not None:
                finished.append(job.id)
        add_event(session, job.id, job.attempt, "status", event)
    never_sent = Job.enqueued_at.is_(None) & (Job.created_at < now - dt.timedelta(seconds=5))
    requeue += session.scalars(select(Job.id).where(Job.status == "queued", never_sent)).all()
    return list(dict.fromkeys(requeue))


def stale_queued_jobs(session: Session, queued_for: float) -> dict[str, list[str]]:
    """Per queue, the jobs whose message was sent over ``queued_for`` seconds ago and that still wait."""
    stale = utcnow() - dt.timedelta(seconds=queued_for)
    rows = session.execute(select(Job.queue, Job.id).where(Job.status == "queued", Job.enqueued_at < stale)
                           .order_by(Job.enqueued_at)).all()
    found: dict[str, list[str]] = {}
    for queue, job_id in rows:
        found.setdefault(queue, []).append(job_id)
    return found


def sent_and_waiting(session: Session, queue: str) -> int:
    """Queued jobs of ``queue`` whose message was sent: each should have a message waiting in the broker."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.queue == queue, Job.status == "queued", Job.enqueued_at.is_not(None))) or 0


def queues_of(session: Session, job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    return dict(session.execute(select(Job.id, Job.queue).where(Job.id.in_(job_ids))).all())  # type: ignore[arg-type]
