"""Resource limits (OWASP API4): a compute budget per job, a submission rate per team, a request-body cap.

The per-team cap on active jobs lives in ``store.crud.create_job`` (it needs the store); the cost a budget is
compared with, in image-passes, is ``core.cost.estimate_cost``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from core.cost import estimate_cost
from core.spec import JobSpec


def budget_problems(spec: JobSpec, budget: float) -> list[dict[str, Any]]:
    cost = estimate_cost(spec)
    if cost <= budget:
        return []
    return [{"loc": ["body", "spec"], "type": "budget_exceeded",
             "msg": f"estimated cost {cost:.3g} image-passes exceeds the team budget of {budget:.3g} "
                    f"(epochs x training images x attack passes x model size, plus monitor and evaluation)"}]


class RateLimiter:
    """A token bucket per team: ``per_minute`` submissions, refilled continuously.

    The buckets live in this process's memory: with several API processes behind a load balancer each
    one allows ``per_minute``, so the effective limit is ``per_minute`` x processes.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # team -> (tokens, when)
        self._lock = threading.Lock()

    def acquire(self, team: str) -> float:
        """Take a token: 0.0 if allowed, else the seconds until the next token."""
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(team, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[team] = (tokens - 1.0, now)
                return 0.0
            self._buckets[team] = (tokens, now)
            return (1.0 - tokens) / self.rate


Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``, decided before the body is buffered.

    A declared Content-Length over the limit is refused without reading a byte. Otherwise (chunked
    bodies, or a client sending more than it declared) the chunks are counted as the app reads them; at
    the limit the middleware sends the 413 itself, tells the app the client left, and drops whatever the
    app then tries to send. Starlette and FastAPI have no default limit (fastapi/fastapi#1181).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received, refused, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 went out; the app's reply to the "disconnect" is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:  # the app's reaction to the disconnect we faked is not an error
                raise

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"Request body too large (limit {self.max_bytes} bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
