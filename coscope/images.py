"""Building coscope's images with podman on a machine without an image registry (tests/containers and
bench/container_images.py use it; like coscope.harness, a development tool that needs no test extras).

The Dockerfiles default to python:3.11-slim and PyPI. Here no image registry is reachable, so the builds use
the local Debian base image of scripts/container_images.sh, and pip gets this machine's own configuration
(local indexes, wheel folders, CA bundle) at build time only: a pip.conf as a build secret plus read-only
mounts of the local folders it names. Neither is part of a layer, and the final stage (the image) has no
RUN step that could keep a mount point, so nothing of this machine ends up in an image.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("COSCOPE_BASE_IMAGE", "localhost/debian-py311:bookworm")
PYTHON = os.environ.get("COSCOPE_BASE_PYTHON", "python3.11")  # a bare Debian image has no `python3`
REDIS_IMAGE = os.environ.get("COSCOPE_TEST_REDIS_IMAGE", "localhost/coscope-test-redis:bookworm")
POSTGRES_IMAGE = os.environ.get("COSCOPE_TEST_POSTGRES_IMAGE", "localhost/coscope-test-postgres:bookworm")
PYPI = "https://pypi.org/simple"
SYSTEM_CONF = Path("/etc/containers/containers.conf")
# What .ci/run writes into SYSTEM_CONF, given per invocation where no containers.conf exists: runc (crun
# refuses a hybrid cgroup layout) and ulimits that a machine which is itself a container can grant
RUNTIME = "runc"
ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")
STARTS_CONTAINERS = ("run", "create", "build")  # the commands that take --ulimit


@dataclass(frozen=True)
class PodmanSetup:
    """What every podman invocation adds: the runtime (a global option; ``build`` has its own of the same
    name, which takes it there) and the ulimits of the commands that start containers; or why podman cannot
    run the container test here."""

    runtime: str | None = None
    ulimits: tuple[str, ...] = ()
    problem: str | None = None

    def command(self, *args: str) -> list[str]:
        """The argument vector of ``podman ARGS`` with this setup."""
        head = ["podman", *(["--runtime", self.runtime] if self.runtime else [])]
        if args and args[0] in STARTS_CONTAINERS:
            limits = [option for limit in self.ulimits for option in ("--ulimit", limit)]
            return [*head, args[0], *limits, *args[1:]]
        return [*head, *args]


def podman_setup(env: Mapping[str, str], exists: Callable[[Path], bool],
                 which: Callable[[str], str | None]) -> PodmanSetup:
    """Nothing to add where a containers.conf configures podman (``CONTAINERS_CONF``, SYSTEM_CONF or the
    user's own): its owner chose. Otherwise, as on a machine where someone installed podman and nothing else,
    runc and ULIMITS on every invocation (what .ci/run would have written), or, without runc, the reason."""
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "/")) / ".config")
    found = [Path(env["CONTAINERS_CONF"])] if env.get("CONTAINERS_CONF") else []
    if any(exists(path) for path in [*found, SYSTEM_CONF, config_home / "containers" / "containers.conf"]):
        return PodmanSetup()
    runc = which(RUNTIME)
    if runc is None:
        return PodmanSetup(problem=f"podman has no {SYSTEM_CONF} and {RUNTIME} is not installed: the "
                                   f"container test runs containers with {RUNTIME} (apt-get install "
                                   f"{RUNTIME}), or write {SYSTEM_CONF} as .ci/run does")
    return PodmanSetup(runtime=runc, ulimits=ULIMITS)


@functools.cache
def setup() -> PodmanSetup:
    """This machine's ``podman_setup``, found once per process."""
    return podman_setup(os.environ, Path.exists, shutil.which)


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``podman ARGS`` (with ``setup()``), output captured; with ``check``, a failure raises with podman's own
    message."""
    result = subprocess.run(setup().command(*args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed: {result.stderr.strip()[-2000:]}")
    return result


def base_images() -> None:
    """The Debian base, redis and PostgreSQL images, built at once where podman lacks them (about 80 s)."""
    names = {"COSCOPE_BASE_IMAGE": BASE_IMAGE, "COSCOPE_TEST_REDIS_IMAGE": REDIS_IMAGE,
             "COSCOPE_TEST_POSTGRES_IMAGE": POSTGRES_IMAGE}
    subprocess.run(["bash", str(ROOT / "scripts" / "container_images.sh")], check=True, timeout=1800,
                   env={**os.environ, **names})


def host_pip_config() -> dict[str, list[str]]:
    """This machine's pip settings that say where packages come from (``pip config list``, env included)."""
    listed = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "config", "list"],
                            capture_output=True, text=True, check=False).stdout
    found: dict[str, list[str]] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "extra-index-url", "find-links", "cert"):
            found[name] = value.strip().strip("'\"").split()  # a later source (env) overrides an earlier one
    return found


