"""Service overhead: one small CPU job run directly and through the embedded service; the API's cold start,
submit latency and memory.

    python bench/service_overhead.py [--train-size 2048] [--epochs 3] [--repeats 1] [--cold-starts 3]
                                     [--submits 100] [--quick]

Everything runs as real processes on 127.0.0.1 in the embedded default mode (SQLite job store, SQLite
broker through kombu's SQLAlchemy transport), each service in its own temporary COSCOPE_HOME, started with
the harness the service tests use (``coscope.harness.Stack``), with the team limits raised and the
production lease and reconciler periods (``load_submit.settings_env``).

1. Overhead: the same synthetic job (PreActResNet18 of width 8, FGSM, the CO monitor on with its sets scaled
   to the job, a small final PGD) run by ``coscope train SPEC --out DIR --quiet`` (wall time from spawn to
   exit) and through ``coscope serve`` with its embedded worker (wall time from the POST /v1/jobs to the
   first GET /v1/jobs/{id}, polled every 0.2 s, that shows it succeeded). The service is started and has run
   one tiny warm-up job before any timing, and stays up (idle) during the direct runs; the arms alternate.
   Both report.json files give the trainer's own compute (training + monitor + final evaluation), so the
   overhead shows end to end and as wall minus compute; the job's timestamps split the service's wall.
2. API cold start: spawn of ``coscope serve --no-worker`` on a fresh home to the first 200 from /healthz;
   and ``python -c "import api.main"`` next to a bare ``python -c pass``.
3. Submit latency: ``--submits`` sequential POST /v1/jobs of a dry-run spec from one client (keep-alive) to
   the last cold-started API; no worker, so nothing runs.
4. API memory: VmRSS and VmHWM of that API process after the submits, and whether torch is mapped into it
   (target: under 200 MB, no torch); the same for the embedded worker's parent process in part 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, record, spread
from load_submit import DRY_RUN_SPEC, percentile, settings_env

from coscope.harness import Stack, child_pids, listening_port

POLL_SECONDS = 0.2  # job status polling in the service arm
HEALTH_POLL_SECONDS = 0.01  # /healthz polling during a cold start
TERMINAL = ("succeeded", "failed", "cancelled")
MB = 1024 * 1024
Rows = list[tuple[str, str]]


def job_spec(train_size: int, epochs: int, test_size: int = 256) -> dict[str, Any]:
    """The timed job: synthetic 32x32 images, PreActResNet18 width 8, FGSM at 8/255, the monitor checking
    128 images every 16 steps (and at epoch ends), a final PGD-10 with 1 restart on ``test_size`` images."""
    return {"seed": 0,
            "dataset": {"name": "synthetic", "synthetic_train_size": train_size,
                        "synthetic_test_size": test_size},
            "model": {"arch": "preact_resnet18", "width": 8},
            "training": {"method": "fgsm", "epsilon": 8, "epochs": epochs, "batch_size": 128, "log_every": 4},
            "evaluation": {"pgd_steps": 10, "restarts": 1, "test_subset": test_size},
            "monitor": {"train_images": 128, "indicator_images": 64, "every_steps": 16}}


WARM_UP_SPEC = job_spec(train_size=64, epochs=1, test_size=32)


# ---- Processes -----------------------------------------------------------------------------------------
def embedded_stack(home: Path) -> Stack:
    home.mkdir(parents=True, exist_ok=True)
    return Stack("embedded", home, env=settings_env())


def api_client(stack: Stack) -> httpx.Client:
    """A keep-alive client with the first admin key, which ``coscope serve`` writes to a fresh home."""
    key = (stack.home / "api-key").read_text().strip()
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def cold_start(stack: Stack) -> float:
    """Spawn ``coscope serve --no-worker``; seconds until /healthz first answers 200."""
    started = time.perf_counter()  # the harness's start_api() polls too coarsely to time a start
    process = stack.spawn("serve", "--port", "0", "--no-worker", log="api.log")
    stack.port = listening_port(stack.home / "api.log", process)
    stack.url = f"http://127.0.0.1:{stack.port}"
    while process.poll() is None:
        try:
            if httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(HEALTH_POLL_SECONDS)
    raise RuntimeError("API did not start:\n" + stack.log("api.log"))


def process_seconds(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def torch_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "torch/_C" in maps


def describe_process(pid: int) -> str:
    used = memory(pid)
    return (f"RSS {used['VmRSS'] / MB:.0f} MB, peak {used['VmHWM'] / MB:.0f} MB, "
            f"torch {'loaded' if torch_loaded(pid) else 'not loaded'}")


# ---- 1. Overhead of one job ----------------------------------------------------------------------------
@dataclass
class Arm:
    walls: list[float] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # the service arm's final job records

    def compute(self) -> list[float]:
        """The trainer's own seconds: training + monitor checks + final evaluation."""
        return [sum(report["timing"][part] for part in ("train_seconds", "monitor_seconds", "eval_seconds"))
                for report in self.reports]

    def rest(self) -> list[float]:
        return [wall - compute for wall, compute in zip(self.walls, self.compute(), strict=True)]


