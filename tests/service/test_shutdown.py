"""Stopping the API with event streams open, with real processes (issue 23, item 4). The worker's warm
shutdown under SIGTERM (the job handed back without using an attempt) is R4 in ``test_chaos.py``.

- ``coscope serve --no-worker`` gets SIGTERM (what ``docker stop`` sends) while two clients follow a job's
  events: both streams end cleanly at once (``api.sse``: the server's shutdown sets ``app.state.stopping``),
  and uvicorn runs the app's lifespan shutdown and exits, well within its graceful-shutdown timeout. Before,
  uvicorn waited for the streams, which end only when the job finishes: the API never exited by itself.
- ``coscope serve`` with its embedded worker gets Ctrl+C (SIGINT) mid-job: the stream ends, the worker is
  stopped warm (SIGTERM to its Celery parent alone), so the job goes back to the queue at its checkpoint
  without using an attempt; a new ``coscope serve`` resumes it from there and it ends as attempt 1. Before,
  the worker's whole process group got SIGTERM, which killed the job's pool child: attempt 2, from the last
  epoch's checkpoint.

Embedded stores only (SQLite + the SQLAlchemy transport): no Redis DB number, and how uvicorn shuts down
does not depend on the store.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from coscope.harness import SLOWNESS, Stack, wait_until
from tests.service.conftest import Api, job_spec

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torch in a job: the 2 CPU cores are shared with the API and pytest
STREAM_END_SECONDS = 3 * SLOWNESS  # the streams poll every 0.5 s; uvicorn's timeout would cut them at 5 s
API_STOP_SECONDS = 10 * SLOWNESS  # SIGTERM to exit, the lifespan shutdown included
SERVE_STOP_SECONDS = 30 * SLOWNESS  # Ctrl+C to exit: the API, then the worker's hand-back (step + checkpoint)
EPOCHS = 10  # 8 steps each: stopped after epoch 1, far from finished


class Follower(threading.Thread):
    """A client following a job's event stream: the lines it read, when and how the stream ended."""

    def __init__(self, url: str, key: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.job_id = url, key, job_id
        self.lines: list[str] = []
        self.ended_at: float | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("GET", f"{self.url}/v1/jobs/{self.job_id}/events", timeout=120,
                              headers={"Authorization": f"Bearer {self.key}"}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    self.lines.append(line)
            self.ended_at = time.monotonic()
        except Exception as error:  # e.g. RemoteProtocolError: the server cut the stream mid-response
            self.error = error

    def events(self) -> list[str]:
        return [line[len("event: "):] for line in self.lines if line.startswith("event: ")]


def job_row(stack: Stack, job_id: str) -> dict[str, Any]:
    from store.db import session_scope
    from store.models import Job

    with session_scope(stack.settings().database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {"status": job.status, "attempt": job.attempt, "progress": job.progress}


def job_events(stack: Stack, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import JobEvent

    with session_scope(stack.settings().database) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(event.type, event.data) for event in rows]


def embedded_stack(tmp_path: Path) -> Stack:
    stack = Stack("embedded", tmp_path / "home", env=ONE_THREAD)
    stack.home.mkdir()
    return stack


def test_sigterm_ends_open_event_streams_and_the_api_exits_promptly(tmp_path):
    stack = embedded_stack(tmp_path)
    try:
        server = stack.start_api(worker=False)  # no worker: the job stays queued, its streams stay open
        key = stack.admin_key()
        job = Api(stack.url, key).submit(job_spec())
        followers = [Follower(stack.url, key, job["id"]) for _ in range(2)]
        wait_until(lambda: all("status" in follower.events() for follower in followers), 60,
                   "both streams to deliver the job's queued status")
        since = stack.log_size("api.log")

        asked = time.monotonic()
        stack.stop(server, signal.SIGTERM, timeout=120)  # the process alone, as `docker stop` signals PID 1
        took = time.monotonic() - asked
        log = stack.log_since("api.log", since)
        assert took <= API_STOP_SECONDS, (took, log[-3000:])
        assert "Application shutdown complete" in log, log[-3000:]  # graceful: the lifespan shutdown ran
        for follower in followers:
            follower.join(timeout=10)
            assert follower.error is None, follower.error  # ended by the server, not cut
            assert follower.ended_at is not None and follower.ended_at - asked <= STREAM_END_SECONDS
    finally:
        stack.close()


def test_ctrl_c_on_serve_hands_the_embedded_workers_job_back_and_a_new_serve_resumes_it(tmp_path):
    stack = embedded_stack(tmp_path)
    try:
        server = stack.start_api(worker=None)  # the embedded default: the API and its worker
        key = stack.admin_key()
        api = Api(stack.url, key)
        job = api.submit(job_spec(epochs=EPOCHS, train_size=256))
        wait_until(lambda: (api.job(job["id"]).get("progress") or {}).get("epoch", 0) >= 1, 180,
                   "the job to finish epoch 0")
        follower = Follower(stack.url, key, job["id"])
        wait_until(lambda: follower.events(), 30, "the stream to deliver the job's events")

        asked = time.monotonic()
        stack.stop(server, signal.SIGINT, timeout=120)  # Ctrl+C: coscope serve stops its worker after uvicorn
        took = time.monotonic() - asked
        assert took <= SERVE_STOP_SECONDS, (took, stack.log("api.log"))
        follower.join(timeout=10)
        assert follower.error is None and follower.ended_at is not None, follower.error
        row = job_row(stack, job["id"])  # back in the queue, attempt 1 given back
        assert (row["status"], row["attempt"]) == ("queued", 0), (row, stack.log("api.log"))
        handed_back_at = row["progress"]["step"]
        assert 8 <= handed_back_at < EPOCHS * 8, row

        stack.port = None  # the new process binds a new port
        stack.start_api(worker=None)
        api = Api(stack.url, key)
        final = api.wait_finished(job["id"], timeout=300)
        assert (final["status"], final["attempt"]) == ("succeeded", 1), final  # no attempt used
        events = job_events(stack, job["id"])
        claims = [i for i, (kind, data) in enumerate(events)
                  if kind == "status" and data["status"] == "running"]
        assert len(claims) == 2, events
        resumed = next(data for kind, data in events[claims[1]:] if kind == "progress")
        assert resumed["step"] >= handed_back_at, resumed  # from the checkpoint, not from step 0
    finally:
        stack.close()
