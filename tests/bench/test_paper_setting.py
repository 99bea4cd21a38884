"""bench/paper_setting.py, the GPU section of bench/run_all.py: the paper's B2 pair (beta 4 and plain at eps 6),
fp32, 30 epochs, all 50,000 images, seeds 0-2; smoke-run on a CPU for one step each on the real images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench"))
import paper_setting  # noqa: E402
import run_all  # noqa: E402


def test_run_all_s_gpu_section_runs_the_pair_in_fp32_with_three_seeds():
    [(_, command, _)] = [section for section in run_all.sections(str(DATA), cuda=True)
                         if section[0] == "gpu-paper"]
    assert command[0] == "paper_setting.py" and "--precision" not in command and "--seeds" not in command
    defaults = paper_setting.arguments().parse_args([])
    assert (defaults.precision, defaults.seeds, defaults.device) == ("fp32", [0, 1, 2], "cuda")
    for arm, beta in (("beta4", 4), ("plain", None)):
        spec = paper_setting.spec_for(arm, seed=1, precision="fp32", max_steps=None)
        assert (spec["training"]["epsilon"], spec["training"]["precision"], spec["seed"]) == (6, "fp32", 1)
        assert spec["training"].get("epochs", 30) == 30 and "train_subset" not in spec["dataset"]
        assert spec.get("intervention", {}).get("beta") == beta
        assert spec["monitor"]["test_images"] == 1000  # the held-out checks of issue 21


@pytest.mark.skipif(not (DATA / "cifar10-jpeg" / "train").is_dir(), reason=f"no CIFAR-10 images under {DATA}")
def test_a_cpu_smoke_run_trains_and_reports_both_arms(tmp_path):
    env = {**os.environ, "BENCH_NO_RECORD": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "paper_setting.py"), "--device", "cpu",
                             "--max-steps", "1", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path),
                             "--data-root", str(DATA)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name, kind in (("beta4-eps6-fp32-seed0", "inject"), ("plain-eps6-fp32-seed0", "none")):
        report = json.loads((tmp_path / name / "report.json").read_text())
        spec = report["spec"]
        assert (spec["intervention"]["kind"], spec["training"]["precision"]) == (kind, "fp32")
        assert report["data"]["train_images"] == 50_000 and report["steps"]["done"] == 1
        assert report["data"]["test_images"] == 256  # a smoke run evaluates a stratified few
        assert f"| {name} |" in result.stdout  # the claims-table row
