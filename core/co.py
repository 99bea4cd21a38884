"""Catastrophic-overfitting (CO) onset rules and the run's verdict: pure functions over the monitor's checks.

No torch here: the input is a list of monitor checks (dicts), the output an ``Onset`` or None
(``detect_onset``) and a ``Verdict`` (``classify``), so the API and the report can re-run the rules on
stored traces. Each history row is one check, in order, with
at least ``step``, ``epoch``, ``clean_accuracy``, ``fgsm_accuracy`` and ``pgd_accuracy`` (fractions in
[0, 1], measured in eval mode on the fixed monitor set; extra keys are kept and ignored).

Notation: at check t, pgd(t), fgsm(t), clean(t) are the accuracies, gap(t) = fgsm(t) - pgd(t), and
peak(t) = max_{s<t} pgd(s), the running maximum over the checks strictly *before* t. A rule needs at
least one earlier check, so the first check (t = 0) never fires.

- R1 ``wong_drop`` (Wong, Rice, Kolter 2020, ``fast_adversarial`` train_fgsm.py early stop):
  pgd(t) - pgd(t-1) < -wong_drop. Level: pgd(t-1) - wong_drop.
- R2 ``drop_from_max`` (GradAlign's best-train-subset-PGD tracking, Andriushchenko & Flammarion 2020,
  made explicit; co-detection.md §2.2 b, e and §2.3): pgd(t) < peak(t) - max_drop and gap(t) > min_gap.
  Level: peak(t) - max_drop.
- R3 ``relative_collapse`` (paper-notes §5 "below a fraction of its running maximum while FGSM rises";
  FGSM accuracy above clean accuracy is Kim et al. 2021's CO signature): peak(t) >= min_peak and
  pgd(t) < relative_fraction * peak(t) and (fgsm(t) > clean(t) or gap(t) > min_gap), the second form
  being the FGSM-PGD gap signature (co-detection.md §2.2 e). Level: relative_fraction * peak(t).
  R3 catches CO in runs whose PGD accuracy never got high enough for a 20 pp drop; ``min_peak``
  keeps it from firing on noise around 0.

The onset is the first check t at which a rule fires (tried in the order R1, R2, R3). With ``confirm``
(co-detection.md §2.3: "confirm at the next evaluation ... to reject noise") a firing rule is accepted
only if the next check's PGD accuracy is still strictly below that rule's level computed at t:
pgd(t+1) < level. Otherwise the next rule is tried, then scanning goes on at t+1. A rule that fires at
the **last** check has no next check, so with ``confirm`` it is not (yet) an onset and ``detect_onset``
returns None; online, the trainer simply sees the onset one check later. ``pending_onset`` reports such
an unconfirmed firing at the last check.

The run's verdict (``classify``) is one of four codes, decided in this order (the first that holds wins):

1. ``never_robust``: the monitor PGD accuracy never rose above what a constant classifier scores on the
   monitor set, max_t pgd(t) <= chance_level + never_robust_margin, where chance_level is the largest
   class share of the monitor set (``chance_level``). Such a run had no robustness to lose; a rule firing
   on its noise around chance (R3 can: 8 % -> 3 % with a wide FGSM-PGD gap) is overruled and kept in the
   verdict only as information.
2. ``co``: a confirmed onset (``confirmed_by`` "next_check"; with ``confirm`` off every firing counts and
   ``confirmed_by`` is None), or a firing at the last check that the final evaluation confirms: its PGD
   robust accuracy (test images, the final attack) is strictly below the rule's level
   (``confirmed_by`` "final_evaluation"). The final evaluation measures the same, last, weights as the
   last check, on other images with a stronger attack, so it is the independent second measurement that
   the next check would have been.
3. ``suspected``: a firing at the last check that nothing confirms (no final evaluation given, or its
   robust accuracy is not below the rule's level). Never silence.
4. ``no_co``: no rule fired (or every firing was rejected by its next check).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

REQUIRED_KEYS = ("step", "epoch", "clean_accuracy", "fgsm_accuracy", "pgd_accuracy")
RULES = ("wong_drop", "drop_from_max", "relative_collapse")
VERDICTS = ("co", "no_co", "never_robust", "suspected")


class OnsetThresholds(Protocol):
    """What ``detect_onset`` reads from its settings: ``core.spec.MonitorSpec`` satisfies it."""

    wong_drop: float
    max_drop: float
    min_gap: float
    relative_fraction: float
    min_peak: float
    confirm: bool


@dataclass(frozen=True)
class Onset:
    """A CO onset: where it fired, by which rule (with its thresholds), and the rows around it."""

    onset_step: int
    onset_epoch: Any  # whatever the history row holds (int epoch, or a float epoch position)
    confirmed_step: int | None  # the next check's step; None when confirmation is off
    rule: dict[str, Any]  # {"name": ..., the thresholds used, "level": PGD level that fired}
    before: dict[str, Any]  # the check preceding the onset
    after: dict[str, Any]  # the confirming check, or the onset check itself when not confirmed by a check
    confirmed_by: str | None = None  # "next_check", "final_evaluation"; None: not confirmed, or confirm off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VerdictSettings(OnsetThresholds, Protocol):
    """What ``classify`` reads: the onset thresholds and the never-robust margin (``MonitorSpec``)."""

    never_robust_margin: float


@dataclass(frozen=True)
class Verdict:
    """A run's CO verdict (module docstring): the code, the firing behind it, and the numbers it rests on."""

    code: str  # one of VERDICTS
    onset: Onset | None  # co: the onset; suspected: the last-check firing; never_robust: an overruled firing
    peak: dict[str, Any]  # the check with the highest PGD accuracy (the first of ties)
    first: dict[str, Any]  # the first and last checks, for the sentence
    last: dict[str, Any]
    checks: int
    chance_level: float  # the largest class share of the monitor set: a constant classifier's accuracy
    never_robust_level: float  # chance_level + never_robust_margin
    final_robust_accuracy: float | None  # the final evaluation's PGD robust accuracy, when given


