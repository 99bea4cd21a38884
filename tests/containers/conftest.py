"""The container test's stack: coscope's images built with podman and docker-compose.yml run on them
(tests/containers/compose.py), reached from the host over HTTP only."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

import pytest

from coscope import images
from coscope.harness import free_port
from tests.containers.compose import Project

COMPOSE_FILE = images.ROOT / "docker-compose.yml"
# Fast leases, like the service tests' stacks (coscope.harness.FAST_LEASES), a little longer for containers
# sharing two busy cores: a job whose worker died is requeued within seconds, not minutes.
LEASES = {"COSCOPE_LEASE_SECONDS": "10", "COSCOPE_RECONCILE_SECONDS": "2",
          "COSCOPE_REQUEUE_QUEUED_AFTER_SECONDS": "30"}
SERVICES = ("api", "worker-cpu")  # with their dependencies, redis and postgres
SECRETS = ("POSTGRES_PASSWORD", "COSCOPE_WEBHOOK_SECRET", "FLOWER_BASIC_AUTH")  # compose requires them


def skip_or_fail(reason: str, env: Mapping[str, str] = os.environ) -> NoReturn:
    """Skip the container tests for ``reason``, or fail them where ``COSCOPE_REQUIRE_CONTAINERS=1``: .ci/run
    installs and configures podman and sets it, so there a podman that does not work is a failure, never a
    silent skip (like tests/ui with ``COSCOPE_REQUIRE_BROWSER``)."""
    if env.get("COSCOPE_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"COSCOPE_REQUIRE_CONTAINERS=1, but {reason}")
    pytest.skip(reason)


@dataclass
class Built:
    api: str
    worker: str
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def built() -> Built:
    """The API image and the CPU worker image, tagged with compose's image names (cached layers reused)."""
    if reason := images.available():
        skip_or_fail(reason)
    images.base_images()
    compose = Project(COMPOSE_FILE, env=dict.fromkeys(SECRETS, "x"), profiles=["cpu"])
    api, worker = compose.service("api"), compose.service("worker-cpu")
    # The API first: the worker build then reuses its dependency layer. TORCH_INDEX_URL (PyTorch's CPU index
    # in the file) is emptied: that index is not reachable here, so the worker gets the torch wheel on local
    # disk (the CUDA build, which runs on a CPU as well).
    seconds = {"api": images.build(api["build"]["dockerfile"], api["image"]),
               "worker": images.build(worker["build"]["dockerfile"], worker["image"], "TORCH_INDEX_URL=")}
    return Built(api["image"], worker["image"], seconds)


DATA_MARKER = "marker.txt"


@dataclass
class Stack:
    project: Project
    url: str


@pytest.fixture(scope="module")
def stack(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis, postgres, api and worker-cpu from docker-compose.yml (``--profile cpu``), the API published on a
    free loopback port only, the workers' dataset folder (COSCOPE_DATA_DIR) a fresh one holding DATA_MARKER;
    everything removed afterwards, volumes included."""
    port = free_port()  # podman publishes a host port it is given (compose's short syntax)
    data = tmp_path_factory.mktemp("datasets")
    (data / DATA_MARKER).write_text("a dataset file\n")
    data.chmod(0o755)  # readable by the workers' uid 10001 (pytest makes its folders 0700)
    secrets_env = {**{name: secrets.token_hex(16) for name in SECRETS}, "COSCOPE_DATA_DIR": str(data)}
    override = {"services": {
        "redis": {"image": images.REDIS_IMAGE},  # stand-ins for redis:7 and postgres:16 (no registry here)
        "postgres": {"image": images.POSTGRES_IMAGE},
        "api": {"ports": [f"127.0.0.1:{port}:8000"], "environment": LEASES},
        "worker-cpu": {"environment": LEASES}}}
    project = Project(COMPOSE_FILE, env=secrets_env, profiles=["cpu"], override=override,
                      name=f"coscope-test-{os.getpid()}")
    project.down()
    try:
        project.up(*SERVICES)
        project.wait_healthy("api")
        yield Stack(project, f"http://127.0.0.1:{port}")
    finally:
        project.down()
