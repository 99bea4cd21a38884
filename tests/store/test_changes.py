"""The store's change order (``Job.change_seq``, numbered by ``store.db.stamp_changes`` at commit): a poller
that follows it with ``changed_after`` ends with every job's last state, while concurrent writers hold their
transactions open for a while after writing (late commits), on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time

from sqlalchemy import select, update

from store import crud
from store.db import session_scope
from store.models import Job

WRITERS = 4
WRITES = 15  # transactions per writer


def _poll(url: str, cursor: tuple[int, str], seen: dict[str, int]) -> tuple[int, str]:
    """One poll after ``cursor``: each entry's state into ``seen``; returns the next cursor."""
    with session_scope(url) as session:
        jobs, _ = crud.list_jobs(session, "a", None, None, 200, 0, changed_after=cursor)
        for job in jobs:
            seen[job.id] = job.progress.get("n")
    return (jobs[-1].change_seq, jobs[-1].id) if jobs else cursor


def test_a_poller_following_the_change_order_sees_every_jobs_last_state(database):
    with session_scope(database) as session:
        owner, _ = crud.create_key(session, "k", "a")
        ids = [crud.create_job(session, owner, {}, name=None, tags=[], priority=0, queue="cpu",
                               idempotency_key=None, request_hash="h")[0].id for _ in range(6)]
    counter = iter(range(1, 1_000_000))
    lock = threading.Lock()

    def write(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(WRITES):
            with session_scope(database) as session:
                with lock:
                    n = next(counter)
                session.execute(update(Job).where(Job.id == rng.choice(ids)).values(progress={"n": n}))
                time.sleep(rng.uniform(0, 0.01))  # written, not yet committed: others commit meanwhile

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(WRITERS)]
    seen: dict[str, int] = {}
    cursor = _poll(database, (0, ""), seen)
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        cursor = _poll(database, cursor, seen)
    cursor = _poll(database, cursor, seen)  # after the last commit
    with session_scope(database) as session:
        rows = session.execute(select(Job.id, Job.progress)).all()
    final = {job_id: progress.get("n") for job_id, progress in rows}
    assert seen == final
    assert _poll(database, cursor, {}) == cursor  # nothing left after the cursor
