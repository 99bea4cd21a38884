"""Retention over HTTP, on both stores (SQLite; PostgreSQL + Redis): the checkpoint retention deletes
checkpoints of jobs finished long enough ago and nothing else, the API runs it in the background, and an
admin deletes exactly one finished job (its rows and its run folder), refusing active jobs and sweep
children."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from coscope.harness import wait_until
from store import crud
from store.db import session_scope
from store.models import ApiKey, Job, JobEvent, MetricRow, Sweep, utcnow
from store.settings import Settings
from tests.api.utils import SPEC, key_headers

KEPT = {"report.json": b"{}", "metrics.jsonl": b'{"step": 1}\n', "summary.md": b"# run\n",
        "curves.png": b"png"}
CHECKPOINTS = {"checkpoint.pt": b"c" * 300, "best.pt": b"b" * 200}


@pytest.fixture
def settings(store_backend, tmp_path):
    return Settings(home=tmp_path, checkpoint_retention_days=7,
                    team_checkpoint_retention_days={"fast": 0.5, "audit": None}, **store_backend)


@pytest.fixture
def admin(settings):
    return key_headers(settings, team="ops", role="admin")


def make_job(settings: Settings, *, team: str = "a", status: str = "succeeded", days_ago: float | None = 10,
             sweep: bool = False, files: dict[str, bytes] | None = None) -> str:
    """A job row with two events (queued, then ``status``) and two metrics rows, finished ``days_ago`` days
    ago (None: not finished), and its run folder holding ``files`` (default: the kept artifacts and both
    checkpoints; a name may hold a folder: ``attempt-1/checkpoint.pt``)."""
    with session_scope(settings.database) as session:
        owner = session.scalar(select(ApiKey).where(ApiKey.team == team).limit(1))
        owner = owner or crud.create_key(session, "owner", team)[0]
        job, _ = crud.create_job(session, owner, SPEC, name=None, tags=[], priority=0, queue="cpu",
                                 idempotency_key=None, request_hash="0" * 64)
        job.status, job.attempt = status, 1
        if days_ago is not None:
            job.started_at = job.finished_at = utcnow() - dt.timedelta(days=days_ago)
        if sweep:
            row = Sweep(team=team, owner_key_id=owner.id, spec=SPEC, axes=[], seeds=[0], size=1,
                        status="succeeded")
            session.add(row)
            session.flush()
            job.sweep_id, job.sweep_index = row.id, 0
        crud.add_event(session, job.id, 1, "status", {"status": status})
        session.add_all([MetricRow(job_id=job.id, kind=kind, step=1, attempt=1, data={"kind": kind})
                         for kind in ("train", "epoch")])
        job_id = job.id
    folder = settings.artifacts / job_id
    folder.mkdir(parents=True)
    for name, content in ({**KEPT, **CHECKPOINTS} if files is None else files).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return job_id


def files_of(settings: Settings, job_id: str) -> set[str]:
    """The files of the job's run folder, as paths relative to it."""
    folder = settings.artifacts / job_id
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def rows_of(settings: Settings, job_id: str) -> tuple[int, int, int]:
    """(job rows, event rows, metrics rows) of the job."""
    with session_scope(settings.database) as session:
        return tuple(session.scalar(select(func.count()).select_from(table).where(column == job_id))
                     for table, column in ((Job, Job.id), (JobEvent, JobEvent.job_id),
                                           (MetricRow, MetricRow.job_id)))  # type: ignore[return-value]


def change_marks(settings: Settings, job_id: str) -> tuple[dt.datetime | None, int | None]:
    """What list pollers filter on: (updated_at, change_seq)."""
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.updated_at, job.change_seq


# ---- Checkpoint retention ---------------------------------------------------------------------------


