"""Resource limits (OWASP API4): a compute budget per job, a submission rate per team, a request-body cap.

The per-team cap on active jobs lives in ``crud.create_job`` (it needs the store). Units of the budget:
**image-passes**, one forward and backward pass of one image through a width-64 PreActResNet18. An
attack step costs one pass, so an FGSM training step costs 2 per image and PGD-k k + 1.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from core.spec import JobSpec

# (train, test) images of the datasets the trainer knows; imagefolder's size is unknown before decoding
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
                 "mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000),
                 "imagefolder": (50_000, 10_000)}
MONITOR_PASSES = 6  # per monitor image and check besides its PGD: clean, FGSM (2), grad alignment (2), ELLE
AUTOATTACK_PASSES = 4_000  # per attacked image that survives all of standard AutoAttack: APGD-CE 100, APGD-T
# 9 x 100, FAB-T 9 x 100 (a forward and a Jacobian each), Square 5000 forwards (a third of a pass); broken
# images stop early (measured: about 2,500 per robust image at width 16)


def attack_passes(spec: JobSpec) -> int:
    """Forward+backward passes per training image and step."""
    training = spec.training
    return {"standard": 1, "fgsm": 2, "rs_fgsm": 2, "n_fgsm": 2, "grad_align": 4,
            "pgd": training.pgd_steps + 1}[training.method]


def model_factor(spec: JobSpec) -> float:
    """Cost of one pass relative to the width-64 PreActResNet18 (convolution cost grows with width^2)."""
    scale = (spec.model.width / 64) ** 2
    return scale if spec.model.arch == "preact_resnet18" else 0.05 * scale


def estimate_cost(spec: JobSpec) -> float:
    """Estimated image-passes of a job: training, CO-monitor checks and the final PGD (and AutoAttack)
    evaluation."""
    data, training, evaluation, monitor = spec.dataset, spec.training, spec.evaluation, spec.monitor
    if data.name == "synthetic":
        train_size, test_size = data.synthetic_train_size, data.synthetic_test_size
    else:
        train_size, test_size = DATASET_SIZES[data.name]
    train = min(data.train_subset, train_size) if data.train_subset else train_size
    test = min(data.test_subset, test_size) if data.test_subset else test_size
    attacked = min(evaluation.test_subset or test, test)
    steps = training.epochs * math.ceil(train / training.batch_size)
    if training.max_steps is not None:
        steps = min(steps, training.max_steps)
    cost = min(training.epochs * train, steps * training.batch_size) * attack_passes(spec)
    if monitor.enabled:
        checks = steps / monitor.every_steps + training.epochs
        images = monitor.train_images + monitor.test_images
        cost += checks * images * (monitor.pgd_steps + MONITOR_PASSES)
        if monitor.curvature_every_epochs:
            curvature_checks = training.epochs // monitor.curvature_every_epochs
            cost += curvature_checks * images * monitor.curvature_iterations * 2
    cost += test + attacked * evaluation.restarts * (evaluation.pgd_steps + 1)
    if evaluation.autoattack == "standard":
        cost += attacked * AUTOATTACK_PASSES
    return cost * model_factor(spec)


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
