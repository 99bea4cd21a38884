"""Process-level chaos tests: the R1-R15 scenarios of ``shared/reference/reliability.md`` (B4), run against
real processes (``coscope serve --no-worker`` and ``coscope worker``, i.e. Celery prefork with one child per
job), in the embedded mode (SQLite + kombu's SQLAlchemy transport) and the distributed one (Redis +
PostgreSQL). There is no Docker engine: "docker compose kill" is a signal to our own processes,
"docker compose stop" a SIGTERM to the Celery parent only (a container's PID 1), and "restart redis" is done
to a private ``redis-server`` this module starts on a free loopback port (the shared server on 6379 is
never stopped or restarted; the distributed stack uses its own DB number there, flushed before and after).

To stay cheap on a small CPU machine, each mode starts one stack (API + a ``cpu``-queue worker) for the
whole module (the ``chaos`` fixture) and the tests reuse it, leaving it with one healthy worker; leases
are 3 s, the reconciler runs every second, jobs are ``job_spec()`` sized (synthetic data, width 4) and
train with one torch thread (``OMP_NUM_THREADS=1``: with two threads on two cores shared with other
processes, a tiny job ran 10-30x slower). The whole module takes about 5-6 minutes on a loaded 2-core
machine. ``test_zz_no_job_was_lost_or_duplicated`` prints the ledger of every job (run with ``-s``).

Scenarios (test name prefix: what is checked):
- R1 ``test_integration.py::test_sigkill_of_the_worker_resumes_from_the_last_checkpoint_as_attempt_2``:
  SIGKILL of the whole worker, attempt 2 resumes from the checkpoint (not repeated here).
- R2 ``test_r2``: only the pool child is SIGKILLed; the parent logs ``Worker exited prematurely: signal 9
  (SIGKILL)`` and forks a new child; the redelivered message meets the live lease (a ``duplicate`` no-op) or
  claims after the reconciler requeued the job; the job ends ``succeeded`` as attempt 2, resumed from its
  checkpoint, rows of both attempts unique. Then R13 on that job: a write fenced with attempt 1 is refused.
- R3 ``test_r3``: a poison job that SIGKILLs its child every time is ``failed``/``attempts_exhausted`` after
  ``MAX_ATTEMPTS`` claims; no hot loop (bounded deliveries, nothing after); the next job succeeds.
- R4 ``test_r4``: SIGTERM to the Celery parent only (``docker stop``) mid-epoch: the job checkpoints at its
  next step and goes back to the queue without using an attempt (``worker.shutdown``), the worker exits
  within ``WARM_STOP_SECONDS``, the reconciler re-sends the job with no worker running, and a new worker
  resumes it from that checkpoint: ``succeeded`` with the attempt it had before the shutdown, rows complete.
  (An earlier version found that the kernel SIGKILLed the job during a warm shutdown of the embedded worker:
  see ``worker.celery_app._die_with_the_parent_process``.)
- R5 ``test_r5_a_job_outliving_the_visibility_timeout``: the real fault, on its own stack and Redis DB: with
  ``COSCOPE_VISIBILITY_TIMEOUT_SECONDS=3`` Redis puts a running job's unacked message back on the queue and a
  second, idle worker takes it: a ``duplicate`` no-op while the first attempt keeps training; one claim.
  ``test_r5_duplicate_message``: the same job id published twice with two workers: one trains, the other
  returns ``duplicate``; one claim, attempt 1.
- R6 ``test_r6``: ``worker.runner.run`` on one queued job from two threads at once: ``succeeded`` and
  ``duplicate``.
- R7 ``test_r7``: a private redis-server is SIGKILLed and restarted empty while 1 job runs and 2 are
  queued: the worker reconnects by itself, every job ends ``succeeded`` (the running one resumed from its
  checkpoint if Celery terminated it), ``GET /v1/jobs`` stays 200 throughout.
- R8 ``test_r8`` (distributed only): FLUSHDB of the broker DB while 3 jobs wait in Redis: a reconciler with
  a 3 s re-send period puts them back within a few periods, all run.
- R9 ``test_r9``: POST while the broker is down: 201 ``queued``, no 500 and no traceback, readyz 503 with
  ``broker: unreachable``; once the broker is up the reconciler delivers it and it succeeds.
- R10 ``test_r10``: a job whose loss really becomes nan is ``failed``/``diverged`` as attempt 1 and is not
  retried.
- R11 ``test_r11``: a worker with ``COSCOPE_JOB_TIME_LIMIT_SECONDS`` fails a long job with ``time_limit``
  (attempt 1, no lost child) and then runs the next job normally.
- R12 ``test_r12``: cancel while running: ``cancelled`` within ``CANCEL_SECONDS``, lease released, 409 on a
  second cancel.
- R13 ``test_r13`` (and the end of R2): record, heartbeat and finish fenced with an older attempt, or after
  the job finished, raise ``StaleAttempt`` and change no row.
- R14 ``test_r14``: one spec run straight, and again with its pool child SIGKILLed after epoch 2 and resumed:
  identical metric rows, losses included, and bit-equal final weights (``torch.equal`` over the state dicts
  of both final checkpoints, loaded with ``weights_only=True``). Independent of the other tests.
- R17 ``test_r17`` (issue 24): R14 for a run rescued (``monitor.co_policy: rescue``) before the kill: attempt 2
  goes on rescued, rows and final weights bit-equal to the uninterrupted run, one ``co_rescued`` event.
- R16 ``test_r16``: a SIGSTOPped attempt 1 wakes up after attempt 2 (on a second worker) finished the job:
  it writes only its own run folder (``COSCOPE_HOME/artifacts/<job>/attempt-<n>``); attempt 2's files and what
  the API serves are unchanged, byte for byte.
- R15 ``test_r15``: importing ``worker.celery_app`` and ``worker.tasks`` loads no torch, and the live Celery
  parent, after many jobs, maps no libtorch.
- S15 ``test_s15`` (distributed only): a pickled ``coscope.run_job`` message on the real Redis queue is
  refused by the worker (``accept_content=["json"]``); the job row is unchanged and the worker keeps serving.
- ``test_zz_no_job_was_lost_or_duplicated``: every job of the module reached a final state with unique (and,
  if it succeeded, complete) metric rows and events that never interleave attempts.

Not applicable, or narrower than the table:
- R2/R3: Celery requeues a dead child's message only after ``worker_lost_wait`` (10 s), so with 3 s leases
  the reconciler's new message usually wins and the redelivery finds the job running or finished (a no-op).
- R3: the table's reason ``worker_lost`` is ``attempts_exhausted`` here (our code for "started too often").
  The poison job is a worker-side fault hook (``worker.runner._test_faults``: the worker's environment
  names a job seed; ignored in production).
- R5: in production the Redis visibility timeout (``COSCOPE_VISIBILITY_TIMEOUT_SECONDS``, default 48 h) must
  exceed the hard time limit, or the worker refuses to start (``worker.celery_app``); the test shortens it
  to 3 s to make the redelivery happen during a run.
- R7: the shared Redis on 6379 is never restarted (other processes use it); the test restarts a private
  redis-server without persistence, i.e. the worst case (messages lost too). Whether the running job is
  cancelled (``worker_cancel_long_running_tasks_on_connection_loss``) and resumed, or continues, depends on
  when Celery notices the loss, so the test asserts the outcome: at most one claim beyond the first per
  connection loss, attempts fenced, metrics unique and complete.
- R10: a real nan loss, no hook: ``tests/conftest.py`` DIVERGING (a small CNN without batch norm, lr 10 and
  weight decay 1) diverges in its second epoch; the same spec is tested in process in
  tests/core/test_trainer.py and tests/worker/test_runner.py.
- R11: the limit is a worker setting read from the environment (``worker.celery_app.time_limits``): soft
  limit -> ``SoftTimeLimitExceeded`` in the task -> ``failed``/``time_limit``; the hard limit, 60 s later,
  only backs it up (not exercised: it would SIGKILL the child like R2).
- R15: no GPU here, so "Cannot re-initialize CUDA in forked subprocess" cannot occur; what prevents it (the
  parent never imports torch, each job runs in a fresh child) is checked instead.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from coscope.harness import FAST_LEASES, SLOWNESS, Stack, child_pids, free_port, redis_db, wait_until
from tests.conftest import DIVERGING, HAIR_TRIGGER_RESCUE
from tests.service.conftest import Api, job_spec

pytestmark = pytest.mark.chaos

MAX_ATTEMPTS = 3
POISON_SEED = 70001  # worker-side fault injection (worker.runner._test_faults)
CHAOS_REDIS_DB = redis_db(__name__)  # the distributed chaos stack's DB on the shared Redis
TIME_LIMIT_SECONDS = 12  # R11's worker: a 1-epoch job takes 2-5 s on a loaded 2-core machine
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torch in a job: the 2 CPU cores are shared with the API and pytest
# Wall-clock bounds scale with COSCOPE_TEST_SLOWNESS (coscope.harness.SLOWNESS): every deadline, and the R9
# and R12 latency bounds
CANCEL_SECONDS = 10 * SLOWNESS  # R12: heartbeat (1 s) + one step + checkpoint + write, with room for a loaded CPU
LEASE_SECONDS = float(FAST_LEASES["COSCOPE_LEASE_SECONDS"])  # the stacks' (coscope.harness)
RECONCILE_SECONDS = float(FAST_LEASES["COSCOPE_RECONCILE_SECONDS"])
# "nothing more happens": two full lease expiries plus reconciler passes, so a requeue would have shown
QUIET_SECONDS = 2 * (LEASE_SECONDS + RECONCILE_SECONDS)
FINISHED = ("succeeded", "failed", "cancelled")
WORKER_LOST = "Worker exited prematurely: signal 9 (SIGKILL)"  # Celery's log line when a child is killed
# R4: SIGTERM to the worker -> the job's next step, its checkpoint, the hand-back write and Celery's own
# shutdown, with room for a loaded CPU; the job itself has 8+ epochs (20-40 s) to go, so running it to the end
# (a warm shutdown without the hand-back) takes longer
WARM_STOP_SECONDS = 15 * SLOWNESS
WARM_STOP_EPOCHS = 10


def resume_spec() -> dict:
    """R2 and R16: killed (or paused) after epoch 1 with 3+ epochs to go."""
    return job_spec(epochs=5, train_size=256)  # 8 steps per epoch: killed after epoch 1, 3+ epochs to go


def seeded(spec: dict, seed: int) -> dict:
    return {**spec, "seed": seed}


# ---- The shared stack and the ledger -----------------------------------------------------------------


@dataclass
class Chaos:
    stack: Stack
    api: Api
    worker: subprocess.Popen  # the healthy cpu-queue worker every test leaves running

    def settle(self, scenario: str, job_id: str, complete: bool = True) -> dict:
        return settle(self.stack, scenario, job_id, complete)


LEDGER: list[dict] = []  # one entry per job that went through a fault, for the final test


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def chaos(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    home = tmp_path_factory.mktemp(f"chaos-{request.param}") / "home"
    home.mkdir()
    stack = Stack(request.param, home, redis_db=CHAOS_REDIS_DB, env={
        **ONE_THREAD, "COSCOPE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "COSCOPE_TEST_POISON_JOB_SEED": str(POISON_SEED)})
    try:
        stack.start_api()
        worker = stack.start_worker(queues="cpu", ready=True)
        yield Chaos(stack, Api(stack.url, stack.admin_key()), worker)
    finally:
        stack.close()


def settle(stack: Stack, scenario: str, job_id: str, complete: bool = True) -> dict:
    """Record a finished job in the ledger after checking its rows: unique per (kind, step) and, for a
    succeeded job the service trained (``complete``), every step and epoch present exactly once."""
    job = job_row(stack, job_id)
    rows = metric_rows(stack, job_id)
    keys = [(row["kind"], row["step"]) for row in rows]
    attempts = [event["attempt"] for event in job_events(stack, job_id)]
    entry = {"mode": stack.mode, "scenario": scenario, "job": job_id, "status": job["status"],
             "attempt": job["attempt"], "error": job["error_code"], "rows": len(rows),
             "unique": len(keys) == len(set(keys)), "complete": None,
             # fencing: once attempt n+1 claimed the job, nothing attempt n sends lands
             "ordered": attempts == sorted(attempts) and max(attempts) == job["attempt"]}
    if complete and job["status"] == "succeeded":
        spec = job["spec"]
        steps = spec["training"]["epochs"] * math.ceil(spec["dataset"]["synthetic_train_size"]
                                                       / spec["training"]["batch_size"])
        train = [row["step"] for row in rows if row["kind"] == "train"]
        epochs = [row["epoch"] for row in rows if row["kind"] == "epoch"]
        entry["complete"] = (train == list(range(1, steps + 1))
                             and epochs == list(range(spec["training"]["epochs"])))
    LEDGER.append(entry)
    assert entry["status"] in FINISHED and entry["unique"] and entry["ordered"], entry
    assert entry["complete"] is not False, entry
    return entry


# ---- Reading the store directly (what the API does not expose: leases, attempts of rows, claims) ------


def job_row(stack: Stack, job_id: str) -> dict[str, Any]:
    from store.db import session_scope
    from store.models import Job

    with session_scope(stack.settings().database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {column: getattr(job, column) for column in
                ("status", "attempt", "lease_owner", "lease_expires_at", "enqueued_at", "error_code", "spec",
                 "progress", "cancel_requested")}


def metric_rows(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """Every metric row with its attempt, ordered by (kind, step)."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import MetricRow

    with session_scope(stack.settings().database) as session:
        rows = session.scalars(select(MetricRow).where(MetricRow.job_id == job_id)
                               .order_by(MetricRow.kind, MetricRow.step)).all()
        return [{**row.data, "kind": row.kind, "step": row.step, "_attempt": row.attempt} for row in rows]


