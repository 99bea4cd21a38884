"""Run one job: claim it with a compare-and-set, hold its lease with a heartbeat, train, write once.

Every write carries the attempt number (``store.crud`` fences them), so a worker that lost its lease
(paused, partitioned, or overtaken by the reconciler) cannot overwrite a newer attempt: its next write
raises ``StaleAttempt``, the cancel check then stops the trainer, and it leaves quietly.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.spec import JobSpec
from store import crud, webhooks
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from worker import shutdown
from worker.mlflow_run import Tracker, open_tracker
from worker.tracking import TrackedJob

log = logging.getLogger("coscope.worker")
FLUSH_SECONDS = 1.0  # progress events are batched; epoch, monitor and CO events flush at once
URGENT_EVENTS = {"epoch", "monitor", "co_onset", "co_rescued", "started"}


class Lease:
    """Heartbeat thread: renews the lease and picks up cancel requests."""

    def __init__(self, settings: Settings, job_id: str, attempt: int) -> None:
        self.settings, self.job_id, self.attempt = settings, job_id, attempt
        self.cancel_requested = False
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat):
            try:
                with session_scope(self.settings.database) as session:
                    if crud.heartbeat(session, self.job_id, self.attempt, self.settings.lease_seconds):
                        self.cancel_requested = True
            except crud.StaleAttempt:
                self.lost = True
                return
            except Exception:  # a database blip: the lease outlives a few missed beats
                log.exception("heartbeat failed for job %s", self.job_id)

    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or shutdown.requested()


class Reporter:
    """Buffers trainer events and writes them, fenced by attempt, in small batches; hands them to the MLflow
    tracker too (when there is one), which sends them from its own thread."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, lease: Lease,
                 tracker: Tracker | None = None) -> None:
        self.settings, self.job_id, self.attempt, self.lease = settings, job_id, attempt, lease
        self.tracker = tracker
        self.metrics: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.progress: dict[str, Any] | None = None
        self.co: dict[str, Any] | None = None  # the job's co to write at the next flush
        self.live_co: dict[str, Any] | None = None  # the last co written while the run goes on (onset, rescues)
        self.last_flush = 0.0
        self.started = time.monotonic()
        self.first_step: int | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.tracker is not None and not self.lease.lost:  # a stale attempt's rows are the new one's
            self.tracker.on_event(event)
        if kind in ("started", "progress"):
            self._progress(event)
        elif kind in ("metrics", "epoch", "monitor"):
            row = {key: value for key, value in event.items() if key != "type"}
            self.metrics.append(row)
            if kind != "metrics":
                self.events.append((kind, row))
        elif kind == "co_onset":  # carries the verdict so far: "co", or "never_robust" (core/co.py)
            self.co = self.live_co = {"detected": event.get("verdict", "co") == "co",
                                      **{k: v for k, v in event.items() if k != "type"}}
            self.events.append(("co_onset", self.co))
        elif kind == "co_rescued":  # monitor.co_policy rescue: what was restored and what trains now; the job's
            rescue = {k: v for k, v in event.items() if k != "type"}  # co shows it before the run ends
            earlier = ((self.live_co or {}).get("rescue") or {}).get("rescues", [])
            self.co = self.live_co = {**(self.live_co or {}), "rescue": {"rescues": [*earlier, rescue]}}
            self.events.append(("co_rescued", rescue))
        elif kind == "finished" and event.get("co") is not None:  # the final verdict, without the indices
            self.co = {k: v for k, v in event["co"].items() if k != "monitor"}
            self.events.append(("co_verdict", self.co))
        if kind in URGENT_EVENTS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()
        if kind in ("co_onset", "co_rescued") and not self.lease.lost:  # recorded: tell the callback, off the
            webhooks.notify_in_background(self.settings, self.job_id, f"job.{kind}")  # training thread

    def _progress(self, event: dict[str, Any]) -> None:
        step, total = event["step"], event["total_steps"]
        if self.first_step is None:
            self.first_step, self.started = step, time.monotonic()
        done = step - self.first_step
        rate = done / max(time.monotonic() - self.started, 1e-9)
        eta = (total - step) / rate if done > 0 else None
        self.progress = {"epoch": event["epoch"], "step": step, "total_steps": total, "eta_seconds": eta,
                         "attempt": self.attempt}

    def flush(self) -> None:
        if self.lease.lost:
            return
        if self.progress is not None:
            self.events.append(("progress", self.progress))
        try:
            with session_scope(self.settings.database) as session:
                crud.record(session, self.job_id, self.attempt, progress=self.progress, metrics=self.metrics,
                            events=self.events, co=self.co)
        except crud.StaleAttempt:
            self.lease.lost = True  # the cancel check stops the trainer at the next step
        self.metrics, self.events, self.progress, self.co = [], [], None, None
        self.last_flush = time.monotonic()


def run(job_id: str, settings: Settings, worker: str) -> str:
    with session_scope(settings.database) as session:
        claimed = crud.claim(session, job_id, worker, settings.lease_seconds, settings.max_attempts)
        job = session.get(Job, job_id)
        spec_data = job.spec if job is not None else None
        tracked = (TrackedJob(job.id, job.team, job.name, job.spec, job.tracking or {})
                   if job is not None else None)
    if claimed.outcome != "claimed":
        log.info("job %s not run: %s", job_id, claimed.outcome)
        if claimed.outcome == "exhausted":  # this claim failed the job
            webhooks.notify(settings, job_id, "job.failed")
            if tracked is not None and (tracker := open_tracker(settings, tracked, claimed.attempt)):
                tracker.close("failed")  # the run earlier attempts left open ends FAILED
        return claimed.outcome
    attempt = claimed.attempt
    tracker = open_tracker(settings, tracked, attempt) if tracked is not None else None
    with Lease(settings, job_id, attempt) as lease:
        reporter = Reporter(settings, job_id, attempt, lease, tracker)
        outcome = _execute(settings, job_id, attempt, spec_data, lease, reporter)
    if tracker is not None:  # after the job's status and webhook: a slow MLflow delays neither
        tracker.close(outcome)
    return outcome


