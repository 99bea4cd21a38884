"""Issue 12: the images and the compose stack for real, in containers (podman).

The stack (conftest.py): images built from docker/Dockerfile.{api,worker}, then redis, postgres, api and the
``--profile cpu`` worker started from docker-compose.yml. The host talks to it over HTTP only, as a user
would; ``podman exec`` only where docs/operations.md sends users to ``docker compose exec``, and to look inside.
The tests run in file order on one stack: the last one stops the API.
"""

from __future__ import annotations

import json
from xml.etree import ElementTree

import httpx
import pytest

from coscope import images
from coscope.harness import wait_until
from tests.containers.conftest import DATA_MARKER, Built, Stack
from tests.service.conftest import Api, job_spec

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]  # the first test builds the images

FINISHED = ("succeeded", "failed", "cancelled")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    # docs/operations.md: `docker compose exec api cat /var/lib/coscope-api/api-key` gives the first admin key;
    # the workers, which mount the artifacts volume, never see it
    key = stack.project.exec("api", "cat", "/var/lib/coscope-api/api-key").stdout.strip()
    assert stack.project.exec("worker-cpu", "ls", "/var/lib/coscope", "/var/lib").stdout.count("api-key") == 0
    return Api(stack.url, key)


def present(image: str, paths: list[str]) -> set[str]:
    """The ``paths`` that exist in ``image``."""
    probe = "; ".join(f"test -e {path} && echo {path}" for path in paths)
    found = images.podman("run", "--rm", "--entrypoint", "sh", image, "-c", f"{probe}; true").stdout
    return set(found.split())