def job_events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import JobEvent

    with session_scope(stack.settings().database) as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        events = session.scalars(query).all()
        return [{"type": event.type, "attempt": event.attempt, "data": event.data} for event in events]


def claims(stack: Stack, job_id: str) -> int:
    """Successful claims: each writes one ``running`` status event."""
    return sum(event["type"] == "status" and event["data"].get("status") == "running"
               for event in job_events(stack, job_id))


def create_job_in_store(stack: Stack, spec: dict) -> str:
    """A queued job written straight to the store, marked as sent so that no reconciler publishes it."""
    from core.spec import JobSpec
    from store import crud
    from store.db import session_scope

    resolved = JobSpec.model_validate(spec).resolved().model_dump(mode="json")
    with session_scope(stack.settings().database) as session:
        owner, _ = crud.create_key(session, "chaos-in-process")
        job, _ = crud.create_job(session, owner, resolved, name=None, tags=[], priority=0, queue="cpu",
                                 idempotency_key=None, request_hash="chaos")
        crud.mark_enqueued(session, job.id)
        return job.id


# ---- Small waits ------------------------------------------------------------------------------------


def wait_epoch(chaos: Chaos, job_id: str, epoch: int, timeout: float = 180) -> dict:
    """Wait until the job reports progress in ``epoch`` (so epoch - 1 is finished and checkpointed)."""
    def reached() -> dict | None:
        job = chaos.api.job(job_id)
        assert job["status"] not in FINISHED, job
        return job if job.get("progress", {}).get("epoch", -1) >= epoch else None

    return wait_until(reached, timeout, f"job {job_id} to reach epoch {epoch}")


