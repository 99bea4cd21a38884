"""docker-compose.yml and the Dockerfiles, checked statically (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from store.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"api", "worker", "worker-cpu", "redis", "postgres", "flower"}
WORKERS = ["worker", "worker-cpu"]
NON_SETTINGS_ENV = {"CUDA_VISIBLE_DEVICES"}  # read by CUDA, not by coscope
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|API_KEY|BASIC_AUTH|PRIVATE", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)([^}]*)\}")
DUMMY_SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def interpolate(value: str) -> str:
    return INTERPOLATION.sub(DUMMY_SECRET, value)


def dockerfiles(compose: dict[str, Any]) -> dict[str, Path]:
    found = {}
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            found[name] = context / dockerfile
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line]


def test_compose_defines_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


@pytest.mark.parametrize("name", ["api", *WORKERS])
def test_coscope_env_names_are_settings_fields(compose: dict[str, Any], name: str) -> None:
    allowed = {f"COSCOPE_{field.upper()}" for field in Settings.model_fields} | NON_SETTINGS_ENV
    env = environment(compose["services"][name])
    assert set(env) - allowed == set()
    required = {"COSCOPE_DATABASE_URL", "COSCOPE_BROKER_URL", "COSCOPE_WEBHOOK_SECRET", "COSCOPE_HOME"}
    assert required <= set(env)
    assert env["COSCOPE_ENV"] == "production"


@pytest.mark.parametrize("name", ["api", *WORKERS])
def test_coscope_env_makes_valid_production_settings(compose: dict[str, Any], name: str) -> None:
    env = environment(compose["services"][name])
    fields = {key.removeprefix("COSCOPE_").lower(): interpolate(value) for key, value in env.items()
              if key.startswith("COSCOPE_")}
    settings = Settings.model_validate(fields)  # validators included, the test's environment left out
    assert settings.database.startswith("postgresql://coscope:")
    assert settings.broker == "redis://redis:6379/0"


def test_api_and_worker_share_the_artifacts_volume_at_coscope_home(compose: dict[str, Any]) -> None:
    for name in ("api", *WORKERS):
        service = compose["services"][name]
        assert f"artifacts:{environment(service)['COSCOPE_HOME']}" in service["volumes"]
    assert "artifacts" in compose["volumes"]


# the only variables with a default: no secrets among them
DEFAULTED = {"COSCOPE_DATA_DIR": ":-./data", "COSCOPE_PUBLISH_HOST": ":-127.0.0.1"}


def test_every_interpolation_but_the_data_folder_is_required_without_a_default() -> None:
    found = INTERPOLATION.findall(COMPOSE_FILE.read_text())
    assert {name for name, _ in found} >= {"POSTGRES_PASSWORD", "COSCOPE_WEBHOOK_SECRET", "FLOWER_BASIC_AUTH"}
    for name, modifier in found:
        if name in DEFAULTED:
            assert modifier == DEFAULTED[name] and not SECRET_NAME.search(name), (name, modifier)
        else:
            assert modifier.startswith(":?"), f"${{{name}{modifier}}} must be required (${{{name}:?...}})"


def test_secret_looking_env_values_come_from_required_variables(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}.{key} must be ${{VAR:?...}}"
    url = environment(compose["services"]["api"])["COSCOPE_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in url


def test_worker_reserves_one_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert environment(worker)["CUDA_VISIBLE_DEVICES"] == "0"
    assert "--queues" in worker["command"] and "gpu" in worker["command"]


def test_cpu_worker_is_an_opt_in_profile_without_a_gpu(compose: dict[str, Any]) -> None:
    """``--profile cpu`` adds a worker for CPU-only machines: both queues (no GPU worker may be there to take
    the gpu queue), no GPU reservation, CPU-only torch; every other service runs without a profile."""
    cpu = compose["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu and "CUDA_VISIBLE_DEVICES" not in environment(cpu)
    queues = cpu["command"][cpu["command"].index("--queues") + 1].split(",")
    assert set(queues) == {"cpu", "gpu"}
    assert cpu["build"]["dockerfile"] == compose["services"]["worker"]["build"]["dockerfile"]
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    assert cpu["image"] != compose["services"]["worker"]["image"]
    profiled = [name for name, service in compose["services"].items() if service.get("profiles")]
    assert profiled == ["worker-cpu"]


def test_api_runs_without_an_embedded_worker(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert "--no-worker" in api["command"] and "0.0.0.0" in api["command"]
    assert any(str(port).endswith("8000") for port in api["ports"])


def seconds(duration: str) -> float:
    """A compose duration ("90s", "1m30s", "2m") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_stop_grace_periods_cover_a_checkpoint_and_the_api_shutdown(compose: dict[str, Any]) -> None:
    """Issue 23 item 4: Docker's default 10 s before SIGKILL cut a worker's hand-back (a checkpoint, then
    back to the queue without using an attempt); the API ends its open requests before its own SIGKILL."""
    for name in WORKERS:
        assert seconds(compose["services"][name]["stop_grace_period"]) >= 60, name
    api = compose["services"]["api"]
    command = api["command"]
    graceful = float(command[command.index("--timeout-graceful-shutdown") + 1])
    assert 0 < graceful and graceful + 5 <= seconds(api["stop_grace_period"])