def run_direct(spec_file: Path, out: Path, arm: Arm) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("COSCOPE_")}
    started = time.perf_counter()
    command = [sys.executable, "-m", "coscope.cli", "train", str(spec_file), "--out", str(out), "--quiet"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    arm.walls.append(time.perf_counter() - started)
    arm.reports.append(json.loads((out / "report.json").read_text()))


def run_service(http: httpx.Client, spec: dict[str, Any], arm: Arm, timeout: float = 3600) -> None:
    """Submit, poll until the job is seen finished, fetch its report."""
    started = time.perf_counter()
    response = http.post("/v1/jobs", json={"spec": spec, "name": "service-overhead"})
    response.raise_for_status()
    job = response.json()
    while job["status"] not in TERMINAL:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"job {job['id']} not finished after {timeout:.0f} s: {job['status']}")
        time.sleep(POLL_SECONDS)
        job = http.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
    arm.walls.append(wall)
    arm.jobs.append(job)
    arm.reports.append(http.get(f"/v1/jobs/{job['id']}/report").raise_for_status().json())


def measure_overhead(train_size: int, epochs: int, repeats: int, workdir: Path) -> tuple[Arm, Arm, str]:
    """Direct and service arms, alternating, ``repeats`` each; and the embedded worker parent's memory."""
    spec = job_spec(train_size, epochs)
    spec_file = workdir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    direct, service, warm_up = Arm(), Arm(), Arm()
    stack = embedded_stack(workdir / "home")
    try:
        stack.start_api(worker=None)  # coscope serve as a user starts it: with its embedded worker
        with api_client(stack) as http:
            run_service(http, WARM_UP_SPEC, warm_up)
            for repeat in range(repeats):
                run_direct(spec_file, workdir / f"direct-{repeat}", direct)
                run_service(http, spec, service)
        worker = describe_process(child_pids(stack.processes[0].pid)[0])
    finally:
        stack.close()
    return direct, service, worker


def _seconds_between(job: dict[str, Any], start: str, end: str) -> float:
    moment = datetime.datetime.fromisoformat
    return (moment(job[end]) - moment(job[start])).total_seconds()


def overhead_rows(direct: Arm, service: Arm, worker: str, train_size: int, epochs: int) -> Rows:
    report = direct.reports[0]
    steps = -(-train_size // 128)
    queued = [_seconds_between(job, "created_at", "started_at") for job in service.jobs]
    running = [_seconds_between(job, "started_at", "finished_at") for job in service.jobs]
    seen = [wall - _seconds_between(job, "created_at", "finished_at") for wall, job in
            zip(service.walls, service.jobs, strict=True)]
    overhead = [100 * (s - d) / d for s, d in zip(service.walls, direct.walls, strict=True)]
    median = statistics.median
    overall = 100 * (median(service.walls) - median(direct.walls)) / median(direct.walls)
    return [
        ("job", f"synthetic {train_size} train / 256 test images 32x32, PreActResNet18 width 8, FGSM 8/255, "
                f"epochs {epochs} x {steps} steps of 128, monitor 128 images every 16 steps + epoch ends "
                f"(checks: {report['co']['monitor']['checks']}), final PGD-10-1 on 256 images, "
                f"{report['environment']['threads']} torch threads"),
        ("direct wall, spawn of coscope train to exit (s)", spread(direct.walls)),
        ("service wall, POST to seen succeeded (s)", spread(service.walls)),
        ("overhead = (service - direct) / direct",
         f"{overall:.1f} % of the medians; per pair {spread(overhead)} %"),
        ("compute = train + monitor + eval, direct / service (s)",
         f"{spread(direct.compute())} / {spread(service.compute())}"),
        ("wall minus compute, direct / service (s)", f"{spread(direct.rest())} / {spread(service.rest())}"),
        ("service: queued (created to claimed) / running (claimed to finished) / finished to seen",
         f"{median(queued):.2f} / {median(running):.1f} / {median(seen):.2f} s (medians)"),
        ("embedded worker parent after the jobs", worker),
    ]


# ---- 2-4. The API alone --------------------------------------------------------------------------------
@dataclass
class ApiFacts:
    cold_starts: list[float] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)  # python -c "import api.main"
    bare: list[float] = field(default_factory=list)  # python -c pass
    latencies: list[float] = field(default_factory=list)  # seconds per submit
    statuses: Counter[int] = field(default_factory=Counter)
    memory: dict[str, int] = field(default_factory=dict)
    torch: bool = True

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


