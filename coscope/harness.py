"""Real processes of the service, for the service tests and the service benchmarks: the API (uvicorn via
``coscope serve``), Celery workers (``coscope worker``), and either the embedded default (SQLite + SQLAlchemy
transport) or Redis + PostgreSQL on 127.0.0.1. Each stack gets its own home folder, PostgreSQL database and
Redis DB number, removed after.

Needs no test extras: ``tests/service/conftest.py`` wraps it in pytest fixtures, and ``bench/load_submit.py``
and ``bench/service_overhead.py`` use it as it is.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from store.db import get_engine
from store.settings import Settings

# Every Redis database number the tests and benchmarks use on the shared server, in this one place, one per
# module (or per test that needs a broker of its own), so that no two flush or consume each other's queues
# (tests/coscope/test_harness.py checks that none is repeated and that no other file hard-codes one). Each
# owner flushes its database before and after use; DB 0 is left to development.
REDIS_DBS = {
    "tests.service.test_integration": 11,
    "tests.service.test_chaos": 12,
    "bench.load_submit": 13,
    "tests.api.test_queue": 14,
    "tests.service.test_chaos::r5_visibility": 10,
    "tests.api.conftest": 15,
    "tests.service.test_sweeps": 9,
}
REDIS_DB = REDIS_DBS["tests.service.test_integration"]  # Stack's default


def redis_db(owner: str) -> int:
    """The Redis DB number of ``owner`` (a module ``__name__``, or ``module::test``); unknown owners fail,
    so a new user of the shared Redis must claim a number in ``REDIS_DBS``."""
    try:
        return REDIS_DBS[owner]
    except KeyError:
        raise KeyError(f"{owner!r} has no Redis DB number: add it to coscope.harness.REDIS_DBS") from None


def redis_url(owner: str) -> str:
    return f"redis://127.0.0.1:6379/{redis_db(owner)}"


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Every wall-clock deadline of the harness and the service tests is multiplied by COSCOPE_TEST_SLOWNESS
# (default 1: the 2-core development machine under a full test run; e.g. 3 on a machine three times slower)
SLOWNESS = float(os.environ.get("COSCOPE_TEST_SLOWNESS", "1"))
FAST_LEASES = {"COSCOPE_LEASE_SECONDS": "3", "COSCOPE_RECONCILE_SECONDS": "1",
               "COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS": "20", "COSCOPE_SWEEP_RELEASE_SECONDS": "0.5"}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` x SLOWNESS seconds pass."""
    deadline = time.monotonic() + timeout * SLOWNESS
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOWNESS:g}s waiting for {what}")
        time.sleep(every)


UVICORN_LISTENING = re.compile(rb"Uvicorn running on http://[^:]+:(\d+)")


