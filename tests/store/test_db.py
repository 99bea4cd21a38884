"""The store's startup (a database created before a nullable column or an index existed gains it) and its
commit convention."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from store import crud
from store.db import get_engine, session_scope
from store.models import Base


def old_store(tmp_path, *statements: str, rows: tuple[tuple[str, list[dict]], ...] = ()) -> str:
    """A SQLite store as an older coscope left it: today's schema with ``statements`` applied, then ``rows``
    (statement, parameter sets) inserted; returns its URL, for ``get_engine`` to open and upgrade."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    Base.metadata.create_all(old)
    with old.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
        for statement, parameters in rows:
            connection.execute(text(statement), parameters)
    old.dispose()
    return url


def test_an_old_store_gains_the_callback_url_column(tmp_path):
    url = old_store(tmp_path, "ALTER TABLE jobs DROP COLUMN callback_url")
    columns = {column["name"] for column in inspect(get_engine(url)).get_columns("jobs")}
    assert "callback_url" in columns


def test_an_old_store_gains_the_report_columns_filled_from_its_reports(tmp_path):
    """The throughput and the final accuracies (``store.models.REPORT_COLUMNS``) of jobs finished before the
    columns existed are copied from their reports once."""
    reports = {"timed": {"timing": {"train_images_per_second": 512.5},
                         "final": {"clean_accuracy": 0.75, "robust_accuracy": 0.25}},
               "dry": {"dry_run": True}, "queued": None}
    jobs = [{"id": job_id, "report": None if report is None else json.dumps(report)}
            for job_id, report in reports.items()]
    url = old_store(tmp_path, *(f"ALTER TABLE jobs DROP COLUMN {column}" for column in
                                ("train_images_per_second", "final_clean_accuracy", "final_robust_accuracy")),
                    "INSERT INTO api_keys (id, name, team, role, key_hash, created_at, revoked) "
                    "VALUES ('k', 'k', 'a', 'member', 'h', '2026-01-01', 0)",
                    rows=(("INSERT INTO jobs (id, team, owner_key_id, tags, priority, queue, spec, status, attempt, "
                           "cancel_requested, progress, report, created_at) VALUES (:id, 'a', 'k', '[]', 0, 'cpu', "
                           "'{}', 'succeeded', 1, 0, '{}', :report, '2026-01-01')", jobs),))
    with get_engine(url).connect() as connection:
        rows = connection.execute(text("SELECT id, train_images_per_second, final_clean_accuracy, "
                                       "final_robust_accuracy FROM jobs")).all()
    assert {row[0]: tuple(row[1:]) for row in rows} == {
        "timed": (512.5, 0.75, 0.25), "dry": (None, None, None), "queued": (None, None, None)}


def test_an_old_store_gains_the_change_order_with_its_jobs_before_the_first_change(tmp_path):
    """Jobs of a store created before ``jobs.change_seq`` share number 1 (after cursor 0, where pollers start;
    before every later change), the next change is numbered 2, and bookkeeping is no change."""
    url = old_store(tmp_path, "DROP INDEX ix_jobs_change", "ALTER TABLE jobs DROP COLUMN change_seq",
                    "DROP TABLE change_counter",
                    "INSERT INTO api_keys (id, name, team, role, key_hash, created_at, revoked) "
                    "VALUES ('k', 'k', 'a', 'member', 'h', '2026-01-01', 0)",
                    rows=(("INSERT INTO jobs (id, team, owner_key_id, tags, priority, queue, spec, status, "
                           "attempt, cancel_requested, progress, created_at) VALUES (:id, 'a', 'k', '[]', 0, "
                           "'cpu', '{}', 'queued', 0, 0, '{}', '2026-01-01')", [{"id": "old"}, {"id": "older"}]),))
    get_engine(url)
    with session_scope(url) as session:
        crud.mark_enqueued(session, "older")
    with session_scope(url) as session:
        crud.claim(session, "old", "w", 60, 3)
    with get_engine(url).connect() as connection:
        assert dict(connection.execute(text("SELECT id, change_seq FROM jobs")).all()) == {"old": 2, "older": 1}
    assert "ix_jobs_change" in {index["name"] for index in inspect(get_engine(url)).get_indexes("jobs")}


def test_an_old_store_gains_the_list_and_reconciler_indexes(tmp_path):
    url = old_store(tmp_path, "DROP INDEX ix_jobs_team_created", "DROP INDEX ix_jobs_status_lease")
    indexes = {index["name"] for index in inspect(get_engine(url)).get_indexes("jobs")}
    assert {"ix_jobs_team_created", "ix_jobs_team_status_created", "ix_jobs_status_lease"} <= indexes


def test_only_session_scope_commits():
    """The commit convention of ``store``: one ``session_scope`` block is one unit of work and the only
    place that commits; crud functions, routes, the worker and the CLI never call ``commit()``."""
    root = Path(__file__).resolve().parents[2]
    commits = []
    for package in ("store", "api", "worker", "coscope"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "commit"):
                    commits.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(commits) == 1 and commits[0].startswith("store/db.py:"), commits


def test_non_finite_floats_are_stored_as_null_in_json_columns():
    # PostgreSQL rejects Python's NaN token: a diverging model's monitor row once failed the job as
    # internal_error on PostgreSQL only (chaos R10, distributed)
    from store.db import json_dumps

    assert json.loads(json_dumps({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": 0.5})) \
        == {"a": None, "b": [1.0, None, {"c": None}], "d": 0.5}
