"""HTTP behaviour of the job routes, in process, on a real SQLite store and the embedded SQLite broker
(no worker consumes here; tests/service runs workers)."""

from __future__ import annotations

import pytest

from store import crud
from store.db import session_scope
from store.models import Job

SPEC = {"dataset": {"name": "synthetic"}, "training": {"epochs": 1}}


def _key(settings, team="default", role="member"):
    with session_scope(settings.database) as session:
        return {"Authorization": f"Bearer {crud.create_key(session, 'k', team, role)[1]}"}


def test_read_jobs_without_a_key_is_401(client):
    response = client.get("/v1/jobs")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer cs_wrong"}).status_code == 401


def test_create_job_returns_the_queued_job_with_the_resolved_spec(client, settings):
    response = client.post("/v1/jobs", json={"spec": SPEC, "name": "a", "tags": ["x"]}, headers=_key(settings))
    assert response.status_code == 201
    job = response.json()
    assert (job["status"], job["attempt"], job["queue"], job["tags"]) == ("queued", 0, "cpu", ["x"])
    assert job["spec"]["training"]["alpha"] == 8.0  # resolved
    with session_scope(settings.database) as session:
        assert session.get(Job, job["id"]).enqueued_at is not None  # published to the broker


@pytest.mark.parametrize(("body", "loc"), [
    ({"spec": {"training": {"epsilon": -1}}}, ["body", "spec", "training", "epsilon"]),
    ({"spec": {"training": {"method": "free"}}}, ["body", "spec", "training", "method"]),
    ({"spec": {"trainin": {}}}, ["body", "spec", "trainin"]),
    ({"spec": {"monitor": {"co_policy": "rescue", "rescue": {"max_rescues": 0}}}},
     ["body", "spec", "monitor", "rescue", "max_rescues"]),
    ({"spec": {"monitor": {"co_policy": "rescue", "rescue": {"method": "pgd"}}}},
     ["body", "spec", "monitor", "rescue", "method"]),
    ({"spec": SPEC, "priority": 99}, ["body", "priority"]),
    ({}, ["body", "spec"]),
])
def test_create_job_with_bad_input_is_422_naming_the_field(client, settings, body, loc):
    response = client.post("/v1/jobs", json=body, headers=_key(settings))
    assert response.status_code == 422
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    assert client.get("/v1/jobs", headers=_key(settings)).json()["count"] == 0  # nothing stored


def test_create_job_rejects_nan_without_a_traceback(client, settings):
    headers = {**_key(settings), "Content-Type": "application/json"}
    response = client.post("/v1/jobs", content='{"spec": {"training": {"epsilon": NaN}}}', headers=headers)
    assert response.status_code == 422
    assert "Traceback" not in response.text


def test_another_teams_job_is_the_same_404_as_a_missing_job(client, settings):
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=_key(settings, team="a")).json()
    other = _key(settings, team="b")
    foreign = client.get(f"/v1/jobs/{job['id']}", headers=other)
    missing = client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=other)
    assert (foreign.status_code, missing.status_code) == (404, 404)
    assert foreign.content == missing.content
    assert client.get("/v1/jobs", headers=other).json() == {"data": [], "count": 0}
    assert client.get(f"/v1/jobs/{job['id']}", headers=_key(settings, team="b", role="admin")).status_code == 200


def test_list_jobs_is_paginated_and_bounded(client, settings):
    headers = _key(settings)
    bodies = [{"spec": SPEC, "tags": ["t"] if number else []} for number in range(3)]
    ids = [client.post("/v1/jobs", json=body, headers=headers).json()["id"] for body in bodies]
    page = client.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=headers).json()
    assert (len(page["data"]), page["count"]) == (1, 3)
    first = client.get("/v1/jobs", params={"limit": 1}, headers=headers).json()
    assert (first["count"], [job["id"] for job in first["data"]]) == (3, ids[2:])  # newest first
    tagged = client.get("/v1/jobs", params={"tag": "t"}, headers=headers).json()
    assert (tagged["count"], {job["id"] for job in tagged["data"]}) == (2, set(ids[1:]))
    assert "spec" not in page["data"][0]  # lists leave the spec to GET /v1/jobs/{id}
    assert client.get(f"/v1/jobs/{ids[0]}", headers=headers).json()["spec"]["dataset"]["name"] == "synthetic"
    assert client.get("/v1/jobs", params={"limit": 201}, headers=headers).status_code == 422
    assert client.get("/v1/jobs", params={"status": "weird"}, headers=headers).status_code == 422


def test_cancel_a_queued_job_then_409(client, settings):
    headers = _key(settings)
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert again.status_code == 409 and again.json() == {"detail": "Job already cancelled"}


