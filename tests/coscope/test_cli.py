import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coscope.harness import Stack, child_pids, wait_until
from tests.service.conftest import Api, job_spec

ROOT = Path(__file__).resolve().parents[2]


def _coscope(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coscope.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_train_quickstart_writes_report(tmp_path):
    result = _coscope("train", "examples/quickstart.yaml", "--out", str(tmp_path), "--quiet", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["spec"]["dataset"]["name"] == "synthetic"
    assert "robust accuracy" in result.stdout
    assert f"verdict: {report['co']['verdict']}: {report['co']['verdict_text']}\n" in result.stdout
    assert report["co"]["verdict"] in ("co", "no_co", "never_robust", "suspected")


def test_invalid_spec_names_every_bad_field_without_traceback(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("training:\n  epsilon: .nan\n  methd: fgsm\nmodel:\n  width: 0\n")
    result = _coscope("train", str(spec), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "training.epsilon" in result.stderr
    assert "training.methd" in result.stderr
    assert "model.width" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_dataset_error_names_the_path(tmp_path):
    spec = tmp_path / "cifar.yaml"
    spec.write_text("dataset: {name: cifar10}\ntraining: {epochs: 1}\n")
    result = _coscope("train", str(spec), "--out", str(tmp_path / "run"), "--data-root", str(tmp_path))
    assert result.returncode == 1
    assert str(tmp_path / "cifar-10-batches-py") in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dry_run_spec_writes_a_report_and_trains_nothing(tmp_path):
    spec = tmp_path / "dry.yaml"
    spec.write_text("dry_run: true\ndataset: {name: synthetic, synthetic_train_size: 100}\n")
    result = _coscope("train", str(spec), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run, no training: synthetic with 100 training and 512 test images")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["report.json"]
    missing = tmp_path / "cifar.yaml"
    missing.write_text("dry_run: true\n")  # cifar10, not under the data root
    result = _coscope("train", str(missing), "--out", str(tmp_path / "r2"), "--data-root", str(tmp_path))
    assert result.returncode == 1 and "DatasetNotFound" in result.stderr and "Traceback" not in result.stderr


def test_validate_prints_the_resolved_spec(tmp_path):
    spec = tmp_path / "pgd.json"
    spec.write_text('{"training": {"method": "pgd", "epsilon": 4}}')
    result = _coscope("validate", str(spec))
    assert result.returncode == 0
    assert json.loads(result.stdout)["training"]["alpha"] == 2.0


def test_every_example_is_a_valid_spec():
    examples = sorted((ROOT / "examples").rglob("*.yaml"))
    assert examples
    for example in examples:
        assert _coscope("validate", str(example)).returncode == 0, example


def test_report_renders_a_finished_run_again(tmp_path):
    assert _coscope("train", "examples/quickstart.yaml", "--out", str(tmp_path), "--quiet").returncode == 0
    (tmp_path / "summary.md").unlink()
    (tmp_path / "curves.png").unlink()
    result = _coscope("report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "catastrophic overfitting" in result.stdout.lower()
    assert (tmp_path / "summary.md").read_text().startswith("# Run summary")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_prints_the_verdict_code_and_sentence(tmp_path):
    from core.trainer import train
    from tests.conftest import tiny_spec
    from tests.core.test_report import scripted

    train(tiny_spec(training={"epochs": 1}), tmp_path / "trained")
    scripted(tmp_path / "trained", tmp_path / "run", [0.05, 0.08, 0.03], fgsm=0.1, class_counts=[10] * 10)
    result = _coscope("report", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    co = json.loads((tmp_path / "run" / "report.json").read_text())["co"]
    assert co["verdict"] == "never_robust" and co["verdict_text"].startswith("Never robust")
    assert result.stdout.startswith(f"verdict: never_robust: {co['verdict_text']}\nrendered ")


def test_report_of_a_folder_without_a_run_exits_2(tmp_path):
    result = _coscope("report", str(tmp_path))
    assert result.returncode == 2
    assert "no report.json" in result.stderr


def _service_env(home: Path, **settings: str) -> dict[str, str]:
    """The test's environment without its COSCOPE_* settings, plus ``settings`` (a fresh home, SQLite)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("COSCOPE_")}
    return {**env, "COSCOPE_HOME": str(home), "PYTHONUNBUFFERED": "1", **settings}


@pytest.mark.parametrize("secret", ["changethis", ""])
@pytest.mark.parametrize("command", [["serve", "--no-worker"], ["worker"]], ids=["serve", "worker"])
def test_production_with_a_placeholder_secret_refuses_to_start(tmp_path, command, secret):
    """S17: the real process exits non-zero at start-up, says why, and never listens."""
    env = _service_env(tmp_path / "home", COSCOPE_ENV="production", COSCOPE_WEBHOOK_SECRET=secret)
    process = subprocess.Popen([sys.executable, "-m", "coscope.cli", *command, *(
        ["--port", "0"] if command[0] == "serve" else [])], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"coscope {command[0]} started in production with the placeholder secret {secret!r}")
    assert process.returncode == 2, (process.returncode, err[-2000:])
    assert "refusing to start" in err and "COSCOPE_WEBHOOK_SECRET is a placeholder" in err, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "home" / "api-key").exists()  # stopped before touching the store


def test_development_starts_with_the_placeholder_and_warns(tmp_path):
    stack = Stack("embedded", tmp_path / "home",
                  env={"COSCOPE_ENV": "development", "COSCOPE_WEBHOOK_SECRET": "changethis"})
    stack.home.mkdir()
    try:
        stack.start_api()  # answers /healthz on the port it bound
        assert stack.port not in (0, 8000) and f":{stack.port}" in stack.log("api.log")
        assert "COSCOPE_WEBHOOK_SECRET is a placeholder (allowed in development only)" in stack.log("api.log")
    finally:
        stack.close()


def test_serve_writes_the_first_admin_key_where_key_file_says_and_not_into_home(tmp_path):
    """Issue 23 item 5: compose mounts HOME (the artifacts) into every worker, so the key goes elsewhere."""
    key_file = tmp_path / "api-only" / "first-key"
    stack = Stack("embedded", tmp_path / "home", env={"COSCOPE_KEY_FILE": str(key_file)})
    stack.home.mkdir()
    try:
        stack.start_api()
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert not (stack.home / "api-key").exists()
        assert f"first admin API key written to {key_file}" in stack.log("api.log")
        key = key_file.read_text().strip()
        assert httpx.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {key}"}).json()["role"] == "admin"
    finally:
        stack.close()


def test_serve_starts_a_new_embedded_worker_when_its_worker_dies_and_jobs_still_run(tmp_path):
    """An embedded worker that dies (here SIGKILL, as the kernel's OOM killer does; in CI once, a crash at
    start-up) used to leave ``coscope serve`` answering with no one to run its jobs: they stayed queued."""
    stack = Stack("embedded", tmp_path / "home")
    stack.home.mkdir()
    try:
        server = stack.start_api(worker=None)
        first = wait_until(lambda: child_pids(server.pid), 60, "the embedded worker to start")[0]
        os.killpg(first, signal.SIGKILL)  # the Celery parent and its pool child: no warm shutdown
        log = stack.wait_for_log("api.log", "embedded worker exited with code -9", timeout=30)
        assert "starting a new one in 1 s" in log
        api = Api(stack.url, stack.admin_key())
        job = api.wait_finished(api.submit(job_spec(epochs=1))["id"])
        assert (job["status"], job["attempt"]) == ("succeeded", 1), (job, stack.log("api.log"))
        assert child_pids(server.pid) != [first]  # a replacement ran it
    finally:
        stack.close()
