"""The CO onset rule (core/co.py) on synthetic monitor histories, and MonitorSpec bounds."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from core.co import chance_level, classify, detect_onset, pending_onset, signature, verdict_text
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


def test_seeded_noise_has_no_onset() -> None:
    rng = random.Random(0)
    pgd = [0.35 + rng.uniform(-0.03, 0.03) for _ in range(60)]
    fgsm = [0.45 + rng.uniform(-0.01, 0.01) for _ in range(60)]
    h = history(pgd, fgsm, clean=0.7)
    assert detect_onset(h, MonitorSpec()) is None
    assert detect_onset(h, MonitorSpec(confirm=False)) is None


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


def test_chance_level_is_the_largest_class_share_or_one_over_the_classes():
    assert chance_level([52, 52, 51, 51, 51, 51, 51, 51, 51, 51]) == pytest.approx(52 / 512)
    assert chance_level(None, 10) == chance_level([], 10) == pytest.approx(0.1)  # reports without counts
    assert chance_level([90, 10]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="class counts"):
        chance_level(None, None)


def test_never_robust_margin_is_bounded_and_does_not_change_the_digest():
    assert MonitorSpec().never_robust_margin == 0.02
    with pytest.raises(ValidationError):
        MonitorSpec(never_robust_margin=-0.01)
    changed = JobSpec.model_validate({"monitor": {"never_robust_margin": 0.05}})
    assert changed.sha256() == JobSpec().sha256()  # it reads the stored checks; a resume may change it


# ---- issue 21: the four failure classes of the review, on other traces ------------------------------------
# Each expectation is derived by hand from the module docstring's definitions, not by calling the rules.


def test_divergence_is_not_co_and_the_sentence_says_so():
    # clean, FGSM and PGD fall together (an optimisation failure): PGD stays ~0.85 of FGSM, no signature
    clean = [0.55, 0.68, 0.72, 0.40, 0.18, 0.15]
    fgsm = [0.40, 0.47, 0.50, 0.30, 0.15, 0.13]
    pgd = [0.34, 0.41, 0.44, 0.26, 0.13, 0.11]  # wong_drop's 20 pp fall at index 3 (0.44 -> 0.26 is 18 pp) and 4
    h = history(pgd, fgsm, clean)
    assert detect_onset(h, MonitorSpec()) is None and pending_onset(h, MonitorSpec()) is None
    assert detect_onset(h, MonitorSpec(confirm=False)) is None  # not even an unconfirmed firing
    v = verdict(h)
    assert v.code == "no_co" and v.onset is None
    text = verdict_text(v, h)
    assert "Clean accuracy fell from 72.0% (step 400) to 15.0%" in text and "divergence" in text


def test_a_collapse_from_a_modest_peak_is_caught_at_its_step():
    # a moderately robust CPU-scale run: PGD peaks at 13 % and falls to 3 % while FGSM (below clean) stays
    pgd = [0.08, 0.11, 0.13, 0.12, 0.035, 0.025, 0.02]
    fgsm = [0.18, 0.20, 0.23, 0.24, 0.24, 0.25, 0.26]
    clean = [0.25, 0.28, 0.30, 0.31, 0.30, 0.31, 0.31]
    h = history(pgd, fgsm, clean)
    # by hand: index 4 is the first with pgd < 0.5 x 0.13 = 0.065, fgsm - pgd = 0.205 >= 0.10 and
    # pgd < 0.5 x fgsm = 0.12; index 5 confirms (0.025 < 0.065, gap 0.225, 0.025 < 0.125). No drop of 20 pp.
    v = verdict(h)
    assert v.code == "co"
    assert (v.onset.rule["name"], v.onset.onset_step, v.onset.confirmed_step) == ("relative_collapse", 800, 1000)
    assert v.onset.rule["level"] == pytest.approx(0.065)


def test_masking_from_the_start_is_co_at_the_first_check_not_never_robust():
    # FGSM rises above clean from the first check while PGD never leaves ~chance: the CO signature itself
    clean = [0.28, 0.40, 0.48, 0.55, 0.58]
    fgsm = [0.30, 0.45, 0.56, 0.66, 0.71]
    pgd = [0.07, 0.05, 0.02, 0.01, 0.0]
    h = history(pgd, fgsm, clean)
    v = verdict(h)
    # by hand: check 0 has gap 0.23 >= 0.10 and 0.07 < 0.5 x 0.30; check 1 confirms (0.05 < 0.15, gap 0.40)
    assert v.code == "co" and v.peak["pgd_accuracy"] == 0.07  # below the never-robust level 0.12
    assert (v.onset.rule["name"], v.onset.onset_step, v.onset.confirmed_step) == ("masking", 0, 200)
    assert v.onset.before is None
    text = verdict_text(v, h)
    assert text.startswith("Catastrophic overfitting detected at step 0 (epoch 0) by the masking rule")
    assert "FGSM accuracy 30.0%, above clean accuracy 28.0%, against PGD accuracy 7.0%" in text
    assert "stands far above PGD accuracy without a fall from a robust phase" in text
    # the same PGD trace with FGSM close to it is never robust: no signature, nothing fires
    quiet = history(pgd, [p + 0.05 for p in pgd], clean)
    assert verdict(quiet).code == "never_robust" and verdict(quiet).onset is None


def test_a_last_check_firing_is_confirmed_like_for_like_by_a_repeat_of_that_check():
    h = history([0.30, 0.33, 0.35, 0.34, 0.04], fgsm=[0.40, 0.42, 0.44, 0.44, 0.52], clean=0.5)
    assert verdict(h).code == "suspected"
    # the final evaluation (other images, another attack) no longer confirms it, however low
    assert verdict(h, final_robust_accuracy=0.0).code == "suspected"
    assert "no repeat of that check confirms it" in verdict_text(verdict(h), h)
    repeat = {**h[-1], "repeat": True, "pgd_accuracy": 0.05, "fgsm_accuracy": 0.51}
    v = verdict(h + [repeat])
    assert v.code == "co" and v.onset.onset_step == 800 and v.onset.confirmed_step == 800
    assert v.onset.confirmed_by == "repeat_check" and v.onset.rule["name"] == "wong_drop"
    assert "confirmed by a repeat of that last check" in verdict_text(v, h + [repeat])
    # a repeat without the signature rejects the firing
    rejected = {**repeat, "pgd_accuracy": 0.33, "fgsm_accuracy": 0.43}
    assert verdict(h + [rejected]).code == "no_co"


def test_every_firing_rule_is_tried_with_its_own_level():
    # index 2: wong_drop (level 0.30 - 0.2 = 0.10), drop_from_max (0.40 - 0.2 = 0.20), relative_collapse
    # (0.5 x 0.40 = 0.20) and masking (0.5 x 0.6 = 0.30) all fire; the next check (0.15) is above wong's
    # level but below drop_from_max's: the onset is drop_from_max's at index 2
    h = history([0.40, 0.30, 0.08, 0.15, 0.14], fgsm=0.6, clean=0.7)
    onset = detect_onset(h, MonitorSpec())
    assert (onset.rule["name"], onset.onset_step, onset.confirmed_step) == ("drop_from_max", 400, 600)
    # at the last check every rule is tried as well: only masking fires there (no drop), and is pending
    tail = history([0.40, 0.40, 0.25], fgsm=[0.5, 0.5, 0.6], clean=0.7)
    assert pending_onset(tail, MonitorSpec()).rule["name"] == "masking"


def test_recovery_after_a_one_check_dip_is_not_co():
    h = history([0.30, 0.36, 0.05, 0.34, 0.37], fgsm=[0.4, 0.45, 0.55, 0.44, 0.46], clean=0.6)
    assert detect_onset(h, MonitorSpec()) is None and verdict(h).code == "no_co"
    unconfirmed = detect_onset(h, MonitorSpec(confirm=False))
    assert unconfirmed.onset_step == 400 and unconfirmed.confirmed_by is None


def test_collapse_at_the_first_and_at_the_last_checks():
    first = history([0.02, 0.01, 0.0], fgsm=0.6, clean=0.6)
    assert verdict(first).onset.onset_step == 0
    last = history([0.3, 0.32, 0.33, 0.01], fgsm=0.4, clean=0.5)
    assert verdict(last).code == "suspected" and verdict(last).onset.onset_step == 600


def test_very_low_and_very_high_peaks():
    # a peak of 1.5 % falling to 0: only masking can fire (relative_collapse needs min_peak 2 %)
    low = history([0.015, 0.005, 0.0, 0.0], fgsm=0.3, clean=0.4)
    assert verdict(low).onset.rule["name"] == "masking"
    # a very robust run (PGD 60 %, FGSM 68 %) that collapses to 1 %: wong_drop
    high = history([0.55, 0.60, 0.01, 0.0], fgsm=[0.62, 0.68, 0.9, 0.92], clean=0.8)
    assert (verdict(high).onset.rule["name"], verdict(high).onset.onset_step) == ("wong_drop", 400)


def test_signature_thresholds_tie_behaviour():
    m = MonitorSpec()
    row = {"fgsm_accuracy": 0.40, "pgd_accuracy": 0.20}  # ratio exactly 0.5: strict, no signature
    assert not signature(row, m)
    assert signature({"fgsm_accuracy": 0.40, "pgd_accuracy": 0.1999}, m)
    assert signature({"fgsm_accuracy": 0.15, "pgd_accuracy": 0.05}, m)  # gap exactly 0.10: inclusive
    assert not signature({"fgsm_accuracy": 0.149, "pgd_accuracy": 0.05}, m)


def test_confirmation_off_accepts_every_firing():
    h = history([0.4, 0.4, 0.05], fgsm=0.6)
    onset = detect_onset(h, MonitorSpec(confirm=False))
    assert onset.onset_step == 400 and onset.confirmed_step is None and onset.after["step"] == 400
    assert "unconfirmed" in verdict_text(verdict(h, MonitorSpec(confirm=False)), h)
    with pytest.raises(ValueError, match="no monitor checks"):
        classify([], MonitorSpec(), chance_level=CHANCE)
    assert detect_onset([], MonitorSpec()) is None


def test_the_held_out_check_is_judged_too_and_the_sentence_names_the_evidence():
    h = history([0.30, 0.32, 0.02, 0.01], fgsm=[0.4, 0.42, 0.6, 0.62], clean=0.6)
    alone = verdict(h)
    assert alone.held_out is None and "training images only" in verdict_text(alone, h)
    for row, test_pgd in zip(h, [0.28, 0.30, 0.03, 0.02], strict=True):
        row.update(test_clean_accuracy=0.58, test_fgsm_accuracy=0.5, test_pgd_accuracy=test_pgd)
    v = verdict(h)
    assert v.held_out.code == "co" and v.held_out.onset.onset_step == 400
    assert "held-out check on test images agrees (CO from step 400" in verdict_text(v, h)
    for row in h:
        row["test_pgd_accuracy"] = 0.3  # the test curve says nothing happened
    v = verdict(h)
    assert v.code == "co" and v.held_out.code == "no_co" and "differs (no collapse" in verdict_text(v, h)
    healthy = history([0.30, 0.32, 0.31, 0.33], fgsm=0.4, clean=0.6)  # and the other way round
    for row, test_pgd in zip(healthy, [0.28, 0.30, 0.03, 0.02], strict=True):
        row.update(test_clean_accuracy=0.58, test_fgsm_accuracy=0.5, test_pgd_accuracy=test_pgd)
    v = verdict(healthy)
    assert v.code == "no_co" and "differs (CO from step 400" in verdict_text(v, healthy)


def test_sentence_names_the_rule_and_its_numbers():
    h = history([0.1, 0.129, 0.1, 0.058, 0.004, 0.003], [0.15, 0.18, 0.16, 0.3, 0.6, 0.65], clean=0.65)
    # index 3 is the first with the signature (gap 0.242, 0.058 < 0.15) and 0.058 < 0.5 x 0.129; index 4
    # confirms (0.004, FGSM 0.6)
    text = verdict_text(verdict(h), h)
    assert ("monitor PGD accuracy 5.8% is below 0.5 times its running maximum 12.9% (the 6.5% level), with the "
            "CO signature (FGSM accuracy 30.0% against PGD accuracy 5.8%: PGD below 0.5 times FGSM and 10 pp "
            "or more below it); confirmed at step 800") in text
