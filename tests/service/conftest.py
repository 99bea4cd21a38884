"""Real processes for service tests: the API (uvicorn via ``coscope serve``), Celery workers (``coscope
worker``), and either the embedded default (SQLite + SQLAlchemy transport) or Redis + PostgreSQL on
127.0.0.1. Each stack gets its own home folder, PostgreSQL database and Redis DB number, removed after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REDIS_DB = 11  # tests own this Redis database number and flush it
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FAST_LEASES = {"COSCOPE_LEASE_SECONDS": "3", "COSCOPE_RECONCILE_SECONDS": "1",
               "COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS": "20"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_spec(epochs: int = 2, train_size: int = 128) -> dict:
    """A synthetic job of a few seconds per epoch at most on a CPU."""
    return {"seed": 0,
            "dataset": {"name": "synthetic", "synthetic_train_size": train_size, "synthetic_test_size": 64,
                        "synthetic_image_size": 16},
            "model": {"width": 4},
            "training": {"epochs": epochs, "batch_size": 32, "log_every": 1},
            "evaluation": {"pgd_steps": 2, "restarts": 1, "test_subset": 32},
            "monitor": {"train_images": 64}}


class Stack:
    def __init__(self, mode: str, home: Path) -> None:
        self.mode, self.home = mode, home
        self.env = {**os.environ, "COSCOPE_HOME": str(home), **FAST_LEASES, "PYTHONUNBUFFERED": "1"}
        self.database: str | None = None
        if mode == "distributed":
            self.database = f"coscope_test_{uuid.uuid4().hex[:10]}"
            _postgres(f"CREATE DATABASE {self.database}")
            self.env["COSCOPE_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{self.database}"
            self.env["COSCOPE_BROKER_URL"] = f"redis://127.0.0.1:6379/{REDIS_DB}"
            _flush_redis()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []

    def coscope(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coscope.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def _spawn(self, *args: str, log: str) -> subprocess.Popen:
        handle = open(self.home / log, "ab")
        process = subprocess.Popen([sys.executable, "-m", "coscope.cli", *args], env=self.env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start_api(self, worker: bool | None = False) -> None:
        """``coscope serve``; ``worker`` None passes no flag (the default: a worker when embedded)."""
        flags = [] if worker is None else ["--worker" if worker else "--no-worker"]
        self._spawn("serve", "--port", str(self.port), *flags, log="api.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError("API did not start:\n" + self.log("api.log"))

    def start_worker(self) -> subprocess.Popen:
        worker = self._spawn("worker", "--name", f"w{len(self.workers)}", log=f"worker{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (Celery parent and its pool child)."""
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def admin_key(self) -> str:
        result = self.coscope("keys", "create", "--name", "admin", "--role", "admin")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def log(self, name: str) -> str:
        path = self.home / name
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                self.kill(process, signal.SIGTERM if process not in self.workers else signal.SIGKILL)
        if self.database is not None:
            _postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            _flush_redis()


def _postgres(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


def _flush_redis() -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


class Api:
    """A thin HTTP helper for tests (the typed client is tested on its own)."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def submit(self, spec: dict, **fields: object) -> dict:
        response = self.http.post("/v1/jobs", json={"spec": spec, **fields})
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str, until: str | None = None, timeout: float = 180) -> list[dict]:
        """Read the SSE stream until it ends (the job finished) or an event of type ``until`` arrives."""
        events: list[dict] = []
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            assert response.status_code == 200
            current: dict = {}
            for line in response.iter_lines():
                if line.startswith("id: "):
                    current["id"] = int(line[4:])
                elif line.startswith("event: "):
                    current["type"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and current:
                    events.append(current)
                    if current["type"] == until:
                        return events
                    current = {}
        return events

    def wait_finished(self, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {self.job(job_id)}")


@pytest.fixture(params=["embedded", "distributed"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    created = Stack(request.param, tmp_path / "home")
    created.home.mkdir()
    try:
        yield created
    finally:
        created.close()
