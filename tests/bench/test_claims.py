"""bench/claims.py: the B7 curvature summary, on its arithmetic and on a real (tiny) run with the probe."""

import sys
from pathlib import Path

from core.trainer import train
from tests.conftest import tiny_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import claims  # noqa: E402


def test_largest_rise_is_the_biggest_check_to_check_factor_with_values_below_one_as_one():
    # 40 -> 50 is 1.25x, 50 -> 20 a fall, 20 -> 400 is 20x; from 0.1 -> 3 is 3x, not 30x (0.1 counts as 1)
    assert claims.largest_rise([10, 20, 30, 40], [40.0, 50.0, 20.0, 400.0]) == (20.0, 40)
    assert claims.largest_rise([10, 20], [0.1, 3.0]) == (3.0, 20)
    assert claims.largest_rise([10], [7.0]) == (1.0, 10)  # one check: no rise


def test_curvature_prints_the_probe_at_every_check_of_a_real_run(tmp_path, capsys):
    spec = tiny_spec(monitor={"every_steps": 2, "curvature_every_epochs": 1, "curvature_iterations": 2,
                              "train_images": 16, "indicator_images": 16})
    train(spec, tmp_path / "probe-seed0")
    train(tiny_spec(), tmp_path / "no-probe-seed0")  # no eigenvalue in its checks: no row
    claims.curvature(["probe-seed0", "no-probe-seed0", "missing-seed0"], [tmp_path])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| probe-seed0 |")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    trace = cells[4].replace("*", "").split()
    assert len(trace) == 2 and all(float(value) == float(value) for value in trace)  # one value per epoch
    assert cells[5].endswith("x") and float(cells[5][:-1]) >= 1.0
