"""MLflow tracking (issue 15) against a real ``mlflow server`` (SQLite backend store, artifacts proxied to a
local folder, loopback) and the embedded service: each job becomes a run whose params, metric histories, tags
and artifacts match the job's spec, metrics and report, read back through MLflow's REST API; a resumed attempt
continues the run without a repeated step; a server that goes away mid-job fails the tracking, not the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from coscope.harness import Stack, free_port, wait_until
from store import crud
from store.db import session_scope
from store.models import Job, utcnow
from tests.service.conftest import Api, job_spec
from tests.worker.utils import queued_job
from worker import runner
from worker.mlflow_run import Tracker
from worker.tracking import TrackedJob

MLFLOW = Path(sys.executable).with_name("mlflow")
REST = "/api/2.0/mlflow"


class MlflowServer:
    """``mlflow server`` in its own session: SQLite backend store and artifact folder under ``root``."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()  # mlflow takes no port 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow.log"
        self.process = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=root, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._healthy, 90, f"mlflow server on {self.url}:\n{self.log}", every=0.5)

    def _healthy(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    # ---- MLflow's REST API -------------------------------------------------------------------------
    def runs(self, job_id: str, experiment: str) -> list[dict[str, Any]]:
        found = httpx.get(f"{self.url}{REST}/experiments/get-by-name", params={"experiment_name": experiment})
        if found.status_code == 404:
            return []
        experiment_id = found.json()["experiment"]["experiment_id"]
        response = httpx.post(f"{self.url}{REST}/runs/search", json={
            "experiment_ids": [experiment_id], "filter": f"tags.`coscope.job_id` = '{job_id}'"})
        return response.json().get("runs", [])

    def run(self, job_id: str, experiment: str) -> dict[str, Any]:
        runs = self.runs(job_id, experiment)
        assert len(runs) == 1, runs
        return runs[0]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        response = httpx.get(f"{self.url}{REST}/metrics/get-history",
                             params={"run_id": run_id, "metric_key": key})
        return sorted((int(m.get("step", 0)), m["value"]) for m in response.json().get("metrics", []))

    def artifacts(self, run_id: str) -> set[str]:
        response = httpx.get(f"{self.url}{REST}/artifacts/list", params={"run_id": run_id})
        return {item["path"] for item in response.json().get("files", [])}

    def artifact(self, run_id: str, path: str) -> bytes:
        response = httpx.get(f"{self.url}/get-artifact", params={"run_uuid": run_id, "path": path})
        assert response.status_code == 200, response.text
        return response.content


def pairs(items: list[dict[str, str]]) -> dict[str, str]:
    return {item["key"]: item["value"] for item in items}


def unflatten(params: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """The nested spec the params describe, typed like ``spec`` (strings stay strings, the rest is JSON)."""
    rebuilt: dict[str, Any] = {}
    for key, value in params.items():
        node, template = rebuilt, spec
        *parents, leaf = key.split(".")
        for part in parents:
            node, template = node.setdefault(part, {}), template[part]
        node[leaf] = value if isinstance(template[leaf], str) else json.loads(value)
    return rebuilt


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


def tracked_stack(tmp_path: Path, server: MlflowServer, give_up: float = 60) -> Stack:
    stack = Stack("embedded", tmp_path / "home", env={"COSCOPE_MLFLOW_TRACKING_URI": server.url,
                                                        "COSCOPE_MLFLOW_GIVE_UP_SECONDS": str(give_up)})
    stack.home.mkdir()
    return stack


def tracking_events(api: Api, job_id: str, stack: Stack) -> list[dict[str, Any]]:
    """The finished job's ``tracking`` events once one is recorded (it may follow the job's status)."""
    def recorded() -> list[dict[str, Any]]:
        return [event["data"] for event in api.events(job_id) if event["type"] == "tracking"]

    try:
        return wait_until(recorded, 120, f"a tracking event of job {job_id}", every=1)
    except AssertionError as error:  # the worker's log says why (its MLflow client logs there)
        logs = "\n".join(stack.log(path.name) for path in sorted(stack.home.glob("*.log")))
        raise AssertionError(f"{error}\n{logs}") from None


def metric_rows(api: Api, job_id: str) -> list[dict[str, Any]]:
    return api.http.get(f"/v1/jobs/{job_id}/metrics").json()["data"]


def expected_histories(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per MLflow metric name, the (step, value) points the job's metric rows hold (numbers only)."""
    histories: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key not in ("kind", "step", "epoch") and number:
                histories.setdefault(f"{row['kind']}/{key}", []).append((row["step"], float(value)))
    return {key: sorted(points) for key, points in histories.items()}


def assert_same_points(actual: list[tuple[int, float]], expected: list[tuple[int, float]], key: str,
                       rel: float = 1e-9) -> None:
    assert [step for step, _ in actual] == [step for step, _ in expected], key
    assert [value for _, value in actual] == pytest.approx([value for _, value in expected], rel=rel), key


def test_a_job_becomes_a_run_with_its_spec_metrics_verdict_and_artifacts(tmp_path, mlflow_server):
    stack = tracked_stack(tmp_path, mlflow_server)
    try:
        stack.start_api(worker=True)
        api = Api(stack.url, stack.admin_key())
        job = api.submit(job_spec(epochs=2), name="mlflow e2e",
                         tracking={"experiment": "fgsm-study", "tags": {"owner": "ana"}})
        assert api.wait_finished(job["id"])["status"] == "succeeded"
        [event] = tracking_events(api, job["id"], stack)
        report = api.http.get(f"/v1/jobs/{job['id']}/report").json()
        rows = metric_rows(api, job["id"])
    finally:
        stack.close()

    run = mlflow_server.run(job["id"], "fgsm-study")
    run_id = run["info"]["run_id"]
    assert (run["info"]["status"], run["info"]["run_name"]) == ("FINISHED", "mlflow e2e")
    assert unflatten(pairs(run["data"]["params"]), job["spec"]) == job["spec"]
    tags = pairs(run["data"]["tags"])
    assert {key: tags.get(key) for key in ("coscope.job_id", "coscope.team", "coscope.attempt", "owner",
                                           "coscope.co_verdict")} == {
        "coscope.job_id": job["id"], "coscope.team": "default", "coscope.attempt": "1", "owner": "ana",
        "coscope.co_verdict": report["co"]["verdict"]}
    onset = report["co"]["onset_step"]
    assert tags.get("coscope.co_onset_step") == (None if onset is None else str(onset))

    expected = expected_histories(rows)
    assert {"train/train_loss", "epoch/test_clean_accuracy", "monitor/pgd_accuracy"} <= set(expected)
    for key, points in expected.items():
        assert_same_points(mlflow_server.history(run_id, key), points, key)
    done = report["steps"]["done"]
    for name in ("clean_accuracy", "robust_accuracy"):
        assert mlflow_server.history(run_id, f"final/{name}") == [(done, report["final"][name])]

    assert mlflow_server.artifacts(run_id) == {"report.json", "summary.md", "curves.png"}
    assert json.loads(mlflow_server.artifact(run_id, "report.json")) == report
    assert event == {"outcome": "logged", "run_id": run_id, "experiment": "fgsm-study", "rows": len(rows),
                     "artifacts": ["report.json", "summary.md", "curves.png"], "status": "FINISHED"}


def test_a_killed_worker_s_job_continues_the_same_run_as_attempt_2_without_repeated_steps(tmp_path,
                                                                                         mlflow_server):
    stack = tracked_stack(tmp_path, mlflow_server)
    try:
        stack.start_api()
        worker = stack.start_worker()
        api = Api(stack.url, stack.admin_key())
        job = api.submit(job_spec(epochs=30, train_size=256))  # 8 steps per epoch
        experiment = "coscope/default"

        def logged_two_epochs() -> bool:  # attempt 1's tracker has sent rows past a checkpoint
            runs = mlflow_server.runs(job["id"], experiment)
            logged = pairs(runs[0]["data"]["tags"]).get("coscope.logged_step.train", 0) if runs else 0
            return int(logged) >= 16

        wait_until(logged_two_epochs, 120, "attempt 1's rows in MLflow")
        stack.kill(worker)
        assert api.job(job["id"])["status"] == "running"
        first = mlflow_server.run(job["id"], experiment)
        assert (pairs(first["data"]["tags"])["coscope.attempt"], first["info"]["status"]) == ("1", "RUNNING")
        stack.start_worker()
        final = api.wait_finished(job["id"])
        assert (final["status"], final["attempt"]) == ("succeeded", 2), stack.log("worker1.log")
        [event] = tracking_events(api, job["id"], stack)
        rows = metric_rows(api, job["id"])
    finally:
        stack.close()

    run = mlflow_server.run(job["id"], experiment)  # one run, the same one
    assert run["info"]["run_id"] == first["info"]["run_id"] == event["run_id"]
    assert (pairs(run["data"]["tags"])["coscope.attempt"], run["info"]["status"]) == ("2", "FINISHED")
    train = mlflow_server.history(run["info"]["run_id"], "train/train_loss")
    assert [step for step, _ in train] == list(range(1, 30 * 8 + 1))  # every step once
    for key, points in expected_histories(rows).items():
        assert_same_points(mlflow_server.history(run["info"]["run_id"], key), points, key, rel=1e-5)
    assert event["rows"] < len(rows)  # attempt 2 skipped what attempt 1 had sent


def test_a_resumed_tracker_skips_logged_steps_and_ends_the_run_with_the_job_s_status(tmp_path, mlflow_server):
    """In process, without training: attempt 2 re-sends steps 5 and 6 with other values; MLflow keeps the
    first ones, once. A failed job ends its run FAILED."""
    stack = tracked_stack(tmp_path, mlflow_server)
    settings = stack.settings(mlflow_tracking_uri=mlflow_server.url)
    try:
        job_id = queued_job(settings, job_spec())
        with session_scope(settings.database) as session:
            row = session.get(Job, job_id)
            job = TrackedJob(job_id, row.team, None, row.spec, {"experiment": "resume-study"})
        first = Tracker(settings, job, 1).start()
        for step in range(1, 7):
            first.on_event({"type": "metrics", "kind": "train", "epoch": 0, "step": step, "loss": 1.0 * step})
        first.close("stale")  # lost its lease: the run stays open
        second = Tracker(settings, job, 2).start()
        for step in range(5, 11):
            second.on_event({"type": "metrics", "kind": "train", "epoch": 1, "step": step, "loss": -step})
        second.close("failed")
        assert (first.sent, second.sent) == (6, 4)
    finally:
        stack.close()
    run = mlflow_server.run(job_id, "resume-study")
    assert run["info"]["status"] == "FAILED"
    assert mlflow_server.history(run["info"]["run_id"], "train/loss") == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0),  # attempt 1's, once
        (7, -7.0), (8, -8.0), (9, -9.0), (10, -10.0)]


def test_a_server_gone_mid_job_fails_the_tracking_not_the_job(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    stack = tracked_stack(tmp_path, server, give_up=3)
    try:
        stack.start_api(worker=True)
        api = Api(stack.url, stack.admin_key())
        job = api.submit(job_spec(epochs=30, train_size=256))
        wait_until(lambda: server.runs(job["id"], "coscope/default"), 120, "the job's run in MLflow")
        server.stop()
        assert api.job(job["id"])["status"] == "running"
        final = api.wait_finished(job["id"])
        assert final["status"] == "succeeded" and final["error"] is None
        [event] = tracking_events(api, job["id"], stack)
        assert api.http.get(f"/v1/jobs/{job['id']}/report").status_code == 200
    finally:
        server.stop()
        stack.close()
    assert event["outcome"] == "failed" and event["stage"] in ("metrics", "tags", "params", "run")
    assert (event["error"], event["status_code"]) == ("MlflowException", 500)
    assert event["rows_dropped"] > 0


def test_a_tracker_that_gave_up_counts_every_row_it_never_sent(tmp_path, mlflow_server, caplog):
    """In process, against a port nobody listens on: the failure event, recorded when the job ends, counts
    the rows queued before the tracker gave up and those after (CI once saw 0 when none were queued)."""
    stack = tracked_stack(tmp_path, mlflow_server, give_up=1)
    settings = stack.settings(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    try:
        job = _tracked(settings, "unreachable")
        tracker = Tracker(settings, job, 1).start()
        for step in range(1, 4):
            tracker.on_event({"type": "metrics", "kind": "train", "epoch": 0, "step": step, "loss": 1.0})
        wait_until(lambda: "gave up at experiment" in caplog.text, 60, "the tracker to give up")
        for step in range(4, 8):
            tracker.on_event({"type": "epoch", "epoch": 0, "step": step, "train_loss": 1.0})
        assert _gave_up(settings, job.id) is None  # recorded at the job's end, with the full count
        tracker.close("succeeded")
        event = _gave_up(settings, job.id)
    finally:
        stack.close()
    assert tracker.run_id is None and tracker.sent == 0
    assert event["outcome"] == "failed" and event["stage"] == "experiment"
    assert event["rows_dropped"] == 7


def _gave_up(settings, job_id: str) -> dict[str, Any] | None:
    with session_scope(settings.database) as session:
        events = [event.data for event in crud.events_after(session, job_id, 0) if event.type == "tracking"]
    return events[0] if events else None


def test_a_job_failed_at_claim_after_its_last_attempt_ends_its_run_failed(tmp_path, mlflow_server):
    """A worker that finds the job's attempts used up (its earlier workers died) fails it, and ends the run
    the dead attempts left open, with the rows they stored."""
    stack = tracked_stack(tmp_path, mlflow_server)
    settings = stack.settings()
    try:
        job_id = queued_job(settings, job_spec())
        with session_scope(settings.database) as session:  # attempt 3 of 3 claimed, then its worker died
            crud.claim(session, job_id, "w", lease_seconds=60, max_attempts=3)
            session.execute(update(Job).where(Job.id == job_id).values(attempt=3))
        with session_scope(settings.database) as session:
            rows = [{"kind": "train", "step": step, "loss": 0.5 * step} for step in (1, 2)]
            crud.record(session, job_id, 3, metrics=rows)
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
        assert runner.run(job_id, settings, "w2") == "exhausted"
        with session_scope(settings.database) as session:
            events = [e.data for e in crud.events_after(session, job_id, 0) if e.type == "tracking"]
    finally:
        stack.close()
    run = mlflow_server.run(job_id, "coscope/default")
    assert (run["info"]["status"], pairs(run["data"]["tags"])["coscope.attempt"]) == ("FAILED", "3")
    assert mlflow_server.history(run["info"]["run_id"], "train/loss") == [(1, 0.5), (2, 1.0)]
    assert [(e["outcome"], e["status"], e["rows"]) for e in events] == [("logged", "FAILED", 2)]


def test_a_cancelled_job_ends_its_run_killed(tmp_path, mlflow_server):
    stack = tracked_stack(tmp_path, mlflow_server)
    try:
        stack.start_api(worker=True)
        api = Api(stack.url, stack.admin_key())
        job = api.submit(job_spec(epochs=50, train_size=256))
        api.events(job["id"], until="epoch")
        assert api.http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        assert api.wait_finished(job["id"])["status"] == "cancelled"
        [event] = tracking_events(api, job["id"], stack)
    finally:
        stack.close()
    run = mlflow_server.run(job["id"], "coscope/default")
    assert run["info"]["status"] == event["status"] == "KILLED"
    assert event["artifacts"] == []  # the trainer writes report, summary and curves only when it finishes


def _tracked(settings, experiment: str, team: str | None = None) -> TrackedJob:
    job_id = queued_job(settings, job_spec())
    with session_scope(settings.database) as session:
        row = session.get(Job, job_id)
        return TrackedJob(job_id, team or row.team, None, row.spec, {"experiment": experiment})


def test_a_create_retried_after_a_lost_response_makes_one_run(tmp_path, mlflow_server, monkeypatch):
    """Issue 23 item 7: the server created the run but its answer never arrived; the retry must find that run
    instead of creating a second one for the same job."""
    from mlflow.tracking import MlflowClient
    from requests.exceptions import ConnectionError as LostResponse

    real_create, calls = MlflowClient.create_run, []

    def create_then_lose_the_answer(self, *args, **kwargs):
        run = real_create(self, *args, **kwargs)  # the run exists on the server from here on
        calls.append(run.info.run_id)
        if len(calls) == 1:
            raise LostResponse("connection reset while reading the response")
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_then_lose_the_answer)
    stack = tracked_stack(tmp_path, mlflow_server)
    settings = stack.settings(mlflow_tracking_uri=mlflow_server.url)
    try:
        job = _tracked(settings, "retried-create")
        tracker = Tracker(settings, job, 1).start()
        tracker.on_event({"type": "metrics", "kind": "train", "epoch": 0, "step": 1, "loss": 0.5})
        tracker.close("succeeded")
    finally:
        stack.close()
    run = mlflow_server.run(job.id, "retried-create")  # exactly one
    assert calls == [run["info"]["run_id"]] and tracker.run_id == run["info"]["run_id"]
    assert mlflow_server.history(tracker.run_id, "train/loss") == [(1, 0.5)]


def test_two_attempts_starting_together_share_one_run(tmp_path, mlflow_server):
    stack = tracked_stack(tmp_path, mlflow_server)
    settings = stack.settings(mlflow_tracking_uri=mlflow_server.url)
    try:
        job = _tracked(settings, "racing-attempts")
        trackers = [Tracker(settings, job, attempt) for attempt in (1, 2)]
        for tracker in trackers:  # their threads race to find-or-create
            tracker.start()
        for tracker in trackers:
            tracker.close("stale" if tracker.attempt == 1 else "succeeded")
    finally:
        stack.close()
    run = mlflow_server.run(job.id, "racing-attempts")
    assert {tracker.run_id for tracker in trackers} == {run["info"]["run_id"]}


def test_another_team_s_experiment_is_refused_and_recorded(tmp_path, mlflow_server):
    """An experiment outside coscope/ belongs to the first team that logs into it (its coscope.team tag)."""
    stack = tracked_stack(tmp_path, mlflow_server)
    settings = stack.settings(mlflow_tracking_uri=mlflow_server.url)
    try:
        owner = _tracked(settings, "shared-study", team="vision")
        Tracker(settings, owner, 1).start().close("succeeded")
        intruder = _tracked(settings, "shared-study", team="audio")
        refused = Tracker(settings, intruder, 1).start()
        refused.close("succeeded")
        with session_scope(settings.database) as session:
            events = [event.data for event in crud.events_after(session, intruder.id, 0) if event.type == "tracking"]
    finally:
        stack.close()
    assert len(mlflow_server.runs(owner.id, "shared-study")) == 1
    assert mlflow_server.runs(intruder.id, "shared-study") == [] and refused.run_id is None
    assert events == [{"outcome": "failed", "stage": "experiment", "error": "ForeignExperiment",
                       "status_code": None, "rows_dropped": 0}]
