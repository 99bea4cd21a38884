"""Sweeps in the job store: a grid of ordinary jobs created in one transaction, held inside the sweep and
released to the queue as the team's quota allows.

Release policy (``release_held``, run by the API at submit and by its sweep keeper every
``sweep_release_seconds``): a held child becomes queued only while the team holds fewer than
``team_max_active_jobs`` queued and running jobs, and fewer than ``sweep_max_waiting`` queued jobs in the
child's queue. The first bound keeps the quota honest (a sweep never takes the team past it; a direct
submission still gets 429 when the sweep's released children fill it); the second is fair share: the broker
queues are first-in first-out, so a sweep never puts more than a couple of messages ahead of another team's
job, whatever its size. Children leave in seed-major order (every cell's first seed, then the second...), so
a partial sweep already covers the grid. The counts are read under the team's lock (``crud.lock_team``),
held until the commit, so the keepers of several API processes and a concurrent submit never release or
accept more than the room they saw.

Like ``store.crud``, nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, load_only

from store import crud
from store.models import ApiKey, Job, JobEvent, Sweep, utcnow
from store.status import ACTIVE_STATES, FINISHED_STATES, SWEEP_FINISHED_STATES

HELD_SCAN = 1000  # held children looked at per team and pass (a pass releases far fewer)


class HeldLimitExceeded(Exception):
    """The team already has its maximum number of children waiting inside sweeps."""


@dataclass(frozen=True)
class Child:
    """One job of a sweep, planned and validated by the API."""

    index: int  # seed-major position: seed_position * cells + cell
    spec: dict[str, Any]  # resolved
    name: str | None
    queue: str


def create_sweep(session: Session, owner: ApiKey, *, name: str | None, tags: list[str], priority: int,
                 spec: dict[str, Any], axes: list[list[Any]], seeds: list[int], children: Sequence[Child],
                 idempotency_key: str | None, request_hash: str, callback_url: str | None,
                 max_held: int) -> tuple[Sweep, bool]:
    """Insert the sweep and all its children (held), or return the sweep created earlier with the same
    idempotency key and body (``crud.IdempotencyMismatch`` for another body). All or nothing: the caller's
    transaction holds every row."""
    if idempotency_key is not None:
        existing = session.scalar(select(Sweep).where(Sweep.owner_key_id == owner.id,
                                                      Sweep.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.request_hash != request_hash:
                raise crud.IdempotencyMismatch(idempotency_key)
            return existing, False
    crud.lock_team(session, owner.team)  # until the commit: concurrent sweeps never pass max_held together
    held = session.scalar(select(func.count()).select_from(Job)
                          .where(Job.status == "held", Job.team == owner.team)) or 0
    if held + len(children) > max_held:
        raise HeldLimitExceeded(owner.team)
    now = utcnow()
    sweep = Sweep(team=owner.team, owner_key_id=owner.id, name=name, tags=tags, spec=spec, axes=axes,
                  seeds=seeds, size=len(children), status="queued", idempotency_key=idempotency_key,
                  request_hash=request_hash, callback_url=callback_url, created_at=now)
    session.add(sweep)
    session.flush()  # a concurrent duplicate key fails here with IntegrityError
    for child in children:
        job = Job(team=owner.team, owner_key_id=owner.id, spec=child.spec, name=child.name,
                  tags=[*tags, f"sweep:{sweep.id}"], priority=priority, queue=child.queue, status="held",
                  sweep_id=sweep.id, sweep_index=child.index, created_at=now)
        session.add(job)
        session.flush()
        crud.add_event(session, job.id, 0, "status", {"status": "held", "sweep_id": sweep.id})
    return sweep, True


def release_held(session: Session, max_active: int, max_waiting: int,
                 team: str | None = None) -> list[tuple[str, str]]:
    """Move held children to queued within the team's bounds (module docstring); returns (job id, queue) of
    each one released, to publish after the commit. Each move is conditional on the child still being held,
    so a cancel that lands meanwhile wins."""
    teams = [team] if team is not None else sorted(session.scalars(
        select(Job.team).where(Job.status == "held").distinct()))  # sorted: every keeper locks in one order
    released: list[tuple[str, str]] = []
    for name in teams:
        crud.lock_team(session, name)  # until the commit: a submit or another keeper counts after these moves
        counts = session.execute(select(Job.queue, Job.status, func.count()).where(
            Job.team == name, Job.status.in_(ACTIVE_STATES)).group_by(Job.queue, Job.status)).all()
        room = max_active - sum(count for _, _, count in counts)
        waiting = {queue: count for queue, status, count in counts if status == "queued"}
        if room <= 0:
            continue
        held = session.execute(select(Job.id, Job.queue).where(Job.team == name, Job.status == "held")
                               .order_by(Job.created_at, Job.sweep_id, Job.sweep_index).limit(HELD_SCAN)).all()
        for job_id, queue in held:
            if room <= 0:
                break
            if waiting.get(queue, 0) >= max_waiting:
                continue
            moved = session.execute(update(Job).where(Job.id == job_id, Job.status == "held")
                                    .values(status="queued").execution_options(synchronize_session=False))
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                continue
            crud.add_event(session, job_id, 0, "status", {"status": "queued", "reason": "released by its sweep"})
            released.append((job_id, queue))
            room -= 1
            waiting[queue] = waiting.get(queue, 0) + 1
    return released


def child_counts(session: Session, sweep_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per sweep, its children's count per status."""
    counts: dict[str, dict[str, int]] = {sweep_id: {} for sweep_id in sweep_ids}
    if sweep_ids:
        for sweep_id, status, count in session.execute(
                select(Job.sweep_id, Job.status, func.count()).where(Job.sweep_id.in_(sweep_ids))
                .group_by(Job.sweep_id, Job.status)).all():
            counts[sweep_id][status] = count
    return counts