def free_port() -> int:
    """A loopback port the kernel just handed out (bind to port 0), for a server that cannot bind port 0 itself
    (redis-server reads port 0 as "no TCP"). The API binds port 0 itself (``listening_port``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_port(log: Path, process: subprocess.Popen, since: int = 0, timeout: float = 60) -> int:
    """The port a ``coscope serve --port 0`` process bound, from uvicorn's start-up line in ``log`` (written
    after byte offset ``since``): the kernel chose it, so no other process can hold it."""
    deadline = time.monotonic() + timeout * SLOWNESS
    while True:
        text = log.read_bytes()[since:] if log.exists() else b""
        match = UVICORN_LISTENING.search(text)
        if match:
            return int(match.group(1))
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"API did not start:\n{text[-5000:].decode(errors='replace')}")
        time.sleep(0.1)


class Stack:
    """One service under test: its processes (``spawn``, ``start_api``, ``start_worker``), home folder, store
    and broker; ``close`` stops the processes and drops what the stack created."""

    def __init__(self, mode: str, home: Path, env: dict[str, str] | None = None,
                 redis_db: int | None = REDIS_DB) -> None:
        """``env`` adds or overrides settings for every process of this stack. Distributed stacks use Redis
        DB ``redis_db`` on the shared server (flushed before and after), or, with ``redis_db=None``, the
        broker that ``env`` names (e.g. a private redis-server)."""
        self.mode, self.home = mode, home
        self.env = {**os.environ, "COSCOPE_HOME": str(home), **FAST_LEASES, "PYTHONUNBUFFERED": "1"}
        self.database: str | None = None
        self.redis_db = redis_db if mode == "distributed" else None
        if mode == "distributed":
            self.database = create_database()
            self.env["COSCOPE_DATABASE_URL"] = postgres_url(self.database)
            if self.redis_db is not None:
                self.env["COSCOPE_BROKER_URL"] = f"redis://127.0.0.1:6379/{self.redis_db}"
                flush_redis(self.redis_db)
        self.env.update(env or {})
        self.port: int | None = None  # the first API's, once started
        self.url = ""
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.in_process = False  # whether the test process opened the store itself (settings())

    def coscope(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coscope.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def spawn(self, *args: str, log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``python -m coscope.cli ARGS`` in its own session, output appended to ``home/log``."""
        handle = open(self.home / log, "ab")
        process = subprocess.Popen([sys.executable, "-m", "coscope.cli", *args],
                                   env={**self.env, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start_api(self, worker: bool | None = False, *, env: dict[str, str] | None = None,
                  log: str = "api.log") -> subprocess.Popen:
        """``coscope serve`` on a port the kernel picks; ``worker`` None passes no flag (the default: a worker
        when embedded). The first API's port and URL become ``port`` and ``url``; ``env`` and ``log`` start a
        further API process on the same store (own reconciler and settings)."""
        flags = [] if worker is None else ["--worker" if worker else "--no-worker"]
        since = self.log_size(log)
        process = self.spawn("serve", "--port", "0", *flags, log=log, env=env)
        port = listening_port(self.home / log, process, since)
        if self.port is None:
            self.port, self.url = port, f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60 * SLOWNESS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return process
            except httpx.TransportError:
                time.sleep(0.3)
            if process.poll() is not None:
                break
        raise RuntimeError("API did not start:\n" + self.log(log))

    def start_worker(self, queues: str | None = None, env: dict[str, str] | None = None,
                     ready: bool = False) -> subprocess.Popen:
        """``coscope worker`` (log ``worker<N>.log``); ``queues`` and ``env`` override the defaults; ``ready``
        waits until Celery logs that it consumes."""
        index = len(self.workers)
        args = ["worker", "--name", f"w{index}", *(["--queues", queues] if queues else [])]
        worker = self.spawn(*args, log=f"worker{index}.log", env=env)
        self.workers.append(worker)
        if ready:
            self.wait_for_log(f"worker{index}.log", " ready.", timeout=90)
        return worker

    def worker_log(self, worker: subprocess.Popen) -> str:
        return f"worker{self.workers.index(worker)}.log"

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Signal only the process itself, as ``docker stop`` signals a container's PID 1 (a worker's warm
        shutdown then hands its running job back to the queue: ``worker.shutdown``); return its exit status."""
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass
        return process.wait(timeout=timeout)

    @property
    def database_url(self) -> str:
        return self.env.get("COSCOPE_DATABASE_URL") or f"sqlite:///{self.home / 'coscope.db'}"

    def settings(self, **overrides: object) -> Settings:
        """The stack's settings for in-process use of ``store.crud`` or ``worker.runner`` from the caller."""
        self.in_process = True
        values = {name[len("COSCOPE_"):].lower(): value for name, value in self.env.items()
                  if name.startswith("COSCOPE_") and name[len("COSCOPE_"):].lower() in Settings.model_fields}
        return Settings(**{**values, **overrides})

    def wait_for_log(self, name: str, text: str, timeout: float = 60, since: int = 0) -> str:
        """Wait until ``text`` appears in log ``name`` after byte offset ``since``; return that part."""
        deadline = time.monotonic() + timeout * SLOWNESS
        while True:
            part = self.log_since(name, since)
            if text in part:
                return part
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in {name} after {timeout}s:\n{part[-3000:]}")
            time.sleep(0.2)

    def log_size(self, name: str) -> int:
        path = self.home / name
        return path.stat().st_size if path.exists() else 0

    def log_since(self, name: str, offset: int = 0) -> str:
        path = self.home / name
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (Celery parent and its pool child)."""
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def admin_key(self) -> str:
        result = self.coscope("keys", "create", "--name", "admin", "--role", "admin")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return result.stdout.strip()

    def log(self, name: str) -> str:
        path = self.home / name
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                self.kill(process, signal.SIGTERM if process not in self.workers else signal.SIGKILL)
        if self.in_process:  # close the caller's own connections to the store before dropping it
            get_engine(self.database_url).dispose()
        if self.database is not None:
            drop_database(self.database)
        if self.redis_db is not None:
            flush_redis(self.redis_db)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a Celery parent's pool processes), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def _postgres(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


def create_database(prefix: str = "coscope_test") -> str:
    """A new, empty PostgreSQL database on 127.0.0.1 under a random name (returned); ``drop_database`` after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _postgres(f"CREATE DATABASE {name}")
    return name


def drop_database(name: str) -> None:
    _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_url(name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def flush_redis(db: int = REDIS_DB) -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
