"""Dry-run jobs: the report, no torch for synthetic data, and the runner's claim-to-finish path in process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.cost import estimate_cost
from core.errors import DatasetNotFound
from core.spec import JobSpec
from store.db import session_scope
from store.models import Job
from store.settings import Settings
from tests.worker.utils import queued_job
from worker.dry_run import dry_run_report
from worker.runner import run

SYNTHETIC = {"dry_run": True, "dataset": {"name": "synthetic", "synthetic_train_size": 300,
                                          "train_subset": 100, "synthetic_image_size": 16}}


def test_report_has_the_resolved_spec_cost_and_data(tmp_path):
    spec = JobSpec.model_validate(SYNTHETIC)
    report = dry_run_report(spec, tmp_path)
    assert report["dry_run"] is True and report["spec_sha256"] == spec.sha256()
    assert report["spec"]["training"]["alpha"] == 8.0  # resolved
    assert report["estimated_cost_image_passes"] == estimate_cost(spec)
    assert report["data"] == {"name": "synthetic", "path": None, "train_images": 100, "test_images": 512,
                              "image_shape": [3, 16, 16]}


def test_a_synthetic_dry_run_imports_no_torch(tmp_path):
    code = ("import sys, pathlib, worker.runner\n"
            "from core.spec import JobSpec\n"
            "from worker.dry_run import write_dry_run\n"
            f"spec = JobSpec.model_validate({SYNTHETIC!r})\n"
            f"write_dry_run(spec, pathlib.Path({str(tmp_path)!r}), None)\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "report.json").read_text())["dry_run"] is True


def test_missing_data_fails_the_dry_run_as_it_would_fail_training(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar10 files not found"):
        dry_run_report(JobSpec(dry_run=True), tmp_path / "no-data")


def test_the_runner_claims_and_finishes_a_dry_run_once(tmp_path):
    settings = Settings(home=tmp_path)
    job_id = queued_job(settings, SYNTHETIC)
    assert run(job_id, settings, worker="test") == "succeeded"
    assert run(job_id, settings, worker="test") == "finished"  # a redelivery does not run it again
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempt, job.report["dry_run"]) == ("succeeded", 1, True)
    assert json.loads((settings.attempt_folder(job_id, 1) / "report.json").read_text()) == job.report


def test_the_runner_fails_a_dry_run_whose_folder_is_missing(tmp_path):
    settings = Settings(home=tmp_path)
    job_id = queued_job(settings, {"dry_run": True, "dataset": {"name": "imagefolder", "path": "missing"}})
    assert run(job_id, settings, worker="test") == "failed"
    with session_scope(settings.database) as session:
        job = session.get(Job, job_id)
        assert (job.error_code, job.report) == ("DatasetNotFound", None)
        assert "expected an image folder at" in job.error_message
