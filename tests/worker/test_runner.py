"""The job runner's error mapping on real failures, and its warm-shutdown hand-back, in process:
``worker.runner.run`` as the Celery task calls it, on a SQLite store, with no fault hook."""

from __future__ import annotations

import threading
import time

import pytest

from store import crud
from store.db import session_scope
from store.models import Job, JobEvent
from store.settings import Settings
from tests.conftest import DIVERGING, HAIR_TRIGGER_RESCUE, tiny_spec
from tests.worker.utils import queued_job
from worker import shutdown
from worker.runner import run


def test_r10_a_real_nan_loss_fails_the_job_as_diverged_once(tmp_path, single_thread):
    """R10: the loss of this spec becomes nan in its second epoch; the trainer's DivergedError reaches the
    runner, which fails the job with ``diverged`` as attempt 1 and releases the lease; a redelivery of the
    message (as Celery would after a crash) does not run it again."""
    settings = Settings(home=tmp_path)
    job_id = queued_job(settings, tiny_spec(**DIVERGING).model_dump(mode="json"))
    assert run(job_id, settings, worker="test") == "failed"
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code, job.attempt) == ("failed", "diverged", 1)
        assert job.error_message.startswith("training loss became nan by step")
        assert job.lease_expires_at is None and job.report is None
        epochs = [e.data for e in session.query(JobEvent).filter_by(job_id=job_id, type="epoch")]
        assert [e["epoch"] for e in epochs] == [0]  # diverged during the second epoch
    assert run(job_id, settings, worker="test") == "finished"  # a redelivery is a no-op
    with session_scope(settings.database) as session:
        assert session.get(Job, job_id).attempt == 1


def test_a_rescue_shows_in_the_jobs_co_while_the_run_goes_on_and_in_its_final_verdict(tmp_path, single_thread):
    """Issue 24: the job's ``co`` (what the API, the dashboard and webhooks read) carries the rescue from the
    moment it happens, not only once the run ends; the stored ``co_rescued`` event holds the same record."""
    settings = Settings(home=tmp_path)
    spec = tiny_spec(training={"epochs": 12}, monitor=HAIR_TRIGGER_RESCUE).model_dump(mode="json")
    job_id = queued_job(settings, spec)
    seen_running: list[dict] = []

    def watch() -> None:
        while not seen_running:
            with session_scope(settings.database) as session:
                job = session.get(Job, job_id)
                if job.status != "running" and job.status != "queued":
                    return
                progress = job.progress or {}
                if (job.co or {}).get("rescue") and progress.get("step", 0) < progress.get("total_steps", 0):
                    seen_running.append(job.co)  # mid-run, not the final verdict written at the end
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert run(job_id, settings, worker="test") == "succeeded"
    watcher.join()
    assert seen_running, "the rescue was not in the job's co while it ran"
    live = seen_running[0]
    assert (live["verdict"], live["detected"]) == ("co", True)
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        events = [e.data for e in session.query(JobEvent).filter_by(job_id=job_id, type="co_rescued")]
        final = job.co
    assert live["rescue"]["rescues"] == events and len(events) == 1
    assert events[0]["method"] == "n_fgsm" and events[0]["at_step"] < 12 * 3
    assert [r["at_step"] for r in final["rescue"]["rescues"]] == [events[0]["at_step"]]
    assert final["verdict"] == "co" and "was rescued" in final["verdict_text"]


def test_a_time_limit_inside_a_database_write_is_still_time_limit(tmp_path, monkeypatch):
    """Celery's soft limit raises wherever the job is. Inside a PostgreSQL write, the session's rollback can
    then fail on the half-used connection, and that error reaches the runner with the limit as its context.
    It is still ``time_limit`` (not ``internal_error``): CI once saw R11 fail that way on PostgreSQL."""
    from celery.exceptions import SoftTimeLimitExceeded

    from worker import runner

    def interrupted_write(*args, **kwargs):
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded:
            raise RuntimeError("rollback failed: another command is already in progress")  # noqa: B904

    def unrelated_failure(*args, **kwargs):
        raise RuntimeError("a bug")

    settings = Settings(home=tmp_path)
    for train, code in ((interrupted_write, "time_limit"), (unrelated_failure, "internal_error")):
        monkeypatch.setattr(runner, "_train", train)
        job_id = queued_job(settings, tiny_spec().model_dump(mode="json"))
        assert run(job_id, settings, worker="test") == "failed"
        with session_scope(settings.database) as session:
            assert session.get(Job, job_id).error_code == code


def test_a_warm_shutdown_hands_the_job_back_at_its_checkpoint_without_using_an_attempt(
        tmp_path, single_thread, monkeypatch):
    """Issue 23 item 4, in process (R4 in tests/service/test_chaos.py has the real processes): the worker asks
    the running job to stop (``worker.shutdown.requested``) before its step 5 of 6. The trainer checkpoints,
    the runner hands the job back: queued, attempt given back, unsent (the reconciler owes it a message),
    and a late hand-back from that attempt is refused. The next run is attempt 1 again, from step 4."""
    settings = Settings(home=tmp_path)
    job_id = queued_job(settings, tiny_spec().model_dump(mode="json"))  # 2 epochs of 3 steps
    checks: list[int] = []
    monkeypatch.setattr(shutdown, "requested", lambda: checks.append(1) or len(checks) > 4)
    assert run(job_id, settings, worker="test") == "handed_back"
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.lease_owner, job.lease_expires_at, job.enqueued_at) == (
            "queued", 0, None, None, None)
        assert job.progress["step"] == 4 and job.cancel_requested is False
    assert (settings.attempt_folder(job_id, 1) / "checkpoint.pt").is_file()
    with pytest.raises(crud.StaleAttempt), session_scope(settings.database) as session:
        crud.hand_back(session, job_id, 1)  # fenced: attempt 1 no longer holds the job

    monkeypatch.setattr(shutdown, "requested", lambda: False)
    assert run(job_id, settings, worker="test") == "succeeded"
    with session_scope(settings.database) as session:
        assert session.get(Job, job_id).attempt == 1
        events = session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id).all()
        kinds = [(event.type, event.data.get("status")) for event in events]
        assert kinds.count(("status", "running")) == 2 and ("status", "queued") in kinds
        second_claim = max(i for i, kind in enumerate(kinds) if kind == ("status", "running"))
        resumed = next(event.data for event in events[second_claim:] if event.type == "progress")
        assert resumed["step"] == 4, resumed  # from the checkpoint, not from step 0
