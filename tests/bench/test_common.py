"""bench/common.py: benchmark records name files relative to the repository, never by absolute path."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402


def test_paths_in_and_next_to_the_repository_are_relative_to_it():
    spec = ROOT / "examples" / "cpu" / "plain-fgsm-eps8.yaml"
    assert common.repo_path(spec) == "examples/cpu/plain-fgsm-eps8.yaml"
    assert common.repo_path(ROOT.parent / "shared" / "data") == "../shared/data"
    assert common.repo_path("/somewhere/else") == "/somewhere/else"


def test_the_recorded_command_names_its_paths_relative_to_the_repository(monkeypatch):
    script, data = ROOT / "bench" / "memory.py", ROOT.parent / "shared" / "data"
    argv = [str(script), "--data-root", str(data), "--width", "64", f"--spec={ROOT / 'examples' / 'q.yaml'}"]
    monkeypatch.setattr(sys, "argv", argv)
    expected = "python bench/memory.py --data-root ../shared/data --width 64 --spec=examples/q.yaml"
    assert common.command() == expected
