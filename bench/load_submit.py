"""Load test of the job service: concurrent clients of several teams submit dry-run jobs over loopback.

    python bench/load_submit.py [--jobs 500] [--clients 20] [--teams 3]
                                [--backend embedded|redis-postgres] [--drain-timeout 600] [--no-record]

It starts its own service as real processes on 127.0.0.1 with the harness the service tests use
(``coscope.harness.Stack``): ``coscope serve`` with its embedded worker (SQLite store, SQLite broker), or the
API and one ``coscope worker`` on Redis DB 13 and a fresh PostgreSQL database, dropped after. The per-team
limits are raised so the load is not answered with 429s, and the lease and reconciler periods are the
production defaults. Each client is a thread with its own connection, bound to one team (20 clients of 3
teams: 7/7/6), submitting its share of dry-run jobs back to back, each with an Idempotency-Key; a transport
error, 409, 429 or 5xx is retried with the same key (so a retry cannot create a second job) and counted. Then
it waits, bounded, until the worker has finished them, and accounts for every job: listed exactly once by its
own team, succeeded, invisible to the other teams.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coscope.harness import Stack, redis_db
from store.settings import Settings

DRY_RUN_SPEC = {"dry_run": True, "dataset": {"name": "synthetic", "synthetic_train_size": 256,
                                             "synthetic_test_size": 64, "synthetic_image_size": 16},
                "model": {"width": 4}, "training": {"epochs": 1}}
BENCH_REDIS_DB = redis_db("bench.load_submit")  # the distributed run's Redis DB number
RAISED_LIMITS = {"COSCOPE_TEAM_MAX_ACTIVE_JOBS": "100000", "COSCOPE_TEAM_SUBMITS_PER_MINUTE": "100000"}
RETRIED = {409, 429}  # and every 5xx
TRIES = 5  # per job
PAGE = 200  # the API's largest page


@dataclass
class Outcome:
    """What the clients saw and what the accounting found."""

    jobs: int
    clients: int
    teams: int
    submitted: dict[str, list[str]] = field(default_factory=dict)  # team -> job ids
    latencies: list[float] = field(default_factory=list)  # seconds of each submit request, retries included
    http: Counter[int] = field(default_factory=Counter)  # status of each submit request (0: transport error)
    checks: Counter[int] = field(default_factory=Counter)  # status of each polling and accounting request
    retries: int = 0
    submit_seconds: float = 0.0  # first submit sent to last answer received
    drain_seconds: float | None = None  # first submit to no job queued or running; None: the wait ran out
    final: Counter[str] = field(default_factory=Counter)  # job status -> count, from the teams' listings
    attempts: Counter[int] = field(default_factory=Counter)  # claim attempts -> jobs
    problems: list[str] = field(default_factory=list)
    deliveries: int = 0  # task messages the worker received; more than jobs: duplicates the claim refused
    tracebacks: int = 0  # in the service's logs
    load_before: float = 0.0  # 1-minute load average when the run started: other work on the machine
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in (self.http + self.checks).items() if status >= 500)

    @property
    def accounted(self) -> int:
        return sum(len(ids) for ids in self.submitted.values())

    def submitted_in(self, status: int, seconds: float) -> None:
        with self.lock:
            self.http[status] += 1
            self.latencies.append(seconds)


def settings_env(requeue_after: float | None = None) -> dict[str, str]:
    """Raised team limits, and the production lease and reconciler periods (the harness's are for fault
    tests), with ``requeue_after`` for ``COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS`` if given: the reconciler
    re-sends every job queued for longer than that, so a backlog that takes longer to drain is sent twice."""
    periods = ("lease_seconds", "reconcile_seconds", "requeue_queued_after_seconds")
    env = {f"COSCOPE_{name.upper()}": str(Settings.model_fields[name].default) for name in periods}
    if requeue_after is not None:
        env["COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS"] = str(requeue_after)
    return {**RAISED_LIMITS, **env}


def start_stack(backend: str, home: Path, requeue_after: float | None = None) -> Stack:
    """The service under test, started and ready; the caller closes it."""
    home.mkdir(parents=True, exist_ok=True)
    mode = "embedded" if backend == "embedded" else "distributed"
    stack = Stack(mode, home, env=settings_env(requeue_after), redis_db=BENCH_REDIS_DB)
    try:
        if mode == "embedded":
            stack.start_api(worker=None)  # coscope serve as a user starts it: with its embedded worker
        else:
            stack.start_api()
            stack.start_worker(ready=True)
    except BaseException:
        stack.close()
        raise
    return stack


def team_keys(stack: Stack, teams: int) -> dict[str, str]:
    """A member key per team, made with ``coscope keys create``."""
    keys = {}
    for index in range(teams):
        team = f"team-{chr(ord('a') + index)}"
        result = stack.coscope("keys", "create", "--name", f"load-{team}", "--team", team)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        keys[team] = result.stdout.strip()
    return keys


def _submit_one(http: httpx.Client, outcome: Outcome, idempotency_key: str, seed: int) -> str | None:
    body = {"spec": {**DRY_RUN_SPEC, "seed": seed}, "name": idempotency_key, "tags": ["load"]}
    for attempt in range(TRIES):
        if attempt:
            with outcome.lock:
                outcome.retries += 1
        started = time.perf_counter()
        try:
            response = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key})
        except httpx.TransportError:
            outcome.submitted_in(0, time.perf_counter() - started)
            continue
        outcome.submitted_in(response.status_code, time.perf_counter() - started)
        if response.status_code in (200, 201):
            return str(response.json()["id"])
        if response.status_code not in RETRIED and response.status_code < 500:
            outcome.problems.append(f"{idempotency_key}: {response.status_code} {response.text[:200]}")
            return None
        time.sleep(min(float(response.headers.get("Retry-After", 1)), 5))
    outcome.problems.append(f"{idempotency_key}: not accepted after {TRIES} tries")
    return None


def submit_all(url: str, keys: dict[str, str], outcome: Outcome) -> None:
    """``outcome.clients`` threads, client i of team i mod teams, submitting their share at once."""
    teams = list(keys)
    each, extra = divmod(outcome.jobs, outcome.clients)
    share = [each + (index < extra) for index in range(outcome.clients)]
    start = threading.Barrier(outcome.clients + 1)
    outcome.submitted = {team: [] for team in teams}

    def client(index: int) -> None:
        team = teams[index % len(teams)]
        headers = {"Authorization": f"Bearer {keys[team]}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            start.wait()
            for number in range(share[index]):
                job_id = _submit_one(http, outcome, f"load-{index}-{number}", seed=index * 1000 + number)
                if job_id is not None:
                    with outcome.lock:
                        outcome.submitted[team].append(job_id)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(outcome.clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    outcome.submit_seconds = time.perf_counter() - began


def wait_drained(url: str, admin_key: str, outcome: Outcome, began: float, timeout: float) -> None:
    """Poll the admin listing until no job is queued or running, or ``timeout`` seconds passed."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30) as http:
        while time.perf_counter() - began < timeout:
            pending = 0
            for status in ("queued", "running"):
                response = http.get("/v1/admin/jobs", params={"status": status, "limit": 1})
                outcome.checks[response.status_code] += 1
                pending += response.json()["count"] if response.status_code == 200 else 1
            if pending == 0:
                outcome.drain_seconds = time.perf_counter() - began
                return
            time.sleep(0.5)


