"""``monitor.co_policy: rescue`` (issue 24) on synthetic data: a confirmed onset restores the best-robust weights
and their optimizer state (bit-equal to best.pt), switches the attack, says so in the report, and a run
stopped after the rescue resumes in the rescued state. The measurements are scripted (the trainer's reaction
to them is what is tested), as in test_monitor.py."""

from __future__ import annotations

import json

import pytest
import torch

from core import checkpoint
from core.errors import Cancelled
from core.monitor import Monitor
from core.trainer import BEST_CHECKPOINT, CHECKPOINT, Callbacks, train
from tests.conftest import tiny_spec

# 3 steps per epoch, a check every step: robust at steps 1-2, collapsed at 3 (confirmed at 4), then robust
COLLAPSE_THEN_RECOVER = [0.30, 0.45, 0.02, 0.01] + [0.35] * 20


@pytest.fixture
def scripted(monkeypatch):
    calls = {"n": 0}

    def check(self, model, step, epoch, curvature=False, repeat=False):
        pgd = COLLAPSE_THEN_RECOVER[min(calls["n"], len(COLLAPSE_THEN_RECOVER) - 1)]
        calls["n"] += 1
        return {"kind": "recheck" if repeat else "monitor", "step": step, "epoch": epoch, "clean_accuracy": 0.6,
                "fgsm_accuracy": 0.7 if pgd < 0.1 else 0.4, "pgd_accuracy": pgd, "gradient_alignment": 0.5,
                "linearity_error": 0.1}

    monkeypatch.setattr(Monitor, "check", check)


def rescue_spec(**rescue):
    return tiny_spec(training={"epochs": 3}, monitor={"every_steps": 1, "co_policy": "rescue", "rescue": rescue})


def rows(run, kind):
    return [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if row["kind"] == kind]


def test_a_confirmed_onset_restores_the_best_weights_and_switches_to_n_fgsm(tmp_path, scripted):
    restored = {}

    def on_event(event):
        if event["type"] == "co_rescued":  # the checkpoint written at the rescue holds the restored state
            now, best = (checkpoint.load(tmp_path / name, "cpu") for name in (CHECKPOINT, BEST_CHECKPOINT))
            restored["model"] = all(torch.equal(now["model"][k], best["model"][k]) for k in best["model"])
            restored["momentum"] = [torch.equal(now["optimizer"]["state"][i]["momentum_buffer"],
                                                best["optimizer"]["state"][i]["momentum_buffer"])
                                    for i in best["optimizer"]["state"]]
            restored["event"] = event

    report = train(rescue_spec(), tmp_path, callbacks=Callbacks(on_event=on_event))
    assert restored["model"] and restored["momentum"] and all(restored["momentum"])
    event = restored["event"]
    assert (event["onset_step"], event["confirmed_step"], event["at_step"], event["weights_from_step"]) == (3, 4, 4, 2)
    assert (event["method"], event["alpha"], event["noise_magnitude"]) == ("n_fgsm", 8.0, 16.0)
    # FGSM logs the clean accuracy of its first forward pass; N-FGSM starts from noise and has none
    train_rows = rows(tmp_path, "train")
    assert all(row["train_clean_accuracy"] is not None for row in train_rows if row["step"] <= 4)
    assert all(row["train_clean_accuracy"] is None for row in train_rows if row["step"] > 4)
    co = report["co"]
    assert (co["verdict"], co["detected"], co["onset_step"]) == ("co", True, 3)
    assert [rescue["at_step"] for rescue in co["rescue"]["rescues"]] == [4]
    assert co["rescue"]["after"] == {"verdict": "no_co", "onset_step": None}
    assert co["verdict_text"].startswith("Catastrophic overfitting began at step 3")
    assert "was rescued" in co["verdict_text"] and "did not collapse again" in co["verdict_text"]
    assert "was rescued" in (tmp_path / "summary.md").read_text()


def test_fgsm_with_a_smaller_step_and_a_lower_learning_rate(tmp_path, scripted):
    report = train(rescue_spec(method="fgsm", fgsm_step_fraction=0.25, lr_scale=0.5), tmp_path)
    rescue = report["co"]["rescue"]["rescues"][0]
    assert (rescue["method"], rescue["alpha"], rescue["noise_magnitude"], rescue["lr_scale"]) == (
        "fgsm", 2.0, 0.0, 0.5)
    lrs = {row["step"]: row["lr"] for row in rows(tmp_path, "train")}
    from core.schedule import lr_and_momentum

    total = 3 * 3
    for step in (5, 6, 7):  # a row's lr is the one its step trained with (step - 1 on the schedule's clock)
        assert lrs[step] == pytest.approx(0.5 * lr_and_momentum("cyclic", step - 1, total, 0.2, 0.9)[0])


def test_a_run_stopped_after_the_rescue_resumes_rescued_and_rescues_no_more(tmp_path, scripted):
    stop_at = {"step": None}

    def should_stop():
        return stop_at["step"] is not None

    def on_event(event):
        if event["type"] == "progress" and event["step"] == 6:
            stop_at["step"] = 6

    with pytest.raises(Cancelled):
        train(rescue_spec(), tmp_path, callbacks=Callbacks(on_event=on_event, should_stop=should_stop))
    report = train(rescue_spec(), tmp_path, resume=True)
    assert len(report["co"]["rescue"]["rescues"]) == 1 and report["steps"]["done"] == 9
    assert all(row["train_clean_accuracy"] is None for row in rows(tmp_path, "train") if row["step"] > 4)


def test_rescue_settings_are_validated():
    from pydantic import ValidationError

    for bad in ({"max_rescues": 0}, {"method": "pgd"}, {"lr_scale": 0}, {"fgsm_step_fraction": 1.5},
                {"trigger": "alignment"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            rescue_spec(**bad)
