import json

import pytest
import torch

from core import checkpoint
from core.monitor import Monitor
from core.trainer import load_trained, train
from tests.conftest import tiny_spec


def _monitor_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["kind"] == "monitor"]


def test_monitor_checks_n_steps_after_the_last_check_and_each_epoch_end(tmp_path):
    # 3 steps per epoch; the 2-step clock restarts at every check, epoch-end checks included
    spec = tiny_spec(training={"epochs": 3}, monitor={"every_steps": 2})
    report = train(spec, tmp_path)
    assert [row["step"] for row in _monitor_rows(tmp_path)] == [2, 3, 5, 6, 8, 9]
    assert report["co"]["monitor"]["checks"] == 6
    spec = tiny_spec(training={"epochs": 3}, monitor={"every_steps": 1})
    train(spec, tmp_path / "every")
    assert [row["step"] for row in _monitor_rows(tmp_path / "every")] == list(range(1, 10))
    assert len(report["co"]["monitor"]["train_indices"]) == 96  # the whole tiny training set, stored


def test_monitor_row_has_every_indicator_and_sane_ranges(tmp_path):
    spec = tiny_spec(intervention={"kind": "inject", "beta": 8}, monitor={"test_images": 16})
    train(spec, tmp_path)
    row = _monitor_rows(tmp_path)[-1]
    for key in ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy", "test_pgd_accuracy",
                "reversed_carrier_accuracy", "carrier_only_accuracy", "fgsm_carrier_share"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["fgsm_pgd_gap"] == pytest.approx(row["fgsm_accuracy"] - row["pgd_accuracy"])
    assert -1.0 <= row["gradient_alignment"] <= 1.0
    assert row["linearity_error"] >= 0.0 and row["input_gradient_norm"] > 0.0


def test_monitor_set_is_fixed_and_unaugmented(tmp_path):
    spec = tiny_spec(dataset={"augment": True, "synthetic_train_size": 200}, monitor={"train_images": 50})
    from core.data import load_dataset
    from core.trainer import input_transform

    data = load_dataset(spec.dataset, None, spec.seed)
    transform = input_transform(spec, data, torch.device("cpu"))
    first, second = (Monitor(spec, data, transform, torch.device("cpu")) for _ in range(2))
    assert first.indices == second.indices and len(set(first.indices)) == 50
    assert torch.equal(first.x, data.train.images[first.indices].float() / 255)


def test_curvature_probe_is_logged_at_the_requested_epochs(tmp_path):
    spec = tiny_spec(intervention={"kind": "inject", "beta": 8}, training={"epochs": 2},
                     monitor={"curvature_every_epochs": 2, "curvature_iterations": 3, "curvature_subspace": "carrier"})
    train(spec, tmp_path)
    rows = _monitor_rows(tmp_path)
    assert [("hessian_top_eigenvalue_max_carrier" in row) for row in rows] == [False, True]
    assert rows[1]["hessian_top_eigenvalue_max_carrier"] >= rows[1]["hessian_top_eigenvalue_mean_carrier"]


def _scripted_checks(monkeypatch, pgd_by_check):
    """Replace the measurement (not the trainer's reaction to it) with a scripted PGD trace."""
    calls = {"n": 0}

    def check(self, model, step, epoch, curvature=False, repeat=False):
        pgd = pgd_by_check[min(calls["n"], len(pgd_by_check) - 1)]
        calls["n"] += 1
        return {"kind": "recheck" if repeat else "monitor", "step": step, "epoch": epoch, "repeat": repeat,
                "clean_accuracy": 0.6,
                "fgsm_accuracy": 0.7 if pgd < 0.1 else 0.4, "pgd_accuracy": pgd, "fgsm_pgd_gap": 0.0,
                "gradient_alignment": 0.5, "linearity_error": 0.1}

    monkeypatch.setattr(Monitor, "check", check)


def test_stop_policy_stops_at_the_confirmed_onset_and_restores_the_best_weights(tmp_path, monkeypatch):
    _scripted_checks(monkeypatch, [0.30, 0.45, 0.02, 0.01, 0.01, 0.01])
    events = []
    spec = tiny_spec(training={"epochs": 4}, monitor={"every_steps": 1, "co_policy": "stop"})
    from core.trainer import Callbacks

    report = train(spec, tmp_path, callbacks=Callbacks(on_event=events.append))
    co = report["co"]
    assert (co["detected"], co["onset_step"], co["confirmed_step"], co["rule"]["name"]) == (True, 3, 4, "wong_drop")
    assert co["stopped_early"] and co["best_checkpoint"]["step"] == 2
    assert [e["onset_step"] for e in events if e["type"] == "co_onset"] == [3]
    assert [e["verdict"] for e in events if e["type"] == "co_onset"] == ["co"]
    assert [e["co"]["verdict"] for e in events if e["type"] == "finished"] == ["co"]
    assert max(row["step"] for row in _monitor_rows(tmp_path)) == 4  # training stopped at the confirmation
    best = checkpoint.load(tmp_path / "best.pt", "cpu")["model"]
    last = load_trained(tmp_path).model.state_dict()  # checkpoint.pt holds the restored best weights
    assert all(torch.equal(best[name], last[name]) for name in best)
    assert "Catastrophic overfitting detected at step 3" in (tmp_path / "summary.md").read_text()


