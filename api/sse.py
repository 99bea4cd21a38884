"""Server-Sent Events from the store: poll for new rows, frame them, keep the connection alive, end the stream
once the followed thing finished. Shared by the job and sweep event routes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0  # a comment line this often keeps idle proxies from closing the stream

Frame = tuple[int | None, str, dict[str, Any]]  # (SSE id or None, event name, data)
# after -> (new events after that id, the closing events once finished, else None); runs in a thread
Fetch = Callable[[int], tuple[list[Frame], list[Frame] | None]]


def frame(event_id: int | None, name: str, data: dict[str, Any]) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n"


async def follow(request: Request, fetch: Fetch, after: int) -> AsyncIterator[str]:
    """Frames of ``fetch``'s events until it reports the end (read before the events, so none is missed) and
    nothing newer is left, the client goes away, or the server begins to shut down (``app.state.stopping``:
    the stream ends cleanly and the client resumes elsewhere with ``Last-Event-ID``; open, it would hold the
    server's shutdown until the job finished)."""
    stopping: threading.Event = request.app.state.stopping  # api.main.create_app
    idle = 0.0
    while not stopping.is_set() and not await request.is_disconnected():
        events, closing = await run_in_threadpool(fetch, after)
        for event_id, name, data in events:
            after = event_id if event_id is not None else after
            yield frame(event_id, name, data)
        if closing is not None and not events:
            for event_id, name, data in closing:
                yield frame(event_id, name, data)
            return
        if events:
            idle = 0.0
            continue
        idle += POLL_SECONDS
        if idle >= KEEP_ALIVE_SECONDS:
            yield ": keep-alive\n\n"
            idle = 0.0
        await asyncio.sleep(POLL_SECONDS)
