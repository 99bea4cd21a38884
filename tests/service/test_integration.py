"""End to end over HTTP with real processes, against the embedded default and Redis + PostgreSQL."""

from __future__ import annotations

import time

from coscope.harness import SLOWNESS
from tests.service.conftest import Api, job_spec


def test_submit_watch_and_fetch_the_report(stack):
    stack.start_api()
    stack.start_worker()
    api = Api(stack.url, stack.admin_key())
    job = api.submit(job_spec(epochs=2), name="smoke", tags=["ci"])
    assert (job["status"], job["attempt"], job["name"], job["tags"]) == ("queued", 0, "smoke", ["ci"])

    events = api.events(job["id"])
    types = [event["type"] for event in events]
    assert types[0] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert {"progress", "epoch", "monitor", "co_verdict"} <= set(types)
    assert [event["id"] for event in events] == sorted(event["id"] for event in events)

    finished = api.job(job["id"])
    assert (finished["status"], finished["attempt"], finished["progress"]["step"]) == ("succeeded", 1, 8)
    report = api.http.get(f"/v1/jobs/{job['id']}/report").json()
    assert 0.0 <= report["final"]["robust_accuracy"] <= 1.0
    assert report["co"]["verdict"] in ("co", "no_co", "never_robust", "suspected")
    live = {key: value for key, value in report["co"].items() if key != "monitor"}  # the indices stay out
    assert finished["co"] == live == next(e["data"] for e in events if e["type"] == "co_verdict")
    rows = api.http.get(f"/v1/jobs/{job['id']}/metrics", params={"kind": "train"}).json()["data"]
    assert [row["step"] for row in rows] == list(range(1, 9))
    csv = api.http.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"}).text
    assert csv.splitlines()[0].startswith("kind,") and len(csv.splitlines()) > 9
    names = {item["name"] for item in api.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert {"report.json", "curves.png", "summary.md", "checkpoint.pt"} <= names
    png = api.http.get(f"/v1/jobs/{job['id']}/artifacts/curves.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"

    # resuming the stream after the last event id returns nothing new and ends
    tail = api.http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(events[2]["id"])})
    assert tail.text.count("event: ") == len(events) - 3
    listed = api.http.get("/v1/jobs", params={"status": "succeeded", "tag": "ci"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]


def test_a_dry_run_job_succeeds_through_the_worker_without_training(stack):
    stack.start_api()
    stack.start_worker()
    api = Api(stack.url, stack.admin_key())
    job = api.submit({**job_spec(), "dry_run": True})
    final = api.wait_finished(job["id"], timeout=120)
    assert (final["status"], final["attempt"], final["queue"], final["progress"]) == ("succeeded", 1, "cpu", {})
    report = api.http.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["dry_run"] is True and report["data"]["train_images"] == 128
    names = [item["name"] for item in api.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]]
    assert names == ["report.json"]
    assert api.http.get(f"{stack.url}/metrics").status_code == 200


def test_readiness_reports_database_and_broker(stack):
    stack.start_api()
    import httpx

    response = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert response.status_code == 200 and response.json() == {"database": "ok", "broker": "ok"}
    assert httpx.get(f"{stack.url}/v1/jobs", timeout=10).status_code == 401


def test_cancel_a_queued_job_and_a_running_job(stack):
    stack.start_api()
    api = Api(stack.url, stack.admin_key())
    queued = api.submit(job_spec(epochs=1))
    cancelled = api.http.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

    running = api.submit(job_spec(epochs=50, train_size=256))
    stack.start_worker()  # the queued-and-cancelled job is delivered too, and must never start
    api.events(running["id"], until="epoch")
    assert api.http.post(f"/v1/jobs/{running['id']}/cancel").status_code == 202
    final = api.wait_finished(running["id"])
    assert final["status"] == "cancelled" and final["progress"]["step"] < 50 * 8
    assert api.job(queued["id"])["attempt"] == 0  # never claimed
    assert api.http.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409
    names = {item["name"] for item in api.http.get(f"/v1/jobs/{running['id']}/artifacts").json()["data"]}
    assert "checkpoint.pt" in names  # the trainer checkpointed before stopping


def test_sigkill_of_the_worker_resumes_from_the_last_checkpoint_as_attempt_2(stack):
    stack.start_api()
    worker = stack.start_worker()
    api = Api(stack.url, stack.admin_key())
    job = api.submit(job_spec(epochs=6, train_size=256))  # 8 steps per epoch
    deadline = time.monotonic() + 120 * SLOWNESS
    while api.job(job["id"]).get("progress", {}).get("epoch", 0) < 2:  # epochs 0 and 1 are checkpointed
        assert time.monotonic() < deadline, stack.log("worker0.log")
        time.sleep(0.2)
    stack.kill(worker)  # SIGKILL to the Celery parent and the child running the job
    assert api.job(job["id"])["status"] == "running"
    stack.start_worker()
    final = api.wait_finished(job["id"])
    assert (final["status"], final["attempt"]) == ("succeeded", 2), stack.log("worker1.log")

    events = api.events(job["id"])
    second = [e for e in events if e["type"] == "progress" and e["data"]["attempt"] == 2]
    assert second[0]["data"]["step"] >= 16  # resumed after at least two finished epochs, not from 0
    rows = api.http.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    keys = [(row["kind"], row["step"]) for row in rows]
    assert len(keys) == len(set(keys))  # no metric row duplicated
    assert [row["step"] for row in rows if row["kind"] == "train"] == list(range(1, 49))
    assert [row["epoch"] for row in rows if row["kind"] == "epoch"] == list(range(6))