def local_path(location: str) -> str | None:
    if location.startswith("file://"):
        return urlparse(location).path
    return location if location.startswith("/") else None


def pip_options(folder: Path) -> list[str]:
    """``podman build`` options giving the build's pip this machine's package sources: a pip.conf as the
    ``pipconf`` secret the Dockerfiles mount at /etc/pip.conf, and the local folders and CA bundle it names,
    mounted read-only at their own paths (only RUN steps of the build stage, which has all of them, see
    them). Local indexes come first, so a package that is on local disk and on PyPI alike (torch, gigabytes)
    comes from the disk (pip takes the first of equally good candidates); PyPI serves the rest."""
    config = host_pip_config()
    indexes = config.get("index-url", [PYPI]) + config.get("extra-index-url", [])
    indexes = [url for url in indexes if local_path(url)] + [url for url in indexes if not local_path(url)]
    lines = ["[global]", f"index-url = {indexes[0]}"]
    if indexes[1:]:
        lines.append("extra-index-url = " + " ".join(indexes[1:]))
    if config.get("find-links"):
        lines.append("find-links = " + " ".join(config["find-links"]))
    mounts = set()
    if config.get("cert"):
        lines.append(f"cert = {config['cert'][0]}")
        mounts.add(config["cert"][0])
    for location in indexes + config.get("find-links", []):
        path = local_path(location)
        if path and Path(path).exists():
            # an index's pages link to ../../files: mount the index's parent folder
            mounts.add(str(Path(path).parent if Path(path).name == "simple" else Path(path)))
    (folder / "pip.conf").write_text("\n".join(lines) + "\n")
    return ["--secret", f"id=pipconf,src={folder / 'pip.conf'}",
            *(option for path in sorted(mounts) for option in ("-v", f"{path}:{path}:ro"))]


def build(dockerfile: str, tag: str, *build_args: str, context: Path = ROOT, no_cache: bool = False) -> float:
    """``podman build`` of ``dockerfile`` (relative to ``context``) on the local base image; wall seconds."""
    previous = image_id(tag)
    with tempfile.TemporaryDirectory() as folder:
        options = ["--network", "host", *pip_options(Path(folder)), "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                   "--build-arg", f"PYTHON={PYTHON}", *(f"--build-arg={arg}" for arg in build_args)]
        if no_cache:
            options.append("--no-cache")
        started = time.perf_counter()
        result = subprocess.run(setup().command("build", *options, "-f", str(context / dockerfile), "-t", tag,
                                                str(context)), capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"podman build {dockerfile} failed:\n{result.stdout[-4000:]}\n"
                           f"{result.stderr[-4000:]}")
    if previous and previous != image_id(tag):
        # The image this build replaced: its final stage holds a copy of the venv (6 GB for the worker), so
        # builds after source edits would fill the disk. Its build-stage layers stay, as the build cache.
        podman("rmi", previous, check=False)
    return seconds


def image_id(tag: str) -> str | None:
    found = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def size_mb(tag: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()) / 1e6


def available() -> str | None:
    """Why podman cannot run the container test here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs it)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (it builds the local base images; .ci/run installs it)"
    if problem := setup().problem:
        return problem
    info = subprocess.run(setup().command("info"), capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return f"podman does not work here: {info.stderr.strip()[-300:]}"
    return None
