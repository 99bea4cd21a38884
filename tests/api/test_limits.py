"""Unit tests of the limits: the budget, the per-team token bucket, the body-size middleware (the cost
estimate itself: tests/core/test_cost.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from api.limits import BodySizeLimit, RateLimiter, budget_problems
from core.cost import estimate_cost
from core.spec import JobSpec, load_spec_file
from store.settings import Settings

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml"))


def test_a_monitor_checking_every_step_costs_more():
    monitor = {"every_steps": 1, "train_images": 100_000, "pgd_steps": 1000}
    often = JobSpec.model_validate({"monitor": monitor})
    assert budget_problems(often, Settings().team_budget)[0]["type"] == "budget_exceeded"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_every_example_fits_the_default_budget(path):
    assert estimate_cost(load_spec_file(str(path))) <= Settings().team_budget


# ---- rate limiter -----------------------------------------------------------------------------------


def test_token_bucket_refills_per_team():
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert [limiter.acquire("a"), limiter.acquire("a")] == [0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(30.0)  # one token every 30 s
    assert limiter.acquire("b") == 0.0  # another team has its own bucket
    now[0] = 15.0
    assert limiter.acquire("a") == pytest.approx(15.0)
    now[0] = 30.0
    assert limiter.acquire("a") == 0.0
    now[0] = 10_000.0
    assert [limiter.acquire("a") for _ in range(3)][2] > 0  # the bucket holds at most per_minute tokens


# ---- body size --------------------------------------------------------------------------------------


class Recorder:
    """An ASGI app that reads the whole body and answers 200, and the messages it and the middleware sent."""

    def __init__(self) -> None:
        self.read = 0
        self.sent: list[dict] = []

    async def app(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RuntimeError("client went away")  # what a framework does on a disconnect
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(self, message):
        self.sent.append(message)


def _run(limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[Recorder, int]:
    recorder, pulled = Recorder(), 0

    async def receive():
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            raise AssertionError("read past the end")
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodySizeLimit(recorder.app, max_bytes=limit)(scope, receive, recorder.send))
    return recorder, pulled


def test_a_declared_length_over_the_limit_is_refused_unread():
    recorder, pulled = _run(1024, [b"x" * 2048], [(b"content-length", b"2048")])
    assert pulled == 0 and recorder.read == 0
    assert recorder.sent[0]["status"] == 413 and b"too large" in recorder.sent[1]["body"]


def test_a_malformed_content_length_is_refused():
    recorder, pulled = _run(1024, [b"x"], [(b"content-length", b"-1")])
    assert pulled == 0 and recorder.sent[0]["status"] == 413


def test_a_chunked_body_is_cut_off_at_the_limit():
    chunks = [b"x" * 100] * 1000  # 100 kB in 1000 chunks, the limit is 1 kB
    recorder, pulled = _run(1024, chunks, [(b"transfer-encoding", b"chunked")])
    assert pulled == 11  # stopped at the first chunk past the limit, the rest never read
    assert [message.get("status") for message in recorder.sent] == [413, None]  # the app's own reply dropped


def test_a_body_lying_about_its_length_is_cut_off_too():
    recorder, pulled = _run(1024, [b"x" * 600] * 10, [(b"content-length", b"100")])
    assert pulled == 2 and recorder.sent[0]["status"] == 413


def test_a_body_at_the_limit_passes():
    recorder, pulled = _run(1024, [b"x" * 512, b"x" * 512], [])
    assert (pulled, recorder.read) == (2, 1024) and recorder.sent[0]["status"] == 200


def test_non_http_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(app, max_bytes=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
