"""The CO onset rule (core/co.py) on synthetic monitor histories, and MonitorSpec bounds."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from core.co import Onset, chance_level, classify, detect_onset, pending_onset, verdict_text
from core.spec import JobSpec, MonitorSpec

STEP = 200
CHANCE = 0.1  # a balanced 10-class monitor set


def verdict(h: list[dict], monitor: MonitorSpec | None = None, **kwargs):
    return classify(h, monitor or MonitorSpec(), chance_level=kwargs.pop("chance_level", CHANCE), **kwargs)


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
    assert verdict(h).code == "no_co" and verdict(h).onset is None
    assert "No catastrophic overfitting" in verdict_text(verdict(h), h)


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
    assert onset.confirmed_by == "next_check"
    assert verdict(h).code == "co" and verdict(h).onset == onset
    text = verdict_text(verdict(h), h)
    assert "step 1200" in text and "wong_drop" in text and "1400" in text
    assert "fell from 40.0% at step 1000 to 2.0%, more than 20 pp in one check" in text


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
    assert onset.confirmed_by is None
    assert verdict(h, MonitorSpec(confirm=False)).code == "co"
    assert "unconfirmed" in verdict_text(verdict(h, MonitorSpec(confirm=False)), h)


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
    assert verdict(h).code == "suspected"
    assert "last monitor check" in verdict_text(verdict(h), h)
    # once a next check confirms it, the onset is the same step
    h2 = h + history([0.4] * 6 + [0.02, 0.01])[-1:]
    assert detect_onset(h2, MonitorSpec()).onset_step == 6 * STEP
    assert pending_onset(h2, MonitorSpec()) is None


def test_first_check_never_fires_and_short_histories() -> None:
    assert detect_onset([], MonitorSpec()) is None
    assert detect_onset(history([0.0]), MonitorSpec(confirm=False)) is None
    with pytest.raises(ValueError, match="no monitor checks"):
        classify([], MonitorSpec(), chance_level=CHANCE)


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


# ---- the verdict: never_robust, suspected, confirmed by the final evaluation (issue 10, item 5) ------------
SEED2_PGD = [0.066, 0.041, 0.031, 0.061, 0.033, 0.086, 0.064, 0.031, 0.033, 0.025, 0.049, 0.008, 0.010, 0.029,
             0.002]  # the plain-FGSM seed-2 CPU run above: PGD never above a constant classifier's 10 %


def test_chance_level_is_the_largest_class_share_or_one_over_the_classes():
    assert chance_level([52, 52, 51, 51, 51, 51, 51, 51, 51, 51]) == pytest.approx(52 / 512)
    assert chance_level(None, 10) == chance_level([], 10) == pytest.approx(0.1)  # reports without counts
    assert chance_level([90, 10]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="class counts"):
        chance_level(None, None)


def test_a_run_never_above_chance_is_never_robust_even_when_a_rule_fires():
    fgsm = [0.22, 0.24, 0.22, 0.21, 0.25, 0.33, 0.40, 0.48, 0.46, 0.43, 0.62, 0.69, 0.75, 0.76, 0.84]
    h = history(SEED2_PGD, fgsm, clean=0.9)
    assert detect_onset(h, MonitorSpec()) is not None  # relative_collapse fires on the noise near chance
    v = classify(h, MonitorSpec(), chance_level=52 / 512)
    assert v.code == "never_robust" and v.never_robust_level == pytest.approx(52 / 512 + 0.02)
    assert v.peak["pgd_accuracy"] == 0.086 and v.onset.rule["name"] == "relative_collapse"  # kept, overruled
    text = verdict_text(v, h)
    assert text.startswith("Never robust") and "peaked at 8.6% (step 1000)" in text
    assert "12.2% level" in text and "largest class share, 10.2%" in text and "2 pp margin" in text
    assert "not counted as a collapse" in text
    # the same trace scaled above the level is a collapse; the level itself is still never robust
    assert verdict(history([p * 2 for p in SEED2_PGD], fgsm, clean=0.9), chance_level=52 / 512).code == "co"
    assert classify(history([0.12, 0.11]), MonitorSpec(), chance_level=0.1).code == "never_robust"
    assert classify(history([0.121, 0.11]), MonitorSpec(), chance_level=0.1).code == "no_co"
    assert classify(history([0.121, 0.11]), MonitorSpec(never_robust_margin=0.05),
                    chance_level=0.1).code == "never_robust"


def test_a_flat_trace_near_chance_without_any_firing_is_never_robust():
    h = history([0.0, 0.01, 0.0, 0.02, 0.0], fgsm=0.1, clean=0.3)
    assert detect_onset(h, MonitorSpec()) is None and pending_onset(h, MonitorSpec()) is None
    v = verdict(h)
    assert v.code == "never_robust" and v.onset is None
    assert "rule fired" not in verdict_text(v, h)


def test_a_last_check_collapse_is_confirmed_by_the_final_evaluation_or_suspected():
    h = history([0.4] * 6 + [0.02], fgsm=0.8)  # wong_drop fires at the last check: level 0.4 - 0.2 = 0.2
    confirmed = verdict(h, final_robust_accuracy=0.01)
    assert confirmed.code == "co" and confirmed.onset.onset_step == 6 * STEP
    assert confirmed.onset.confirmed_by == "final_evaluation" and confirmed.onset.confirmed_step is None
    text = verdict_text(confirmed, h)
    assert text.startswith("Catastrophic overfitting detected at step 1200")
    assert "confirmed by the final evaluation" in text
    assert "1.0% on test images, below the 20.0% level" in text
    # the final evaluation must be strictly below the rule's level, as a next check would have to be
    for final in (0.2, 0.35, None):
        suspected = verdict(h, final_robust_accuracy=final)
        assert suspected.code == "suspected", final
        assert suspected.onset.onset_step == 6 * STEP and suspected.onset.confirmed_by is None
        text = verdict_text(suspected, h)
        assert text.startswith("Catastrophic overfitting suspected at step 1200 (epoch 3), the last monitor")
        assert ("no final evaluation was given" if final is None else "is not below the 20.0% level") in text
    # a confirmed onset earlier in the run needs no final evaluation, whatever it says
    h2 = history([0.4] * 4 + [0.02, 0.01, 0.4], fgsm=0.8)
    assert verdict(h2, final_robust_accuracy=0.5).onset.confirmed_by == "next_check"


def test_the_sentence_does_not_claim_a_fall_when_the_check_before_was_already_below_the_level():
    # relative_collapse, peak 12.9 %, level 6.45 %; the check before the onset (5.8 %) was already below the
    # level but without the CO signature (FGSM below clean, gap 24 pp), so the rule fired one check later
    pgd = [0.10, 0.129, 0.10, 0.058, 0.004, 0.003]
    fgsm = [0.3, 0.3, 0.3, 0.3, 0.6, 0.65]
    h = history(pgd, fgsm, clean=0.65)
    v = verdict(h)
    assert v.code == "co" and v.onset.rule["name"] == "relative_collapse" and v.onset.onset_step == 4 * STEP
    assert v.onset.before["pgd_accuracy"] < v.onset.rule["level"]
    text = verdict_text(v, h)
    assert "fell" not in text
    assert ("monitor PGD accuracy 0.4% is below 0.5 times its running maximum 12.9% (the 6.5% level), "
            "with FGSM accuracy 60.0% more than 30 pp above it") in text
    assert "confirmed at step 1000, where PGD accuracy was still below the 6.5% level" in text
    # FGSM above clean: the sentence names that signature instead
    h = history(pgd, fgsm, clean=[0.65, 0.65, 0.65, 0.65, 0.5, 0.5])
    assert "with FGSM accuracy 60.0% above clean accuracy 50.0%" in verdict_text(verdict(h), h)


def test_drop_from_max_sentence_names_the_running_maximum():
    h = history([0.45, 0.30, 0.15, 0.05, 0.03], fgsm=0.6, clean=0.9)
    text = verdict_text(verdict(h), h)
    assert ("monitor PGD accuracy 15.0% is more than 20 pp below its running maximum 45.0%, with FGSM "
            "accuracy 60.0% more than 30 pp above it") in text


def test_never_robust_margin_is_bounded_and_does_not_change_the_digest():
    assert MonitorSpec().never_robust_margin == 0.02
    with pytest.raises(ValidationError):
        MonitorSpec(never_robust_margin=-0.01)
    changed = JobSpec.model_validate({"monitor": {"never_robust_margin": 0.05}})
    assert changed.sha256() == JobSpec().sha256()  # it reads the stored checks; a resume may change it
