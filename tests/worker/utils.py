"""Factories for the worker tests."""

from __future__ import annotations

from core.spec import JobSpec
from store import crud
from store.db import session_scope
from store.settings import Settings


def queued_job(settings: Settings, spec: dict) -> str:
    """A queued job of ``spec`` (validated) in the store of ``settings``, owned by a new key; its id."""
    with session_scope(settings.database) as session:
        owner, _ = crud.create_key(session, "k")
        data = JobSpec.model_validate(spec).model_dump(mode="json")
        job, _ = crud.create_job(session, owner, data, name=None, tags=[], priority=0, queue="cpu",
                                 idempotency_key=None, request_hash="h")
        return job.id
