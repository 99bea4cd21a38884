"""Cheap polling for platforms: ETag / If-None-Match on reports and artifacts (304 while unchanged), and the
created_after / updated_after filters of the job and sweep lists."""

from __future__ import annotations

import datetime as dt
import time

from api.routes.sweeps import ARTIFACTS as SWEEP_ARTIFACTS
from store import crud
from store.db import session_scope
from store.settings import Settings
from tests.api.routes.test_sweeps import GRID, SPEC, _run_and_finish, roomy  # noqa: F401 (roomy: a fixture)
from tests.api.utils import key_headers


def _job(client, headers, **fields):
    response = client.post("/v1/jobs", json={"spec": SPEC, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _revalidates(client, url, headers):
    """The URL answers 200 with an ETag, then 304 (no body) for that tag, a list holding it and ``*``, and 200
    for another tag; returns the tag."""
    first = client.get(url, headers=headers)
    assert first.status_code == 200 and first.content
    etag = first.headers["etag"]
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = client.get(url, headers={**headers, "If-None-Match": header})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag), header
    assert client.get(url, headers={**headers, "If-None-Match": '"other"'}).status_code == 200
    return etag


def test_report_and_artifacts_carry_etags_that_change_with_them(client, settings: Settings):
    headers = key_headers(settings)
    job = _job(client, headers)
    report = {"final": {"clean_accuracy": 0.5, "robust_accuracy": 0.25}}
    _run_and_finish(settings, job["id"], report)
    etag = _revalidates(client, f"/v1/jobs/{job['id']}/report", headers)
    assert client.get(f"/v1/jobs/{job['id']}/report", headers=headers).json() == report
    other = _job(client, headers)
    _run_and_finish(settings, other["id"], {"final": {"clean_accuracy": 0.5, "robust_accuracy": 0.5}})
    assert client.get(f"/v1/jobs/{other['id']}/report", headers=headers).headers["etag"] != etag

    folder = settings.artifacts / job["id"]
    folder.mkdir(parents=True)
    (folder / "summary.md").write_text("first")
    url = f"/v1/jobs/{job['id']}/artifacts/summary.md"
    etag = _revalidates(client, url, headers)
    time.sleep(0.01)
    (folder / "summary.md").write_text("second, longer")  # rewritten: a new tag, the new body
    changed = client.get(url, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.text == "second, longer" and changed.headers["etag"] != etag


def test_sweep_artifacts_revalidate_until_a_child_finishes(roomy):
    client, settings = roomy
    headers = key_headers(settings)
    sweep = client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers).json()
    tags = {name: _revalidates(client, f"/v1/sweeps/{sweep['id']}/artifacts/{name}", headers)
            for name in SWEEP_ARTIFACTS}
    _run_and_finish(settings, sweep["jobs"][0], {"final": {"clean_accuracy": 0.9, "robust_accuracy": 0.4},
                                                 "co": {"verdict": "no_co"}})
    for name, etag in tags.items():
        response = client.get(f"/v1/sweeps/{sweep['id']}/artifacts/{name}",
                              headers={**headers, "If-None-Match": etag})
        assert response.status_code == 200 and response.headers["etag"] != etag, name


def _ids(client, url, headers, **params):
    response = client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [entry["id"] for entry in response.json()["data"]]


def test_job_lists_filter_on_creation_and_last_change(client, settings: Settings):
    headers, admin = key_headers(settings), key_headers(settings, team="ops", role="admin")
    old = _job(client, headers)
    time.sleep(0.05)
    middle = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    new = _job(client, headers)
    assert _ids(client, "/v1/jobs", headers, created_after=middle.isoformat()) == [new["id"]]
    assert _ids(client, "/v1/admin/jobs", admin, created_after=middle.isoformat()) == [new["id"]]
    naive = middle.replace(tzinfo=None).isoformat()  # no zone: UTC, like the API's own timestamps
    assert _ids(client, "/v1/jobs", headers, created_after=naive) == [new["id"]]
    assert _ids(client, "/v1/jobs", headers, updated_after=middle.isoformat()) == [new["id"]]
    with session_scope(settings.database) as session:  # the old job starts: a change a client sees
        attempt = crud.claim(session, old["id"], "w", 60, 3).attempt
    assert set(_ids(client, "/v1/jobs", headers, updated_after=middle.isoformat())) == {old["id"], new["id"]}
    running = client.get(f"/v1/jobs/{old['id']}", headers=headers).json()
    cursor = running["updated_at"]
    with session_scope(settings.database) as session:  # a lease renewal is no change
        crud.heartbeat(session, old["id"], attempt, 60)
    assert _ids(client, "/v1/jobs", headers, updated_after=cursor) == []
    with session_scope(settings.database) as session:  # progress is
        crud.record(session, old["id"], attempt, progress={"epoch": 0, "step": 1, "total_steps": 2})
    assert _ids(client, "/v1/jobs", headers, updated_after=cursor) == [old["id"]]
    bad = client.get("/v1/jobs", params={"updated_after": "yesterday"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "updated_after"]


def test_sweep_lists_filter_on_creation_and_on_their_childrens_changes(roomy):
    client, settings = roomy
    headers = key_headers(settings)
    first = client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers).json()
    time.sleep(0.05)
    middle = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(0.05)
    second = client.post("/v1/sweeps", json={"spec": SPEC, "grid": GRID}, headers=headers).json()
    assert _ids(client, "/v1/sweeps", headers, created_after=middle) == [second["id"]]
    assert _ids(client, "/v1/sweeps", headers, updated_after=middle) == [second["id"]]
    _run_and_finish(settings, first["jobs"][0])
    assert _ids(client, "/v1/sweeps", headers, updated_after=middle) == [second["id"], first["id"]]
