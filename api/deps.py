"""Dependencies: settings, database sessions, the current API key, owned jobs (404 otherwise), and the
change-window filters and change cursors of the lists."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from store import crud
from store.db import session_scope
from store.models import ApiKey, Job
from store.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
bearer = HTTPBearer(auto_error=False)


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """The request's unit of work: it commits when the route function returns, before the response is sent
    (scope ``function``; the default scope would commit after the client already has its answer)."""
    with session_scope(settings.database) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_current_key(session: SessionDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    key = crud.key_for(session, credentials.credentials) if credentials else None
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid or missing API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def get_owned_job(session: SessionDep, key: CurrentKey, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    """The job if the caller's team owns it (admins: any); otherwise the same 404 as a missing job."""
    job = crud.get_team_job(session, job_id, None if key.role == "admin" else key.team)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Job not found")
    return job


OwnedJob = Annotated[Job, Depends(get_owned_job)]


def require_admin(key: CurrentKey) -> ApiKey:
    """Admin routes: 403 for members (the routes are documented, so hiding them behind 404 hides nothing)."""
    if key.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Admin role required")
    return key


def limit_submissions(request: Request, key: CurrentKey) -> None:
    """Per-team token bucket on job submissions (api/limits.py); 429 with Retry-After when empty."""
    wait = request.app.state.limiter.acquire(key.team)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "Too many job submissions for this team",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})


def get_publisher(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.publisher


@dataclass(frozen=True)
class ChangeWindow:
    """``created_after`` / ``updated_after`` of a list request, as the store's naive UTC."""
    created_after: dt.datetime | None
    updated_after: dt.datetime | None


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is None:  # no zone: UTC, as every timestamp the API returns
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def change_window(
        created_after: Annotated[dt.datetime | None, Query(
            description="only entries created after this time (ISO 8601; no zone: UTC)")] = None,
        updated_after: Annotated[dt.datetime | None, Query(
            description="only entries changed after this time (status, progress, metrics, verdict, report): "
                        "poll with the largest updated_at seen")] = None) -> ChangeWindow:
    return ChangeWindow(_naive_utc(created_after), _naive_utc(updated_after))


ChangeWindowDep = Annotated[ChangeWindow, Depends(change_window)]


def change_cursor(change_seq: int | None, job_id: str) -> str | None:
    """A job's place in the store's change order (``crud.CHANGE_ORDER``: its ``change_seq``, then its id, since
    one transaction numbers all the jobs it changed alike: a sweep's submit, say) as clients see it: an opaque
    string; None while the change that made it is not committed yet (in the answer to that request)."""
    return None if change_seq is None else f"{change_seq}.{job_id}"


def changed_after(changed_after: Annotated[str | None, Query(
        pattern=r"^[0-9]{1,18}(\.[0-9a-f-]{1,36})?$",
        description="only jobs changed after this cursor (a change_cursor of an earlier answer), oldest "
                    "change first: poll again with the last entry's change_cursor. Unlike updated_after, "
                    "no change is skipped, however late it commits or whatever the writing host's clock")
                  ] = None) -> tuple[int, str] | None:
    """The cursor as a place in ``crud.CHANGE_ORDER``. A bare number (the cursors before jobs' ids were part of
    them) is every change numbered up to it: the place before the first job of the next number."""
    if changed_after is None:
        return None
    number, _, job_id = changed_after.partition(".")
    return (int(number), job_id) if job_id else (int(number) + 1, "")


ChangedAfterDep = Annotated[tuple[int, str] | None, Depends(changed_after)]