def test_retention_deletes_expired_checkpoints_and_nothing_else(client, settings, admin):
    old = make_job(settings)
    old_cancelled = make_job(settings, status="cancelled", days_ago=8,
                             files={**KEPT, "checkpoint.pt": b"c" * 300})
    old_fast = make_job(settings, team="fast", days_ago=1)  # its team keeps checkpoints half a day
    recent = make_job(settings, days_ago=6)
    running = make_job(settings, status="running", days_ago=None)
    running_long = make_job(settings, status="running", days_ago=30)  # an odd finished_at: still running
    audit = make_job(settings, team="audit", days_ago=400)  # its team keeps checkpoints forever
    attempts = make_job(settings, days_ago=20, files={  # per-attempt folders, with a partial copy
        **{f"attempt-2/{name}": content for name, content in {**KEPT, **CHECKPOINTS}.items()},
        "attempt-1/checkpoint.pt": b"c" * 300, "attempt-2/.best.pt.77.part": b"b" * 200})
    rows_before = {job_id: rows_of(settings, job_id) for job_id in (old, recent, running, audit, attempts)}
    marks_before = change_marks(settings, old)

    response = client.post("/v1/admin/retention/run", headers=admin)
    assert response.status_code == 200
    assert response.json() == {"jobs": 4, "files": 9, "bytes": 5 * 300 + 4 * 200,
                               "job_ids": sorted([old, old_cancelled, old_fast, attempts]), "more": False}
    for job_id in (old, old_cancelled, old_fast):
        assert files_of(settings, job_id) == set(KEPT)  # reports, metrics, summary and curves stay
    assert files_of(settings, attempts) == {f"attempt-2/{name}" for name in KEPT}
    for job_id in (recent, running, running_long, audit):
        assert files_of(settings, job_id) == set(KEPT) | set(CHECKPOINTS)
    assert {job_id: rows_of(settings, job_id) for job_id in rows_before} == rows_before
    assert change_marks(settings, old) == marks_before  # no change a poller sees
    member = key_headers(settings, team="a")
    listed = client.get(f"/v1/jobs/{old}/artifacts", headers=member).json()["data"]
    assert {artifact["name"] for artifact in listed} == set(KEPT)
    assert client.get(f"/v1/jobs/{old}/artifacts/report.json", headers=member).content == KEPT["report.json"]
    assert client.get(f"/v1/jobs/{old}/metrics", headers=member).json()["data"] == [{"kind": "epoch"},
                                                                                   {"kind": "train"}]
    again = client.post("/v1/admin/retention/run", headers=admin).json()
    assert again == {"jobs": 0, "files": 0, "bytes": 0, "job_ids": [], "more": False}


def test_retention_run_takes_a_team_a_limit_and_days_for_this_run(client, settings, admin):
    older, newer = make_job(settings, days_ago=9), make_job(settings, days_ago=8)
    b_job = make_job(settings, team="b", days_ago=9)
    recent = make_job(settings, days_ago=2)
    first = client.post("/v1/admin/retention/run", params={"team": "a", "limit": 1}, headers=admin).json()
    assert (first["job_ids"], first["more"]) == ([older], True)  # the longest finished first
    second = client.post("/v1/admin/retention/run", params={"team": "a"}, headers=admin).json()
    assert (second["job_ids"], second["more"]) == ([newer], False)
    assert files_of(settings, b_job) == set(KEPT) | set(CHECKPOINTS)  # another team's: untouched
    assert files_of(settings, recent) == set(KEPT) | set(CHECKPOINTS)
    now = client.post("/v1/admin/retention/run", params={"older_than_days": 1}, headers=admin).json()
    assert sorted(now["job_ids"]) == sorted([b_job, recent])
    for bad in ({"older_than_days": -1}, {"older_than_days": "nan"}, {"limit": 0}, {"limit": 5001}):
        assert client.post("/v1/admin/retention/run", params=bad, headers=admin).status_code == 422


def test_without_a_retention_policy_nothing_is_deleted(store_backend, tmp_path):
    settings = Settings(home=tmp_path, **store_backend)
    job_id = make_job(settings, days_ago=10_000)
    with TestClient(create_app(settings, reconcile=False)) as client:
        response = client.post("/v1/admin/retention/run", headers=key_headers(settings, role="admin"))
    assert response.json() == {"jobs": 0, "files": 0, "bytes": 0, "job_ids": [], "more": False}
    assert files_of(settings, job_id) == set(KEPT) | set(CHECKPOINTS)


