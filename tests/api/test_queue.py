"""The reconciler against real brokers (the embedded SQLite transport and Redis): a job waiting behind a long
queue keeps its one message; a job whose message the broker lost gets a new one."""

from __future__ import annotations

import datetime as dt

import pytest
import redis

from api.queue import Publisher, Reconciler, publish_and_mark
from coscope.harness import redis_db
from store import crud
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from tests.api.utils import set_status

REDIS_DB = redis_db(__name__)  # this module's database number on the shared Redis, flushed before and after
SPEC = {"dataset": {"name": "synthetic"}}


@pytest.fixture(params=["embedded", "redis"])
def settings(request, tmp_path):
    if request.param == "embedded":
        yield Settings(home=tmp_path, requeue_queued_after_seconds=60)
        return
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}", requeue_queued_after_seconds=60)
    client.flushdb()


def waiting_jobs(settings: Settings, publisher: Publisher, count: int) -> list[str]:
    """``count`` queued jobs, each sent to the cpu queue, sent long enough ago to be stale."""
    ids = []
    with session_scope(settings.database) as session:
        owner, _ = crud.create_key(session, "k")
        for _ in range(count):
            job, _ = crud.create_job(session, owner, SPEC, name=None, tags=[], priority=0, queue="cpu",
                                     idempotency_key=None, request_hash="h", callback_url=None)
            ids.append(job.id)
    for job_id in ids:
        assert publish_and_mark(settings, publisher, job_id, "cpu")
        set_status(settings, job_id, "queued", enqueued_at=crud.utcnow() - dt.timedelta(seconds=120))
    return ids


def enqueued_at(settings: Settings, job_id: str) -> dt.datetime:
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.enqueued_at is not None
        return job.enqueued_at


def test_a_long_queue_is_not_sent_again(settings):
    publisher = Publisher(settings)
    waiting_jobs(settings, publisher, 3)
    assert publisher.message_count("cpu") == 3
    assert Reconciler(settings, publisher).reconcile_once() == []
    assert publisher.message_count("cpu") == 3  # no duplicates behind the long wait


def test_lost_messages_are_sent_again(settings):
    publisher = Publisher(settings)
    ids = waiting_jobs(settings, publisher, 3)
    before = {job_id: enqueued_at(settings, job_id) for job_id in ids}
    with publisher.app.connection_for_write() as connection:
        assert connection.default_channel.queue_purge("cpu") == 3  # as a broker restarted empty would
    assert publisher.message_count("cpu") == 0
    assert sorted(Reconciler(settings, publisher).reconcile_once()) == sorted(ids)
    assert publisher.message_count("cpu") == 3
    assert all(enqueued_at(settings, job_id) > before[job_id] for job_id in ids)
    assert Reconciler(settings, publisher).reconcile_once() == []  # sent again once, not every period


def test_an_unknown_queue_holds_no_messages():
    settings = Settings(broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}")
    assert Publisher(settings).message_count("never-declared") == 0


def test_an_unreachable_broker_cannot_be_counted(tmp_path):
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:1/0")
    assert Publisher(settings).message_count("cpu") is None