def test_a_firing_at_the_last_check_is_repeated_on_the_same_weights_and_confirmed(tmp_path, monkeypatch):
    # 2 epochs x 3 steps, a check every step: 6 checks, wong_drop fires at the last (step 6); the trainer
    # then measures the same weights once more (a seventh row, step 6, repeat) and that confirms it
    _scripted_checks(monkeypatch, [0.30, 0.35, 0.36, 0.35, 0.36, 0.02, 0.01])
    report = train(tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1}), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(row["kind"], row["step"]) for row in rows if row["kind"] in ("monitor", "recheck")][-2:] == [
        ("monitor", 6), ("recheck", 6)]
    co = report["co"]
    assert (co["verdict"], co["onset_step"], co["confirmed_by"]) == ("co", 6, "repeat_check")


def test_no_repeat_check_without_a_firing_at_the_last_check(tmp_path, monkeypatch):
    _scripted_checks(monkeypatch, [0.30, 0.35, 0.36, 0.35, 0.36, 0.37, 0.02])
    report = train(tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1}), tmp_path)
    assert len(_monitor_rows(tmp_path)) == 6 and report["co"]["verdict"] == "no_co"


def test_report_policy_trains_to_the_end_and_evaluates_last_and_best(tmp_path, monkeypatch):
    _scripted_checks(monkeypatch, [0.30, 0.45, 0.02, 0.01, 0.01, 0.01])
    spec = tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1})
    report = train(spec, tmp_path)
    co = report["co"]
    assert co["detected"] and not co["stopped_early"]
    assert max(row["step"] for row in _monitor_rows(tmp_path)) == 6
    assert set(co["best_checkpoint"]["final"]) >= {"clean_accuracy", "robust_accuracy"}
    assert (co["before"]["step"], co["after"]["step"]) == (2, 4)


def test_the_best_weights_are_the_run_s_best_after_a_signature_that_goes_away(tmp_path, monkeypatch):
    # wong_drop fires at step 3 (0.45 -> 0.02) and is confirmed at 4; the run then recovers above its
    # earlier peak: best.pt must follow it (step 6), not stay at the pre-signature peak (step 2)
    _scripted_checks(monkeypatch, [0.30, 0.45, 0.02, 0.01, 0.50, 0.55])
    report = train(tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1}), tmp_path)
    best = report["co"]["best_checkpoint"]
    assert (best["step"], best["monitor_pgd_accuracy"]) == (6, 0.55)
    assert checkpoint.load(tmp_path / "best.pt", "cpu")["step"] == 6


def test_masking_near_chance_is_reported_as_co_not_never_robust(tmp_path, monkeypatch):
    # PGD never beats a constant classifier (the tiny monitor set's largest class share is 10 / 96), but FGSM
    # accuracy (0.7) stands far above it from the first check: the masking rule, confirmed at the second
    _scripted_checks(monkeypatch, [0.08, 0.09, 0.02, 0.01, 0.01, 0.01])
    events = []
    from core.trainer import Callbacks

    report = train(tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1}), tmp_path,
                   callbacks=Callbacks(on_event=events.append))
    assert [(e["onset_step"], e["verdict"]) for e in events if e["type"] == "co_onset"] == [(1, "co")]
    co = report["co"]
    assert (co["verdict"], co["detected"], co["onset_step"], co["rule"]["name"]) == ("co", True, 1, "masking")
    assert co["chance_level"] == pytest.approx(max(co["monitor"]["class_counts"]) / 96)
    assert "`co`: Catastrophic overfitting detected at step 1" in (tmp_path / "summary.md").read_text()


def test_no_onset_on_a_flat_trace(tmp_path, monkeypatch):
    _scripted_checks(monkeypatch, [0.30, 0.31, 0.29, 0.30])
    report = train(tiny_spec(monitor={"every_steps": 1}), tmp_path)
    assert report["co"]["detected"] is False and report["co"]["onset_step"] is None
    assert report["co"]["verdict"] == "no_co"
    assert "No catastrophic overfitting detected" in (tmp_path / "summary.md").read_text()


def test_resume_keeps_the_onset_and_best_checkpoint_state(tmp_path, monkeypatch):
    _scripted_checks(monkeypatch, [0.30, 0.45, 0.02, 0.01, 0.01, 0.01])
    spec = tiny_spec(training={"epochs": 2}, monitor={"every_steps": 1})
    from core.errors import Cancelled
    from core.trainer import Callbacks

    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] == 6

    with pytest.raises(Cancelled):
        train(spec, tmp_path, callbacks=Callbacks(should_stop=stop_after_five))
    report = train(spec, tmp_path, resume=True)
    assert (report["co"]["onset_step"], report["co"]["best_checkpoint"]["step"]) == (3, 2)