def submit_sequentially(http: httpx.Client, count: int, facts: ApiFacts) -> None:
    for number in range(count):
        started = time.perf_counter()
        response = http.post("/v1/jobs", json={"spec": {**DRY_RUN_SPEC, "seed": number}, "tags": ["latency"]})
        facts.latencies.append(time.perf_counter() - started)
        facts.statuses[response.status_code] += 1


def measure_api(cold_starts: int, submits: int, workdir: Path, imports: int = 3) -> ApiFacts:
    """Cold starts on fresh homes; the last API then takes the submits and has its memory read."""
    facts = ApiFacts()
    facts.bare = [process_seconds("-c", "pass") for _ in range(imports)]
    facts.imports = [process_seconds("-c", "import api.main") for _ in range(imports)]
    for index in range(cold_starts):
        stack = embedded_stack(workdir / f"api-{index}")
        try:
            facts.cold_starts.append(cold_start(stack))
            if index == cold_starts - 1:
                with api_client(stack) as http:
                    submit_sequentially(http, submits, facts)
                pid = stack.processes[0].pid
                facts.memory, facts.torch = memory(pid), torch_loaded(pid)
        finally:
            stack.close()
    return facts


def api_rows(facts: ApiFacts) -> Rows:
    ms = [1000 * seconds for seconds in facts.latencies]
    return [
        ("cold start: spawn of coscope serve --no-worker (fresh home) to first 200 from /healthz (s)",
         spread(facts.cold_starts)),
        ('python -c "import api.main" / python -c pass (s)',
         f"{spread(facts.imports)} / {spread(facts.bare)}"),
        (f"submit latency, {len(ms)} sequential POST /v1/jobs (dry run, one client) p50 / p90 / p99 / max",
         f"{percentile(ms, 50):.1f} / {percentile(ms, 90):.1f} / {percentile(ms, 99):.1f} / {max(ms):.1f} ms "
         f"(first {ms[0]:.1f} ms)"),
        ("HTTP statuses of the submits",
         ", ".join(f"{status}: {count}" for status, count in sorted(facts.statuses.items()))
         + f"; non-2xx: {facts.errors}"),
        ("API process after the submits: VmRSS / VmHWM (target < 200 MB)",
         f"{facts.memory['VmRSS'] / MB:.0f} / {facts.memory['VmHWM'] / MB:.0f} MB"),
        ("torch in the API process (/proc/PID/maps)", "loaded" if facts.torch else "not loaded"),
    ]


# ---- Entry points --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[tuple[str, Rows]]:
    """Both measurements as (title, rows), for main() or a script that runs every benchmark."""
    load = f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory(prefix="coscope-overhead-") as workdir:
        direct, service, worker = measure_overhead(args.train_size, args.epochs, args.repeats, Path(workdir))
        facts = measure_api(args.cold_starts, args.submits, Path(workdir))
    loaded = ("1-minute load average before the run", load)
    return [(f"Service overhead: a {args.train_size}-image {args.epochs}-epoch CPU job, "
             "coscope train vs. the embedded service",
             [*overhead_rows(direct, service, worker, args.train_size, args.epochs), loaded]),
            ("API cold start, submit latency and memory (embedded, coscope serve --no-worker)",
             [*api_rows(facts), loaded])]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=2048,
                        help="synthetic training images (default 2048)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the timed job (default 3)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each arm (default 1)")
    parser.add_argument("--cold-starts", type=int, default=3, help="API cold starts (default 3)")
    parser.add_argument("--submits", type=int, default=100, help="sequential submits (default 100)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a 256-image 1-epoch job, 1 cold start, 20 submits")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.cold_starts, args.submits = 256, 1, 1, 20
    return args


def main() -> int:
    args = parse_args()
    results = run(args)
    for title, rows in results:
        record(title, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
