"""bench/claims.py: the B7 curvature summary and the map's heatmap and eps*, on closed forms and on real
(tiny) runs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.trainer import train
from tests.conftest import tiny_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import claims  # noqa: E402


def test_largest_rise_is_the_biggest_check_to_check_factor_with_values_below_one_as_one():
    # 40 -> 50 is 1.25x, 50 -> 20 a fall, 20 -> 400 is 20x; from 0.1 -> 3 is 3x, not 30x (0.1 counts as 1)
    assert claims.largest_rise([10, 20, 30, 40], [40.0, 50.0, 20.0, 400.0]) == (20.0, 40)
    assert claims.largest_rise([10, 20], [0.1, 3.0]) == (3.0, 20)
    assert claims.largest_rise([10], [7.0]) == (1.0, 10)  # one check: no rise


def test_first_above_is_the_first_check_over_the_ceiling():
    assert claims.first_above([3.0, 12.0, 9.0, 40.0], 11.0) == 1
    assert claims.first_above([3.0, 11.0], 11.0) is None  # equal is not above


def test_leave_one_out_counts_the_controls_above_all_the_others():
    assert claims.leave_one_out_alarms([4.0, 11.0, 6.0]) == 1  # 11 > max(4, 6); 4 and 6 are below 11
    assert claims.leave_one_out_alarms([5.0, 5.0]) == 0  # a tie is not above
    assert claims.leave_one_out_alarms([7.0]) == 1  # alone, nothing bounds it: counted as an alarm


def test_a_cell_row_counts_collapses_and_averages_over_seeds():
    runs = [{"verdict": "co", "onset": 312, "robust": 0.0, "best": 0.2},
            {"verdict": "no_co", "onset": None, "robust": 0.3, "best": 0.3},
            {"verdict": "co", "onset": 78, "robust": 0.0, "best": None}]
    # mean 0.1; sample sd sqrt(((0.1)^2 * 2 + 0.2^2) / 2) = sqrt(0.03); best over the two known: 0.25
    assert claims.cell_row("c", runs) == "| c | 3 | 2 of 3 | 312, 78 | 0.100 ± 0.173 | 0.250 |"


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
    assert cells[5].endswith("x") and float(cells[5][:-1]) > 0  # below 1 where the only step fell
    assert cells[8] in ("-", "never") or cells[8].lstrip("+-").isdigit()


def cell(eps: int, collapsed: int, measured: int) -> dict:
    return {"params": {"training.epsilon": eps, "intervention.beta": 0},
            "co": {"collapsed": collapsed, "measured": measured} if measured else None}


def test_critical_epsilon_is_exact_only_when_every_smaller_eps_is_decided():
    # 2 of 3 collapsed at 10; 8 and 9 decided against (0 of 3, and 2 of 2 not collapsed)
    assert claims.critical_epsilon([cell(12, 3, 3), cell(10, 2, 3), cell(9, 0, 2), cell(8, 0, 3)]) == "10"
    # 2 of 2 collapsed decides a cell; 9 has one seed: an upper bound only
    bound = claims.critical_epsilon([cell(11, 2, 2), cell(9, 0, 1), cell(8, 0, 3)])
    assert bound == "<= 11 (eps [9] undecided)"
    assert claims.critical_epsilon([cell(12, 1, 3), cell(10, 0, 3)]).startswith("open")  # 1 of 3 is not CO


def test_heatmap_puts_each_run_in_its_cell_and_writes_svg_and_csv(tmp_path, capsys):
    train(tiny_spec(), tmp_path / "map-beta4-eps10-seed1")
    figure = tmp_path / "map.svg"
    claims.heatmap(["map-beta4-eps10-seed1", "map-beta8-eps10-seed1"], [tmp_path], figure)
    assert figure.read_bytes().startswith(b"<svg")
    rows = {(row["training.epsilon"], row["intervention.beta"]): row
            for row in csv.DictReader(figure.with_suffix(".csv").open())}
    assert len(rows) == len(claims.MAP_EPS) * len(claims.MAP_BETAS)
    assert rows["10", "4"]["seeds_succeeded"] == "1" and rows["10", "4"]["jobs"] == "map-beta4-eps10-seed1"
    assert all(row["seeds_succeeded"] == "0" for key, row in rows.items() if key != ("10", "4"))
    assert "beta 4: eps* = " in capsys.readouterr().out


def test_keep_copies_the_records_of_finished_runs_without_checkpoints(tmp_path, monkeypatch):
    out, records = tmp_path / "out", tmp_path / "records"
    monkeypatch.setattr(claims, "OUT", out)
    monkeypatch.setattr(claims, "RECORDS", records)
    spec = tiny_spec(training={"epochs": 1})
    train(spec, out / "done-seed0")
    (out / "done-seed0.spec.json").write_text(spec.model_dump_json())
    history = subprocess.run(["git", "log", "--format=%h %ct", "--", "core"], cwd=claims.ROOT, capture_output=True,
                             text=True, check=True).stdout.split()  # hash, time, hash, time, ...
    if len(history) < 4:
        pytest.skip("a shallow clone: fewer than two commits of core/ to tell apart")
    started = int(history[3]) + 1  # the run started after the second-newest commit of core/, before the newest
    os.utime(out / "done-seed0.spec.json", (started, started))
    (out / "running-seed0").mkdir()  # no report yet: not kept
    claims.keep(["done-seed0", "running-seed0"], "batch")
    kept = records / "batch" / "claims"
    assert sorted(path.name for path in kept.iterdir()) == ["done-seed0"]
    assert sorted(path.name for path in (kept / "done-seed0").iterdir()) == ["metrics.jsonl", "report.json",
                                                                             "spec.json"]
    report = (out / "done-seed0" / "report.json").read_bytes()
    assert (kept / "done-seed0" / "report.json").read_bytes() == report
    readme = (records / "batch" / "README.md").read_text()
    assert f"- done-seed0: training code {history[2]}," in readme  # the code the run started with, not HEAD's
    claims.keep(["done-seed0"], "batch")  # kept before: not copied or noted again
    assert (records / "batch" / "README.md").read_text() == readme and readme.count("- done-seed0:") == 1


def test_cut_judges_runs_whose_training_ended_but_not_runs_cut_mid_training(tmp_path, capsys):
    spec = tiny_spec(monitor={"every_steps": 1})
    for name in ("map-beta8-eps12-seed0", "map-beta8-eps12-seed1", "map-beta8-eps12-seed2"):
        train(spec, tmp_path / name)
        (tmp_path / name / "spec.json").write_text(spec.model_dump_json())
    full = (tmp_path / "map-beta8-eps12-seed0" / "report.json")
    expected = json.loads(full.read_text())["co"]
    full.unlink()  # seed 0: cut in its final evaluation
    (tmp_path / "map-beta8-eps12-seed1" / "report.json").unlink()  # seed 1: cut in its first epoch
    metrics = tmp_path / "map-beta8-eps12-seed1" / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["epoch"] == 0))
    claims.cut_runs([f"map-beta8-eps12-seed{seed}" for seed in range(3)], [tmp_path])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| map-")]
    assert len(rows) == 1 and rows[0].startswith(f"| map-beta8-eps12-seed0 | {expected['verdict']} |")
