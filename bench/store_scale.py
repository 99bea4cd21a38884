"""The job store at scale (issue 16): job lists and the reconciler over 100,000 jobs in PostgreSQL.

    python bench/store_scale.py [--jobs 100000] [--teams 3] [--report-kb 8] [--requests 200]
                                [--passes 5] [--old-repeats 3] [--no-record]

1. Store: a fresh PostgreSQL database ``coscope_bench_<pid>`` on 127.0.0.1:5432 (dropped at the end), its
   tables and indexes created by ``store.db.get_engine``, then ``--jobs`` jobs of ``--teams`` teams
   bulk-copied in, one a minute, newest last: nearly all finished (92 % succeeded with a report of about
   ``--report-kb`` KB drawn from 500 different random ones, the real reports of bench/ablation.py runs are
   9-15 KB; 5 % failed, 3 % cancelled), a resolved spec (the defaults', about 1.4 KB) and a CO verdict
   (about 0.6 KB) each, a tag on every tenth; then, among the newest, the reconciler's work: 10 running jobs
   whose lease expired, 10 running with a live lease, 10 queued whose message was never sent, 10 queued
   whose message was sent 20 minutes ago (stale), 10 queued sent a minute ago. ``VACUUM ANALYZE`` as
   autovacuum would.
2. Lists: the real application (``api.main.create_app``, no reconciler thread) in process through FastAPI's
   TestClient, authenticated as a member of the first team; ``--requests`` sequential requests per case after
   5 warm-ups: ``GET /v1/jobs?limit=50`` (first page), the same at a deep offset (the team's last full page),
   with ``status=failed``, with a tag, and the admins' ``GET /v1/admin/jobs?limit=50`` over every team; p50
   and p99 in ms. The plans PostgreSQL picks for the page query are shown. ``GET /metrics`` (SQL
   aggregates).
3. Reconciler: ``api.queue.Reconciler.reconcile_once`` as its thread calls it, with a stub publisher (a send
   always succeeds, every queue reports 0 messages, so the stale jobs are sent again): a pass with the work
   above (the 50 jobs put back before each pass) and an idle pass (nothing to do, the usual case).
4. Before this change: the query the old ``crud.list_jobs`` ran for every list request (every row of the
   team, report and spec included, sliced in Python), labelled "old: load all rows"; and the reconciler with
   the old indexes (single-column ``team``, ``status``, ``created_at``) instead of the new ones. (The old
   /metrics read every job's report, three times the old list's rows: not run, for its memory.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import select, text, update

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = ("id", "team", "owner_key_id", "name", "tags", "priority", "queue", "spec", "status", "attempt",
           "lease_owner", "lease_expires_at", "cancel_requested", "progress", "co", "report",
           "train_images_per_second", "error_code", "error_message", "created_at", "enqueued_at",
           "started_at", "finished_at")
WORK = ("expired", "live", "never_sent", "stale", "fresh")  # 10 jobs each among the newest


def admin(statement: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


def random_report(rng: random.Random, spec: dict, size: int) -> dict:
    """A report shaped like core.trainer's (spec, final with per-class accuracies, timing, co with its
    monitor checks), grown with monitor checks to about ``size`` bytes of JSON."""
    def per_class() -> list[float]:
        return [round(rng.random(), 4) for _ in range(10)]

    final = {"attack": {"name": "pgd", "steps": 50, "restarts": 10}, "clean_accuracy": rng.random(),
             "robust_accuracy": rng.random(), "per_class": {"clean": per_class(), "robust": per_class()}}
    timing = {"train_seconds": rng.uniform(100, 5000), "train_images_per_second": rng.uniform(200, 3000)}
    report = {"spec": spec, "final": final, "timing": timing,
              "environment": {"torch": "2.x", "device": "cuda"}, "data": {"train_images": 50000},
              "co": {"detected": rng.random() < 0.3, "verdict": rng.choice(["co", "no_co", "suspected"]),
                     "monitor": []}, "steps": {"done": 11730, "planned": 11730}}
    step = 0
    while len(json.dumps(report)) < size:
        step += 100
        report["co"]["monitor"].append({"step": step, "clean": round(rng.random(), 4),
                                        "fgsm": round(rng.random(), 4), "pgd": round(rng.random(), 4),
                                        "curvature": round(rng.uniform(0, 50), 3),
                                        "loss": round(rng.random(), 4)})
    return report


def fill(url: str, jobs: int, teams: list[str], owners: dict[str, str], report_kb: float,
         now: dt.datetime) -> dict[str, list[str]]:
    """Bulk-copy the jobs; return the ids of the reconciler's work by kind."""
    from core.spec import JobSpec

    rng = random.Random(0)
    spec = JobSpec().resolved().model_dump(mode="json")
    spec_text = json.dumps(spec)
    reports = [random_report(rng, spec, int(report_kb * 1024)) for _ in range(500)]
    rates = [report["timing"]["train_images_per_second"] for report in reports]  # as crud.finish copies it
    texts = [json.dumps(report) for report in reports]
    best = {"clean_accuracy": 0.81, "robust_accuracy": 0.43, "per_class": {"clean": [0.8] * 10,
                                                                          "robust": [0.4] * 10}}
    co = json.dumps({"detected": True, "verdict": "co", "onset_step": 4200, "onset_epoch": 11,
                     "confirmed_step": 4300, "confirmed_by": "pgd", "rule": "pgd_drop",
                     "before": {"pgd": 0.41, "fgsm": 0.45}, "after": {"pgd": 0.02, "fgsm": 0.88},
                     "chance_level": 0.1, "never_robust_level": 0.15,
                     "best_checkpoint": {"step": 4100, "final": best}})
    progress = json.dumps({"epoch": 30, "step": 11730, "total_steps": 11730, "eta_seconds": 0})
    work: dict[str, list[str]] = {kind: [] for kind in WORK}
    newest = {jobs - 1 - number: WORK[number // 10] for number in range(10 * len(WORK))}
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for number in range(jobs):
                team = teams[number % len(teams)]
                created = now - dt.timedelta(minutes=jobs - number)
                kind = newest.get(number)
                draw = rng.random()
                if kind is None:
                    status = "succeeded" if draw < 0.92 else "failed" if draw < 0.97 else "cancelled"
                else:
                    status = "running" if kind in ("expired", "live") else "queued"
                succeeded, failed = status == "succeeded", status == "failed"
                started = created + dt.timedelta(seconds=5) if status != "queued" else None
                finished = created + dt.timedelta(minutes=rng.uniform(2, 60)) if kind is None else None
                job_id = str(uuid.uuid4())
                if kind is not None:
                    work[kind].append(job_id)
                tags = [f"sweep-{number % 7}"] if number % 10 == 0 else []
                copy.write_row((
                    job_id, team, owners[team], f"job {number}", json.dumps(tags), 0, "gpu", spec_text,
                    status, 1 if status != "queued" else 0, None, None, False, progress,
                    co if kind is None else None,
                    texts[number % len(texts)] if succeeded else None,
                    rates[number % len(rates)] if succeeded else None,
                    "training_failed" if failed else None, "CUDA out of memory" if failed else None,
                    created, created + dt.timedelta(seconds=1), started, finished))
    reset_work(url, work, now)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE jobs")
    return work


def reset_work(url: str, work: dict[str, list[str]], now: dt.datetime | None = None) -> None:
    """Put the reconciler's 50 jobs back as described (a pass changes them)."""
    from store.db import session_scope
    from store.models import Job

    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    minutes = dt.timedelta(minutes=1)
    states = {"expired": {"status": "running", "attempt": 1, "lease_expires_at": now - 5 * minutes},
              "live": {"status": "running", "attempt": 1, "lease_expires_at": now + 5 * minutes},
              "never_sent": {"status": "queued", "attempt": 0, "enqueued_at": None,
                             "created_at": now - dt.timedelta(minutes=1)},
              "stale": {"status": "queued", "attempt": 0, "enqueued_at": now - dt.timedelta(minutes=20)},
              "fresh": {"status": "queued", "attempt": 0, "enqueued_at": now - dt.timedelta(minutes=1)}}
    with session_scope(url) as session:
        for kind, ids in work.items():
            session.execute(update(Job).where(Job.id.in_(ids)).values(lease_owner=None, **states[kind])
                            .execution_options(synchronize_session=False))


class StubPublisher:
    """Every send succeeds; every queue holds no message (so stale jobs count as lost and are sent again)."""

    def __init__(self) -> None:
        self.sent = 0

    def publish(self, job_id: str, queue: str) -> bool:
        self.sent += 1
        return True

    def message_count(self, queue: str) -> int:
        return 0


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)

    def at(share: float) -> float:
        return 1000 * ordered[max(0, math.ceil(share * len(ordered)) - 1)]

    return f"{at(0.5):.1f} / {at(0.99):.1f} ms (n={len(ordered)})"


def timed(function: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def explain(url: str, sql: str) -> str:
    """The access path of PostgreSQL's plan, in a few words: the index scans and sorts it uses."""
    with psycopg.connect(url) as connection:
        lines = [row[0] for row in connection.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)]
    keep = [line.strip().lstrip("-> ").split("  (")[0] for line in lines
            if "Scan" in line or "Sort" in line or "Execution Time" in line]
    return "; ".join(keep)


def describe(url: str, jobs: int, team: str, seconds: float) -> tuple[str, str]:
    with psycopg.connect(url) as connection:
        total, heap, toast, indexes, report = connection.execute(
            "SELECT pg_total_relation_size('jobs'), pg_relation_size('jobs'), "
            "pg_total_relation_size(reltoastrelid), pg_indexes_size('jobs'), "
            "(SELECT avg(octet_length(report::text)) FROM jobs WHERE report IS NOT NULL) "
            "FROM pg_class WHERE relname = 'jobs'").fetchone()
        (per_team,) = connection.execute("SELECT count(*) FROM jobs WHERE team = %s", (team,)).fetchone()
    mb = 2 ** 20
    return ("store", f"{jobs} jobs ({per_team} of {team}), reports {report / 1024:.1f} KB of JSON on "
                     f"average; jobs table {total / mb:.0f} MB (heap {heap / mb:.0f}, "
                     f"TOAST {toast / mb:.0f}, indexes {indexes / mb:.0f}); filled in {seconds:.0f} s")


def measure_lists(settings, member: dict[str, str], ops: dict[str, str], deep: int,
                  requests: int) -> list[tuple[str, str]]:
    """p50 / p99 of each list request through the real application (in process, no reconciler)."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    cases = [("GET /v1/jobs?limit=50 (first page)", "/v1/jobs", {}, member),
             (f"GET /v1/jobs?limit=50&offset={deep} (deep page)", "/v1/jobs", {"offset": deep}, member),
             ("GET /v1/jobs?limit=50&status=failed", "/v1/jobs", {"status": "failed"}, member),
             ("GET /v1/jobs?limit=50&tag=sweep-3", "/v1/jobs", {"tag": "sweep-3"}, member),
             ("GET /v1/admin/jobs?limit=50 (every team)", "/v1/admin/jobs", {}, ops)]
    rows = []
    with TestClient(create_app(settings, reconcile=False)) as client:
        for label, path, params, headers in cases:
            def get(path=path, params=params, headers=headers):  # type: ignore[no-untyped-def]
                return client.get(path, params={"limit": 50, **params}, headers=headers)

            response = get()
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["data"]) == 50 and "spec" not in body["data"][0], label
            size = len(response.content) // 1024
            rows.append((f"new: {label} p50 / p99",
                         f"{percentiles(timed(get, requests, 5))}; count {body['count']}, {size} KB"))
        rows.append(("new: GET /metrics (SQL aggregates) p50 / p99",
                     percentiles(timed(lambda: client.get("/metrics"), 10, 1))))
    return rows


def page_plans(url: str, team: str, deep: int) -> list[tuple[str, str]]:
    """PostgreSQL's plan of crud.list_jobs's page query, first and deep page."""
    from sqlalchemy.dialects import postgresql

    from store import crud
    from store.models import Job

    rows = []
    for label, offset in (("first", 0), ("deep", deep)):
        page = select(Job.id).where(Job.team == team).order_by(*crud.JOB_ORDER).limit(50).offset(offset)
        query = select(*crud.LIST_COLUMNS).where(Job.id.in_(page.scalar_subquery())).order_by(*crud.JOB_ORDER)
        sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        rows.append((f"new: plan of the {label} page's query", explain(url, sql)))
    return rows


def measure_reconciler(label: str, settings, work: dict[str, list[str]],
                       passes: int) -> list[tuple[str, str]]:
    """Passes with the 50 jobs' work (put back before each), then idle passes."""
    from api.queue import Reconciler

    def reconcile() -> list[str]:
        return Reconciler(settings, StubPublisher()).reconcile_once()  # type: ignore[arg-type]

    seconds, sent = [], set()
    for _ in range(passes):
        reset_work(settings.database, work)
        began = time.perf_counter()
        sent = set(reconcile())
        seconds.append(time.perf_counter() - began)
    assert sent == set(work["expired"]) | set(work["never_sent"]) | set(work["stale"]), len(sent)
    return [(f"{label}: reconciler pass with work (10 leases expired, 10 never sent, 10 stale: {len(sent)} "
             "sent, each marked in its own transaction) p50 / p99", percentiles(seconds)),
            (f"{label}: reconciler pass, idle p50 / p99", percentiles(timed(reconcile, 4 * passes)))]


def old_list(url: str, team: str, repeats: int) -> tuple[str, str]:
    """What crud.list_jobs did before: every row of the team, report and spec included, sliced in Python."""
    from store.db import session_scope
    from store.models import Job

    def load() -> int:
        with session_scope(url) as session:
            jobs = list(session.scalars(select(Job).where(Job.team == team)
                                        .order_by(Job.created_at.desc(), Job.id)))
            return len(jobs[:50])

    seconds = timed(load, repeats)
    return ("old: load all rows (the old crud.list_jobs query of every list request, one team, report and "
            "spec included; the route then showed 50)",
            f"{statistics.median(seconds) * 1000:.0f} ms median ({min(seconds) * 1000:.0f}-"
            f"{max(seconds) * 1000:.0f}, n={len(seconds)})")


def use_old_indexes(url: str) -> None:
    """Replace the new indexes by the single-column ones of the previous version."""
    from store.db import get_engine
    from store.models import Job

    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for index in Job.__table__.indexes:
            connection.execute(text(f"DROP INDEX {index.name}"))
        for column in ("team", "status", "created_at"):
            connection.execute(text(f"CREATE INDEX ix_jobs_{column} ON jobs ({column})"))
        connection.execute(text("VACUUM ANALYZE jobs"))


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    from store import crud
    from store.db import get_engine, session_scope
    from store.settings import Settings

    name = f"coscope_bench_{os.getpid()}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    teams = [f"team-{number}" for number in range(args.teams)]
    admin(f"CREATE DATABASE {name}")
    try:
        with tempfile.TemporaryDirectory(prefix="coscope-store-") as home:
            settings = Settings(home=Path(home), database_url=url)
            get_engine(url)
            with session_scope(url) as session:
                keys = {team: crud.create_key(session, "bench", team) for team in teams}
                _, admin_key = crud.create_key(session, "bench-admin", "ops", "admin")
            started = time.perf_counter()
            owners = {team: row.id for team, (row, _) in keys.items()}
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            work = fill(url, args.jobs, teams, owners, args.report_kb, now)
            rows = [describe(url, args.jobs, teams[0], time.perf_counter() - started)]
            deep = (len(range(0, args.jobs, args.teams)) // 50 - 1) * 50  # the first team's last full page
            rows += measure_lists(settings, {"Authorization": f"Bearer {keys[teams[0]][1]}"},
                                  {"Authorization": f"Bearer {admin_key}"}, deep, args.requests)
            rows += page_plans(url, teams[0], deep)
            rows += measure_reconciler("new", settings, work, args.passes)
            rows.append(old_list(url, teams[0], args.old_repeats))
            use_old_indexes(url)
            rows += measure_reconciler("old indexes (this code)", settings, work, args.passes)
    finally:
        get_engine(url).dispose()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    rows.append(("1-minute load average at the end", f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"))
    return rows


def main() -> None:
    from common import arguments, parse, record

    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--teams", type=int, default=3)
    parser.add_argument("--report-kb", type=float, default=8.0)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per list case")
    parser.add_argument("--passes", type=int, default=5, help="reconciler passes with work (idle: 4x)")
    parser.add_argument("--old-repeats", type=int, default=3)
    args = parse(parser)

    rows = run(args)
    record(f"Job store at scale: lists and the reconciler over {args.jobs} jobs of {args.teams} teams in "
           "PostgreSQL", rows)


if __name__ == "__main__":
    main()