def test_images_hold_nothing_of_the_build_machine(built: Built) -> None:
    """The pip configuration, local package folders and CA bundle were build-time only: no layer, history
    entry, environment variable or mount point of the final images names them (the base image's own CA
    bundle aside)."""
    local = [path for location in sum(images.host_pip_config().values(), [])
             if (path := images.local_path(location))]
    for tag in (built.api, built.worker):
        described = (images.podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
                     + images.podman("image", "inspect", tag).stdout)
        assert not [path for path in local if path in described], tag
        user = images.podman("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip()
        assert user == "coscope", tag
        assert present(tag, [*local, "/etc/pip.conf"]) <= present(images.BASE_IMAGE, local), tag
    assert images.size_mb(built.api) < 500  # torch-free: the base image and about 120 MB of packages


def test_containers_run_as_uid_10001_and_share_the_artifacts_volume(stack: Stack) -> None:
    mounts = {}
    for service in ("api", "worker-cpu"):
        status = stack.project.exec(service, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {"10001"}, (service, uids)
        inspected = json.loads(images.podman("inspect", stack.project.container(service)).stdout)[0]
        mounts[service] = {(mount.get("Name"), mount["Destination"]) for mount in inspected["Mounts"]}
    assert (stack.project.volume("artifacts"), "/var/lib/coscope") in mounts["api"] & mounts["worker-cpu"]


def test_the_workers_read_datasets_from_a_read_only_data_volume(stack: Stack) -> None:
    seen = stack.project.exec("worker-cpu", "sh", "-c", f'echo $COSCOPE_DATA_ROOT; cat /data/{DATA_MARKER}; '
                              "touch /data/written 2>/dev/null && echo writable || echo read-only").stdout
    assert seen.splitlines() == ["/data", "a dataset file", "read-only"], seen


def test_only_the_api_is_published_on_loopback(stack: Stack) -> None:
    published = {service: images.podman("port", stack.project.container(service)).stdout.split()
                 for service in ("redis", "postgres", "api", "worker-cpu")}
    port = stack.url.rsplit(":", 1)[1]
    assert published == {"redis": [], "postgres": [], "api": ["8000/tcp", "->", f"127.0.0.1:{port}"],
                         "worker-cpu": []}


def test_the_api_container_has_no_torch(stack: Stack) -> None:
    result = stack.project.exec("api", "python", "-c", "import torch", check=False)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    maps = stack.project.exec("api", "cat", "/proc/1/maps").stdout
    assert "python" in maps and "libtorch" not in maps and "torch" not in maps
    assert stack.project.exec("worker-cpu", "python", "-c", "import torch").returncode == 0


def test_a_job_runs_end_to_end_over_http(stack: Stack, api: Api) -> None:
    """Submit, follow the SSE stream to its end, then the artifacts the worker wrote on the shared volume,
    served by the API."""
    job = api.submit(job_spec(epochs=2), name="container-quick")
    events = api.events(job["id"], timeout=300)
    types = [event["type"] for event in events]
    assert "progress" in types and events[-1]["data"].get("status") == "succeeded", types[-5:]
    final = api.job(job["id"])
    assert (final["status"], final["attempt"]) == ("succeeded", 1)

    listed = api.http.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
    assert {"report.json", "curves.png"} <= {artifact["name"] for artifact in listed}
    report = api.http.get(f"/v1/jobs/{job['id']}/artifacts/report.json")
    assert report.status_code == 200 and "co" in report.json()
    curves = api.http.get(f"/v1/jobs/{job['id']}/artifacts/curves.png")
    assert curves.status_code == 200 and curves.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_sweep_runs_and_the_api_image_draws_its_heatmap(stack: Stack, api: Api) -> None:
    """Issue 23: the API image has no matplotlib, yet serves the sweep heatmap (an SVG it draws itself),
    whatever the sweep is called."""
    result = stack.project.exec("api", "python", "-c", "import matplotlib", check=False)
    assert result.returncode != 0 and "No module named 'matplotlib'" in result.stderr
    name = "container <script>&\"' sweep"
    created = api.http.post("/v1/sweeps", json={"name": name, "spec": job_spec(epochs=1),
                                                "grid": {"training.epsilon": [2, 8]}, "seeds": [0]})
    assert created.status_code == 201, created.text
    sweep = created.json()
    events = api.events_at(f"/v1/sweeps/{sweep['id']}/events", timeout=300)
    assert events[-1]["type"] == "sweep_finished" and events[-1]["data"]["status"] == "succeeded", events[-3:]

    url = f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.svg"
    response = api.http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml", response.text
    drawn = ElementTree.fromstring(response.content)
    assert drawn.find(f"{SVG}title").text.startswith(f"{name} ({sweep['id'][:8]})")
    cells = [rect for rect in drawn.iter(f"{SVG}rect") if rect.get("class") == "cell"]
    assert len(cells) == 3 * 2 and all(rect.get("data-value") for rect in cells)  # 3 panels, all measured
    assert api.http.get(url, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    assert api.http.get(f"/v1/sweeps/{sweep['id']}/artifacts/heatmap.png").status_code == 410


def test_a_running_job_is_cancelled(api: Api) -> None:
    job = api.submit(job_spec(epochs=50, train_size=512), name="container-cancel")
    wait_until(lambda: api.job(job["id"])["status"] == "running", 180, "the job to run")
    response = api.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code in (200, 202), response.text
    assert api.wait_finished(job["id"], timeout=120)["status"] == "cancelled"


def test_a_job_survives_a_worker_container_restart_as_attempt_2(stack: Stack, api: Api) -> None:
    job = api.submit(job_spec(epochs=5, train_size=256), name="container-restart")
    # after epoch 0 (checkpointed), with epochs to go
    wait_until(lambda: api.job(job["id"]).get("progress", {}).get("epoch", -1) >= 1, 180, "epoch 1")
    images.podman("restart", "--time", "0", stack.project.container("worker-cpu"))  # SIGKILL mid-job
    final = api.wait_finished(job["id"], timeout=300)
    assert (final["status"], final["attempt"]) == ("succeeded", 2), final


def test_stopping_the_api_container_is_a_clean_shutdown(stack: Stack) -> None:
    container = stack.project.container("api")
    images.podman("stop", container)  # SIGTERM, then SIGKILL after 10 s
    state = json.loads(images.podman("inspect", "--format", "{{json .State}}", container).stdout)
    logs = stack.project.logs("api")
    assert state["ExitCode"] == 0, logs[-2000:]
    assert "Finished server process" in logs
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.url}/healthz", timeout=5)