def deliveries(log: str) -> dict[str, Any]:
    """Counts of Celery's log lines for coscope.run_job: messages received, children killed by SIGKILL,
    lost-worker errors (each one requeues its message), outcomes; settled when each delivery was handled."""
    counts = {"received": len(re.findall(r"Task coscope\.run_job\[[0-9a-f-]+\] received", log)),
              "killed": len(re.findall(r"Process '[\w-]+' pid:\d+ exited with 'signal 9 \(SIGKILL\)'", log)),
              "lost": log.count("Task handler raised error: WorkerLostError"),
              "outcomes": len(task_outcomes(log))}
    return {**counts, "settled": counts["received"] == counts["lost"] + counts["outcomes"]}


def idle_log(stack: Stack, log: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """Wait until the worker has handled every delivery in its log (a message redelivered after an earlier
    fault may still be arriving); return the log's size then and its counts, the baseline of a test."""
    def settled() -> tuple[int, dict[str, Any]] | None:
        path = stack.home / log
        data = path.read_bytes() if path.exists() else b""
        counts = deliveries(data.decode(errors="replace"))
        return (len(data), counts) if counts["settled"] else None

    return wait_until(settled, timeout, f"the worker of {log} to be idle", every=0.5)


def task_outcomes(log: str) -> list[str]:
    """The return values Celery logs for coscope.run_job: the claim outcome or the job's final status."""
    return re.findall(r"coscope\.run_job\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: '(\w+)'", log)


# ---- R2 ---------------------------------------------------------------------------------------------


def test_r2_sigkill_of_the_pool_child_is_logged_replaced_and_the_job_resumes_as_attempt_2(chaos):
    from store import crud
    from store.db import session_scope

    stack, api, parent = chaos.stack, chaos.api, chaos.worker
    log = stack.worker_log(parent)
    since, _ = idle_log(stack, log)
    job = api.submit(resume_spec())
    at_kill = wait_epoch(chaos, job["id"], 1)["progress"]["epoch"]  # epoch 0 is checkpointed
    owner = job_row(stack, job["id"])["lease_owner"]  # "<celery hostname>:<pid of the process training>"
    child = int(owner.rsplit(":", 1)[1])
    assert child in child_pids(parent.pid), (owner, child_pids(parent.pid))

    os.kill(child, signal.SIGKILL)
    stack.wait_for_log(log, WORKER_LOST, timeout=60, since=since)
    assert parent.poll() is None, "the Celery parent must survive its child"
    replacement = wait_until(lambda: [pid for pid in child_pids(parent.pid) if pid != child], 60,
                             "a new pool child")
    assert child not in replacement

    final = api.wait_finished(job["id"], timeout=240)
    assert (final["status"], final["attempt"]) == ("succeeded", 2), stack.log(log)
    assert claims(stack, job["id"]) == 2
    # the message redelivered after the child died met the live lease (a no-op) or, if it came after the
    # reconciler requeued the job, claimed it; either way exactly one more attempt trained
    outcomes = task_outcomes(stack.log_since(log, since))
    assert outcomes.count("succeeded") == 1, outcomes
    assert set(outcomes) <= {"succeeded", "duplicate", "finished"}, outcomes
    second = [e for e in job_events(stack, job["id"]) if e["type"] == "progress" and e["attempt"] == 2]
    assert second[0]["data"]["step"] >= 8 * at_kill, second[0]  # resumed from the checkpoint, not from 0
    rows = metric_rows(stack, job["id"])
    assert {row["_attempt"] for row in rows} == {1, 2}
    chaos.settle("R2 child SIGKILL", job["id"])

    # R13 on this job: a late write from attempt 1 is refused and changes nothing
    stale_row = {**rows[0], "train_loss": 123.0}
    with pytest.raises(crud.StaleAttempt), session_scope(stack.settings().database) as session:
        crud.record(session, job["id"], 1, metrics=[stale_row], events=[("progress", {"stale": True})])
    assert metric_rows(stack, job["id"]) == rows
    assert not any(e["data"].get("stale") for e in job_events(stack, job["id"]))


# ---- R3 ---------------------------------------------------------------------------------------------


def test_r3_poison_job_fails_after_max_attempts_without_a_hot_loop_and_the_queue_keeps_serving(chaos):
    stack, api, parent = chaos.stack, chaos.api, chaos.worker
    log = stack.worker_log(parent)
    since, _ = idle_log(stack, log)
    poison = api.submit(seeded(job_spec(epochs=5), POISON_SEED))  # dies at the end of every first epoch
    final = api.wait_finished(poison["id"], timeout=300)
    assert final["status"] == "failed" and final["error"]["code"] == "attempts_exhausted", final
    assert final["attempt"] == MAX_ATTEMPTS

    # Celery reports a lost child only after worker_lost_wait (10 s), then requeues its message: wait until
    # every kill was reported and every delivery handled (an outcome, or a lost child), twice QUIET_SECONDS apart
    wait_until(lambda: deliveries(stack.log_since(log, since))["lost"] >= MAX_ATTEMPTS, 90,
               "the worker to report every lost child", every=0.5)
    idle_log(stack, log)
    time.sleep(QUIET_SECONDS)
    idle_log(stack, log)
    part = stack.log_since(log, since)
    counts = deliveries(part)
    assert api.job(poison["id"])["status"] == "failed"
    assert claims(stack, poison["id"]) == MAX_ATTEMPTS  # one claim per attempt
    assert counts["killed"] == counts["lost"] == MAX_ATTEMPTS, part[-3000:]
    # per attempt: the delivery that trained, plus at most the redelivery of the message whose child died
    assert counts["received"] <= 2 * MAX_ATTEMPTS + 1, counts
    assert parent.poll() is None
    wait_until(lambda: child_pids(parent.pid), 30, "the parent to keep a pool child")
    chaos.settle("R3 poison", poison["id"])

    healthy = api.submit(job_spec(epochs=1))
    final = api.wait_finished(healthy["id"])
    assert (final["status"], final["attempt"]) == ("succeeded", 1), stack.log(log)
    chaos.settle("R3 healthy after poison", healthy["id"])


# ---- R4 ---------------------------------------------------------------------------------------------


def test_r4_warm_shutdown_hands_the_job_back_without_using_an_attempt_and_a_new_worker_resumes_it(chaos):
    stack, api = chaos.stack, chaos.api
    log = stack.worker_log(chaos.worker)
    since, _ = idle_log(stack, log)
    job = api.submit(job_spec(epochs=WARM_STOP_EPOCHS, train_size=256))  # 8 steps per epoch
    wait_epoch(chaos, job["id"], 1)  # epoch 0 done: 8+ epochs to go, far more than WARM_STOP_SECONDS
    before = job_row(stack, job["id"])["attempt"]
    asked = time.monotonic()
    status = stack.stop(chaos.worker, signal.SIGTERM, timeout=240)  # the Celery parent alone: `docker stop`
    took = time.monotonic() - asked
    part = stack.log_since(log, since)
    assert status == 0 and "Warm shutdown" in part, part[-3000:]
    assert took <= WARM_STOP_SECONDS, (took, part[-3000:])
    # a message the stopping worker still received (the reconciler re-sends the job at once here) was
    # rejected back to the broker before any claim: one task ran, and it handed the job back
    assert task_outcomes(part) == ["handed_back"] and WORKER_LOST not in part, part[-3000:]
    row = job_row(stack, job["id"])  # back in the queue, the attempt given back
    assert (row["status"], row["attempt"], row["lease_owner"], row["lease_expires_at"]) == (
        "queued", before - 1, None, None), row
    handed_back_at = row["progress"]["step"]
    assert 8 <= handed_back_at < WARM_STOP_EPOCHS * 8, row["progress"]
    # the worker acked its message; with no worker running, the reconciler sends the job a new one
    wait_until(lambda: job_row(stack, job["id"])["enqueued_at"] is not None, 5 * RECONCILE_SECONDS + 10,
               "the reconciler to re-send the handed-back job")

    chaos.worker = stack.start_worker(queues="cpu", ready=True)
    final = api.wait_finished(job["id"], timeout=300)
    assert (final["status"], final["attempt"]) == ("succeeded", before), final  # no attempt used
    assert claims(stack, job["id"]) == 2  # claimed twice, one attempt used
    events = job_events(stack, job["id"])
    reclaimed = [i for i, e in enumerate(events)
                 if e["type"] == "status" and e["data"].get("status") == "running"][1]
    resumed = next(e for e in events[reclaimed:] if e["type"] == "progress")
    assert resumed["data"]["step"] >= handed_back_at, resumed  # from the checkpoint, not from step 0
    chaos.settle("R4 warm shutdown, handed back", job["id"])
    after = api.submit(job_spec(epochs=1))  # the new worker serves the next job too
    assert api.wait_finished(after["id"])["status"] == "succeeded"
    chaos.settle("R4 after restart", after["id"])


# ---- R5 and R6 --------------------------------------------------------------------------------------


def test_r5_duplicate_message_with_two_workers_trains_once(chaos):
    from api.queue import Publisher

    stack, api = chaos.stack, chaos.api
    logs = [stack.worker_log(chaos.worker)]
    second = stack.start_worker(queues="cpu", ready=True)
    logs.append(stack.worker_log(second))
    since = [idle_log(stack, name)[0] for name in logs]

    def outcomes() -> list[str]:
        return sorted(o for name, offset in zip(logs, since, strict=True)
                      for o in task_outcomes(stack.log_since(name, offset)))

    try:
        job = api.submit(job_spec(epochs=4, train_size=256))  # long enough for the second claim to meet it
        publisher = Publisher(stack.settings())
        assert publisher.publish(job["id"], "cpu")  # the same job id again, as a broker redelivery would
        final = api.wait_finished(job["id"])
        wait_until(lambda: len(outcomes()) >= 2, 60, "both deliveries to be handled")
    finally:
        stack.stop(second, signal.SIGTERM)
    assert (final["status"], final["attempt"]) == ("succeeded", 1)
    assert outcomes() == ["duplicate", "succeeded"], outcomes()  # one trained, one met the live lease
    assert claims(stack, job["id"]) == 1
    assert {row["_attempt"] for row in metric_rows(stack, job["id"])} == {1}
    chaos.settle("R5 duplicate message", job["id"])


VISIBILITY_SECONDS = 3  # R5's Redis visibility timeout: shorter than its job, so Redis redelivers mid-run


def test_r5_a_job_outliving_the_visibility_timeout_is_redelivered_and_trains_once(tmp_path):
    """R5 with the real fault: ``COSCOPE_VISIBILITY_TIMEOUT_SECONDS`` shorter than the job, so kombu puts the
    unacked message back on the queue while the job runs, and the idle second worker takes it. It meets the
    live lease: a ``duplicate`` no-op, while the first attempt keeps training. One claim, attempt 1."""
    stack = Stack("distributed", tmp_path / "home", redis_db=redis_db(f"{__name__}::r5_visibility"),
                  env={**ONE_THREAD, "COSCOPE_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_SECONDS)})
    stack.home.mkdir()
    try:
        stack.start_api()
        workers = [stack.start_worker(queues="cpu", ready=True) for _ in range(2)]
        logs = [stack.worker_log(worker) for worker in workers]
        api = Api(stack.url, stack.admin_key())
        job = api.submit(job_spec(epochs=1000, train_size=512))  # minutes, far past the timeout: cancelled below

        def outcomes() -> list[str]:
            return sorted(o for name in logs for o in task_outcomes(stack.log_since(name)))

        # every worker sweeps for messages older than the timeout within a second (store.broker)
        wait_until(lambda: "duplicate" in outcomes(), 180, "Redis to redeliver the running job's message")
        at_duplicate = api.job(job["id"])
        assert (at_duplicate["status"], at_duplicate["attempt"]) == ("running", 1), at_duplicate
        step = at_duplicate["progress"].get("step", 0)  # the redelivery may come before the first step
        wait_until(lambda: api.job(job["id"])["progress"].get("step", 0) > step, 120,
                   "the first attempt to keep training after the redelivery")
        assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        final = api.wait_finished(job["id"], timeout=120)
        wait_until(lambda: "cancelled" in outcomes(), 60, "the trainer's task to return")
        received = sum(len(re.findall(r"Task coscope\.run_job\[[0-9a-f-]+\] received", stack.log_since(name)))
                       for name in logs)
    finally:
        stack.close()
    assert (final["status"], final["attempt"]) == ("cancelled", 1), final
    assert received >= 2  # the original delivery and at least one redelivery
    assert set(outcomes()) == {"cancelled", "duplicate"} and outcomes().count("cancelled") == 1, outcomes()


@pytest.mark.parametrize("chaos", ["distributed"], indirect=True)
def test_s15_a_pickled_message_on_the_real_queue_is_refused_and_changes_nothing(chaos):
    """S15: a ``coscope.run_job`` message serialised with pickle, published to the worker's Redis queue: the
    worker refuses to deserialise it (``accept_content=["json"]``), no task runs, the job row is unchanged,
    and the worker goes on serving JSON messages."""
    from store.broker import TASK_NAME, make_celery

    stack, api = chaos.stack, chaos.api
    log = stack.worker_log(chaos.worker)
    since, _ = idle_log(stack, log)
    job_id = create_job_in_store(stack, job_spec(epochs=1))  # marked sent: the reconciler leaves it alone
    row = job_row(stack, job_id)
    events = job_events(stack, job_id)
    make_celery(stack.settings()).send_task(TASK_NAME, args=[job_id], queue="cpu", serializer="pickle")
    part = stack.wait_for_log(log, "Refusing to deserialize untrusted content of type pickle", timeout=60,
                              since=since)
    assert deliveries(part)["received"] == 0, part[-3000:]  # never handed to a task
    assert job_row(stack, job_id) == row and job_events(stack, job_id) == events
    assert (row["status"], row["attempt"]) == ("queued", 0)
    assert chaos.worker.poll() is None
    assert api.http.post(f"/v1/admin/jobs/{job_id}/cancel").status_code == 202  # not left to the reconciler
    following = api.submit(job_spec(epochs=1))
    final = api.wait_finished(following["id"])
    assert (final["status"], final["attempt"]) == ("succeeded", 1)
    chaos.settle("S15 after a pickled message", following["id"])


def test_r6_two_concurrent_runs_in_process_claim_once(chaos):
    from worker.runner import run

    stack = chaos.stack
    job_id = create_job_in_store(stack, job_spec(epochs=1))
    settings = stack.settings()
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def attempt(name: str) -> None:
        start.wait()
        outcomes[name] = run(job_id, settings, worker=f"r6-{name}")

    import torch

    threads = [threading.Thread(target=attempt, args=(name,)) for name in ("a", "b")]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as ONE_THREAD does for the workers
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        torch.set_num_threads(torch_threads)
    assert sorted(outcomes.values()) == ["duplicate", "succeeded"], outcomes
    job = job_row(stack, job_id)
    assert (job["status"], job["attempt"]) == ("succeeded", 1) and claims(stack, job_id) == 1
    chaos.settle("R6 concurrent runs", job_id)


# ---- R7, R8, R9: the broker -------------------------------------------------------------------------


class PrivateRedis:
    """A throwaway redis-server on a free loopback port, without persistence (a restart loses everything)."""

    def __init__(self, home: Path) -> None:
        # redis-server cannot bind port 0 (it means "no TCP"), so the port is fixed here, before the stack
        # that names it in its broker URL starts; a port taken meanwhile fails start() with redis' own words
        self.port, self.home = free_port(), home
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.home)],
            stdout=open(self.home / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client) or self.process.poll() is not None, 30, "redis-server to start")
        assert self.process.poll() is None, (self.home / "redis.log").read_text()[-2000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize("chaos", ["distributed"], indirect=True)
def test_r8_broker_flush_loses_queued_messages_and_the_reconciler_resends_them(chaos):
    import redis

    stack, api = chaos.stack, chaos.api
    broker = redis.Redis(host="127.0.0.1", port=6379, db=CHAOS_REDIS_DB)
    blocker = api.submit(job_spec(epochs=200, train_size=256))  # keeps the only cpu worker busy
    wait_until(lambda: api.job(blocker["id"])["status"] == "running", 120, "the blocking job to start")
    queued = [api.submit(job_spec(epochs=1)) for _ in range(3)]
    wait_until(lambda: broker.llen("cpu") >= 3, 30, "three messages waiting in Redis")

    flushed_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    broker.flushdb()  # as a Redis restart without persistence would: messages, unacked hash, bindings
    assert broker.llen("cpu") == 0
    # a reconciler that re-sends queued jobs after 3 s (a second API process on the same store)
    reconciler = stack.start_api(env={"COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS": "3"}, log="api-r8.log")
    try:
        started = time.monotonic()
        wait_until(lambda: all((job_row(stack, job["id"])["enqueued_at"] or flushed_at) > flushed_at
                               for job in queued),
                   3 + 5 * RECONCILE_SECONDS + 10, "the queued jobs to be re-sent")
        resent_after = time.monotonic() - started
        assert broker.llen("cpu") >= 3  # the messages are back in Redis (the worker is still busy)
    finally:
        stack.stop(reconciler, signal.SIGTERM, timeout=60)
    assert api.http.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
    for job in queued:
        final = api.wait_finished(job["id"])
        assert (final["status"], final["attempt"]) == ("succeeded", 1), final
        chaos.settle("R8 flushed while queued", job["id"])
    assert api.wait_finished(blocker["id"])["status"] == "cancelled"
    chaos.settle("R8 running during flush", blocker["id"])
    wait_until(lambda: broker.llen("cpu") == 0, 60, "the duplicate messages to drain as no-ops")
    print(f"R8: queued jobs re-sent {resent_after:.1f}s after the reconciler started")


def _private_broker_stack(tmp_path: Path, redis_server: PrivateRedis) -> Stack:
    stack = Stack("distributed", tmp_path / "home", redis_db=None, env={
        **ONE_THREAD, "COSCOPE_BROKER_URL": redis_server.url, "COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS": "3"})
    stack.home.mkdir()
    return stack


def test_r9_submit_while_the_broker_is_down_is_queued_then_delivered_once_it_is_back(tmp_path, private_redis):
    stack = _private_broker_stack(tmp_path, private_redis)  # PostgreSQL store, broker not started yet
    try:
        stack.start_api()
        api = Api(stack.url, stack.admin_key())
        started = time.monotonic()
        response = api.http.post("/v1/jobs", json={"spec": job_spec(epochs=1)})
        assert response.status_code == 201 and response.json()["status"] == "queued", response.text
        assert time.monotonic() - started < 20 * SLOWNESS
        assert "Traceback" not in response.text and "redis" not in response.text.lower()
        ready = httpx.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["broker"] == "unreachable", ready.text
        job_id = response.json()["id"]
        assert job_row(stack, job_id)["enqueued_at"] is None  # not sent: the reconciler owes it a message

        private_redis.start()
        stack.start_worker(ready=True)
        final = api.wait_finished(job_id)
        assert (final["status"], final["attempt"]) == ("succeeded", 1), stack.log("api.log")
        assert httpx.get(f"{stack.url}/readyz", timeout=30).status_code == 200
        settle(stack, "R9 submitted while the broker was down", job_id)
    finally:
        stack.close()


def test_r7_broker_restart_with_jobs_running_and_queued(tmp_path, private_redis):
    private_redis.start()
    stack = _private_broker_stack(tmp_path, private_redis)
    statuses: list[int] = []
    stop_polling = threading.Event()
    try:
        stack.start_api()
        worker = stack.start_worker(ready=True)
        api = Api(stack.url, stack.admin_key())
        running = api.submit(job_spec(epochs=4, train_size=256))
        queued = [api.submit(job_spec(epochs=1)) for _ in range(2)]
        wait_until(lambda: (api.job(running["id"]).get("progress", {}).get("epoch", 0) >= 1), 180,
                   "the running job to checkpoint an epoch")

        def poll() -> None:  # GET /v1/jobs throughout: the API never depends on the broker to read
            while not stop_polling.is_set():
                statuses.append(api.http.get("/v1/jobs").status_code)
                time.sleep(0.25)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        private_redis.kill()  # SIGKILL: no persistence, so the queued messages are gone
        time.sleep(2)
        private_redis.start()
        jobs = [running, *queued]
        finals = [api.wait_finished(job["id"], timeout=300) for job in jobs]
        stop_polling.set()
        poller.join(timeout=10)
        log = stack.log_since("worker0.log")
        assert worker.poll() is None and "Connection to broker lost" in log, "the worker reconnects by itself"
        assert log.count(f"Connected to redis://:**@127.0.0.1:{private_redis.port}") >= 2, log[-3000:]
        assert [final["status"] for final in finals] == ["succeeded"] * 3, (finals, log[-3000:])
        assert all(final["attempt"] == 1 for final in finals[1:]), finals
        if finals[0]["attempt"] == 2:  # cancelled on the connection loss, then resumed from its checkpoint
            assert "Terminating it instead" in log, log[-3000:]
            second = [e for e in job_events(stack, running["id"])
                      if e["type"] == "progress" and e["attempt"] == 2]
            assert second[0]["data"]["step"] >= 8, second[0]
        else:
            assert finals[0]["attempt"] == 1, finals[0]
        assert statuses and set(statuses) == {200}, statuses
        for job in jobs:
            assert claims(stack, job["id"]) == job_row(stack, job["id"])["attempt"]
            settle(stack, "R7 broker restart", job["id"])
    finally:
        stop_polling.set()
        stack.close()


# ---- R10, R11, R12 ----------------------------------------------------------------------------------


def test_r10_diverged_job_fails_once_and_is_not_retried(chaos):
    stack, api = chaos.stack, chaos.api
    spec = job_spec(epochs=3)
    job = api.submit({**spec, **{name: {**spec.get(name, {}), **values}
                                 for name, values in DIVERGING.items()}})
    final = api.wait_finished(job["id"])
    assert (final["status"], final["error"]["code"], final["attempt"]) == ("failed", "diverged", 1), final
    time.sleep(QUIET_SECONDS)
    again = api.job(job["id"])
    assert (again["status"], again["attempt"]) == ("failed", 1) and claims(stack, job["id"]) == 1
    assert job_row(stack, job["id"])["lease_expires_at"] is None
    chaos.settle("R10 diverged", job["id"])


def test_r11_time_limit_fails_the_job_and_the_next_job_runs(chaos):
    stack, api = chaos.stack, chaos.api
    limited = stack.start_worker(queues="gpu", ready=True,
                                 env={"COSCOPE_JOB_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS)})
    log = stack.worker_log(limited)
    try:
        job = api.submit(job_spec(epochs=1000), queue="gpu")
        final = api.wait_finished(job["id"], timeout=TIME_LIMIT_SECONDS + 120)
        assert (final["status"], final["error"]["code"]) == ("failed", "time_limit"), final
        assert final["attempt"] == 1
        assert 0 < final["progress"]["step"] < 4000
        assert "Soft time limit" in stack.log(log) and WORKER_LOST not in stack.log(log)
        chaos.settle("R11 time limit", job["id"])
        following = api.submit(job_spec(epochs=1), queue="gpu")
        final = api.wait_finished(following["id"])
        assert (final["status"], final["attempt"]) == ("succeeded", 1), stack.log(log)
        chaos.settle("R11 next job", following["id"])
    finally:
        stack.stop(limited, signal.SIGTERM)


def test_r12_cancel_a_running_job_stops_it_quickly_and_releases_the_lease(chaos):
    stack, api = chaos.stack, chaos.api
    job = api.submit(job_spec(epochs=50, train_size=256))
    wait_until(lambda: api.job(job["id"]).get("progress", {}).get("step", 0) >= 2, 180, "the job to train")
    asked = time.monotonic()
    assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    final = api.wait_finished(job["id"], timeout=60)
    took = time.monotonic() - asked
    assert final["status"] == "cancelled" and took <= CANCEL_SECONDS, (final, took)
    assert final["progress"]["step"] < 50 * 8
    row = job_row(stack, job["id"])
    assert row["lease_expires_at"] is None and row["attempt"] == 1
    assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    chaos.settle("R12 cancel while running", job["id"])
    print(f"R12 ({stack.mode}): cancelled {took:.1f}s after the request")


# ---- R13, R14, R15 ----------------------------------------------------------------------------------


def test_r13_stale_attempt_writes_are_refused_and_change_nothing(chaos):
    from store import crud
    from store.db import session_scope

    stack = chaos.stack
    url = stack.settings().database
    job_id = create_job_in_store(stack, job_spec(epochs=1))
    row = {"kind": "train", "epoch": 0, "step": 1, "train_loss": 1.0}
    newer = {**row, "train_loss": 2.0}
    with session_scope(url) as session:  # attempt 1 claims with a lease that runs out at once
        assert crud.claim(session, job_id, "r13-old", 0.05, MAX_ATTEMPTS) == crud.Claim("claimed", 1)
    with session_scope(url) as session:
        crud.record(session, job_id, 1, metrics=[row])
    time.sleep(0.1)
    with session_scope(url) as session:  # a newer attempt takes the job over
        assert crud.claim(session, job_id, "r13-new", 60, MAX_ATTEMPTS) == crud.Claim("claimed", 2)
    with session_scope(url) as session:
        crud.record(session, job_id, 2, metrics=[newer, {**newer, "step": 2}])
    before = metric_rows(stack, job_id)

    stale_writes = [
        lambda s: crud.record(s, job_id, 1, metrics=[{**row, "train_loss": 9.0}, {**row, "step": 3}]),
        lambda s: crud.heartbeat(s, job_id, 1, 60),
        lambda s: crud.finish(s, job_id, 1, "failed", error_code="stale"),
    ]
    for write in stale_writes:
        with pytest.raises(crud.StaleAttempt), session_scope(url) as session:
            write(session)
    assert metric_rows(stack, job_id) == before and [r["train_loss"] for r in before] == [2.0, 2.0]
    with session_scope(url) as session:
        crud.finish(session, job_id, 2, "succeeded")
    with pytest.raises(crud.StaleAttempt), session_scope(url) as session:  # finished: no attempt may write
        crud.record(session, job_id, 2, metrics=[{**row, "step": 3}])
    job = job_row(stack, job_id)
    assert (job["status"], job["attempt"], job["error_code"]) == ("succeeded", 2, None)
    assert metric_rows(stack, job_id) == before
    chaos.settle("R13 stale attempt", job_id, complete=False)


def straight_and_killed(chaos, spec: dict, kill_in_epoch: int, steps_per_epoch: int, scenario: str) -> list[dict]:
    """``spec`` run straight, then again with its pool child SIGKILLed once it trains epoch ``kill_in_epoch``
    (the epochs before are checkpointed) and resumed as attempt 2: identical metric rows, losses included,
    and bit-equal final weights. Returns the two finished jobs, the killed one first."""
    import torch

    from core import checkpoint  # the project's loader: weights_only=True

    stack, api, parent = chaos.stack, chaos.api, chaos.worker
    steps = spec["training"]["epochs"] * steps_per_epoch
    straight = api.submit(spec)
    final_straight = api.wait_finished(straight["id"], timeout=240)
    assert (final_straight["status"], final_straight["attempt"]) == ("succeeded", 1), final_straight
    chaos.settle(f"{scenario} uninterrupted", straight["id"])

    log = stack.worker_log(parent)
    idle_log(stack, log)
    resumed = api.submit(spec)
    wait_epoch(chaos, resumed["id"], kill_in_epoch)
    child = int(job_row(stack, resumed["id"])["lease_owner"].rsplit(":", 1)[1])
    assert child in child_pids(parent.pid)
    os.kill(child, signal.SIGKILL)
    final_resumed = api.wait_finished(resumed["id"], timeout=240)
    assert (final_resumed["status"], final_resumed["attempt"]) == ("succeeded", 2), stack.log(log)
    second = [e for e in job_events(stack, resumed["id"]) if e["type"] == "progress" and e["attempt"] == 2]
    assert second[0]["data"]["step"] >= kill_in_epoch * steps_per_epoch, second[0]  # from the checkpoint
    chaos.settle(f"{scenario} killed in epoch {kill_in_epoch} and resumed", resumed["id"])

    settings = stack.settings()
    weights = [checkpoint.load(settings.attempt_folder(job["id"], attempt) / "checkpoint.pt", "cpu")
               for job, attempt in ((resumed, 2), (straight, 1))]
    assert weights[0]["state"]["step"] == weights[1]["state"]["step"] == steps
    models = [checkpoint["model"] for checkpoint in weights]
    assert models[0].keys() == models[1].keys() and models[0]
    different = [name for name in models[0] if not torch.equal(models[0][name], models[1][name])]
    assert not different, f"final weights differ after the resume: {different[:5]}"

    rows = [metric_rows(stack, job["id"]) for job in (resumed, straight)]
    assert {row["_attempt"] for row in rows[0]} == {1, 2} and {row["_attempt"] for row in rows[1]} == {1}
    strip = [[{k: v for k, v in row.items() if k != "_attempt"} for row in job_rows] for job_rows in rows]
    assert [row["step"] for row in strip[0] if row["kind"] == "train"] == list(range(1, steps + 1))
    assert strip[0] == strip[1]  # every train, epoch and monitor row, losses included, bit for bit
    return [final_resumed, final_straight]


def test_r14_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(chaos):
    """R14, self-contained: the same 4-epoch spec run straight, and SIGKILLed (pool child) after epoch 2 then
    resumed as attempt 2 from its checkpoint: identical metric rows and bit-equal final weights."""
    straight_and_killed(chaos, job_spec(epochs=4, train_size=256), 2, 8, "R14")  # 8 steps per epoch


def test_r17_a_rescued_run_killed_after_its_rescue_resumes_rescued_and_ends_as_if_never_killed(chaos):
    """Issue 24: a real rescue (HAIR_TRIGGER_RESCUE) in epoch 0 or 1, the pool child SIGKILLed in epoch 3 and
    the job resumed as attempt 2: it goes on with the rescue's attack and learning rates from the checkpoint
    (rows and final weights bit-equal to an uninterrupted run), the rescue is neither lost nor repeated, and
    the job's co says so."""
    spec = job_spec(epochs=5, train_size=256)  # 8 steps per epoch
    spec["monitor"].update(HAIR_TRIGGER_RESCUE)
    resumed, straight = straight_and_killed(chaos, spec, 3, 8, "R17 rescue")
    rescues = straight["co"]["rescue"]["rescues"]
    assert len(rescues) == 1 and rescues[0]["at_step"] < 3 * 8, rescues  # rescued before the kill
    assert resumed["co"]["rescue"]["rescues"] == rescues
    assert resumed["co"]["verdict_text"] == straight["co"]["verdict_text"]
    assert "was rescued" in resumed["co"]["verdict_text"]
    events = [(e["type"], e["attempt"]) for e in job_events(chaos.stack, resumed["id"]) if e["type"] == "co_rescued"]
    assert events == [("co_rescued", 1)]  # attempt 2 resumed rescued: it did not rescue again


def test_r16_a_paused_attempt_that_wakes_up_after_its_successor_finished_overwrites_no_file(chaos):
    """Issue 23 item 3: attempt 1's pool child is SIGSTOPped mid-job; its lease runs out, the reconciler
    requeues the job and a second worker finishes it as attempt 2. Then attempt 1 is SIGCONTed: it trains on
    and checkpoints until its next fenced write fails, but only into its own folder; every file clients read
    (and a resume would load) is attempt 2's, byte for byte."""
    stack, api, parent = chaos.stack, chaos.api, chaos.worker
    job = api.submit(resume_spec())
    wait_epoch(chaos, job["id"], 1)
    child = int(job_row(stack, job["id"])["lease_owner"].rsplit(":", 1)[1])
    assert child in child_pids(parent.pid)
    os.kill(child, signal.SIGSTOP)
    second = stack.start_worker(queues="cpu", ready=True)
    try:
        final = api.wait_finished(job["id"], timeout=300)
        assert (final["status"], final["attempt"]) == ("succeeded", 2), final
        folder = stack.settings().attempt_folder(job["id"], 2)
        before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
        old = stack.settings().attempt_folder(job["id"], 1)
        old_checkpoint = (old / "checkpoint.pt").read_bytes()
        os.kill(child, signal.SIGCONT)
        wait_until(lambda: (old / "checkpoint.pt").read_bytes() != old_checkpoint, 120,
                   "the woken attempt 1 to write its own checkpoint")
        time.sleep(QUIET_SECONDS)
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
        served = api.http.get(f"/v1/jobs/{job['id']}/artifacts/report.json")
        assert served.status_code == 200 and served.content == before["report.json"]
        assert api.job(job["id"])["attempt"] == 2
    finally:
        stack.stop(second, signal.SIGTERM, timeout=120)
    chaos.settle("R16 paused attempt woke up", job["id"])


def test_r15_worker_parent_never_imports_torch(chaos):
    code = ("import sys, worker.celery_app, worker.tasks; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    result = subprocess.run([sys.executable, "-c", code], env=chaos.stack.env, capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    maps = Path(f"/proc/{chaos.worker.pid}/maps").read_text()  # the live Celery parent, after many jobs
    assert "libtorch" not in maps and "libc10" not in maps


# ---- Summary ----------------------------------------------------------------------------------------


def test_zz_no_job_was_lost_or_duplicated():
    """Runs last: every job that went through a fault in this module reached a final state, its metric
    rows were unique per (kind, step) and, when it succeeded, complete, and its events never interleave
    attempts."""
    if not LEDGER:
        pytest.skip("no chaos scenario ran in this session")
    lines = [f"{e['mode']:<11} {e['scenario']:<40} {e['status']:<9} attempt {e['attempt']} "
             f"{e['error'] or '':<18} rows {e['rows']:>3} unique {e['unique']} complete {e['complete']}"
             for e in LEDGER]
    print(f"\n{len(LEDGER)} jobs through faults:\n" + "\n".join(lines))
    assert all(e["status"] in FINISHED for e in LEDGER)
    assert all(e["unique"] and e["ordered"] and e["complete"] is not False for e in LEDGER)
    assert len({e["job"] for e in LEDGER}) == len(LEDGER)
