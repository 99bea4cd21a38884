"""The Celery configuration both sides use: the API publishes job ids by task name, the worker consumes them.

A transport for job ids only; the job store is the source of truth. Importing this module imports no torch
and no task module: the worker names its tasks module in ``include`` (``worker.celery_app``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from celery import Celery

from store.settings import Settings

TASK_NAME = "coscope.run_job"
QUEUES = ("gpu", "cpu")


DECLARE_TRIES = 5  # declare_queues: a lost race leaves the winner's row, so the second try normally succeeds
RESTORE_SWEEP_MAX_SECONDS = 10  # how often, at most, each worker looks for unacked messages past the timeout


def redis_transport_options(visibility_timeout: float) -> dict[str, float]:
    """kombu's Redis options. Unacked messages older than ``visibility_timeout`` go back on the queue at the
    next restore sweep; kombu's default sweep (a 10 s timer that scans every 10th tick) lets a message wait up
    to 100 s past the timeout. Every tick scans here (one ZRANGE per worker), at a period within the timeout."""
    sweep = max(1, min(RESTORE_SWEEP_MAX_SECONDS, int(visibility_timeout / 3)))
    return {"visibility_timeout": visibility_timeout,
            "unacked_restore_interval": sweep, "unacked_restore_throttle": 1}


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    app = Celery("coscope", broker=settings.broker, include=list(include))
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
        broker_transport_options=(redis_transport_options(settings.visibility_timeout_seconds)
                                  if settings.broker_is_redis else {}),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True, task_send_sent_event=True,
    )
    return app


def declare_queues(settings: Settings) -> None:
    """Create the embedded broker's tables and job queues before a worker consumes or an API publishes.

    kombu's SQLAlchemy transport creates a queue's row on first use, query then insert, under a lock that only
    its own process holds. Two processes doing that at once (an API publishing its first job while its worker
    starts) make one of them fail with IntegrityError on the queue name, which Celery's consumer treats as
    unrecoverable: the worker exits, and jobs stay queued with no one to run them. Here the loser of that
    race tries again on a fresh connection and finds the winner's row. Redis declares nothing to race on."""
    if settings.broker_is_redis:
        return
    from kombu import Connection
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, DECLARE_TRIES + 1):
        try:
            with Connection(settings.broker) as connection:
                for queue in QUEUES:
                    connection.default_channel.queue_declare(queue)
            return
        except (IntegrityError, OperationalError):  # another process's row or tables, or its write lock
            if attempt == DECLARE_TRIES:
                raise
            time.sleep(0.1 * attempt)
