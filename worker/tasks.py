"""Thin Celery tasks: the logic lives in ``worker.runner`` (and the trainer in ``core``)."""

from __future__ import annotations

import os

from celery.exceptions import Reject

from store.broker import TASK_NAME
from store.settings import get_settings
from worker import shutdown
from worker.celery_app import app


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Claim, train (resuming from the job's last checkpoint), persist. Returns the claim outcome."""
    if shutdown.requested():  # delivered while this worker shuts down (a child forked since): not claimed
        raise Reject(f"worker shutting down; job {job_id} left to the next worker", requeue=True)
    from worker.runner import run  # torch is imported here, in the child, never in the parent

    return run(job_id, get_settings(), worker=f"{self.request.hostname}:{os.getpid()}")