def test_events_of_a_finished_job_replay_and_end(client, settings):
    headers = _key(settings)
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    stream = client.get(f"/v1/jobs/{job['id']}/events", headers=headers)
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert [line for line in stream.text.splitlines() if line.startswith("event: ")] == ["event: status"] * 2
    resumed = client.get(f"/v1/jobs/{job['id']}/events", headers={**headers, "Last-Event-ID": "1"})
    assert resumed.text.count("event: ") == 1 and '"cancelled"' in resumed.text


@pytest.mark.parametrize("name", ["../../api-key", "..%2F..%2Fapi-key", "coscope.db", "report.json"])
def test_artifacts_serve_only_known_files_of_the_job(client, settings, name):
    headers = _key(settings)
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json()
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/{name}", headers=headers).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json() == {"data": []}


def test_artifacts_come_from_the_attempt_the_job_row_names(client, settings):
    """Issue 23 item 3: an older attempt that lost its lease may still write its own folder; never served."""
    from store import crud
    from store.db import session_scope

    headers = _key(settings)
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json()
    with session_scope(settings.database) as session:
        for attempt in (1, 2):  # attempt 1's lease runs out at once; attempt 2 takes the job over
            assert crud.claim(session, job["id"], f"w{attempt}", 0.0 if attempt == 1 else 60, 3).attempt == attempt
    for attempt, text in ((1, b"zombie"), (2, b"current")):
        folder = settings.attempt_folder(job["id"], attempt)
        folder.mkdir(parents=True)
        (folder / "summary.md").write_bytes(text)
    response = client.get(f"/v1/jobs/{job['id']}/artifacts/summary.md", headers=headers)
    assert (response.status_code, response.content) == (200, b"current")
    assert client.get(f"/v1/jobs/{job['id']}/artifacts", headers=headers).json() == {
        "data": [{"name": "summary.md", "size": len(b"current")}]}


def test_report_before_success_is_404(client, settings):
    headers = _key(settings)
    job = client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json()
    response = client.get(f"/v1/jobs/{job['id']}/report", headers=headers)
    assert response.status_code == 404 and response.json() == {"detail": "Report not available"}


def test_health_readiness_and_prometheus_need_no_key(client, settings):
    client.post("/v1/jobs", json={"spec": SPEC}, headers=_key(settings))
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"database": "ok", "broker": "ok"}
    metrics = client.get("/metrics").text
    assert 'coscope_jobs{state="queued"} 1.0' in metrics and 'coscope_queue_depth{queue="cpu"} 1.0' in metrics


def test_list_entries_carry_the_final_accuracies_of_the_report(client, settings):
    """Lists never read reports: the final accuracies are copied at finish (``store.models.REPORT_COLUMNS``)."""
    headers = _key(settings)
    done, waiting = (client.post("/v1/jobs", json={"spec": SPEC}, headers=headers).json() for _ in range(2))
    with session_scope(settings.database) as session:
        attempt = crud.claim(session, done["id"], "w", 60, 3).attempt
        crud.finish(session, done["id"], attempt, "succeeded",
                    report={"final": {"clean_accuracy": 0.625, "robust_accuracy": 0.375}})
    listed = {job["id"]: job["final"] for job in client.get("/v1/jobs", headers=headers).json()["data"]}
    assert listed == {done["id"]: {"clean_accuracy": 0.625, "robust_accuracy": 0.375}, waiting["id"]: None}
    assert client.get(f"/v1/jobs/{done['id']}", headers=headers).json()["final"]["robust_accuracy"] == 0.375


def test_me_is_the_callers_own_key_without_its_secret(client, settings):
    response = client.get("/v1/me", headers=_key(settings, team="lab", role="admin"))
    assert response.status_code == 200
    me = response.json()
    assert (me["name"], me["team"], me["role"], me["revoked"]) == ("k", "lab", "admin", False)
    assert "key" not in me and "key_hash" not in me
    assert client.get("/v1/me").status_code == 401


def test_dry_run_goes_to_the_cpu_queue_and_its_report_does_not_break_prometheus(client, settings):
    headers = _key(settings)
    paper_sized = {"dry_run": True, "dataset": {"name": "cifar10"}}  # the gpu queue if it trained
    job = client.post("/v1/jobs", json={"spec": paper_sized}, headers=headers).json()
    assert (job["queue"], job["spec"]["dry_run"]) == ("cpu", True)
    with session_scope(settings.database) as session:  # a finished dry run's report has no timing section
        row = session.get(Job, job["id"])
        row.status, row.report = "succeeded", {"dry_run": True, "estimated_cost_image_passes": 1.0}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and 'coscope_jobs{state="succeeded"} 1.0' in metrics.text
    assert "coscope_train_images_per_second 0.0" in metrics.text


def test_api_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, api.main; api.main.create_app(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
