"""Issue 23 item 9: the service tests' SSE helper (``Api.events_at``) gives up at its deadline even while the
server keeps the stream alive with comments, as it does for a job that never finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from coscope.harness import SLOWNESS
from tests.service.conftest import Api

KEEP_ALIVE_EVERY = 0.05  # s, much faster than the API's 15 s: each one would reset httpx's read timeout
STREAM_FOR = 10.0  # s, then the fake stream ends: a helper without a deadline returns, not hangs


def keep_alives() -> Iterator[bytes]:
    yield b"id: 1\nevent: status\ndata: {\"status\": \"running\"}\n\n"
    ended = time.monotonic() + STREAM_FOR * SLOWNESS
    while time.monotonic() < ended:
        time.sleep(KEEP_ALIVE_EVERY)
        yield b": keep-alive\n\n"


def test_events_at_fails_at_its_deadline_on_a_stream_of_keep_alives():
    api = Api("http://coscope.test", "key")
    api.http = httpx.Client(base_url="http://coscope.test", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"},
                                       content=keep_alives())))
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"did not end within \d+ s .*'status'"):
        api.events_at("/v1/jobs/stuck/events", timeout=1)
    assert time.monotonic() - started < SLOWNESS * (1 + STREAM_FOR) / 2  # the deadline, not the stream's end
