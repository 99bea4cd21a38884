"""bench/co_table.py: the runs table and the per-class table, with AutoAttack where a run measured it."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import co_table  # noqa: E402


def _run(root: Path, name: str, autoattack: bool) -> None:
    per_class = [{"label": c, "name": n, "clean_accuracy": 0.9, "robust_accuracy": 0.5 - c / 10}
                 for c, n in enumerate(("cat", "dog"))]
    final = {"clean_accuracy": 0.9, "robust_accuracy": 0.45, "per_class": per_class}
    if autoattack:
        final["autoattack"] = {"accuracy": 0.4, "per_class": [{"label": c, "robust_accuracy": 0.4 - c / 10}
                                                              for c in range(2)]}
    co = {"detected": False, "onset_step": None, "onset_epoch": None, "rule": None,
          "best_checkpoint": {"step": 10, "final": {"robust_accuracy": 0.46}}}
    monitor = {"kind": "monitor", "step": 10, "pgd_accuracy": 0.5, "fgsm_accuracy": 0.6,
               "clean_accuracy": 0.9}
    (root / name).mkdir()
    (root / name / "report.json").write_text(json.dumps({"final": final, "co": co}))
    (root / name / "metrics.jsonl").write_text(json.dumps(monitor) + "\n")


def test_table_shows_autoattack_and_per_class_robust_accuracy(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "a-with", autoattack=True)
    _run(tmp_path, "b-without", autoattack=False)
    monkeypatch.setattr(sys, "argv", ["co_table.py", str(tmp_path)])
    co_table.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].count("|") == out[2].count("|") == out[3].count("|") == 11
    assert "| 0.900 | 0.450 | 0.400 | 0.460 (step 10) |" in out[2]
    assert "| 0.900 | 0.450 | - | 0.460 (step 10) |" in out[3]
    assert "| a-with | 0.50 / 0.40 | 0.40 / 0.30 |" in out and "| b-without | 0.50 | 0.40 |" in out
    assert "| run | cat | dog |" in out