def _validate(history: Sequence[Mapping[str, Any]]) -> None:
    previous_step = -math.inf
    for index, row in enumerate(history):
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"history row {index} lacks {missing}")
        for key in ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy"):
            value = row[key]
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"history row {index}: {key} must be a finite fraction in [0, 1], "
                                 f"got {value!r}")
        if row["step"] < previous_step:
            raise ValueError(f"history row {index}: steps must not decrease "
                             f"({row['step']} < {previous_step})")
        previous_step = row["step"]


def _firing_rules(history: Sequence[Mapping[str, Any]], t: int, peak: float,
                  m: OnsetThresholds) -> list[dict[str, Any]]:
    """The rules that fire at check t (t >= 1), each with its thresholds and PGD level, in R1-R3 order."""
    row, prev = history[t], history[t - 1]
    pgd, fgsm, clean = row["pgd_accuracy"], row["fgsm_accuracy"], row["clean_accuracy"]
    fired = []
    if pgd - prev["pgd_accuracy"] < -m.wong_drop:
        fired.append({"name": "wong_drop", "wong_drop": m.wong_drop,
                      "level": prev["pgd_accuracy"] - m.wong_drop})
    if pgd < peak - m.max_drop and fgsm - pgd > m.min_gap:
        fired.append({"name": "drop_from_max", "max_drop": m.max_drop, "min_gap": m.min_gap,
                      "running_max": peak, "level": peak - m.max_drop})
    # the CO signature: FGSM accuracy above clean accuracy, or FGSM nearly harmless while PGD breaks almost
    # everything (a seed-2 CPU run collapsed to 0.2 % PGD with FGSM at 96 % of clean, never above it)
    signature = fgsm > clean or fgsm - pgd > m.min_gap
    if peak >= m.min_peak and pgd < m.relative_fraction * peak and signature:
        fired.append({"name": "relative_collapse", "relative_fraction": m.relative_fraction,
                      "min_peak": m.min_peak, "min_gap": m.min_gap, "running_max": peak,
                      "level": m.relative_fraction * peak})
    return fired


