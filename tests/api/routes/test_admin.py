"""The admin router: every team's jobs, cancel any job, purge queued jobs, API keys."""

from __future__ import annotations

import uuid

import pytest

from tests.api.utils import SPEC, job_row, key_headers, set_status


@pytest.fixture
def admin(settings):
    return key_headers(settings, team="ops", role="admin")


def _submit(client, headers, **body):
    return client.post("/v1/jobs", json={"spec": SPEC, **body}, headers=headers).json()


def test_read_all_jobs_spans_teams_and_filters(client, settings, admin):
    a, b = key_headers(settings, team="a"), key_headers(settings, team="b")
    job_a, job_b = _submit(client, a), _submit(client, b)
    listing = client.get("/v1/admin/jobs", headers=admin).json()
    assert listing["count"] == 2
    assert {(job["id"], job["team"]) for job in listing["data"]} == {(job_a["id"], "a"), (job_b["id"], "b")}
    assert not any("spec" in job for job in listing["data"])
    only_b = client.get("/v1/admin/jobs", params={"team": "b"}, headers=admin).json()
    assert [job["id"] for job in only_b["data"]] == [job_b["id"]]
    client.post(f"/v1/jobs/{job_a['id']}/cancel", headers=a)
    cancelled = client.get("/v1/admin/jobs", params={"status": "cancelled"}, headers=admin).json()
    assert [job["id"] for job in cancelled["data"]] == [job_a["id"]]
    tagged = _submit(client, b, tags=["probe"])
    by_tag = client.get("/v1/admin/jobs", params={"tag": "probe"}, headers=admin).json()
    assert [(job["id"], job["team"]) for job in by_tag["data"]] == [(tagged["id"], "b")]
    assert client.get("/v1/admin/jobs", params={"limit": 201}, headers=admin).status_code == 422


def test_cancel_any_job(client, settings, admin):
    job = _submit(client, key_headers(settings, team="a"))
    response = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    again = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin)
    assert again.status_code == 409 and again.json() == {"detail": "Job already cancelled"}
    missing = client.post(f"/v1/admin/jobs/{uuid.uuid4()}/cancel", headers=admin)
    assert missing.status_code == 404 and missing.json() == {"detail": "Job not found"}


def test_cancel_a_running_job_asks_its_worker_to_stop(client, settings, admin):
    job = _submit(client, key_headers(settings, team="a"))
    set_status(settings, job["id"], "running", attempt=1)
    response = client.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=admin)
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert job_row(settings, job["id"]).cancel_requested


def test_purge_cancels_queued_jobs_only(client, settings, admin):
    member = key_headers(settings, team="a")
    queued = [_submit(client, member) for _ in range(2)]
    gpu = _submit(client, member, queue="gpu")
    running = _submit(client, member)
    set_status(settings, running["id"], "running", attempt=1)
    purged = client.post("/v1/admin/queues/purge", params={"queue": "gpu"}, headers=admin)
    assert purged.json() == {"cancelled": 1}
    assert job_row(settings, gpu["id"]).status == "cancelled"
    assert client.post("/v1/admin/queues/purge", headers=admin).json() == {"cancelled": 2}
    assert {job_row(settings, job["id"]).status for job in queued} == {"cancelled"}
    assert job_row(settings, running["id"]).status == "running"
    events = client.get(f"/v1/jobs/{queued[0]['id']}/events", headers=member).text
    assert "purged by an admin" in events
    assert client.post("/v1/admin/queues/purge", headers=admin).json() == {"cancelled": 0}
    assert client.post("/v1/admin/queues/purge", params={"queue": "tpu"}, headers=admin).status_code == 422


def test_create_list_and_revoke_keys(client, admin):
    created = client.post("/v1/admin/keys", json={"name": "alice", "team": "vision"}, headers=admin)
    assert created.status_code == 201
    body = created.json()
    assert (body["name"], body["team"], body["role"], body["revoked"]) == ("alice", "vision", "member", False)
    alice = {"Authorization": f"Bearer {body['key']}"}
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    assert client.get("/v1/admin/jobs", headers=alice).status_code == 403
    listing = client.get("/v1/admin/keys", headers=admin)
    assert listing.json()["count"] == 2
    assert body["key"] not in listing.text and "hash" not in listing.text
    fields = {"id", "name", "team", "role", "created_at", "revoked"}
    assert all(set(key) == fields for key in listing.json()["data"])
    revoked = client.post(f"/v1/admin/keys/{body['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert client.get("/v1/jobs", headers=alice).status_code == 401
    assert client.post(f"/v1/admin/keys/{uuid.uuid4()}/revoke", headers=admin).status_code == 404


def test_an_admin_key_created_over_http_is_an_admin(client, admin):
    request = {"name": "root", "team": "ops", "role": "admin"}
    body = client.post("/v1/admin/keys", json=request, headers=admin).json()
    assert client.get("/v1/admin/keys", headers={"Authorization": f"Bearer {body['key']}"}).status_code == 200


@pytest.mark.parametrize("body", [{"name": "x", "role": "owner"}, {"name": ""}, {"name": "x", "team": "a b"},
                                  {"name": "x", "key_hash": "0" * 64}, {"name": "x", "revoked": True}, {}])
def test_bad_key_requests_are_422(client, admin, body):
    assert client.post("/v1/admin/keys", json=body, headers=admin).status_code == 422
