"""The store at scale (issue 16), on SQLite and on PostgreSQL alike: lists page and count in SQL and read
neither the spec nor the report; the list and reconciler queries have indexes to use; /metrics aggregates in
SQL. ``bench/store_scale.py`` measures them on 100,000 jobs."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, insert, inspect, select, text, tuple_
from sqlalchemy.exc import InvalidRequestError

from store import crud
from store.db import get_engine, session_scope
from store.models import Job

BASE = dt.datetime(2026, 1, 1)
REPORT = {"final": {"clean": 0.8, "pgd": 0.4}, "co": {"detected": False}, "padding": "x" * 2000}


def add_jobs(url: str, count: int = 23, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` jobs of teams a and b with mixed statuses and tags, some created at the same instant (the
    order's tie-break on id is then visible); ids are not in creation order. Returns what was stored."""
    rng = random.Random(seed)
    ids = [f"job-{number:03d}" for number in range(count)]
    rng.shuffle(ids)
    rows = []
    with session_scope(url) as session:
        owners = {team: crud.create_key(session, "k", team)[0] for team in ("a", "b")}
        for number, job_id in enumerate(ids):
            team = "a" if number % 3 else "b"
            status = ("queued", "running", "succeeded", "failed")[number % 4]
            tags = [tag for tag, every in (("x", 2), ("y", 5)) if number % every == 0]
            row = {"id": job_id, "team": team, "status": status, "tags": tags,
                   "created_at": BASE + dt.timedelta(seconds=number // 3)}  # three jobs per instant
            session.add(Job(**row, owner_key_id=owners[team].id, spec={"seed": number}, queue="cpu",
                            report=REPORT if status == "succeeded" else None))
            rows.append(row)
    return rows


def expected(rows: list[dict[str, Any]], team: str | None, status: str | None, tag: str | None) -> list[str]:
    matching = [row for row in rows if (team is None or row["team"] == team)
                and (status is None or row["status"] == status) and (tag is None or tag in row["tags"])]
    matching.sort(key=lambda row: row["id"])
    matching.sort(key=lambda row: row["created_at"], reverse=True)  # stable: newest first, then id
    return [row["id"] for row in matching]


FILTERS = [(None, None, None), ("a", None, None), ("b", "queued", None), ("a", None, "x"), (None, None, "y"),
           ("a", "succeeded", "x"), (None, "failed", None), ("c", None, None), ("a", None, "nope")]


@pytest.mark.parametrize(("team", "status", "tag"), FILTERS)
def test_lists_page_and_count_in_sql(database, team, status, tag):
    rows = add_jobs(database)
    want = expected(rows, team, status, tag)
    for limit in (1, 4, 50):
        pages = []
        for offset in range(0, len(want) + limit + 1, limit):  # one page past the end too
            with session_scope(database) as session:
                jobs, count = crud.list_jobs(session, team, status, tag, limit, offset)
                page = [job.id for job in jobs]
            assert count == len(want), (limit, offset)
            assert page == want[offset:offset + limit], (limit, offset)
            pages += page
        assert pages == want


@pytest.fixture
def statements(database) -> Iterator[list[str]]:
    """The SELECT statements the store's engine runs during the test."""
    found: list[str] = []
    engine = get_engine(database)

    def collect(connection, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            found.append(statement)

    event.listen(engine, "before_cursor_execute", collect)
    yield found
    event.remove(engine, "before_cursor_execute", collect)


def test_the_count_is_a_query_only_when_the_page_is_full(database, statements):
    add_jobs(database, count=10)
    statements.clear()
    with session_scope(database) as session:
        assert crud.list_jobs(session, "a", None, None, 50, 0)[1] == 6  # a short page shows the total
        assert len(statements) == 1
        assert crud.list_jobs(session, "a", None, None, 2, 0)[1] == 6
        assert len(statements) == 3 and "count(" in statements[2].lower()
        assert crud.list_jobs(session, "a", None, None, 2, 40) == ([], 6)  # past the end: counted
        assert len(statements) == 5


def test_a_list_reads_neither_spec_nor_report(database, statements):
    add_jobs(database)
    statements.clear()
    with session_scope(database) as session:
        jobs, count = crud.list_jobs(session, None, "succeeded", None, 3, 0)
        assert len(jobs) == 3 and count > 3
        for job in jobs:
            assert {"spec", "report", "callback_url", "request_hash"} <= inspect(job).unloaded
            assert job.co is None and job.tags is not None  # what a list entry shows is loaded
            with pytest.raises(InvalidRequestError):  # reading a column lists skip raises, never queries
                _ = job.report
    selected = " ".join(statements).lower()
    assert "jobs.report" not in selected and "jobs.spec" not in selected
    assert "jobs.status" in selected and "limit" in selected  # the page is cut in SQL


def plan(session, statement) -> str:
    """The database's plan for ``statement``, with its parameters bound as when it runs: the statement is
    sent as it would be, with EXPLAIN in front."""
    engine = session.get_bind()
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "

    def prefix(connection, cursor, sql, parameters, context, executemany):
        return explain + sql, parameters

    event.listen(engine, "before_cursor_execute", prefix, retval=True)
    try:
        rows = session.connection().execute(statement).cursor.fetchall()
    finally:
        event.remove(engine, "before_cursor_execute", prefix)
    return "\n".join(str(row[-1]) for row in rows)


def test_list_and_reconciler_queries_use_their_indexes(database):
    """3,000 jobs of 3 teams, nearly all finished, the table vacuumed and analysed as autovacuum would: each
    list query reads its rows in order from its index (no scan of the table, no sort), a tag filter uses the
    GIN index on PostgreSQL, the reconciler's queries find the few running and queued jobs through theirs
    (no scan of the table), and so do the change feed (changed_after) and the commit's look for unnumbered
    changes."""
    statuses = ["succeeded"] * 90 + ["failed"] * 6 + ["cancelled"] * 2 + ["running", "queued"]
    with session_scope(database) as session:
        owner = crud.create_key(session, "k")[0]
        session.execute(insert(Job), [
            {"id": f"job-{number:05d}", "team": f"team-{number % 3}", "owner_key_id": owner.id, "spec": {},
             "status": statuses[number % len(statuses)], "created_at": BASE + dt.timedelta(seconds=number),
             "tags": [f"sweep-{number % 7}"] if number % 10 == 0 else [],
             "enqueued_at": BASE + dt.timedelta(seconds=number + 1),
             "lease_expires_at": BASE + dt.timedelta(seconds=number + 60)}
            for number in range(3000)])
    with get_engine(database).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jobs" if "postgresql" in database else "ANALYZE"))
    now = BASE + dt.timedelta(seconds=1500)  # half the leases expired, half the messages sent long ago
    team, failed = Job.team == "team-1", Job.status == "failed"
    queries = [  # (the index it should use, the query)
        ("ix_jobs_team_created", select(Job.id).where(team).order_by(*crud.JOB_ORDER).limit(50).offset(500)),
        ("ix_jobs_team_status_created", select(Job.id).where(team, failed).order_by(*crud.JOB_ORDER).limit(50)),
        ("ix_jobs_created", select(Job.id).order_by(*crud.JOB_ORDER).limit(50).offset(500)),
        ("ix_jobs_status_lease", select(Job.id).where(Job.status == "running", Job.lease_expires_at < now)),
        ("ix_jobs_status_enqueued", select(Job.id).where(Job.status == "queued", Job.enqueued_at < now)
         .order_by(Job.enqueued_at)),
        ("ix_jobs_change", select(Job.id).where(tuple_(*crud.CHANGE_ORDER) > tuple_(1, "job-00100"))
         .order_by(*crud.CHANGE_ORDER).limit(50)),
        ("ix_jobs_change", select(Job.id).where(Job.change_seq.is_(None)).limit(1)),  # db.stamp_changes
    ]
    with session_scope(database) as session:
        if session.get_bind().dialect.name == "postgresql":  # SQLite scans the tags (json_each)
            tagged = crud._has_tag(session, "sweep-3")
            queries.append(("ix_jobs_tags", select(func.count()).select_from(Job).where(tagged)))
        for index, query in queries:
            found = plan(session, query)
            assert index in found, found
            assert "Seq Scan" not in found and "SCAN jobs" not in found.splitlines(), found  # SQLite's scan
            if index.endswith(("_created", "_change")):  # lists: in index order (the reconciler sorts a few)
                assert "Sort" not in found and "TEMP B-TREE" not in found, found


def test_prometheus_aggregates_come_from_sql(database):
    """``crud.job_stats`` (what /metrics shows): counts by status and queue, run time of succeeded jobs, and
    the mean training throughput, which ``crud.finish`` copies out of the report (dry runs time none)."""
    outcomes = [("succeeded", "cpu", 90.5, {"timing": {"train_images_per_second": 100}}),
                ("succeeded", "gpu", 9.5, {"timing": {"train_images_per_second": 300.0}}),
                ("succeeded", "cpu", 1.0, {"dry_run": True}), ("failed", "gpu", 5.0, None),
                ("queued", "gpu", None, None), ("queued", "cpu", None, None)]
    with session_scope(database) as session:
        owner = crud.create_key(session, "k")[0]
        jobs = [crud.create_job(session, owner, {}, name=None, tags=[], priority=0, queue=queue,
                                idempotency_key=None, request_hash="h")[0] for _, queue, _, _ in outcomes]
    for job, (status, _, seconds, report) in zip(jobs, outcomes, strict=True):
        if seconds is None:
            continue
        with session_scope(database) as session:
            attempt = crud.claim(session, job.id, "w", 60, 3).attempt
            crud.finish(session, job.id, attempt, status, report=report)
            row = session.get(Job, job.id)
            row.started_at, row.finished_at = BASE, BASE + dt.timedelta(seconds=seconds)
    with session_scope(database) as session:
        stats = crud.job_stats(session)
        assert session.get(Job, jobs[0].id).train_images_per_second == 100.0
    assert stats.by_status_and_queue == {("succeeded", "cpu"): 2, ("succeeded", "gpu"): 1,
                                         ("failed", "gpu"): 1, ("queued", "gpu"): 1, ("queued", "cpu"): 1}
    assert stats.succeeded_timed == 3 and stats.succeeded_seconds == pytest.approx(101.0, abs=1e-3)
    assert stats.mean_train_images_per_second == pytest.approx(200.0)
