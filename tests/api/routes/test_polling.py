"""Cheap polling for platforms: ETag / If-None-Match on reports and artifacts (304 while unchanged), the
created_after / updated_after filters of the job and sweep lists, and the job lists' change feed
(changed_after and each entry's change_cursor), which misses no change however late it commits."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from api.routes.sweeps import ARTIFACTS as SWEEP_ARTIFACTS
from store import crud
from store.db import session_scope
from store.models import Job, utcnow
from store.settings import Settings
from tests.api.routes.test_sweeps import GRID, SPEC, _run_and_finish, _sweep
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


def _changes(client, headers, cursor, url="/v1/jobs", **params):
    """One poll of the change feed after ``cursor``: the entries' ids, and the cursor for the next poll (the
    last entry's; the same one when nothing changed)."""
    response = client.get(url, params={"changed_after": cursor, **params}, headers=headers)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    return [entry["id"] for entry in data], data[-1]["change_cursor"] if data else cursor


def _claim(settings, job_id, worker="w"):
    with session_scope(settings.database) as session:
        return crud.claim(session, job_id, worker, 60, 3).attempt


@pytest.mark.parametrize("store_backend", ["postgresql+redis"], indirect=True)
def test_a_change_that_commits_after_a_poll_is_in_the_next_poll(tmp_path, store_backend):
    """Real concurrent transactions on PostgreSQL: a worker's change to ``late`` is written first and commits
    last; between the two, a change to ``early`` commits and a client polls. ``late``'s updated_at (stamped at
    its write) is older than the newest one that poll saw, so updated_after skips it for good; its change cursor
    is numbered at its commit, after the change the poll saw. (SQLite has one writer at a time: a transaction
    that wrote holds every other writer until it commits, so no change commits in between there.)"""
    settings = Settings(home=tmp_path, **store_backend)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        late, early = _job(client, headers), _job(client, headers)
        seen, cursor = _changes(client, headers, "0")
        assert seen == [late["id"], early["id"]]
        with session_scope(settings.database) as slow:  # the late transaction starts, and writes
            crud.claim(slow, late["id"], "slow-worker", 60, 3)
            slow.flush()
            _claim(settings, early["id"])  # another change commits meanwhile
            poll = client.get("/v1/jobs", params={"changed_after": cursor}, headers=headers).json()["data"]
            assert [entry["id"] for entry in poll] == [early["id"]]
            cursor, newest = poll[-1]["change_cursor"], poll[-1]["updated_at"]
        # the late transaction committed (block exit) after that poll
        assert _changes(client, headers, cursor) == ([late["id"]], _changes(client, headers, "0")[1])
        assert _ids(client, "/v1/jobs", headers, updated_after=newest) == []  # what updated_after missed


def test_a_change_from_a_host_with_a_slow_clock_is_in_the_next_poll(tmp_path, store_backend):
    """A worker host whose clock runs 10 minutes slow stamps updated_at in the past; its change still comes
    after every change a poll saw before it."""
    settings = Settings(home=tmp_path, **store_backend)
    with TestClient(create_app(settings, reconcile=False)) as client:
        headers = key_headers(settings)
        slow, right = _job(client, headers), _job(client, headers)
        cursor = _changes(client, headers, "0")[1]
        _claim(settings, right["id"])
        seen, cursor = _changes(client, headers, cursor)
        assert seen == [right["id"]]
        with session_scope(settings.database) as session:  # the slow host's claim
            behind = utcnow() - dt.timedelta(minutes=10)
            session.execute(update(Job).where(Job.id == slow["id"])
                            .values(status="running", attempt=1, updated_at=behind))
        assert _changes(client, headers, cursor)[0] == [slow["id"]]


def test_the_change_feed_pages_in_commit_order_and_skips_bookkeeping(client, settings: Settings):
    headers, admin = key_headers(settings), key_headers(settings, team="ops", role="admin")
    created = [_job(client, headers) for _ in range(4)]
    assert [job["change_cursor"] for job in created] == [None] * 4  # numbered when the submit commits
    ids = [job["id"] for job in created]
    cursor = _changes(client, headers, "0", limit=200)[1]
    assert client.get(f"/v1/jobs/{ids[0]}", headers=headers).json()["change_cursor"] is not None
    order = [ids[2], ids[0], ids[3]]  # not the creation order
    attempts = {job_id: _claim(settings, job_id) for job_id in order}
    for url, who in (("/v1/jobs", headers), ("/v1/admin/jobs", admin)):
        seen, after = [], cursor
        while True:  # pages of 2, each poll after the last entry of the one before: no offset
            page, after = _changes(client, who, after, url, limit=2)
            if not page:
                break
            seen += page
        assert seen == order, url
    with session_scope(settings.database) as session:  # a lease renewal and broker bookkeeping are no changes
        crud.heartbeat(session, ids[2], attempts[ids[2]], 60)
        crud.mark_enqueued(session, ids[1])
    assert _changes(client, headers, after) == ([], after)
    with session_scope(settings.database) as session:  # progress is
        crud.record(session, ids[2], attempts[ids[2]], progress={"epoch": 0, "step": 1, "total_steps": 2})
    assert _changes(client, headers, after)[0] == [ids[2]]
    assert _changes(client, headers, after, status="queued") == ([], after)  # filters apply as usual
    for bad in ("yesterday", "-1", "1" * 19):
        response = client.get("/v1/jobs", params={"changed_after": bad}, headers=headers)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "changed_after"]


def test_jobs_one_commit_changed_are_paged_one_by_one_and_bare_number_cursors_still_work(client, settings):
    """A sweep's submit makes its children in one transaction, so they share one change number; the cursor
    carries the job's id too, so pages smaller than that group still end with every child, each once. A cursor
    from before ids were part of it (a bare number) means every change up to that number."""
    headers = key_headers(settings)
    before = _changes(client, headers, "0")[1]
    sweep = _sweep(client, headers)
    children = set(sweep["jobs"])
    assert len(children) == 4
    seen, after = [], before
    while True:
        page, after = _changes(client, headers, after, limit=3)
        if not page:
            break
        seen += page
    assert sorted(seen) == sorted(children)  # each once, none skipped
    feed = client.get("/v1/jobs", params={"changed_after": before}, headers=headers).json()["data"]
    numbers = {entry["change_cursor"].split(".")[0] for entry in feed}
    assert len(numbers) == 1  # they did share one number
    assert {entry["sweep_id"] for entry in feed} == {sweep["id"]}  # the job feed is the sweeps' feed too
    (number,) = numbers
    assert _changes(client, headers, str(int(number) - 1))[0] == seen  # a bare number: after every change up to it
    assert _changes(client, headers, number) == ([], number)