def test_the_api_runs_the_retention_in_the_background(store_backend, tmp_path):
    settings = Settings(home=tmp_path, checkpoint_retention_days=1, retention_seconds=0.2, **store_backend)
    old, recent = make_job(settings, days_ago=2), make_job(settings, days_ago=0.5)
    with TestClient(create_app(settings, reconcile=True)):
        wait_until(lambda: deleted_at(settings, old), 20, "the retention keeper's pass")  # files go first
    assert files_of(settings, old) == set(KEPT)
    assert files_of(settings, recent) == set(KEPT) | set(CHECKPOINTS)
    assert deleted_at(settings, recent) is None


def deleted_at(settings: Settings, job_id: str) -> dt.datetime | None:
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.checkpoints_deleted_at


# ---- Deleting a job ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_delete_removes_one_finished_job_and_nothing_else(client, settings, admin, status):
    job_id, other = make_job(settings, status=status), make_job(settings)
    (settings.artifacts / f"{job_id}-evil").mkdir()  # a sibling whose name starts with the job's id
    before = rows_of(settings, other)
    response = client.delete(f"/v1/admin/jobs/{job_id}", headers=admin)
    assert response.status_code == 200
    assert response.json() == {"id": job_id, "events": 2, "metrics": 2, "files": 6,
                               "bytes": sum(map(len, KEPT.values())) + 500}
    assert rows_of(settings, job_id) == (0, 0, 0)
    assert not (settings.artifacts / job_id).exists()
    assert rows_of(settings, other) == before
    assert files_of(settings, other) == set(KEPT) | set(CHECKPOINTS)
    assert (settings.artifacts / f"{job_id}-evil").is_dir()
    gone = client.delete(f"/v1/admin/jobs/{job_id}", headers=admin)
    assert gone.status_code == 404 and gone.json() == {"detail": "Job not found"}
    assert client.get(f"/v1/jobs/{job_id}", headers=admin).status_code == 404


def test_delete_of_a_job_without_a_run_folder(client, settings, admin):
    job_id = make_job(settings, status="cancelled", files={})
    (settings.artifacts / job_id).rmdir()
    response = client.delete(f"/v1/admin/jobs/{job_id}", headers=admin)
    assert response.json() == {"id": job_id, "events": 2, "metrics": 2, "files": 0, "bytes": 0}


@pytest.mark.parametrize("status", ["held", "queued", "running"])
def test_delete_refuses_unfinished_jobs(client, settings, admin, status):
    job_id = make_job(settings, status=status, days_ago=None)
    before = rows_of(settings, job_id)
    response = client.delete(f"/v1/admin/jobs/{job_id}", headers=admin)
    assert response.status_code == 409
    assert response.json() == {"detail": f"Job is {status}: cancel it, and delete it once it has finished"}
    assert rows_of(settings, job_id) == before
    assert files_of(settings, job_id) == set(KEPT) | set(CHECKPOINTS)


def test_delete_refuses_a_sweeps_child(client, settings, admin):
    job_id = make_job(settings, sweep=True)
    with session_scope(settings.database) as session:
        sweep_id = session.get(Job, job_id).sweep_id  # type: ignore[union-attr]
    response = client.delete(f"/v1/admin/jobs/{job_id}", headers=admin)
    assert response.status_code == 409
    assert response.json() == {"detail": f"Job is a child of sweep {sweep_id}: a sweep's table and heatmap "
                                         "are built from every child, so its children are not deleted"}
    assert rows_of(settings, job_id) == (1, 2, 2)
    assert files_of(settings, job_id) == set(KEPT) | set(CHECKPOINTS)


def test_missing_jobs_are_404_and_members_get_403(client, settings, admin):
    missing = client.delete(f"/v1/admin/jobs/{uuid.uuid4()}", headers=admin)
    assert missing.status_code == 404 and missing.json() == {"detail": "Job not found"}
    job_id = make_job(settings, days_ago=30)
    member = key_headers(settings, team="a")
    for method, path in (("DELETE", f"/v1/admin/jobs/{job_id}"), ("POST", "/v1/admin/retention/run")):
        response = client.request(method, path, headers=member)
        assert response.status_code == 403 and response.json() == {"detail": "Admin role required"}
        assert client.request(method, path).status_code == 401
    assert rows_of(settings, job_id) == (1, 2, 2)
    assert files_of(settings, job_id) == set(KEPT) | set(CHECKPOINTS)