def _execute(settings: Settings, job_id: str, attempt: int, spec_data: Any, lease: Lease,
             reporter: Reporter) -> str:
    """Train (or dry-run) the job and write its outcome, mapping engine errors to job errors."""
    from celery.exceptions import SoftTimeLimitExceeded

    from core.errors import Cancelled, CheckpointError, DatasetNotFound, DivergedError, SpecError
    from worker.dry_run import write_dry_run

    out = settings.attempt_folder(job_id, attempt)
    status, fields = "failed", {}
    try:
        spec = JobSpec.model_validate(spec_data)
        report = (write_dry_run(spec, out, settings.datasets) if spec.dry_run
                  else _train(settings, spec, out, lease, reporter))
        reporter.flush()
        status, fields = "succeeded", {"report": report}
    except Cancelled:
        reporter.flush()
        if lease.lost:
            return "stale"
        if not lease.cancel_requested and shutdown.requested():  # a warm shutdown: checkpointed, hand it back
            try:
                with session_scope(settings.database) as session:
                    crud.hand_back(session, job_id, attempt)
            except crud.StaleAttempt:
                return "stale"
            log.info("job %s handed back to the queue at its checkpoint (worker shutdown)", job_id)
            return "handed_back"
        status = "cancelled"
    except DivergedError as error:  # deterministic: a retry would diverge again
        fields = {"error_code": "diverged", "error_message": str(error)}
    except (SpecError, DatasetNotFound, CheckpointError) as error:
        fields = {"error_code": type(error).__name__, "error_message": str(error)}
    except crud.StaleAttempt:
        return "stale"
    except SoftTimeLimitExceeded:  # COSCOPE_JOB_TIME_LIMIT_SECONDS (worker.celery_app): not retried
        reporter.flush()
        fields = TIME_LIMIT
    except Exception as error:
        if _raised_during(error, SoftTimeLimitExceeded):
            # the limit interrupted a database write, whose rollback then failed on the half-used connection
            log.warning("job %s hit the time limit inside a database write", job_id, exc_info=error)
            fields = TIME_LIMIT
        else:
            log.exception("job %s failed", job_id)
            fields = {"error_code": "internal_error",  # details stay in the worker log, not in the API
                      "error_message": f"{type(error).__name__} in the worker; see its log"}
    try:
        with session_scope(settings.database) as session:
            crud.finish(session, job_id, attempt, status, **fields)
    except crud.StaleAttempt:
        return "stale"
    webhooks.notify(settings, job_id, f"job.{status}")  # synchronous: the child exits after this job
    return status


TIME_LIMIT = {"error_code": "time_limit", "error_message": "the job ran past the worker's time limit"}


def _raised_during(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` is a ``kind`` or was raised while one was handled (its ``__context__`` chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


RESUMED_FILES = ("checkpoint.pt", "best.pt")  # what a new attempt takes over from the newest earlier one


def carry_over(settings: Settings, job_id: str, attempt: int, out: Path) -> None:
    """Copy the newest earlier attempt's checkpoints into this attempt's folder (each file to a temporary name,
    then renamed: an older attempt still writing its own folder is read whole or not at all). Run folders from
    before per-attempt folders (files directly in the job's folder) count as the oldest attempt."""
    job_folder = settings.artifacts / job_id
    earlier = [settings.attempt_folder(job_id, n) for n in range(attempt - 1, 0, -1)] + [job_folder]
    source = next((folder for folder in earlier if (folder / RESUMED_FILES[0]).is_file()), None)
    if source is None or (out / RESUMED_FILES[0]).exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in RESUMED_FILES:
        if (source / name).is_file():
            partial = out / f".{name}.{os.getpid()}.part"
            shutil.copyfile(source / name, partial)
            os.replace(partial, out / name)


def _train(settings: Settings, spec: JobSpec, out: Path, lease: Lease, reporter: Reporter) -> dict[str, Any]:
    from core.trainer import Callbacks, select_device, train  # torch: in the pool child, for training only

    carry_over(settings, lease.job_id, lease.attempt, out)
    return train(spec, out, select_device("auto"), data_root=settings.datasets,
                 callbacks=Callbacks(on_event=_test_faults(settings, spec.seed, reporter.on_event),
                                     should_stop=lease.should_stop),
                 resume=(out / "checkpoint.pt").exists())


POISON_SEED_ENV = "COSCOPE_TEST_POISON_JOB_SEED"


def _test_faults(settings: Settings, seed: int, on_event: Callable[[dict[str, Any]], None]
                 ) -> Callable[[dict[str, Any]], None]:
    """Fault injection for tests/service/test_chaos.py R3, off unless the *worker's* environment names a job
    seed (no request can set it) and never in production: at its first epoch event a job with seed
    ``COSCOPE_TEST_POISON_JOB_SEED`` SIGKILLs its own process (a poison job). (Divergence needs no hook: a
    spec with an absurd learning rate and weight decay makes the loss nan, tests/conftest.py DIVERGING.)"""
    poison = os.environ.get(POISON_SEED_ENV)
    if settings.env == "production" or str(seed) != poison:
        return on_event

    def faulty(event: dict[str, Any]) -> None:
        on_event(event)
        if event["type"] == "epoch":
            log.warning("test poison job: SIGKILL to my own process %d", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)

    return faulty