def _team_jobs(http: httpx.Client, outcome: Outcome) -> list[dict]:
    jobs: list[dict] = []
    while True:
        response = http.get("/v1/jobs", params={"limit": PAGE, "offset": len(jobs)})
        outcome.checks[response.status_code] += 1
        page = response.json()
        jobs += page["data"]
        if not page["data"] or len(jobs) >= page["count"]:
            return jobs


def account(url: str, keys: dict[str, str], outcome: Outcome) -> None:
    """Every submitted job listed exactly once by its team and by no other, with its final status."""
    for team, key in keys.items():
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            listed = _team_jobs(http, outcome)
            ids = [job["id"] for job in listed]
            mine = outcome.submitted[team]
            if sorted(ids) != sorted(mine):
                outcome.problems.append(f"{team}: {len(ids)} jobs listed ({len(set(ids))} distinct), "
                                        f"{len(mine)} submitted")
            outcome.final.update(job["status"] for job in listed)
            outcome.attempts.update(job["attempt"] for job in listed)
            for other, theirs in outcome.submitted.items():
                for job_id in theirs[:5] if other != team else []:
                    response = http.get(f"/v1/jobs/{job_id}")
                    outcome.checks[response.status_code] += 1
                    if response.status_code != 404:
                        outcome.problems.append(f"{team} sees {other}'s job {job_id}: {response.status_code}")
            if mine:
                report = http.get(f"/v1/jobs/{mine[0]}/report")
                outcome.checks[report.status_code] += 1
                if report.status_code != 200 or report.json().get("dry_run") is not True:
                    outcome.problems.append(f"{team}: no dry-run report for {mine[0]}: {report.status_code}")
    if outcome.final["succeeded"] != outcome.jobs:
        outcome.problems.append(f"{outcome.final['succeeded']} of {outcome.jobs} jobs succeeded: "
                                f"{dict(outcome.final)}")