def sweep_status(counts: dict[str, int], cancel_requested: bool) -> str:
    """queued (no child started), running, then once every child finished: succeeded (all), cancelled (the
    sweep was cancelled, or every child was), failed (none succeeded, some failed) or partial."""
    total = sum(counts.values())
    finished = sum(counts.get(status, 0) for status in FINISHED_STATES)
    if finished < total:
        started = total - counts.get("held", 0) - counts.get("queued", 0)
        return "running" if started else "queued"
    succeeded = counts.get("succeeded", 0)
    if succeeded == total:
        return "succeeded"
    if cancel_requested or counts.get("cancelled", 0) == total:
        return "cancelled"
    return "partial" if succeeded else "failed"


def refresh(session: Session, sweep_ids: Sequence[str] | None = None) -> list[str]:
    """Write the derived status of unfinished sweeps (or of ``sweep_ids``); returns the ids of the sweeps
    this call finished (their ``finished_at`` is stamped once, by a conditional update, so exactly one
    caller sends the ``sweep.finished`` webhook)."""
    query = select(Sweep.id, Sweep.status, Sweep.cancel_requested).where(Sweep.status.not_in(SWEEP_FINISHED_STATES))
    if sweep_ids is not None:
        query = query.where(Sweep.id.in_(sweep_ids))
    rows = session.execute(query).all()
    counts = child_counts(session, [row.id for row in rows])
    finished = []
    for row in rows:
        status = sweep_status(counts[row.id], row.cancel_requested)
        if status == row.status:
            continue
        values: dict[str, Any] = {"status": status}
        condition = Sweep.status == row.status
        if status in SWEEP_FINISHED_STATES:
            values["finished_at"] = utcnow()
            condition = condition & Sweep.finished_at.is_(None)
        result = session.execute(update(Sweep).where(Sweep.id == row.id, condition).values(**values)
                                 .execution_options(synchronize_session=False))
        if result.rowcount == 1 and status in SWEEP_FINISHED_STATES:  # type: ignore[attr-defined]
            finished.append(row.id)
    return finished


def request_cancel(session: Session, sweep: Sweep) -> list[str]:
    """Cancel every unfinished child (held and queued ones at once, running ones at their next step);
    returns the ids of the children that finished here. ``crud.NotCancellable`` once the sweep finished."""
    if sweep.status in SWEEP_FINISHED_STATES:
        raise crud.NotCancellable(sweep.status)
    sweep.cancel_requested = True
    cancelled = []
    for job in session.scalars(select(Job).where(Job.sweep_id == sweep.id, Job.status.not_in(FINISHED_STATES))):
        crud.request_cancel(session, job)
        if job.status == "cancelled":
            cancelled.append(job.id)
    session.flush()
    return cancelled


def get_team_sweep(session: Session, sweep_id: str, team: str | None) -> Sweep | None:
    """The sweep if it exists and belongs to ``team`` (None: any team, for admins)."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or (team is not None and sweep.team != team):
        return None
    return sweep


SWEEP_ORDER = (Sweep.created_at.desc(), Sweep.id)


def list_sweeps(session: Session, team: str | None, limit: int, offset: int, *,
                created_after: dt.datetime | None = None,
                updated_after: dt.datetime | None = None) -> tuple[list[Sweep], int]:
    conditions: list[ColumnElement[bool]] = [] if team is None else [Sweep.team == team]
    if created_after is not None:
        conditions.append(Sweep.created_at > created_after)
    if updated_after is not None:  # a sweep changes when it is created or when one of its children changes
        changed = exists(select(Job.id).where(Job.sweep_id == Sweep.id, crud.last_update(Job) > updated_after))
        conditions.append(or_(Sweep.created_at > updated_after, changed))
    sweeps = list(session.scalars(select(Sweep).where(*conditions).order_by(*SWEEP_ORDER).limit(limit)
                                  .offset(offset)))
    return sweeps, session.scalar(select(func.count()).select_from(Sweep).where(*conditions)) or 0


CHILD_COLUMNS = (Job.id, Job.sweep_index, Job.status, Job.co, Job.report, Job.error_code)


def children(session: Session, sweep_id: str) -> list[Job]:
    """The sweep's children in index order, with what the sweep's table reads (never the spec)."""
    return list(session.scalars(select(Job).options(load_only(*CHILD_COLUMNS, raiseload=True))
                                .where(Job.sweep_id == sweep_id).order_by(Job.sweep_index)))


def events_after(session: Session, sweep_id: str, after_id: int, limit: int = 500) -> list[tuple[int, str, str,
                                                                                             int, dict[str, Any]]]:
    """The children's events a sweep's stream shows, after ``after_id``: each child's final status and its
    CO onsets, as (event id, type, job id, sweep index, data)."""
    finished = and_(JobEvent.type == "status", JobEvent.data["status"].as_string().in_(FINISHED_STATES))
    rows = session.execute(select(JobEvent.id, JobEvent.type, JobEvent.job_id, Job.sweep_index, JobEvent.data)
                           .join(Job, Job.id == JobEvent.job_id)
                           .where(Job.sweep_id == sweep_id, JobEvent.id > after_id,
                                  or_(finished, JobEvent.type == "co_onset"))
                           .order_by(JobEvent.id).limit(limit)).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]
