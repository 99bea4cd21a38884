"""The README's path for a newcomer: `coscope serve` with no configuration, then `coscope submit --wait`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from coscope.harness import Stack

ROOT = Path(__file__).resolve().parents[2]


def test_serve_with_no_configuration_then_submit_and_wait(tmp_path):
    stack = Stack("embedded", tmp_path / "home")
    stack.home.mkdir()
    try:
        stack.start_api(worker=None)
        assert (stack.home / "api-key").stat().st_mode & 0o777 == 0o600
        assert "first admin API key written to" in stack.log("api.log")
        env = {**stack.env, "COSCOPE_SERVER": stack.url}
        env.pop("COSCOPE_API_KEY", None)  # the client finds the key in COSCOPE_HOME/api-key
        result = subprocess.run([sys.executable, "-m", "coscope.cli", "submit", "examples/quickstart.yaml", "--wait"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr + stack.log("api.log")
        assert "succeeded" in result.stdout
        headers = {"Authorization": f"Bearer {(stack.home / 'api-key').read_text().strip()}"}
        job = httpx.get(f"{stack.url}/v1/jobs", headers=headers).json()["data"][0]
        report = httpx.get(f"{stack.url}/v1/jobs/{job['id']}/report", headers=headers).json()
        assert report["co"]["verdict"] and 0.0 <= report["final"]["clean_accuracy"] <= 1.0
    finally:
        stack.close()
