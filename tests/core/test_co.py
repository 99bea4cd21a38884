"""The CO onset rule (core/co.py) on synthetic monitor histories, and MonitorSpec bounds."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from core.co import Onset, detect_onset, pending_onset, verdict_text
from core.spec import JobSpec, MonitorSpec

STEP = 200


def history(pgd: list[float], fgsm: float | list[float] = 0.5, clean: float | list[float] = 0.7,
            steps_per_epoch: int = 400) -> list[dict]:
    n = len(pgd)
    fgsm = fgsm if isinstance(fgsm, list) else [fgsm] * n
    clean = clean if isinstance(clean, list) else [clean] * n
    return [{"step": i * STEP, "epoch": (i * STEP) // steps_per_epoch, "clean_accuracy": clean[i],
             "fgsm_accuracy": fgsm[i], "pgd_accuracy": pgd[i], "extra": i} for i in range(n)]


def test_flat_history_has_no_onset() -> None:
    h = history([0.4] * 20)
    assert detect_onset(h, MonitorSpec()) is None
    assert detect_onset(h, MonitorSpec(confirm=False)) is None
    assert "No catastrophic overfitting" in verdict_text(None, h, MonitorSpec())


def test_sudden_drop_fires_wong_at_the_exact_step() -> None:
    pgd = [0.1, 0.25, 0.35] + [0.40] * 3 + [0.02] * 8  # index 6 = step 1200
    fgsm = [0.2, 0.35, 0.45] + [0.5] * 3 + [0.8] * 8
    h = history(pgd, fgsm)
    assert h[6]["step"] == 1200
    onset = detect_onset(h, MonitorSpec())
    assert isinstance(onset, Onset)
    assert onset.onset_step == 1200
    assert onset.onset_epoch == 3
    assert onset.rule["name"] == "wong_drop"
    assert onset.rule["wong_drop"] == 0.2
    assert onset.rule["level"] == pytest.approx(0.2)
    assert onset.confirmed_step == 1400
    assert onset.before["step"] == 1000 and onset.after["step"] == 1400
    assert onset.to_dict()["rule"]["name"] == "wong_drop"
    text = verdict_text(onset, h)
    assert "step 1200" in text and "wong_drop" in text and "1400" in text


def test_drop_from_max_fires_when_each_step_is_small() -> None:
    # 0.45 -> 0.30 -> 0.15 -> 0.05: every drop is 15 pp (no Wong), but 0.15 < 0.45 - 0.2 with a big gap.
    pgd = [0.45, 0.30, 0.15, 0.05, 0.03]
    h = history(pgd, fgsm=0.6, clean=0.9)  # FGSM below clean: R3 cannot fire
    onset = detect_onset(h, MonitorSpec())
    assert onset is not None
    assert onset.rule["name"] == "drop_from_max"
    assert onset.onset_step == 2 * STEP
    assert onset.rule["running_max"] == pytest.approx(0.45)
    # without a large enough FGSM-PGD gap, R2 stays silent
    assert detect_onset(history(pgd, fgsm=0.3, clean=0.9), MonitorSpec()) is None


def test_slow_decay_with_fgsm_above_clean_is_a_relative_collapse() -> None:
    pgd = [0.12]
    while pgd[-1] * 0.9 >= 0.03:
        pgd.append(pgd[-1] * 0.9)
    pgd.append(0.03)
    n = len(pgd)
    clean = [0.6] * n
    fgsm = [0.5 + 0.2 * i / (n - 1) for i in range(n)]  # rises from below clean to 0.7 > 0.6
    h = history(pgd, fgsm, clean)
    # independent expectation: the first index with pgd < 0.5 * 0.12 (max is the first value) and the CO
    # signature: fgsm > clean, or an FGSM-PGD gap over 0.30
    expected = next(i for i in range(n) if pgd[i] < 0.06 and (fgsm[i] > clean[i] or fgsm[i] - pgd[i] > 0.30))
    onset = detect_onset(h, MonitorSpec())
    assert onset is not None
    assert onset.rule["name"] == "relative_collapse"
    assert onset.onset_step == expected * STEP
    assert onset.confirmed_step == (expected + 1) * STEP
    # the same decay with FGSM below clean and close to PGD: no rule fires (every step < 20 pp, gap < 30 pp)
    assert detect_onset(history(pgd, fgsm=0.3, clean=0.6), MonitorSpec()) is None


def test_relative_collapse_ignores_noise_near_zero() -> None:
    pgd = [0.015, 0.005, 0.0, 0.0, 0.0]
    h = history(pgd, fgsm=0.9, clean=0.5)
    assert detect_onset(h, MonitorSpec()) is None  # running max 0.015 < min_peak 0.02
    assert detect_onset(h, MonitorSpec(min_peak=0.01)) is not None


def test_seeded_noise_has_no_onset() -> None:
    rng = random.Random(0)
    pgd = [0.35 + rng.uniform(-0.03, 0.03) for _ in range(60)]
    fgsm = [0.45 + rng.uniform(-0.01, 0.01) for _ in range(60)]
    h = history(pgd, fgsm, clean=0.7)
    assert detect_onset(h, MonitorSpec()) is None
    assert detect_onset(h, MonitorSpec(confirm=False)) is None


def test_single_dip_that_recovers_needs_no_confirmation_to_fire() -> None:
    pgd = [0.3, 0.4, 0.4, 0.05, 0.4, 0.41, 0.4]
    h = history(pgd, fgsm=0.8)
    assert detect_onset(h, MonitorSpec()) is None
    onset = detect_onset(h, MonitorSpec(confirm=False))
    assert onset is not None
    assert onset.onset_step == 3 * STEP
    assert onset.confirmed_step is None
    assert onset.after["step"] == 3 * STEP  # the onset row itself
    assert "unconfirmed" in verdict_text(onset, h)


def test_confirmation_uses_the_firing_rules_level() -> None:
    # dip to 0.15, then 0.25: still below R1's level 0.40-0.2=0.2? no (0.25) -> rejected, scan continues
    h = history([0.4, 0.4, 0.15, 0.25, 0.02, 0.01], fgsm=0.8)
    onset = detect_onset(h, MonitorSpec())
    assert onset is not None and onset.onset_step == 4 * STEP and onset.confirmed_step == 5 * STEP
    # 0.15 then 0.19: confirmed at the first dip
    onset = detect_onset(history([0.4, 0.4, 0.15, 0.19, 0.3], fgsm=0.8), MonitorSpec())
    assert onset is not None and onset.onset_step == 2 * STEP


def test_onset_at_the_last_check_is_not_confirmed() -> None:
    h = history([0.4] * 6 + [0.02], fgsm=0.8)
    assert detect_onset(h, MonitorSpec()) is None  # no next check to confirm it
    assert detect_onset(h, MonitorSpec(confirm=False)).onset_step == 6 * STEP
    pending = pending_onset(h, MonitorSpec())
    assert pending is not None and pending.onset_step == 6 * STEP and pending.confirmed_step is None
    assert "last check" in verdict_text(None, h, MonitorSpec())
    # once a next check confirms it, the onset is the same step
    h2 = h + history([0.4] * 6 + [0.02, 0.01])[-1:]
    assert detect_onset(h2, MonitorSpec()).onset_step == 6 * STEP
    assert pending_onset(h2, MonitorSpec()) is None


def test_first_check_never_fires_and_short_histories() -> None:
    assert detect_onset([], MonitorSpec()) is None
    assert detect_onset(history([0.0]), MonitorSpec(confirm=False)) is None
    assert "No monitor checks" in verdict_text(None, [])


def test_invalid_history_raises() -> None:
    h = history([0.4, 0.4])
    del h[1]["pgd_accuracy"]
    with pytest.raises(ValueError, match="lacks"):
        detect_onset(h, MonitorSpec())
    with pytest.raises(ValueError, match="finite"):
        detect_onset(history([0.4, float("nan")]), MonitorSpec())
    with pytest.raises(ValueError, match="decrease"):
        detect_onset(list(reversed(history([0.4, 0.4]))), MonitorSpec())


def test_monitor_spec_bounds() -> None:
    with pytest.raises(ValidationError):
        MonitorSpec(wong_drop=float("nan"))
    with pytest.raises(ValidationError):
        MonitorSpec(wong_drop=1.5)
    with pytest.raises(ValidationError):
        MonitorSpec(unknown_field=1)
    with pytest.raises(ValidationError):
        MonitorSpec(curvature_subspace="other")
    with pytest.raises(ValidationError):
        MonitorSpec(co_policy="abort")
    spec = JobSpec.model_validate({"monitor": {"every_steps": 50, "co_policy": "stop"}})
    assert spec.monitor.every_steps == 50 and spec.monitor.co_policy == "stop"
    assert JobSpec().monitor == MonitorSpec()
    with pytest.raises(ValidationError):
        spec.monitor.confirm = False  # frozen


def test_collapse_with_a_wide_gap_but_fgsm_below_clean_is_an_onset():
    # the CPU seed-2 pattern: robustness never high (peak 8.6 %), PGD falls to ~0 while FGSM stays near
    # clean accuracy without exceeding it; the FGSM-PGD gap is the signature
    pgd = [0.066, 0.041, 0.031, 0.061, 0.033, 0.086, 0.064, 0.031, 0.033, 0.025, 0.049, 0.008, 0.010, 0.029, 0.002]
    fgsm = [0.22, 0.24, 0.22, 0.21, 0.25, 0.33, 0.40, 0.48, 0.46, 0.43, 0.62, 0.69, 0.75, 0.76, 0.84]
    clean = [0.17, 0.33, 0.30, 0.39, 0.44, 0.53, 0.55, 0.61, 0.60, 0.47, 0.66, 0.72, 0.79, 0.82, 0.87]
    history = [{"step": 79 * (i + 1), "epoch": i, "clean_accuracy": c, "fgsm_accuracy": f, "pgd_accuracy": p}
               for i, (p, f, c) in enumerate(zip(pgd, fgsm, clean, strict=True))]
    onset = detect_onset(history, MonitorSpec())
    # first check with pgd < 0.5 * 0.086 and fgsm - pgd > 0.30 is index 7 (0.031, gap 0.449); the next
    # check (0.033) is still below 0.043, so it is confirmed there
    assert onset is not None and onset.rule["name"] == "relative_collapse"
    assert (onset.onset_step, onset.confirmed_step) == (79 * 8, 79 * 9)