def scan_logs(home: Path, outcome: Outcome) -> None:
    for log in home.glob("*.log"):
        text = log.read_text(errors="replace")
        outcome.tracebacks += text.count("Traceback (most recent call last)")
        outcome.deliveries += text.count("] received")


def run_load(stack: Stack, jobs: int, clients: int, teams: int, drain_timeout: float) -> Outcome:
    """Submit ``jobs`` dry-run jobs from ``clients`` concurrent clients of ``teams`` teams to a started stack,
    wait for the worker, and account for every job."""
    outcome = Outcome(jobs, clients, teams, load_before=os.getloadavg()[0])
    keys = team_keys(stack, teams)
    admin = stack.admin_key()
    began = time.perf_counter()
    submit_all(stack.url, keys, outcome)
    wait_drained(stack.url, admin, outcome, began, drain_timeout)
    account(stack.url, keys, outcome)
    scan_logs(stack.home, outcome)
    return outcome


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _statuses(counts: Counter[int]) -> str:
    return ", ".join(f"{status or 'transport error'}: {count}" for status, count in sorted(counts.items()))


def rows(outcome: Outcome, backend: str, requeue_after: float | None = None) -> list[tuple[str, str]]:
    ms = [1000 * seconds for seconds in outcome.latencies]
    clients = Counter(index % outcome.teams for index in range(outcome.clients))
    drain = f"{outcome.drain_seconds:.1f} s" if outcome.drain_seconds is not None else "not drained in time"
    return [
        ("backend", "SQLite + SQLite broker, embedded worker" if backend == "embedded"
         else "PostgreSQL + Redis, one coscope worker"),
        ("settings", ", ".join(f"{name.removeprefix('COSCOPE_')} {value}"
                               for name, value in settings_env(requeue_after).items())),
        ("load", f"{outcome.jobs} dry-run jobs, {outcome.clients} clients of {outcome.teams} teams "
                 f"({'/'.join(str(clients[team]) for team in range(outcome.teams))}), loopback"),
        ("submit latency p50 / p90 / p99 / max", f"{percentile(ms, 50):.0f} / {percentile(ms, 90):.0f} / "
                                                 f"{percentile(ms, 99):.0f} / {max(ms):.0f} ms"),
        ("submit throughput", f"{outcome.accounted / outcome.submit_seconds:.1f} jobs/s "
                              f"({outcome.submit_seconds:.1f} s for all submits)"),
        ("drain (first submit to nothing queued or running)", drain),
        ("HTTP statuses of submits", _statuses(outcome.http)),
        ("HTTP statuses of polls and checks", _statuses(outcome.checks)),
        ("5xx (all requests)", str(outcome.server_errors)),
        ("retried submits (429, 409, 5xx, transport)", str(outcome.retries)),
        ("jobs accounted for (listed once by their team, by no other)",
         f"{outcome.accounted} of {outcome.jobs}; final: "
         + ", ".join(f"{status} {count}" for status, count in sorted(outcome.final.items()))),
        ("claim attempts per job", ", ".join(f"{attempt}: {count}"
                                             for attempt, count in sorted(outcome.attempts.items()))),
        ("task messages received by the worker", str(outcome.deliveries)),
        ("tracebacks in the service logs", str(outcome.tracebacks)),
        ("problems", "; ".join(outcome.problems[:5]) or "none"),
        ("1-minute load average before the run", f"{outcome.load_before:.2f} ({os.cpu_count()} cores; "
                                                 "clients, API and worker share them)"),
    ]


def main() -> int:
    from common import arguments, parse, record

    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--teams", type=int, default=3)
    parser.add_argument("--backend", choices=("embedded", "redis-postgres"), default="embedded")
    parser.add_argument("--drain-timeout", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--requeue-after", type=float, default=None,
                        help="COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS for the run (default: its default)")
    args = parse(parser)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="coscope-load-") as home:
        stack, outcome = start_stack(args.backend, Path(home), args.requeue_after), None
        try:
            outcome = run_load(stack, args.jobs, args.clients, args.teams, args.drain_timeout)
        finally:
            if outcome is None or outcome.problems or outcome.tracebacks:
                for log in Path(home).glob("*.log"):
                    sys.stderr.write(f"--- {log.name}\n{stack.log(log.name)}\n")
            stack.close()
    record(f"Service load test: {args.jobs} dry-run jobs, {args.clients} clients, {args.teams} teams",
           rows(outcome, args.backend, args.requeue_after))
    return 1 if outcome.problems or outcome.server_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
