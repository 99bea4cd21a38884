"""Thin Celery tasks: the logic lives in ``worker.runner`` (and the trainer in ``core``)."""

from __future__ import annotations

import os

from store.broker import TASK_NAME
from store.settings import get_settings
from worker.celery_app import app


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Claim, train (resuming from the job's last checkpoint), persist. Returns the claim outcome."""
    from worker.runner import run  # torch is imported here, in the child, never in the parent

    return run(job_id, get_settings(), worker=f"{self.request.hostname}:{os.getpid()}")
