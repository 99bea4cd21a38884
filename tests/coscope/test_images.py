"""coscope.images without podman (issue 23 item 9): where podman has no containers.conf, every invocation
carries the runtime and ulimits .ci/run would have configured, or the container test is told why not."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from coscope import images
from coscope.images import SYSTEM_CONF, ULIMITS, PodmanSetup, podman_setup

ROOT = Path(__file__).resolve().parents[2]
RUNC = "/usr/sbin/runc"
HOME = {"HOME": "/home/u"}


def setup_with(env: dict[str, str], files: set[str], runc: str | None = RUNC) -> PodmanSetup:
    return podman_setup(env, lambda path: str(path) in files, lambda name: runc if name == "runc" else None)


@pytest.mark.parametrize(("env", "conf"), [
    (HOME, str(SYSTEM_CONF)), (HOME, "/home/u/.config/containers/containers.conf"),
    ({**HOME, "XDG_CONFIG_HOME": "/x"}, "/x/containers/containers.conf"),
    ({**HOME, "CONTAINERS_CONF": "/c.conf"}, "/c.conf")])
def test_a_containers_conf_is_left_to_configure_podman(env, conf):
    setup = setup_with(env, {conf})
    assert setup == PodmanSetup()
    assert setup.command("run", "--rm", "image") == ["podman", "run", "--rm", "image"]


def test_without_a_containers_conf_runc_and_the_ulimits_come_with_every_invocation():
    setup = setup_with(HOME, set())
    assert (setup.runtime, setup.ulimits, setup.problem) == (RUNC, ULIMITS, None)
    head = ["podman", "--runtime", RUNC]
    limits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
    assert setup.command("run", "--rm", "image") == [*head, "run", *limits, "--rm", "image"]
    assert setup.command("build", "-f", "D", ".") == [*head, "build", *limits, "-f", "D", "."]
    assert setup.command("ps", "--all") == [*head, "ps", "--all"]  # starts no container: no ulimits


def test_without_a_containers_conf_or_runc_the_reason_says_what_to_install():
    setup = setup_with(HOME, set(), runc=None)
    assert setup.problem == (f"podman has no {SYSTEM_CONF} and runc is not installed: the container test "
                             f"runs containers with runc (apt-get install runc), or write {SYSTEM_CONF} as "
                             ".ci/run does")


def test_the_per_invocation_values_are_the_ones_ci_writes_into_containers_conf():
    conf = re.search(r"<<'EOF'\n(.*?)\nEOF", (ROOT / ".ci" / "run").read_text(), re.S).group(1)
    ulimits = json.loads(re.search(r"default_ulimits = (\[.*\])", conf).group(1))
    runtime = re.search(r'runtime = "(\w+)"', conf).group(1)
    assert (tuple(ulimits), runtime) == (ULIMITS, images.RUNTIME)


def test_podman_and_build_run_podman_with_the_setup(tmp_path, monkeypatch):
    """A stand-in ``podman`` on PATH that prints its arguments: what images.podman and images.build run."""
    fake = tmp_path / "podman"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(images, "setup", lambda: PodmanSetup(runtime=RUNC, ulimits=("nofile=1:2",)))
    ran = json.loads(images.podman("run", "--rm", "image").stdout)
    assert ran == ["--runtime", RUNC, "run", "--ulimit", "nofile=1:2", "--rm", "image"]
    monkeypatch.setattr(images, "pip_options", lambda folder: [])
    monkeypatch.setattr(images, "image_id", lambda tag: None)
    images.build("docker/Dockerfile.api", "t:1")  # the stand-in exits 0: a successful build
    assert images.podman("info").stdout.strip() == json.dumps(["--runtime", RUNC, "info"])