def detect_onset(history: Sequence[Mapping[str, Any]], monitor: OnsetThresholds) -> Onset | None:
    """The first confirmed CO onset in ``history`` under ``monitor``'s rules (module docstring), or None.

    ``monitor`` is a ``core.spec.MonitorSpec`` or anything with the same threshold attributes. Raises
    ValueError on a row without the required keys, an accuracy outside [0, 1], or decreasing steps.
    """
    _validate(history)
    peak = -math.inf
    for t in range(len(history)):
        if t > 0:
            peak = max(peak, history[t - 1]["pgd_accuracy"])
            for rule in _firing_rules(history, t, peak, monitor):
                onset = _accept(history, t, rule, monitor.confirm)
                if onset is not None:
                    return onset
    return None


def _accept(history: Sequence[Mapping[str, Any]], t: int, rule: dict[str, Any],
            confirm: bool) -> Onset | None:
    row = history[t]
    if not confirm:
        return Onset(row["step"], row["epoch"], None, rule, dict(history[t - 1]), dict(row))
    if t + 1 >= len(history) or not history[t + 1]["pgd_accuracy"] < rule["level"]:
        return None
    nxt = history[t + 1]
    return Onset(row["step"], row["epoch"], nxt["step"], rule, dict(history[t - 1]), dict(nxt), "next_check")


def pending_onset(history: Sequence[Mapping[str, Any]], monitor: OnsetThresholds) -> Onset | None:
    """A rule firing at the last check that still awaits confirmation (only meaningful with ``confirm``).

    Returns it as an unconfirmed ``Onset`` (``confirmed_step`` None, ``after`` the last row), provided no
    confirmed onset exists earlier; otherwise None.
    """
    _validate(history)
    if len(history) < 2 or not monitor.confirm or detect_onset(history, monitor) is not None:
        return None
    t = len(history) - 1
    peak = max(row["pgd_accuracy"] for row in history[:t])
    fired = _firing_rules(history, t, peak, monitor)
    return _accept(history, t, fired[0], confirm=False) if fired else None


def chance_level(class_counts: Sequence[int] | None = None, num_classes: int | None = None) -> float:
    """The largest class share of the monitor set: what a constant classifier scores on it, clean and under
    any attack. Reports from before the class counts were stored fall back to 1 / ``num_classes``."""
    if class_counts and sum(class_counts) > 0:
        return max(class_counts) / sum(class_counts)
    if num_classes:
        return 1.0 / num_classes
    raise ValueError("the chance level needs the monitor set's class counts or the number of classes")


def classify(history: Sequence[Mapping[str, Any]], monitor: VerdictSettings, *, chance_level: float,
             final_robust_accuracy: float | None = None) -> Verdict:
    """The run's verdict over its monitor checks (module docstring: codes and precedence).

    ``chance_level`` is the largest class share of the monitor set (``chance_level()``);
    ``final_robust_accuracy`` the final evaluation's PGD accuracy of the *last* weights (leave it None when
    the final evaluation measured other weights, e.g. after a ``stop``). Raises ValueError on an empty or
    invalid history.
    """
    _validate(history)
    if not history:
        raise ValueError("no monitor checks to classify")
    onset = detect_onset(history, monitor)
    pending = pending_onset(history, monitor) if onset is None else None
    if (pending is not None and final_robust_accuracy is not None
            and final_robust_accuracy < pending.rule["level"]):
        onset, pending = replace(pending, confirmed_by="final_evaluation"), None
    peak = max(history, key=lambda row: row["pgd_accuracy"])
    level = chance_level + monitor.never_robust_margin
    if peak["pgd_accuracy"] <= level:
        code = "never_robust"
    elif onset is not None:
        code = "co"
    else:
        code = "suspected" if pending is not None else "no_co"
    return Verdict(code, onset or pending, dict(peak), dict(history[0]), dict(history[-1]), len(history),
                   chance_level, level, final_robust_accuracy)


