"""The published contract (api/contract.py): docs/openapi.json and docs/spec.schema.json are what the app
serves; every v1 operation is documented (summary, typed success body, its error responses); the job
request's examples are the example files; and a client generated from the committed document by an
off-the-shelf generator (openapi-python-client) submits and reads a job on a real server."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from api import contract
from api.schemas import JOB_EXAMPLES, JobCreate
from coscope.harness import SLOWNESS
from tests.service.conftest import job_spec

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REGENERATE = "out of date: regenerate with `coscope openapi --docs docs` and commit the files"


def _load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def test_the_committed_openapi_document_is_the_apps():
    committed = _load(contract.OPENAPI_FILE)
    assert committed == contract.openapi_document(), f"docs/{contract.OPENAPI_FILE} {REGENERATE}"


def test_the_committed_spec_schema_is_the_specs():
    schema = _load(contract.SPEC_SCHEMA_FILE)
    assert schema == contract.spec_schema(), f"docs/{contract.SPEC_SCHEMA_FILE} {REGENERATE}"
    epsilon = schema["$defs"]["TrainingSpec"]["properties"]["epsilon"]
    assert (epsilon["minimum"], epsilon["maximum"]) == (0, 255)  # bounds travel with the schema (/255)


def _operations():
    for path, methods in contract.openapi_document()["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_v1_operation_is_documented_with_its_errors():
    operation_ids = [operation["operationId"] for _, _, operation in _operations()]
    assert len(operation_ids) == len(set(operation_ids))  # generated clients name their functions by these
    for path, method, operation in _operations():
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), where
        if not path.startswith("/v1/"):
            continue
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success and all(responses[code].get("content") for code in success), where
        for code in success:  # a typed body: a schema for every media type
            assert all("schema" in media for media in responses[code]["content"].values()), (where, code)
        unauthorised = responses["401"]["content"]["application/json"]["schema"]
        assert unauthorised == {"$ref": "#/components/schemas/Problem"}, where
        if "{" in path:
            assert "404" in responses, where
        if method == "post" and path.count("/") == 2:  # submissions
            assert {"409", "413", "422", "429"} <= set(responses), where
        if path.startswith("/v1/admin"):
            assert "403" in responses, where
        if "422" in responses:
            ref = responses["422"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ValidationProblems", where


def test_the_job_request_examples_are_the_example_files_and_valid():
    files = {"quickstart": ROOT / "examples" / "quickstart.yaml",
             "paper": ROOT / "examples" / "paper" / "injected-fgsm.yaml"}
    assert set(JOB_EXAMPLES) == set(files)
    for name, path in files.items():
        value = JOB_EXAMPLES[name]["value"]
        assert value["spec"] == yaml.safe_load(path.read_text()), name
        JobCreate.model_validate(value)
    document = contract.openapi_document()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == set(files)


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory: pytest.TempPathFactory):
    """The Python client openapi-python-client generates from docs/openapi.json, importable."""
    folder = tmp_path_factory.mktemp("generated")
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(DOCS / contract.OPENAPI_FILE),
         "--output-path", str(folder / "coscope_generated"), "--meta", "none"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})  # its ruff hook
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("coscope_generated")
    finally:
        sys.path.remove(str(folder))


def _without_polls(stack) -> str:
    """The server's log (its embedded worker's too) without the access lines of the status polls."""
    lines = stack.log_since("api.log").splitlines()
    return "\n".join(line for line in lines if '"GET /v1/jobs/' not in line)[-8000:]


def test_a_generated_client_submits_and_reads_a_job(generated_client, embedded_server):
    stack, key = embedded_server
    client_module = importlib.import_module("coscope_generated.client")
    models = importlib.import_module("coscope_generated.models")
    create_job = importlib.import_module("coscope_generated.api.jobs.create_job")
    read_job = importlib.import_module("coscope_generated.api.jobs.read_job")
    read_jobs = importlib.import_module("coscope_generated.api.jobs.read_jobs")
    read_report = importlib.import_module("coscope_generated.api.jobs.read_report")
    client = client_module.AuthenticatedClient(base_url=stack.url, token=key)

    body = models.JobCreate.from_dict({"spec": job_spec(epochs=1), "name": "generated", "tags": ["contract"]})
    created = create_job.sync_detailed(client=client, body=body)
    assert created.status_code == 201, created.content
    job = created.parsed
    assert isinstance(job, models.JobPublic) and job.name == "generated" and job.status == "queued"

    deadline = time.monotonic() + 180 * SLOWNESS
    finished = ("succeeded", "failed", "cancelled")
    while (current := read_job.sync(job.id, client=client)).status not in finished:
        assert time.monotonic() < deadline, f"{current}\n--- server and worker log ---\n{_without_polls(stack)}"
        time.sleep(0.5)
    assert current.status == "succeeded" and current.final.robust_accuracy is not None
    listed = read_jobs.sync(client=client, tag="contract")
    assert [entry.id for entry in listed.data] == [job.id] and listed.count == 1
    report = read_report.sync_detailed(job.id, client=client)
    assert report.status_code == 200
    assert json.loads(report.content)["final"]["robust_accuracy"] == current.final.robust_accuracy

    bad = models.JobCreate.from_dict({"spec": {**job_spec(), "training": {"epsilon": -1}}})
    refused = create_job.sync_detailed(client=client, body=bad)
    assert refused.status_code == 422
    assert isinstance(refused.parsed, models.ValidationProblems)
    assert ["body", "spec", "training", "epsilon"] in [problem.loc for problem in refused.parsed.detail]
    missing = read_job.sync_detailed("no-such-job", client=client)
    assert missing.status_code == 404 and missing.parsed.detail == "Job not found"
