"""bench/co_table.py on real (tiny) run folders: runs table, per-class table (with AutoAttack where a run
measured it) and the per-arm summary that bench/ablation.py prints."""

import json
import sys
from pathlib import Path

import pytest

from core.trainer import train
from tests.conftest import tiny_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import co_table  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, autoattack in (("a-with", "standard"), ("b-without", "off")):
        spec = tiny_spec(training={"epochs": 1}, evaluation={"test_subset": 20, "autoattack": autoattack},
                         dataset={"synthetic_classes": 4})
        train(spec, root / name)
    return root


def test_tables_show_verdict_codes_autoattack_and_per_class_accuracy(runs, capsys):
    folders = [runs / "a-with", runs / "b-without"]
    co_table.print_tables(folders, {"arm": folders})
    out = capsys.readouterr().out.splitlines()
    reports = [json.loads((folder / "report.json").read_text()) for folder in folders]
    assert out[0].count("|") == out[2].count("|") == out[3].count("|") == 11
    assert out[2].startswith(f"| a-with | {reports[0]['co']['verdict']}")  # a code, not a sentence
    assert f"| {reports[0]['final']['autoattack']['accuracy']:.3f} |" in out[2] and "| - |" in out[3]
    header = out.index("| run | 0 | 1 | 2 | 3 |")
    with_aa, without = out[header + 2], out[header + 3]
    assert with_aa.startswith("| a-with |") and with_aa.count(" / ") == 4  # PGD / AutoAttack per class
    assert without.startswith("| b-without |") and " / " not in without
    mean_robust = sum(r["final"]["robust_accuracy"] for r in reports) / 2
    assert out[-1].startswith("| arm | 2 | ") and f"| {mean_robust:.3f} (" in out[-1]
