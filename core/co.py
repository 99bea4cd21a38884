"""Catastrophic-overfitting (CO) onset rule: a pure function over the monitor's check history.

No torch here: the input is a list of monitor checks (dicts), the output an ``Onset`` or None, so the
API and the report can re-run the rule on stored traces. Each history row is one check, in order, with
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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

REQUIRED_KEYS = ("step", "epoch", "clean_accuracy", "fgsm_accuracy", "pgd_accuracy")
RULES = ("wong_drop", "drop_from_max", "relative_collapse")


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
    after: dict[str, Any]  # the confirming check, or the onset check itself when confirmation is off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return Onset(row["step"], row["epoch"], nxt["step"], rule, dict(history[t - 1]), dict(nxt))


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


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}%"


def verdict_text(onset: Onset | None, history: Sequence[Mapping[str, Any]],
                 monitor: OnsetThresholds | None = None) -> str:
    """One or two sentences for a run summary. With ``monitor``, a still-unconfirmed last-check firing is
    mentioned when there is no onset."""
    if onset is not None:
        o = onset
        at = f"step {o.onset_step} (epoch {o.onset_epoch})"
        fell = f"from {_pct(o.before['pgd_accuracy'])} at step {o.before['step']}"
        text = (f"Catastrophic overfitting detected at {at} by the {o.rule['name']} rule: "
                f"monitor PGD accuracy fell {fell} below the {_pct(o.rule['level'])} level")
        if o.confirmed_step is not None:
            text += (f", confirmed at step {o.confirmed_step} (PGD {_pct(o.after['pgd_accuracy'])}, "
                     f"FGSM {_pct(o.after['fgsm_accuracy'])}, clean {_pct(o.after['clean_accuracy'])}).")
        else:
            text += (f" (unconfirmed; PGD {_pct(o.after['pgd_accuracy'])}, "
                     f"FGSM {_pct(o.after['fgsm_accuracy'])}, clean {_pct(o.after['clean_accuracy'])}).")
        return text
    if not history:
        return "No monitor checks were recorded, so catastrophic overfitting could not be assessed."
    best = max(history, key=lambda row: row["pgd_accuracy"])
    last = history[-1]
    text = (f"No catastrophic overfitting detected over {len(history)} monitor checks "
            f"(steps {history[0]['step']}-{last['step']}): PGD accuracy peaked at "
            f"{_pct(best['pgd_accuracy'])} (step {best['step']}) and ended at {_pct(last['pgd_accuracy'])}.")
    if monitor is not None:
        pending = pending_onset(history, monitor)
        if pending is not None:
            text += (f" The {pending.rule['name']} rule fired at the last check (step {pending.onset_step}), "
                     "with no later check to confirm it.")
    return text
