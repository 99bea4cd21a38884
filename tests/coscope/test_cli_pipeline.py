"""``coscope`` as a pipeline step, against a real embedded server with its worker: ``--output json`` is the
API's JSON alone on stdout, and the exit code names the outcome (``coscope.client_cli.ExitCode``)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from coscope.harness import Stack
from tests.service.conftest import job_spec


def _cli(stack: Stack, key: str, *args: str):
    return stack.coscope(*args, "--server", stack.url, "--key", key)


def test_submit_wait_json_then_status_json(embedded_server, tmp_path: Path):
    stack, key = embedded_server
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(job_spec(epochs=1)))
    submitted = _cli(stack, key, "submit", str(spec), "--wait", "--output", "json", "--name", "step")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert (job["status"], job["name"]) == ("succeeded", "step")
    assert set(job["final"]) == {"clean_accuracy", "robust_accuracy"}
    status = _cli(stack, key, "status", job["id"], "--output", "json")
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == job["id"]


def test_exit_codes_of_bad_input_missing_job_and_a_refused_key(embedded_server, tmp_path: Path):
    stack, key = embedded_server
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epsilon: -1\n")
    assert _cli(stack, key, "submit", str(bad), "--output", "json").returncode == 2
    assert _cli(stack, key, "status", "no-such-job").returncode == 6
    assert _cli(stack, "cs_wrong", "status", "no-such-job").returncode == 5
    assert stack.coscope("status", "x", "--server", "http://127.0.0.1:9", "--key", key).returncode == 4