def test_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert compose["services"]["redis"]["volumes"]


@pytest.mark.parametrize("name,probe",
                         [("postgres", "pg_isready"), ("redis", "redis-cli"), ("api", "/healthz")])
def test_healthchecks(compose: dict[str, Any], name: str, probe: str) -> None:
    test = compose["services"][name]["healthcheck"]["test"]
    assert probe in " ".join(test if isinstance(test, list) else [test])


def test_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    for name in ("api", *WORKERS, "flower"):
        depends_on = compose["services"][name]["depends_on"]
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        assert {dependency["condition"] for dependency in depends_on.values()} == {"service_healthy"}
    assert set(compose["services"]["api"]["depends_on"]) == {"postgres", "redis"}


def test_flower_requires_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "--broker=redis://redis:6379/0" in flower["command"]
    assert environment(flower)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_builds_point_at_existing_dockerfiles(compose: dict[str, Any]) -> None:
    found = dockerfiles(compose)
    assert set(found) == {"api", *WORKERS}
    for path in found.values():
        assert path.is_file(), path


def test_dockerfiles_bake_in_no_secrets_and_run_as_non_root(compose: dict[str, Any]) -> None:
    for path in dockerfiles(compose).values():
        steps = instructions(path)
        for instruction, arguments in steps:
            if instruction in ("ENV", "ARG"):
                names = re.findall(r"(?:^|\s)([A-Za-z_]\w*)(?==|\s|$)", arguments)
                assert not [name for name in names if SECRET_NAME.search(name)], f"{path.name}: {arguments}"
        final_stage = steps[max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"):]
        users = [arguments for instruction, arguments in final_stage if instruction == "USER"]
        assert users, f"{path.name}: the final stage sets no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), path.name


def test_dockerfiles_copy_only_allow_listed_paths(compose: dict[str, Any]) -> None:
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for path in dockerfiles(compose).values():
        for instruction, arguments in instructions(path):
            if instruction == "COPY" and "--from" not in arguments:
                sources = arguments.split()[:-1]
                for source in sources:
                    assert (ROOT / source).exists(), f"{path.name}: COPY {source}"
                    assert source.rstrip("/") in allowed, f"{path.name}: .dockerignore excludes {source}"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=10).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    env = {"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": DUMMY_SECRET, "COSCOPE_WEBHOOK_SECRET": DUMMY_SECRET,
           "FLOWER_BASIC_AUTH": f"admin:{DUMMY_SECRET}"}
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=20, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_dockerfiles_copy_every_installed_package(compose: dict[str, Any]) -> None:
    """``pip install .`` in the build stage installs only what was copied: a package missing from a COPY
    (``store/`` once it was split out of ``api/``) would be missing from the image."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]}
    for path in dockerfiles(compose).values():
        copied = {source.rstrip("/") for instruction, arguments in instructions(path)
                  if instruction == "COPY" and "--from" not in arguments for source in arguments.split()[:-1]}
        assert packages <= copied, f"{path.name}: no COPY of {sorted(packages - copied)}"


# ---- S16: nothing but the API is reachable from outside the host ------------------------------------


def published_ports(service: dict[str, Any]) -> list[dict[str, str]]:
    """Each ``ports`` entry as {host_ip, published, target}, short ("[IP:][HOST:]CONTAINER[/proto]") or long
    syntax. An entry without a host IP binds every interface of the host."""
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found.append({key: str(entry.get(key, "")) for key in ("host_ip", "published", "target")})
            continue
        text = str(entry).split("/", 1)[0]
        if text.startswith("["):  # an IPv6 host address: "[::1]:5555:5555"
            address, _, rest = text[1:].partition("]:")
            host_ip, parts = address, rest.split(":")
        else:
            parts = text.split(":")
            host_ip = parts.pop(0) if len(parts) == 3 else ""
        found.append({"host_ip": host_ip, "published": parts[0] if len(parts) == 2 else "",
                      "target": parts[-1]})
    return found


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_data_stores_publish_no_port(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert not published_ports(service), f"{name} must be reachable only on the compose network"
    assert service.get("network_mode") != "host", name


def test_flower_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    flower = compose["services"].get("flower")
    if flower is None:
        pytest.skip("no Flower service")
    assert flower.get("network_mode") != "host"
    for port in published_ports(flower):
        assert port["host_ip"] in ("127.0.0.1", "::1"), f"Flower published on {port} (every interface)"


def test_the_api_is_published_on_loopback_unless_the_operator_opens_it(compose: dict[str, Any]) -> None:
    """Issue 23 item 5: no `8000:8000` on every interface with a fresh deployment."""
    defaults = {"api": {**compose["services"]["api"], "ports": [
        INTERPOLATION.sub(lambda match: match.group(2).removeprefix(":-"), str(entry))
        for entry in compose["services"]["api"]["ports"]]}}
    assert [port["host_ip"] for port in published_ports(defaults["api"])] == ["127.0.0.1"]


def test_the_first_admin_key_is_on_a_volume_of_the_api_alone(compose: dict[str, Any]) -> None:
    """Issue 23 item 5: COSCOPE_HOME is the artifacts volume every worker mounts; the key must not be there."""
    api = compose["services"]["api"]
    key_file = Path(environment(api)["COSCOPE_KEY_FILE"])
    assert not key_file.is_relative_to(environment(api)["COSCOPE_HOME"])
    assert f"api-secrets:{key_file.parent}" in api["volumes"] and "api-secrets" in compose["volumes"]
    for name in WORKERS:
        assert not any(str(volume).startswith("api-secrets:") for volume in compose["services"][name]["volumes"])


def test_only_the_api_and_flower_publish_ports(compose: dict[str, Any]) -> None:
    publishing = {name for name, service in compose["services"].items() if published_ports(service)}
    assert publishing <= {"api", "flower"}, publishing


@pytest.mark.parametrize(("entry", "expected"), [
    ("5555:5555", {"host_ip": "", "published": "5555", "target": "5555"}),
    ("127.0.0.1:5555:5555", {"host_ip": "127.0.0.1", "published": "5555", "target": "5555"}),
    ("[::1]:5555:5555/tcp", {"host_ip": "::1", "published": "5555", "target": "5555"}),
    ("6379", {"host_ip": "", "published": "", "target": "6379"}),
    ({"target": 6379, "published": 6379}, {"host_ip": "", "published": "6379", "target": "6379"}),
])
def test_the_port_parser_reads_every_syntax(entry: Any, expected: dict[str, str]) -> None:
    assert published_ports({"ports": [entry]}) == [expected]


def test_final_stages_run_nothing_and_builds_share_their_first_layers(compose: dict[str, Any]) -> None:
    """Build-time mounts (pip mirrors, CA bundles: coscope/images.py) leave their mount points in the
    layer of every RUN step they are given to, so the shipped stage has none. The worker's build stage
    begins with the API's steps, up to the API's dependencies, so the two builds share those layers."""
    steps = {name: instructions(path) for name, path in dockerfiles(compose).items()}
    for name, found in steps.items():
        final = found[max(i for i, (instruction, _) in enumerate(found) if instruction == "FROM"):]
        assert "RUN" not in [instruction for instruction, _ in final], name
    api, worker = steps["api"], steps["worker"]
    shared = next(i for i, step in enumerate(api) if step[0] == "RUN" and "pip install -r" in step[1]) + 1
    assert worker[:shared] == api[:shared]
    assert steps["worker-cpu"] == worker
