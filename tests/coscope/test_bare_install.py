"""A bare ``pip install coscope`` (no ``[worker]`` extra) is the CLI, the Python client and the API, without
torch: installed into a fresh virtual environment from a copy of the package's files, it imports no trainer
package, drives a real server (``submit --wait``, ``status``, ``report``), and its trainer commands say what
to install instead of failing with a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coscope.harness import Stack
from coscope.service_cli import TRAINER_PACKAGES
from tests.service.conftest import job_spec

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FILES = ("pyproject.toml", "README.md", "core", "store", "api", "worker", "coscope")
WORKER_EXTRA = "pip install 'coscope[worker]'"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv holding ``pip install .`` of the working tree (a copy, so the build
    leaves nothing in the checkout); pip takes the dependencies from its configured index."""
    work = tmp_path_factory.mktemp("bare")
    (work / "src").mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, work / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, work / "src" / name)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    installed = subprocess.run([work / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet",
                                str(work / "src")], capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return work / "venv" / "bin"


def _run(bare: Path, *args: str, home: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("COSCOPE_")}
    return subprocess.run([str(bare / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          cwd=home, env={**clean, "COSCOPE_HOME": str(home), **(env or {})})


def test_the_bare_package_has_no_trainer_and_its_modules_import_none(bare, tmp_path):
    probe = ("import importlib.util, sys, api.main, coscope.cli, coscope.client, store.db, worker.celery_app\n"
             f"print([name for name in {TRAINER_PACKAGES!r} if importlib.util.find_spec(name)])\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({TRAINER_PACKAGES!r})))")
    result = _run(bare, "python", "-c", probe, home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["[]", "[]"]  # not installed, so not imported either


def test_the_bare_client_submits_follows_and_reports_against_a_server(bare, tmp_path):
    stack = Stack("embedded", tmp_path / "server")  # a full installation serves: API and worker
    stack.home.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(job_spec(epochs=1)))
    try:
        stack.start_api(worker=True)
        client = {"COSCOPE_SERVER": stack.url, "COSCOPE_API_KEY": stack.admin_key()}
        submitted = _run(bare, "coscope", "submit", str(spec), "--wait", home=tmp_path, env=client)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr[-3000:]
        job_id = re.search(r"^job (\S+) queued$", submitted.stdout, re.MULTILINE).group(1)
        status = _run(bare, "coscope", "status", job_id, home=tmp_path, env=client)
        report = _run(bare, "coscope", "report", job_id, home=tmp_path, env=client)
    finally:
        stack.close()
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stdout + status.stderr
    assert report.returncode == 0 and "verdict" in report.stdout, report.stdout + report.stderr


@pytest.mark.parametrize("command", [["worker"], ["serve"], ["train", "spec.yaml", "--out", "run"]],
                         ids=["worker", "serve", "train"])
def test_trainer_commands_of_the_bare_package_say_what_to_install(bare, tmp_path, command):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(job_spec(epochs=1)))
    result = _run(bare, "coscope", *command, home=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert WORKER_EXTRA in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "api-key").exists()  # refused before touching a store
