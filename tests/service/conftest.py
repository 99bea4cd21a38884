"""Fixtures of the service tests: a stack of real processes (``coscope.harness``), a small job spec and a thin
HTTP helper."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coscope.harness import SLOWNESS, Stack, redis_db


def job_spec(epochs: int = 2, train_size: int = 128) -> dict:
    """A synthetic job of a few seconds per epoch at most on a CPU."""
    return {"seed": 0,
            "dataset": {"name": "synthetic", "synthetic_train_size": train_size, "synthetic_test_size": 64,
                        "synthetic_image_size": 16},
            "model": {"width": 4},
            "training": {"epochs": epochs, "batch_size": 32, "log_every": 1},
            "evaluation": {"pgd_steps": 2, "restarts": 1, "test_subset": 32},
            "monitor": {"train_images": 64}}


class Api:
    """A thin HTTP helper for tests (the typed client is tested on its own)."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def submit(self, spec: dict, **fields: object) -> dict:
        response = self.http.post("/v1/jobs", json={"spec": spec, **fields})
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str, until: str | None = None, timeout: float = 180) -> list[dict]:
        """Read the job's SSE stream until it ends (the job finished) or an event of type ``until`` arrives."""
        return self.events_at(f"/v1/jobs/{job_id}/events", until, timeout)

    def events_at(self, path: str, until: str | None = None, timeout: float = 180) -> list[dict]:
        """Read an SSE stream until it ends or an event of type ``until`` arrives; fail once ``timeout``
        seconds have passed. httpx's timeout alone bounds each read, and the server's keep-alive comments
        (every 15 s) would reset it forever on a stuck job: the deadline is checked at every line, keep-alives
        included, so the wait ends at most one keep-alive period late (or one read timeout, if the server
        falls silent)."""
        events: list[dict] = []
        limit = timeout * SLOWNESS
        deadline = time.monotonic() + limit
        with self.http.stream("GET", path, timeout=limit) as response:
            assert response.status_code == 200
            current: dict = {}
            for line in response.iter_lines():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path}: the stream did not end within {limit:.0f} s "
                                         f"(until={until!r}); last events: {events[-3:]}")
                if line.startswith("id: "):
                    current["id"] = int(line[4:])
                elif line.startswith("event: "):
                    current["type"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and current:
                    events.append(current)
                    if current["type"] == until:
                        return events
                    current = {}
        return events

    def wait_finished(self, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout * SLOWNESS
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {self.job(job_id)}")


@pytest.fixture(params=["embedded", "distributed"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A stack of the requesting module, on that module's Redis DB (``coscope.harness.REDIS_DBS``)."""
    created = Stack(request.param, tmp_path / "home",
                    redis_db=redis_db(request.module.__name__) if request.param == "distributed" else None)
    created.home.mkdir()
    try:
        yield created
    finally:
        created.close()
