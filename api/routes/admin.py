"""Admin routes (role ``admin``; members get 403): every team's jobs, cancel any job, purge the queues,
manage API keys. A separate router, so the stricter dependency is declared once (OWASP API5)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Path, Query, status

from api.deps import ChangeWindowDep, SessionDep, SettingsDep, require_admin
from api.routes.jobs import cancel, summary_fields
from api.schemas import (AdminJobsPublic, AdminJobSummary, JobPublic, KeyCreate, KeyCreated, KeyPublic,
                         KeysPublic, PurgePublic, errors)
from store import crud, webhooks
from store.models import ApiKey, Job
from store.status import JobStatus
from store.settings import Settings

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
                  team: Annotated[str | None, Query(max_length=100)] = None,
                  status_: Annotated[JobStatus | None,
                                     Query(alias="status")] = None,
                  tag: Annotated[str | None, Query(max_length=100)] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> Any:
    """Every team's jobs (or one team's), newest first, without their specs."""
    jobs, count = crud.list_jobs(session, team, status_, tag, limit, offset,
                                 created_after=window.created_after, updated_after=window.updated_after)
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
