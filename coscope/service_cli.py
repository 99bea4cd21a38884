"""``coscope serve``, ``coscope worker`` and ``coscope keys create``: the service's process entry points."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any


def add_service_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API (with an embedded worker by default)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000; 0: one the kernel picks)")
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--worker", dest="worker", action="store_true", default=None,
                      help="also run a worker process (the default without COSCOPE_BROKER_URL)")
    mode.add_argument("--no-worker", dest="worker", action="store_false", help="API only")
    serve.add_argument("--timeout-graceful-shutdown", type=float, default=GRACEFUL_SHUTDOWN_SECONDS,
                       metavar="SECONDS", help="on SIGTERM, how long open requests may finish before "
                       f"they are cancelled (default {GRACEFUL_SHUTDOWN_SECONDS:g}; event streams end first)")

    worker = commands.add_parser("worker", help="run a Celery worker: one job at a time, a fresh child per job")
    worker.add_argument("--queues", default="gpu,cpu", help="comma-separated queues (default gpu,cpu)")
    worker.add_argument("--name", default=None, help="worker node name (default gpu<CUDA_VISIBLE_DEVICES>|cpu)")

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (only the hash is stored)")
    create.add_argument("--name", required=True)
    create.add_argument("--team", default="default")
    create.add_argument("--role", choices=("member", "admin"), default="member")


GRACEFUL_SHUTDOWN_SECONDS = 5.0  # uvicorn's timeout_graceful_shutdown: within docker stop's default 10 s
WORKER_STOP_SECONDS = 60  # the embedded worker's warm shutdown: its job checkpoints, goes back to the queue
RESTART_DELAYS = (1.0, 60.0)  # seconds before restarting a dead embedded worker: first, and at most (doubling)
HEALTHY_WORKER_SECONDS = 60  # a worker that lived this long died of something new: the next restart is prompt

TRAINER_PACKAGES = ("torch", "torchvision", "numpy", "matplotlib")  # the [worker] extra (pyproject.toml)


def missing_trainer(command: str, hint: str = "") -> bool:
    """True, after saying what to install, when this installation lacks the trainer (the ``[worker]`` extra):
    the bare package is the client and the API only."""
    import importlib.util

    missing = [name for name in TRAINER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(f"coscope {command}: needs the trainer ({', '.join(missing)} not installed): "
                         f"pip install 'coscope[worker]'{hint}\n")
    return bool(missing)


def run_service_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from store.settings import get_settings

    try:  # placeholder secrets in production, bad values: refuse to start, with the reason and no traceback
        settings = get_settings()
    except ValidationError as error:
        reasons = "\n".join(f"  - {problem['msg'].removeprefix('Value error, ')}"
                             + (f" ({'.'.join(map(str, problem['loc']))})" if problem["loc"] else "")
                             for problem in error.errors())
        sys.stderr.write(f"coscope {args.command}: refusing to start, invalid COSCOPE_* settings:\n"
                         f"{reasons}\n")
        return 2
    if args.command == "keys":
        from store import crud
        from store.db import session_scope

        with session_scope(settings.database) as session:
            _, key = crud.create_key(session, args.name, args.team, args.role)
        sys.stdout.write(key + "\n")
        return 0
    if args.command == "worker":
        if missing_trainer("worker"):
            return 2
        try:  # the worker's own start-up checks (time limit, visibility timeout), without a Celery traceback
            import worker.celery_app  # noqa: F401  (no torch: see its docstring)
        except ValueError as error:
            sys.stderr.write(f"coscope worker: refusing to start: {error}\n")
            return 2
        from store.broker import declare_queues

        declare_queues(settings)
        os.execv(sys.executable, worker_command(args.queues, args.name))
    return _serve(args, settings)


def worker_command(queues: str, name: str | None) -> list[str]:
    node = name or (f"gpu{os.environ['CUDA_VISIBLE_DEVICES']}" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--queues", queues,
            "--concurrency", "1", "--prefetch-multiplier", "1", "--max-tasks-per-child", "1", "-O", "fair",
            "--hostname", f"{node}-{os.getpid()}@%h", "--loglevel", "INFO"]


def _first_key(settings: Any) -> str | None:
    """On a store with no keys, create an admin key and write it to the key file (``COSCOPE_KEY_FILE``, default
    HOME/api-key; mode 600)."""
    from sqlalchemy import func, select

    from store import crud
    from store.db import session_scope
    from store.models import ApiKey

    with session_scope(settings.database) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        _, key = crud.create_key(session, "first-admin", "default", "admin")
    path = settings.first_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return str(path)


def _die_with_parent() -> None:
    """Runs in the embedded worker before exec: SIGTERM it when ``coscope serve`` dies, however it dies
    (uvicorn re-raises SIGTERM after a graceful shutdown, so a ``finally`` alone would not run)."""
    from billiard.util import set_pdeathsig  # Celery's own prctl(PR_SET_PDEATHSIG) wrapper

    try:
        set_pdeathsig(signal.SIGTERM)
    except OSError:  # not Linux: no death signal; ``coscope serve`` still stops it on a clean exit
        pass


class EmbeddedWorker(threading.Thread):
    """The worker ``coscope serve`` runs beside its API (the embedded default), started again whenever it
    exits while the server runs (killed for memory, or a crash at start-up): without it, jobs would stay
    queued with no one to run them. A worker that keeps dying is restarted at a calmer pace, up to a minute
    apart. Replacements are started from this thread, which lives as long as the server: the death signal
    (``_die_with_parent``) follows the thread that started a process, so it still means "serve died"."""

    def __init__(self) -> None:
        super().__init__(name="coscope-embedded-worker", daemon=True)
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # a restart and ``stop`` never interleave
        self.process = self._spawn()
        self.start()

    @staticmethod
    def _spawn() -> subprocess.Popen:
        return subprocess.Popen(worker_command("gpu,cpu", "embedded"), start_new_session=True,
                                preexec_fn=_die_with_parent)

    def run(self) -> None:
        delay = RESTART_DELAYS[0]
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            lived = time.monotonic() - started
            if lived >= HEALTHY_WORKER_SECONDS:
                delay = RESTART_DELAYS[0]
            sys.stderr.write(f"coscope serve: the embedded worker exited with code {code} after {lived:.0f} s; "
                             f"starting a new one in {delay:g} s\n")
            if self.stopping.wait(delay):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                self.process = self._spawn()
            delay = min(2 * delay, RESTART_DELAYS[1])

    def stop(self) -> None:
        """The Celery parent alone, as `docker stop` does: a warm shutdown hands its job back to the queue."""
        with self.lock:
            self.stopping.set()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def _serve(args: argparse.Namespace, settings: Any) -> int:
    import uvicorn

    from api.main import create_app
    from store.broker import declare_queues

    host, port = args.host or settings.host, settings.port if args.port is None else args.port
    with_worker = args.worker or (args.worker is None and settings.broker_url is None)  # embedded default
    if with_worker and missing_trainer("serve", " (or 'coscope serve --no-worker' for the API alone)"):
        return 2
    settings.home.mkdir(parents=True, exist_ok=True)
    key_file = _first_key(settings)
    declare_queues(settings)  # before the worker starts and the API publishes: neither races to create them
    worker = EmbeddedWorker() if with_worker else None
    address = f"http://{host}:{port}" if port else f"http://{host}:<the port in uvicorn's line below>"
    sys.stderr.write(
        f"coscope API on {address} (OpenAPI docs: {address}/docs)\n"
        f"dashboard: {address}/ui/ (sign in with an API key)\n"
        f"job store {settings.database.split('@')[-1]}, broker {settings.broker.split('@')[-1]}, "
        f"{'embedded worker' if worker else 'no worker in this process'}\n"
        + (f"first admin API key written to {key_file}; clients read it from there, or send "
           f"'Authorization: Bearer <key>'\n" if key_file else
           "authenticate with 'Authorization: Bearer <key>' (create keys with 'coscope keys create')\n"))
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=args.timeout_graceful_shutdown)
    server = _server(config, app.state.stopping)
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl+C: uvicorn raises the SIGINT again after its graceful shutdown
        pass
    finally:
        if worker is not None:
            worker.stop()
    return 0 if server.started else 3  # 3: uvicorn's start-up failure (e.g. the port is taken)


def _server(config: Any, stopping: threading.Event) -> Any:
    """uvicorn's server, which also sets ``stopping`` (``app.state.stopping``) as its shutdown begins. uvicorn
    waits for open responses before it runs the app's lifespan shutdown, and the event stream of a running
    job never ends by itself: the streams end as soon as ``stopping`` is set (``api.sse``), other requests get
    ``timeout_graceful_shutdown`` seconds, and the process exits."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            stopping.set()
            await super().shutdown(sockets)

    return Server(config)
