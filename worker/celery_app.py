"""The worker's Celery application: ``store.broker``'s configuration, this package's tasks, the per-job
time limits and the warm shutdown that hands the running job back to the queue (``worker.shutdown``).

Importing this module imports no torch, and the worker parent process never initialises CUDA: the trainer
is imported inside the task, in a fresh child per job.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from celery.signals import task_prerun, worker_init, worker_process_init, worker_shutting_down

from store.broker import make_celery
from store.settings import Settings, get_settings
from worker import shutdown

TIME_LIMIT_ENV = "COSCOPE_JOB_TIME_LIMIT_SECONDS"  # worker-side; unset: no limit
HARD_LIMIT_GRACE_SECONDS = 60  # after the soft limit, time to checkpoint and write the outcome


def time_limits() -> tuple[float | None, float | None]:
    """(soft, hard) per-job limits from ``COSCOPE_JOB_TIME_LIMIT_SECONDS``, read where the worker starts.

    At the soft limit Celery raises ``SoftTimeLimitExceeded`` in the task and ``worker.runner`` fails the job
    with ``time_limit`` (not retried); the hard limit, a grace period later, kills a child that did not stop.
    """
    value = os.environ.get(TIME_LIMIT_ENV, "").strip()
    if not value:
        return None, None
    soft = float(value)
    if soft <= 0:
        raise ValueError(f"{TIME_LIMIT_ENV} must be a positive number of seconds, not {value!r}")
    return soft, soft + HARD_LIMIT_GRACE_SECONDS


def check_visibility_timeout(settings: Settings, hard_limit: float | None) -> None:
    """Fail fast at worker start-up: on Redis, a job still running at the visibility timeout is redelivered,
    so the timeout must exceed the hard time limit (with no limit, jobs are bounded only by the timeout)."""
    if hard_limit is None or not settings.broker_is_redis:
        return
    if settings.visibility_timeout_seconds <= hard_limit:
        raise ValueError(
            f"COSCOPE_VISIBILITY_TIMEOUT_SECONDS ({settings.visibility_timeout_seconds:g} s) must exceed the "
            f"hard per-job time limit ({hard_limit:g} s = {TIME_LIMIT_ENV} "
            f"+ {HARD_LIMIT_GRACE_SECONDS} s grace): "
            f"Redis would hand a job that is still running to another worker")


_soft_limit, _hard_limit = time_limits()
check_visibility_timeout(get_settings(), _hard_limit)
app = make_celery(get_settings(), include=["worker.tasks"])
app.conf.update(task_soft_time_limit=_soft_limit, task_time_limit=_hard_limit)


_worker: Any = None  # in the worker's parent: Celery's WorkController; the hand-back signal reaches its pool


@worker_init.connect
def _keep_the_worker(sender: Any, **_: object) -> None:
    global _worker
    _worker = sender
    shutdown.shield()


@worker_shutting_down.connect
def _hand_back_the_running_job(how: str, **_: object) -> None:
    """A warm shutdown (SIGTERM, or a first Ctrl+C) waits for the running task: ask it to checkpoint and go
    back to the queue instead of running to its end (``worker.shutdown``). A cold one (SIGQUIT) kills it."""
    if how == "Warm" and _worker is not None:
        shutdown.forward(lambda: list(_worker.pool.info["processes"]))


@task_prerun.connect
def _listen_for_the_hand_back(**_: object) -> None:
    """In the pool child, as a task starts: not at ``worker_process_init``, after which billiard points the
    child's SIGUSR2 at its own exit handler (unless it is ignored, as ``shutdown.shield`` makes it)."""
    shutdown.listen()


_PARENT_PID = os.getpid()  # in a pool child (forked from the worker), the Celery parent's pid


@worker_process_init.connect
def _die_with_the_parent_process(**_: object) -> None:
    """In each pool child, replace Celery's ``PR_SET_PDEATHSIG=SIGKILL`` by a watchdog on the parent process.

    Linux sends the death signal when the *thread* that forked the child exits, not the process. With the
    synchronous pool (the embedded SQLAlchemy transport) billiard's supervisor thread forks the replacement
    children (one per job here), and it exits at a warm shutdown, so the kernel SIGKILLed the very job the
    warm shutdown was waiting for (tests/service/test_chaos.py R4). The watchdog keeps the intent: a child
    whose worker died stops within a second instead of training on as an orphan.
    """
    from billiard.util import set_pdeathsig

    try:
        set_pdeathsig(0)
    except OSError:  # not Linux: there was no death signal either
        return
    parent = _PARENT_PID if _PARENT_PID != os.getpid() else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="coscope-parent-watch", daemon=True).start()
