"""Admin routes (role ``admin``; members get 403): every team's jobs, cancel or delete any job, purge the
queues, run the checkpoint retention, manage API keys. A separate router, so the stricter dependency is
declared once (OWASP API5)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Path, Query, status

from api.deps import ChangedAfterDep, ChangeWindowDep, SessionDep, SettingsDep, require_admin
from api.routes.jobs import cancel, summary_fields
from api.schemas import (
    AdminJobsPublic,
    AdminJobSummary,
    JobDeleted,
    JobPublic,
    KeyCreate,
    KeyCreated,
    KeyPublic,
    KeysPublic,
    PurgePublic,
    RetentionPublic,
    errors,
)
from store import crud, retention, webhooks
from store.models import ApiKey, Job
from store.settings import Settings
from store.status import FINISHED_STATES, JobStatus

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=errors(401, 403, 422))
JobId = Annotated[str, Path(max_length=64)]
KeyId = Annotated[str, Path(max_length=64)]


def to_admin_summary(job: Job, settings: Settings) -> AdminJobSummary:
    return AdminJobSummary(**summary_fields(job, settings), team=job.team)


def to_key_public(key: ApiKey) -> KeyPublic:
    return KeyPublic(id=key.id, name=key.name, team=key.team, role=key.role, created_at=key.created_at,
                     revoked=key.revoked)


@router.get("/jobs", response_model=AdminJobsPublic, summary="List every team's jobs")
def read_all_jobs(session: SessionDep, settings: SettingsDep, window: ChangeWindowDep,
                  changed_after: ChangedAfterDep, team: Annotated[str | None, Query(max_length=100)] = None,
                  status_: Annotated[JobStatus | None,
                                     Query(alias="status")] = None,
                  tag: Annotated[str | None, Query(max_length=100)] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> Any:
    """Every team's jobs (or one team's), newest first (with ``changed_after``: oldest change first), without
    their specs."""
    jobs, count = crud.list_jobs(session, team, status_, tag, limit, offset, created_after=window.created_after,
                                 updated_after=window.updated_after, changed_after=changed_after)
    return AdminJobsPublic(data=[to_admin_summary(job, settings) for job in jobs], count=count)


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             summary="Cancel any team's job", responses=errors(404, 409))
def cancel_any_job(job_id: JobId, session: SessionDep, settings: SettingsDep,
                   background: BackgroundTasks) -> Any:
    """Cancel any team's job; 409 when it already finished."""
    job = crud.get_team_job(session, job_id, None)
    if job is None:
        raise HTTPException(404, "Job not found")
    return cancel(job, session, settings, background)


@router.delete("/jobs/{job_id}", response_model=JobDeleted, summary="Delete a finished job",
               responses=errors(404, 409))
def delete_any_job(job_id: JobId, session: SessionDep, settings: SettingsDep) -> Any:
    """Delete a finished job of any team: its events, metrics rows, job row and run folder (404 after). 409
    while it is held, queued or running, and for a sweep's child (the sweep's table and heatmap are built
    from every child)."""
    job = crud.get_team_job(session, job_id, None)
    if job is None:
        raise HTTPException(404, "Job not found")
    if job.status not in FINISHED_STATES:
        raise HTTPException(409, f"Job is {job.status}: cancel it, and delete it once it has finished")
    if job.sweep_id is not None:
        raise HTTPException(409, f"Job is a child of sweep {job.sweep_id}: a sweep's table and heatmap are "
                                 "built from every child, so its children are not deleted")
    try:
        deleted = retention.delete_job(session, settings.artifacts, job)
    except retention.NotDeletable:  # a concurrent delete went first (this transaction rolls back)
        raise HTTPException(404, "Job not found") from None
    return JobDeleted(id=job_id, **asdict(deleted))


@router.post("/retention/run", response_model=RetentionPublic, summary="Delete expired checkpoints now")
def run_retention(session: SessionDep, settings: SettingsDep,
                  older_than_days: Annotated[float | None, Query(ge=0, le=36_500, description=(
                      "for this run, instead of the configured retention"))] = None,
                  team: Annotated[str | None, Query(max_length=100)] = None,
                  limit: Annotated[int, Query(ge=1, le=5000)] = retention.RETENTION_BATCH) -> Any:
    """One batch of the checkpoint retention (what the API runs every ``RETENTION_SECONDS``): checkpoint.pt
    and best.pt of finished jobs past the retention are deleted; reports, metrics and rows stay."""
    policy = (retention.Policy.from_settings(settings) if older_than_days is None
              else retention.Policy(older_than_days))
    pruned = retention.prune_checkpoints(session, settings.artifacts, policy, team=team, limit=limit)
    return RetentionPublic(jobs=len(pruned.job_ids), files=pruned.files, bytes=pruned.bytes,
                           job_ids=pruned.job_ids, more=pruned.more)


@router.post("/queues/purge", response_model=PurgePublic, summary="Cancel every queued job")
def purge_queues(session: SessionDep, settings: SettingsDep, background: BackgroundTasks,
                 queue: Annotated[Literal["cpu", "gpu"] | None, Query()] = None) -> Any:
    """Cancel every queued job (of one queue, or all); running jobs are left alone."""
    ids = crud.purge_queued(session, queue)
    for job_id in ids:
        background.add_task(webhooks.notify, settings, job_id, "job.cancelled")
    return PurgePublic(cancelled=len(ids))


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated,
             summary="Create an API key", responses=errors(413))
def create_key(body: KeyCreate, session: SessionDep) -> Any:
    """Create an API key; the key is in this response only (the store keeps its hash)."""
    row, key = crud.create_key(session, body.name, body.team, body.role)
    return KeyCreated(**to_key_public(row).model_dump(), key=key)


@router.get("/keys", response_model=KeysPublic, summary="List API keys")
def read_keys(session: SessionDep) -> Any:
    """Every API key, without hashes."""
    keys = crud.list_keys(session)
    return KeysPublic(data=[to_key_public(key) for key in keys], count=len(keys))


@router.post("/keys/{key_id}/revoke", response_model=KeyPublic, summary="Revoke an API key",
             responses=errors(404))
def revoke_key(key_id: KeyId, session: SessionDep) -> Any:
    """Revoke a key: it stops authenticating at once. Its jobs stay."""
    row = crud.revoke_key(session, key_id)
    if row is None:
        raise HTTPException(404, "Key not found")
    return to_key_public(row)