def percent(value: float | None) -> str:
    """A fraction as a percentage for people: 0.129 -> '12.9%' (None -> 'n/a')."""
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def monitor_rows(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The monitor checks of a metrics history (metrics.jsonl rows of every kind)."""
    return [row for row in history if row["kind"] == "monitor"]


def _pp(value: float) -> str:
    return f"{100.0 * value:.3g} pp"


def _what_fired(onset: Onset, row: Mapping[str, Any]) -> str:
    """What the rule saw at the onset check ``row``, with its numbers; true for every rule."""
    rule = onset.rule
    pgd, fgsm, clean = row["pgd_accuracy"], row["fgsm_accuracy"], row["clean_accuracy"]
    if rule["name"] == "wong_drop":  # fires only on a drop, so "fell from" is always true here
        return (f"monitor PGD accuracy fell from {percent(onset.before['pgd_accuracy'])} at step "
                f"{onset.before['step']} to {percent(pgd)}, more than {_pp(rule['wong_drop'])} in one check")
    gap = f"FGSM accuracy {percent(fgsm)} more than {_pp(rule['min_gap'])} above it"
    if rule["name"] == "drop_from_max":
        return (f"monitor PGD accuracy {percent(pgd)} is more than {_pp(rule['max_drop'])} below its running "
                f"maximum {percent(rule['running_max'])}, with {gap}")
    signature = f"FGSM accuracy {percent(fgsm)} above clean accuracy {percent(clean)}" if fgsm > clean else gap
    return (f"monitor PGD accuracy {percent(pgd)} is below {rule['relative_fraction']:g} times its running "
            f"maximum {percent(rule['running_max'])} (the {percent(rule['level'])} level), with {signature}")


def _onset_row(onset: Onset, history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return next((row for row in history if row["step"] == onset.onset_step), onset.after)


def _confirmation(verdict: Verdict) -> str:
    o = verdict.onset
    assert o is not None
    level = percent(o.rule["level"])
    if o.confirmed_by == "next_check":
        return (f"; confirmed at step {o.confirmed_step}, where PGD accuracy was still below the {level} "
                f"level (PGD {percent(o.after['pgd_accuracy'])}, FGSM {percent(o.after['fgsm_accuracy'])}, "
                f"clean {percent(o.after['clean_accuracy'])}).")
    if o.confirmed_by == "final_evaluation":
        return (f"; confirmed by the final evaluation of the same (last) weights: PGD robust accuracy "
                f"{percent(verdict.final_robust_accuracy or 0.0)} on test images, below the {level} level.")
    return " (unconfirmed: monitor.confirm is off)."


def verdict_text(verdict: Verdict, history: Sequence[Mapping[str, Any]]) -> str:
    """One or two sentences for a run summary: the verdict and the numbers it rests on."""
    o, peak, first, last = verdict.onset, verdict.peak, verdict.first, verdict.last
    checks = f"{verdict.checks} monitor check" + ("s" if verdict.checks != 1 else "")
    span = f"{checks} (steps {first['step']}-{last['step']})"
    if verdict.code == "never_robust":
        text = (f"Never robust, so no catastrophic overfitting to detect: over {span} the monitor PGD "
                f"accuracy peaked at {percent(peak['pgd_accuracy'])} (step {peak['step']}), not above the "
                f"{percent(verdict.never_robust_level)} level, which is what a constant classifier scores on "
                f"the monitor set (its largest class share, {percent(verdict.chance_level)}) plus a "
                f"{_pp(verdict.never_robust_level - verdict.chance_level)} margin.")
        if o is not None:
            text += (f" The {o.rule['name']} rule fired at step {o.onset_step} on accuracies that never left "
                     "chance level; that is not counted as a collapse.")
        return text
    if o is not None and verdict.code in ("co", "suspected"):
        at = f"step {o.onset_step} (epoch {o.onset_epoch})"
        fired = _what_fired(o, _onset_row(o, history))
        if verdict.code == "co":
            return f"Catastrophic overfitting detected at {at} by the {o.rule['name']} rule: {fired}" + \
                _confirmation(verdict)
        final = ("no final evaluation was given" if verdict.final_robust_accuracy is None else
                 f"the final evaluation's PGD robust accuracy, {percent(verdict.final_robust_accuracy)}, is not "
                 f"below the {percent(o.rule['level'])} level")
        return (f"Catastrophic overfitting suspected at {at}, the last monitor check, by the "
                f"{o.rule['name']} rule: {fired}; no later check can confirm it, and {final}.")
    return (f"No catastrophic overfitting detected over {span}: PGD accuracy peaked at "
            f"{percent(peak['pgd_accuracy'])} (step {peak['step']}) and ended at {percent(last['pgd_accuracy'])}.")
