"""A small runner of docker-compose.yml on podman, so that the container test runs the compose file itself.

Debian's podman-compose 1.0.3 knows neither profiles nor ``depends_on`` conditions, and podman outside
systemd runs no scheduled healthchecks, so this reads the file and starts the services it names with
``podman run``, the way ``docker compose up`` would: the project's network (each service reachable by its
name), named volumes, environment, command, ports, restart policy and healthcheck from the file, in
``depends_on`` order, waiting for ``service_healthy`` dependencies by running their healthchecks. It covers
the parts of the Compose format docker-compose.yml uses, and fails on a service it could not start
faithfully (a GPU reservation). The test's changes (local images, a free port) come as an override merged
over the file, like a second ``-f`` file: maps merge, other values (lists too) replace.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from coscope.images import podman

INTERPOLATION = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $VAR and $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (current == "" and operator and operator.startswith(":"))
        if operator and operator.endswith("?") and unset:
            raise ValueError(f"required variable {name} is missing: {argument}")
        if operator and operator.endswith("-") and unset:
            return argument
        return current or ""

    return INTERPOLATION.sub(substitute, value)


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merge(base.get(key), value) for key, value in override.items()}}
    return override


def seconds(duration: str | int | float) -> float:
    """A Compose duration ("10s", "1m30s", "500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


class Project:
    def __init__(self, file: Path, env: dict[str, str], profiles: Iterable[str] = (),
                 override: dict[str, Any] | None = None, name: str | None = None) -> None:
        loaded = merge(yaml.safe_load(file.read_text()), override or {})
        self.file = file
        self.config: dict[str, Any] = interpolate(loaded, {**os.environ, **env})
        self.name = name or self.config.get("name") or file.parent.name
        self.profiles = set(profiles)
        self.network = f"{self.name}_default"
        self.started: list[str] = []

    def container(self, service: str) -> str:
        return f"{self.name}-{service}-1"  # docker compose v2's container names

    def volume(self, name: str) -> str:
        return f"{self.name}_{name}"

    def service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = self.config["services"][name]
        return service

    def order(self, names: Iterable[str]) -> list[str]:
        """The named services and their dependencies, dependencies first."""
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name not in ordered:
                for dependency in self.service(name).get("depends_on") or {}:
                    visit(dependency)
                ordered.append(name)

        for name in names:
            visit(name)
        return ordered

    def run_options(self, name: str) -> list[str]:
        service = self.service(name)
        if profiles := service.get("profiles"):
            if not self.profiles & set(profiles):
                raise ValueError(f"service {name} needs one of the profiles {profiles}")
        if (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices"):
            raise NotImplementedError(f"service {name} reserves devices (a GPU): not supported here")
        options = ["--name", self.container(name), "--network", self.network, "--network-alias", name,
                   "--label", f"com.docker.compose.project={self.name}",
                   "--label", f"com.docker.compose.service={name}"]
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            options += ["--env", f"{key}={'' if value is None else value}"]
        for volume in service.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            if source.startswith((".", "/", "~")):  # a bind mount: relative to the file, created if missing
                folder = (self.file.parent / Path(source).expanduser()).resolve()
                folder.mkdir(parents=True, exist_ok=True)
                options += ["--volume", f"{folder}:{target}"]
            else:
                options += ["--volume", f"{self.volume(source)}:{target}"]
        for port in service.get("ports") or []:
            options += ["--publish", str(port)]
        if restart := service.get("restart"):
            options += ["--restart", restart]
        if check := service.get("healthcheck"):
            test = check["test"]
            if isinstance(test, list) and test[0] == "CMD":
                options += ["--health-cmd", json.dumps(test[1:])]
            else:  # CMD-SHELL or a plain string: run by /bin/sh -c
                options += ["--health-cmd", test[1] if isinstance(test, list) else test]
            for key, option in (("interval", "--health-interval"), ("timeout", "--health-timeout"),
                                ("start_period", "--health-start-period")):
                if key in check:
                    options += [option, f"{seconds(check[key]):g}s"]
            if "retries" in check:
                options += ["--health-retries", str(check["retries"])]
        if user := service.get("user"):
            options += ["--user", str(user)]
        if signal := service.get("stop_signal"):
            options += ["--stop-signal", signal]
        return options

    def up(self, *names: str, timeout: float = 180) -> None:
        if podman("network", "exists", self.network, check=False).returncode != 0:
            podman("network", "create", "--label", f"com.docker.compose.project={self.name}", self.network)
        for volume in self.config.get("volumes") or {}:
            if podman("volume", "exists", self.volume(volume), check=False).returncode != 0:
                podman("volume", "create", "--label", f"com.docker.compose.project={self.name}",
                       self.volume(volume))
        for name in self.order(names):
            for dependency, condition in (self.service(name).get("depends_on") or {}).items():
                if (condition or {}).get("condition") == "service_healthy":
                    self.wait_healthy(dependency, timeout)
            if name in self.started:
                continue
            service = self.service(name)
            command = service.get("command") or []
            podman("run", "--detach", *self.run_options(name), service["image"],
                   *(command if isinstance(command, list) else ["/bin/sh", "-c", command]))
            self.started.append(name)

    def wait_healthy(self, name: str, timeout: float = 180) -> None:
        """Run the service's healthcheck until it passes (podman outside systemd schedules none)."""
        deadline = time.monotonic() + timeout
        while True:
            result = podman("healthcheck", "run", self.container(name), check=False, timeout=60)
            if result.returncode == 0:
                return
            state = podman("inspect", "--format", "{{.State.Status}}", self.container(name), check=False)
            if state.stdout.strip() not in ("running", "created", "") or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy ({state.stdout.strip()}): "
                                   f"{self.logs(name)[-3000:]}")
            time.sleep(1)

    def exec(self, service: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return podman("exec", self.container(service), *command, check=check)

    def logs(self, service: str) -> str:
        result = podman("logs", self.container(service), check=False)
        return result.stdout + result.stderr

    def down(self, volumes: bool = True) -> None:
        """Remove the project's containers, network and (``volumes``) named volumes, found by label."""
        label = f"label=com.docker.compose.project={self.name}"
        ids = podman("ps", "--all", "--quiet", "--filter", label, check=False).stdout.split()
        if ids:
            podman("rm", "--force", "--time", "10", *ids, check=False, timeout=300)
        podman("network", "rm", "--force", self.network, check=False)
        if volumes:
            for volume in self.config.get("volumes") or {}:
                podman("volume", "rm", "--force", self.volume(volume), check=False)
        self.started.clear()
