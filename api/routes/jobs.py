"""Job routes: submit, list, read, cancel, live events (SSE), report, metrics and artifacts."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import limits, paths, sse
from api.conditional import conditional, conditional_file
from api.deps import (
    ChangedAfterDep,
    ChangeWindowDep,
    CurrentKey,
    OwnedJob,
    SessionDep,
    SettingsDep,
    change_cursor,
    get_current_key,
    get_publisher,
    limit_submissions,
)
from api.queue import Publisher, publish_and_mark
from api.schemas import (
    JOB_EXAMPLES,
    Artifact,
    ArtifactsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    JobSummary,
    MetricsPublic,
    errors,
)
from core.cost import default_queue
from core.report import judge
from store import crud, webhooks
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from store.status import FINISHED_STATES, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_current_key)],
                   responses=errors(401, 422))
OWNED = errors(404)  # routes of one job
ARTIFACTS = ("report.json", "metrics.jsonl", "summary.md", "curves.png", "checkpoint.pt", "best.pt")
QUOTA_RETRY_SECONDS = 60  # Retry-After when the team's active-job quota is full


def summary_fields(job: Job, settings: Settings) -> dict[str, Any]:
    """The fields of a list entry: only columns that ``crud.list_jobs`` loads (``crud.LIST_COLUMNS``)."""
    error = final = None
    if job.error_code:
        error = {"code": job.error_code, "message": paths.redact(job.error_message, settings)}
    if job.final_clean_accuracy is not None or job.final_robust_accuracy is not None:
        final = {"clean_accuracy": job.final_clean_accuracy, "robust_accuracy": job.final_robust_accuracy}
    return {"id": job.id, "name": job.name, "tags": job.tags or [], "sweep_id": job.sweep_id,
            "priority": job.priority, "queue": job.queue, "status": job.status, "attempt": job.attempt,
            "progress": job.progress or {},
            "co": job.co, "error": error, "final": final, "created_at": job.created_at,
            "updated_at": job.updated_at or job.created_at, "change_cursor": change_cursor(job.change_seq, job.id),
            "started_at": job.started_at, "finished_at": job.finished_at}


def to_public(job: Job, settings: Settings) -> JobPublic:
    return JobPublic(**summary_fields(job, settings), spec=job.spec)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, summary="Submit a job",
             dependencies=[Depends(limit_submissions)],
             responses={200: {"model": JobPublic, "description": "Replayed: this Idempotency-Key's job"},
                        **errors(409, 413, 429)})
def create_job(body: Annotated[JobCreate, Body(openapi_examples=JOB_EXAMPLES)], key: CurrentKey,
               session: SessionDep, settings: SettingsDep, response: Response,
               publisher: Annotated[Publisher, Depends(get_publisher)], background: BackgroundTasks,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Any:
    """Submit a job; with an Idempotency-Key, the same key and body return the same job."""
    problems = [*paths.spec_path_problems(body.spec),
                *limits.budget_problems(body.spec, settings.team_budget),
                *webhooks.url_problems(body.callback_url),
                *(body.tracking.problems(key.team) if body.tracking else [])]
    if problems:
        raise HTTPException(422, problems)
    spec = body.spec.resolved().model_dump(mode="json")
    canonical = json.dumps({**body.model_dump(mode="json", exclude={"spec"}), "spec": spec}, sort_keys=True)
    try:
        job, created = crud.create_job(
            session, key, spec, name=body.name, tags=body.tags, priority=body.priority,
            queue=body.queue or default_queue(body.spec), idempotency_key=idempotency_key,
            request_hash=hashlib.sha256(canonical.encode()).hexdigest(), callback_url=body.callback_url,
            max_active=settings.team_max_active_jobs,
            tracking=body.tracking.model_dump(mode="json") if body.tracking else None)
    except crud.IdempotencyMismatch:
        raise HTTPException(422, [{"loc": ["header", "Idempotency-Key"], "type": "idempotency_mismatch",
                                   "msg": "this Idempotency-Key was used with a different request body"}]) from None
    except crud.QuotaExceeded:
        limit = settings.team_max_active_jobs
        raise HTTPException(429, f"The team already has {limit} queued or running jobs",
                            headers={"Retry-After": str(QUOTA_RETRY_SECONDS)}) from None
    except IntegrityError:  # a concurrent request with the same key won the insert
        raise HTTPException(409, "A request with this Idempotency-Key is being processed") from None
    if created:  # after the commit: a worker that gets the message finds the row
        background.add_task(publish_and_mark, settings, publisher, job.id, job.queue)
    else:
        response.status_code = status.HTTP_200_OK
    return to_public(job, settings)


@router.get("", response_model=JobsPublic, summary="List the team's jobs")
def read_jobs(key: CurrentKey, session: SessionDep, settings: SettingsDep, window: ChangeWindowDep,
              changed_after: ChangedAfterDep,
              status_: Annotated[JobStatus | None,
                                 Query(alias="status")] = None,
              tag: Annotated[str | None, Query(max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50, offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
              ) -> Any:
    """List the team's jobs, newest first (with ``changed_after``: oldest change first), without their specs;
    ``count`` is every match, not the page."""
    team = None if key.role == "admin" else key.team
    jobs, count = crud.list_jobs(session, team, status_, tag, limit, offset, created_after=window.created_after,
                                 updated_after=window.updated_after, changed_after=changed_after)
    return JobsPublic(data=[JobSummary(**summary_fields(job, settings)) for job in jobs], count=count)


@router.get("/{job_id}", response_model=JobPublic, summary="Read a job", responses=OWNED)
def read_job(job: OwnedJob, settings: SettingsDep) -> Any:
    """Status, progress (epoch, step, ETA), the CO verdict so far, and the error if any."""
    return to_public(job, settings)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             summary="Cancel a job", responses={**OWNED, **errors(409)})
def cancel_job(job: OwnedJob, session: SessionDep, settings: SettingsDep, background: BackgroundTasks) -> Any:
    """Queued jobs never start; running ones checkpoint and stop at the next step boundary."""
    return cancel(job, session, settings, background)


def cancel(job: Job, session: Session, settings: Settings, background: BackgroundTasks) -> JobPublic:
    """Shared by the owner's and the admin's cancel: a queued job finishes here, so its webhook goes from
    here (a background task: after the commit); a running one's goes from its worker."""
    try:
        public = to_public(crud.request_cancel(session, job), settings)
    except crud.NotCancellable:
        raise HTTPException(409, f"Job already {job.status}") from None
    if job.status == "cancelled":
        background.add_task(webhooks.notify, settings, job.id, "job.cancelled")
    return public


