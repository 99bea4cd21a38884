"""The Celery application: a transport for job ids only; the job store is the source of truth.

Importing this module imports no torch (the API imports it to publish by task name), and the worker
parent process never initialises CUDA: the trainer is imported inside the task, in a fresh child per job.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from celery import Celery
from celery.signals import worker_process_init

from api.settings import Settings, get_settings

TASK_NAME = "coscope.run_job"
QUEUES = ("gpu", "cpu")
VISIBILITY_TIMEOUT_SECONDS = 48 * 3600  # > any job; lost messages are recovered by the reconciler instead
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


def make_celery(settings: Settings) -> Celery:
    app = Celery("coscope", broker=settings.broker, include=["worker.tasks"])
    soft_limit, hard_limit = time_limits()
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_ignore_result=True,  # results live in the job store
        task_acks_late=True, task_reject_on_worker_lost=True,  # redelivery is capped by our attempt counter
        worker_prefetch_multiplier=1, worker_concurrency=1,
        worker_max_tasks_per_child=1,  # a fresh child per job: GPU memory returns when it exits
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue="cpu",
        # Redis redelivers unacked messages after the visibility timeout; the SQLAlchemy transport (embedded)
        # passes its options to create_engine and takes none of these
        broker_transport_options=({"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
                                  if settings.broker.startswith(("redis", "rediss")) else {}),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True, task_send_sent_event=True,
        task_soft_time_limit=soft_limit, task_time_limit=hard_limit,
    )
    return app


app = make_celery(get_settings())


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
