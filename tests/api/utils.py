"""Factories for the API tests: keys, jobs, and a fake resolver (the tests never touch real DNS)."""

from __future__ import annotations

import socket
from typing import Any

from store import crud
from store.db import session_scope
from store.models import Job
from store.settings import Settings

SPEC: dict[str, Any] = {"dataset": {"name": "synthetic"}, "training": {"epochs": 1}}
PUBLIC_HOOK = "https://hooks.example.com/coscope"
FAKE_DNS = {
    "hooks.example.com": ["93.184.215.14"],
    "localhost": ["127.0.0.1", "::1"],
    "redis": ["172.18.0.3"],  # a compose service name
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example.com": ["93.184.215.14", "10.0.0.5"],  # one private answer is enough to refuse
}


def fake_resolve(host: str, port: int) -> list[str]:
    try:
        return list(FAKE_DNS[host])
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def key_headers(settings: Settings, team: str = "default", role: str = "member") -> dict[str, str]:
    with session_scope(settings.database) as session:
        return {"Authorization": f"Bearer {crud.create_key(session, 'k', team, role)[1]}"}


def job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def set_status(settings: Settings, job_id: str, status: str, **values: Any) -> None:
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status
        for name, value in values.items():
            setattr(job, name, value)