@router.get("/{job_id}/events", summary="Follow a job's events (SSE)",
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **OWNED})
async def job_events(job: OwnedJob, request: Request, settings: SettingsDep,
                     last_event_id: Annotated[int | None, Header(ge=0)] = None) -> StreamingResponse:
    """Server-Sent Events: status, progress, epoch and monitor metrics, CO onset. Resumable with
    Last-Event-ID; the stream ends after the job's final status."""
    return StreamingResponse(sse.follow(request, _job_events(settings, job.id), last_event_id or 0),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _job_events(settings: Settings, job_id: str) -> sse.Fetch:
    def fetch(after: int) -> tuple[list[sse.Frame], list[sse.Frame] | None]:
        with session_scope(settings.database) as session:
            job = session.get(Job, job_id)
            finished = job is None or job.status in FINISHED_STATES  # read before the events: none can be missed
            events = [(e.id, e.type, redacted(e.data, settings)) for e in crud.events_after(session, job_id, after)]
        return events, [] if finished else None

    return fetch


def redacted(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """An event's data with server paths out of its error message."""
    if data.get("error_message"):
        return {**data, "error_message": paths.redact(data["error_message"], settings)}
    return data


@router.get("/{job_id}/report", summary="Read a job's report",
            responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
                       304: {"description": "Not modified (If-None-Match)"}, **OWNED})
def read_report(job: OwnedJob, request: Request, session: SessionDep) -> Response:
    """The run's report.json (with the CO section), once the job succeeded, its verdict re-judged by today's
    rules from the stored monitor checks; with an ``ETag`` (``If-None-Match``: 304 while unchanged)."""
    if job.report is None:
        raise HTTPException(404, "Report not available")
    report = copy.deepcopy(job.report)
    judge(report, crud.job_metrics(session, job.id))  # today's rules on the stored checks
    return conditional(request, json.dumps(report, sort_keys=True).encode(), "application/json")


@router.get("/{job_id}/metrics", response_model=MetricsPublic, summary="Read a job's metrics rows",
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **OWNED})
def read_metrics(job: OwnedJob, session: SessionDep,
                 kind: Annotated[Literal["train", "epoch", "monitor", "recheck"] | None, Query()] = None,
                 format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json") -> Any:
    """Metrics rows (train steps, epochs, monitor checks) as JSON or CSV."""
    rows = crud.job_metrics(session, job.id, kind)
    if format_ == "json":
        return MetricsPublic(data=rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return Response(buffer.getvalue(), media_type="text/csv")


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, summary="List a job's artifacts",
            responses=OWNED)
def read_artifacts(job: OwnedJob, settings: SettingsDep) -> Any:
    """The files of the job's run folder that can be downloaded."""
    present = [Artifact(name=name, size=path.stat().st_size) for name in ARTIFACTS
               if (path := _artifact(settings, job, name)) is not None]
    return ArtifactsPublic(data=present)


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, summary="Download a job's artifact",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}},
                       304: {"description": "Not modified (If-None-Match)"}, **OWNED})
def read_artifact(job: OwnedJob, settings: SettingsDep, request: Request, name: str) -> Any:
    """One artifact by name: only the fixed names above, never a path; with an ``ETag``
    (``If-None-Match``: 304 while unchanged)."""
    path = _artifact(settings, job, name)
    if path is None:
        raise HTTPException(404, "Artifact not found")
    return conditional_file(request, path, name)


def _artifact(settings: Settings, job: Job, name: str) -> Path | None:
    """A whitelisted file of the run folder of the attempt the job row names (an older attempt that lost its
    lease writes only its own folder); a link out of the folder does not count. Jobs from before per-attempt
    folders kept their files in the job's folder itself."""
    if name not in ARTIFACTS:
        return None
    folder = settings.attempt_folder(job.id, job.attempt)
    path = paths.safe_join(folder if folder.is_dir() else settings.artifacts / job.id, name)
    try:
        return path if path is not None and path.is_file() else None
    except OSError:  # name too long, permissions: the same 404
        return None
