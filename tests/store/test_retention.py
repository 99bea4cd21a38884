"""store.retention on both stores: nothing outside the artifacts folder is ever removed, whatever a job row's
id holds and whatever links the run folders hold; links are removed, never followed; partial and nested
checkpoints count as checkpoints; an older store gains the retention's column."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import inspect

from store import crud, retention
from store.db import get_engine, session_scope
from store.models import Job, utcnow
from tests.store.test_db import old_store

EVERYTHING = retention.Policy(days=0)  # every finished job's checkpoints are expired


def add_job(url: str, job_id: str, status: str = "succeeded") -> None:
    with session_scope(url) as session:
        owner, _ = crud.create_key(session, "owner", "a")
        session.add(Job(id=job_id, team="a", owner_key_id=owner.id, spec={}, status=status, attempt=1,
                        finished_at=utcnow() - dt.timedelta(days=1)))


def fill(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())


def prune(url: str, artifacts: Path) -> retention.Pruned:
    with session_scope(url) as session:
        return retention.prune_checkpoints(session, artifacts, EVERYTHING)


def delete(url: str, artifacts: Path, job_id: str) -> retention.Deleted:
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return retention.delete_job(session, artifacts, job)


@pytest.mark.parametrize("job_id", ["..", ".", "../victim", "a/../..", "..\\victim", "victim/.."])
def test_a_job_id_that_is_no_plain_name_touches_no_file(database, tmp_path, job_id):
    home = tmp_path / "home"
    artifacts = home / "artifacts"
    fill(home, "checkpoint.pt", "best.pt", "coscope.db")  # artifacts/.. is the home
    fill(home / "victim", "checkpoint.pt", "report.json")
    fill(artifacts / "victim", "checkpoint.pt")  # what "victim/.." must not reach either
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    add_job(database, job_id)
    assert prune(database, artifacts).job_ids == [job_id]  # stamped: there was nothing of its own to delete
    deleted = delete(database, artifacts, job_id)
    assert (deleted.files, deleted.bytes) == (0, 0)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before
    with session_scope(database) as session:
        assert session.get(Job, job_id) is None


def test_links_are_removed_and_never_followed(database, tmp_path):
    artifacts = tmp_path / "artifacts"
    outside = tmp_path / "outside"
    fill(outside, "checkpoint.pt", "best.pt", "report.json", "secret")
    fill(outside / "dir", "checkpoint.pt")
    linked, other, real = "linked-job", "other-job", "real-job"
    fill(artifacts / other, "checkpoint.pt", "report.json")
    (artifacts / linked).symlink_to(outside, target_is_directory=True)  # the run folder is a link out
    fill(artifacts / real, "best.pt", "report.json")
    (artifacts / real / "checkpoint.pt").symlink_to(outside / "checkpoint.pt")
    (artifacts / real / "attempt").symlink_to(outside / "dir", target_is_directory=True)
    for job_id in (linked, real):
        add_job(database, job_id)
    add_job(database, other, status="running")
    outside_files = sorted(str(path) for path in outside.rglob("*"))

    pruned = prune(database, artifacts)
    assert sorted(pruned.job_ids) == [linked, real]
    assert pruned.files == 2  # real-job's best.pt and its checkpoint.pt link
    assert sorted(path.name for path in (artifacts / real).iterdir()) == ["attempt", "report.json"]
    assert sorted(str(path) for path in outside.rglob("*")) == outside_files

    (artifacts / other).rename(artifacts / "other-folder")  # linked-job now points at another job's folder
    (artifacts / linked).unlink()
    (artifacts / linked).symlink_to(artifacts / "other-folder", target_is_directory=True)
    assert (delete(database, artifacts, linked).files, delete(database, artifacts, real).files) == (1, 2)
    assert not (artifacts / linked).exists() and not (artifacts / linked).is_symlink()
    assert not (artifacts / real).exists()
    left = sorted(path.name for path in (artifacts / "other-folder").iterdir())
    assert left == ["checkpoint.pt", "report.json"]
    assert sorted(str(path) for path in outside.rglob("*")) == outside_files


def test_partial_and_nested_checkpoints_are_checkpoints(database, tmp_path):
    artifacts = tmp_path / "artifacts"
    fill(artifacts / "job", "report.json", ".checkpoint.pt.123.tmp", ".best.pt.9.part", "checkpoint.pt.bak",
         ".report.json.1.tmp")
    fill(artifacts / "job" / "attempt-1", "checkpoint.pt", "best.pt")
    fill(artifacts / "job" / "attempt-2", "checkpoint.pt", "curves.png")
    add_job(database, "job", status="failed")
    assert prune(database, artifacts).files == 5
    left = sorted(str(path.relative_to(artifacts / "job")) for path in (artifacts / "job").rglob("*"))
    assert left == [".report.json.1.tmp", "attempt-1", "attempt-2", "attempt-2/curves.png",
                    "checkpoint.pt.bak", "report.json"]


def test_a_concurrent_delete_loses_cleanly(database, tmp_path):
    add_job(database, "job")
    fill(tmp_path / "job", "report.json")
    with session_scope(database) as session:
        job = session.get(Job, "job")
        assert job is not None
        delete(database, tmp_path, "job")  # another request went first
        with pytest.raises(retention.NotDeletable):
            retention.delete_job(session, tmp_path, job)
        session.rollback()


def test_an_old_store_gains_the_retention_column(tmp_path):
    url = old_store(tmp_path, "ALTER TABLE jobs DROP COLUMN checkpoints_deleted_at")
    columns = {column["name"] for column in inspect(get_engine(url)).get_columns("jobs")}
    assert "checkpoints_deleted_at" in columns
