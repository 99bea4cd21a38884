"""Publishing job ids to the broker by task name (no torch, no task import), and reconciling."""

from __future__ import annotations

import logging
import threading

from store import crud, sweeps, webhooks
from store.broker import TASK_NAME, make_celery
from store.db import session_scope
from store.settings import Settings

log = logging.getLogger("coscope.api")


class Publisher:
    """Sends ``coscope.run_job(job_id)`` to a queue; failures leave the job queued for the reconciler."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)

    def publish(self, job_id: str, queue: str) -> bool:
        try:
            self.app.send_task(TASK_NAME, args=[job_id], queue=queue, retry=True,
                               retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
            return True
        except Exception as error:  # broker down: the reconciler sends it once the broker is back
            log.warning("could not publish job %s: %s", job_id, error)
            return False

    def message_count(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` (a queue the broker no longer knows holds none); None when the
        broker cannot be asked."""
        from kombu.exceptions import ChannelError

        try:
            with self.app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                try:
                    return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
                except ChannelError:  # flushed or restarted empty: the queue and its bindings are gone
                    return 0
        except Exception as error:
            log.warning("could not count the messages of queue %s: %s", queue, error)
            return None

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False


def publish_and_mark(settings: Settings, publisher: Publisher, job_id: str, queue: str) -> bool:
    if not publisher.publish(job_id, queue):
        return False
    with session_scope(settings.database) as session:
        crud.mark_enqueued(session, job_id)
    return True


class Periodic(threading.Thread):
    """A daemon thread of the API process that runs ``once`` every ``period`` seconds until ``stopped`` is
    set; a pass that fails is logged and the next one runs as usual."""

    def __init__(self, name: str, period: float) -> None:
        super().__init__(name=name, daemon=True)
        self.period = period
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                self.once()
            except Exception:
                log.exception("%s pass failed", self.name)

    def once(self) -> object:
        raise NotImplementedError


class Reconciler(Periodic):
    """Every ``reconcile_seconds``: requeue running jobs whose lease expired (or fail them past the attempt
    cap), send queued jobs that never got a message, and re-send the ones waiting longer than
    ``requeue_queued_after_seconds`` when their queue holds fewer messages than it has jobs waiting (a broker
    restarted or flushed): a job merely waiting behind a long queue is left alone. Safe to run anywhere and
    more than once: workers claim jobs with a compare-and-set, so an extra message is a no-op."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        super().__init__("coscope-reconciler", settings.reconcile_seconds)
        self.settings, self.publisher = settings, publisher

    def once(self) -> list[str]:
        return self.reconcile_once()

    def reconcile_once(self) -> list[str]:
        finished: list[str] = []
        with session_scope(self.settings.database) as session:
            ids = crud.jobs_to_requeue(session, self.settings.max_attempts, finished)
            queues = crud.queues_of(session, ids)
            for queue, stale in crud.stale_queued_jobs(session, self.settings.requeue_queued_after_seconds).items():
                held = self.publisher.message_count(queue)
                if held is None or held < crud.sent_and_waiting(session, queue):  # some message was lost
                    ids += [job_id for job_id in stale if job_id not in queues]
                    queues.update(dict.fromkeys(stale, queue))
        for job_id in ids:
            publish_and_mark(self.settings, self.publisher, job_id, queues[job_id])
        for job_id in finished:  # cancelled or failed here, not by a worker: the webhook goes from here
            webhooks.notify_in_background(self.settings, job_id)
        return ids


class SweepKeeper(Periodic):
    """Every ``sweep_release_seconds``: release sweeps' held children as their teams' quotas allow
    (``store.sweeps.release_held``), write the sweeps' derived status, and send ``sweep.finished`` for the
    ones that just finished. Safe to run in several API processes: the moves are counted under each team's
    lock (``store.crud.lock_team``), and each move and each finish is a conditional update."""

    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        super().__init__("coscope-sweep-keeper", settings.sweep_release_seconds)
        self.settings, self.publisher = settings, publisher

    def once(self) -> tuple[list[tuple[str, str]], list[str]]:
        return self.keep_once()

    def keep_once(self) -> tuple[list[tuple[str, str]], list[str]]:
        with session_scope(self.settings.database) as session:
            released = sweeps.release_held(session, self.settings.team_max_active_jobs,
                                           self.settings.sweep_max_waiting)
            finished = sweeps.refresh(session)
        for job_id, queue in released:
            publish_and_mark(self.settings, self.publisher, job_id, queue)
        for sweep_id in finished:
            threading.Thread(target=webhooks.notify_sweep, args=(self.settings, sweep_id),
                             name=f"webhook-{sweep_id}", daemon=True).start()
        return released, finished
