"""The API's retention keeper: deletes expired checkpoints (``store.retention``) in the background."""

from __future__ import annotations

import logging

from api.queue import Periodic
from store import retention
from store.db import session_scope
from store.settings import Settings

log = logging.getLogger("coscope.api")
MAX_BATCHES = 20  # per pass: at most 20 x RETENTION_BATCH jobs, then the next pass goes on


class RetentionKeeper(Periodic):
    """Every ``retention_seconds``: delete the checkpoints of jobs finished longer ago than the retention
    policy, batch by batch (each batch its own transaction). Does nothing while no policy is set. Safe to run
    in several API processes (``store.retention``)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("coscope-retention", settings.retention_seconds)
        self.settings = settings

    def once(self) -> retention.Pruned:
        return self.prune_once()

    def prune_once(self) -> retention.Pruned:
        policy = retention.Policy.from_settings(self.settings)
        total = retention.Pruned()
        for _ in range(MAX_BATCHES):
            if not policy.active or self.stopped.is_set():
                break
            with session_scope(self.settings.database) as session:
                pruned = retention.prune_checkpoints(session, self.settings.artifacts, policy)
            total.add(pruned)
            total.job_ids += pruned.job_ids
            total.more = pruned.more
            if not pruned.more:
                break
        if total.job_ids:
            log.info("retention: deleted %d checkpoint files (%d bytes) of %d jobs", total.files, total.bytes,
                     len(total.job_ids))
        return total
