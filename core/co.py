"""Catastrophic-overfitting (CO) onset rules and the run's verdict: pure functions over the monitor's checks.

No torch here: the input is a list of monitor checks (dicts), the output an ``Onset`` or None
(``detect_onset``) and a ``Verdict`` (``classify``), so the API and the report can re-run the rules on
stored traces. Each history row is one check, in order, with at least ``step``, ``epoch``,
``clean_accuracy``, ``fgsm_accuracy`` and ``pgd_accuracy`` (fractions in [0, 1], measured in eval mode on
the fixed monitor set of training images; extra keys are kept and ignored, except the held-out
``test_clean_accuracy``, ``test_fgsm_accuracy`` and ``test_pgd_accuracy``, which ``held_out_rows`` reads).

Notation: at check t, pgd(t), fgsm(t), clean(t) are the accuracies and peak(t) = max_{s<t} pgd(s), the
running maximum over the checks strictly *before* t.

**The CO signature** (every rule needs it; Wong et al. 2020, Kim et al. 2021, co-detection.md §2.2): the
single-step attack the run trains against fails where the multi-step one succeeds,
signature(t) = fgsm(t) - pgd(t) >= signature_gap and pgd(t) < signature_ratio * fgsm(t).
A healthy adversarially trained network keeps PGD-10 accuracy near FGSM accuracy (0.7-0.9 of it); after CO
FGSM accuracy is high (often above clean) and PGD accuracy near zero. Without the signature nothing fires:
clean, FGSM and PGD accuracy falling together is an optimisation failure (divergence), not CO.

The rules, tried in this order at every check (all need the signature at t):
- R1 ``wong_drop`` (Wong, Rice, Kolter 2020, early stop): pgd(t) < pgd(t-1) - wong_drop.
  Level: pgd(t-1) - wong_drop.
- R2 ``drop_from_max`` (GradAlign's best-PGD tracking, co-detection.md §2.2 b, e): pgd(t) < peak(t) -
  max_drop. Level: peak(t) - max_drop.
- R3 ``relative_collapse`` (paper-notes §5): peak(t) >= min_peak and pgd(t) < relative_fraction * peak(t).
  Level: relative_fraction * peak(t). Catches collapses from modest peaks (the CPU-scale regime).
- R4 ``masking``: the signature alone, also at the first check: FGSM robust, PGD not, with no robust phase
  to fall from (a run masked from the start) or a slide too slow for R1-R3. Level: signature_ratio * fgsm(t).
R1-R3 need an earlier check; R4 does not.

**Online** (``detect_onset``, what the trainer acts on with ``co_policy``): with ``confirm``
(co-detection.md §2.3: "confirm at the next evaluation ... to reject noise") a firing at t is accepted only
if the next check still shows the signature and a PGD accuracy strictly below the rule's level:
signature(t+1) and pgd(t+1) < level(t). Otherwise the next rule is tried, then scanning goes on at t+1.

**The verdict** (``final_collapse``) judges the whole run afterwards: the collapse the run *ended in* is the
last stretch of consecutive checks that all show the signature and reach the last check; its onset is where
that stretch starts, named by the first rule that fires there. A stretch the run recovered from is a
transient (``transient_collapses``, mentioned in the sentence), not CO: without this, noise around the
signature's edge early in training at a large epsilon moved onsets by several checks (docs/science.md). A
stretch of two or more checks is confirmed (``confirmed_by`` "next_check"). A stretch of the last check alone
is pending: the trainer then measures the same, last weights once more on the same images with fresh attack
noise (a row with the same step, ``repeat: true``), and that like-for-like repeat confirms it
(``confirmed_by`` "repeat_check") or ends the stretch.

The run's verdict (``classify``) is one of four codes, decided in this order (the first that holds wins):

1. ``co``: the run ended in a confirmed collapse (with ``confirm`` off a stretch of one check counts and
   ``confirmed_by`` is None). A run masked from the start (R4 from its first check) is ``co``, however low
   its PGD peak: FGSM much more accurate than PGD is the CO signature itself.
2. ``suspected``: the signature at the last check alone, with no repeat to confirm it. Never silence.
3. ``never_robust``: no collapse, and the monitor PGD accuracy never rose above what a constant classifier
   scores on the monitor set: max_t pgd(t) <= chance_level + never_robust_margin (``chance_level`` is the
   largest class share of the monitor set). Such a run had no robustness to lose.
4. ``no_co``: the run did not end collapsed (it may have recovered from a transient).

**Evidence.** The verdict rests on the monitor's training images. When the monitor also checked held-out
test images (``monitor.test_images``), the same rules run on that curve (``Verdict.held_out``) and the
verdict sentence says whether the two agree; bench/verdict_corpus.py measures the rules against the
held-out ground truth of docs/science.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

REQUIRED_KEYS = ("step", "epoch", "clean_accuracy", "fgsm_accuracy", "pgd_accuracy")
RULES = ("wong_drop", "drop_from_max", "relative_collapse", "masking")
VERDICTS = ("co", "no_co", "never_robust", "suspected")
MONITOR_KINDS = ("monitor", "recheck")  # metrics rows the rules read: the checks, and a repeat of the last
HELD_OUT_KEYS = {"clean_accuracy": "test_clean_accuracy", "fgsm_accuracy": "test_fgsm_accuracy",
                 "pgd_accuracy": "test_pgd_accuracy"}


class OnsetThresholds(Protocol):
    """What ``detect_onset`` reads from its settings: ``core.spec.MonitorSpec`` satisfies it."""

    wong_drop: float
    max_drop: float
    signature_gap: float
    signature_ratio: float
    relative_fraction: float
    min_peak: float
    confirm: bool


@dataclass(frozen=True)
class Onset:
    """A CO onset: where it fired, by which rule (with its thresholds), and the rows around it."""

    onset_step: int
    onset_epoch: Any  # whatever the history row holds (int epoch, or a float epoch position)
    confirmed_step: int | None  # the confirming check's step; None when confirmation is off or pending
    rule: dict[str, Any]  # {"name": ..., the thresholds used, "level": PGD level that fired}
    before: dict[str, Any] | None  # the check preceding the onset (None at the first check)
    after: dict[str, Any]  # the confirming check, or the onset check itself when not confirmed by a check
    confirmed_by: str | None = None  # "next_check", "repeat_check"; None: not confirmed, or confirm off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VerdictSettings(OnsetThresholds, Protocol):
    """What ``classify`` reads: the onset thresholds and the never-robust margin (``MonitorSpec``)."""

    never_robust_margin: float


@dataclass(frozen=True)
class Verdict:
    """A run's CO verdict (module docstring): the code, the firing behind it, and the numbers it rests on."""

    code: str  # one of VERDICTS
    onset: Onset | None  # co: the onset; suspected: the last-check firing
    peak: dict[str, Any]  # the check with the highest PGD accuracy (the first of ties)
    first: dict[str, Any]  # the first and last checks, for the sentence
    last: dict[str, Any]
    checks: int
    chance_level: float  # the largest class share of the monitor set: a constant classifier's accuracy
    never_robust_level: float  # chance_level + never_robust_margin
    final_robust_accuracy: float | None  # the final evaluation's PGD robust accuracy, when given
    held_out: Verdict | None = None  # the same rules on the held-out test checks, when the monitor made them
    transients: tuple[tuple[int, int], ...] = ()  # (first, last step) of signature stretches that went away


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


def signature(row: Mapping[str, Any], m: OnsetThresholds) -> bool:
    """The CO signature at one check: FGSM accuracy at least ``signature_gap`` above PGD accuracy, and PGD
    accuracy below ``signature_ratio`` times FGSM accuracy (module docstring)."""
    fgsm, pgd = row["fgsm_accuracy"], row["pgd_accuracy"]
    return fgsm - pgd >= m.signature_gap - 1e-9 and pgd < m.signature_ratio * fgsm  # 1e-9: 0.15 - 0.05 < 0.1


def _firing_rules(history: Sequence[Mapping[str, Any]], t: int, peak: float,
                  m: OnsetThresholds) -> list[dict[str, Any]]:
    """The rules that fire at check t, each with its thresholds and PGD level, in R1-R4 order."""
    row = history[t]
    if not signature(row, m):
        return []
    pgd = row["pgd_accuracy"]
    signature_fields = {"signature_gap": m.signature_gap, "signature_ratio": m.signature_ratio}
    fired = []
    if t > 0 and pgd < history[t - 1]["pgd_accuracy"] - m.wong_drop:
        fired.append({"name": "wong_drop", "wong_drop": m.wong_drop,
                      "level": history[t - 1]["pgd_accuracy"] - m.wong_drop})
    if t > 0 and pgd < peak - m.max_drop:
        fired.append({"name": "drop_from_max", "max_drop": m.max_drop, "running_max": peak,
                      "level": peak - m.max_drop})
    if t > 0 and peak >= m.min_peak and pgd < m.relative_fraction * peak:
        fired.append({"name": "relative_collapse", "relative_fraction": m.relative_fraction,
                      "min_peak": m.min_peak, "running_max": peak, "level": m.relative_fraction * peak})
    fired.append({"name": "masking", "level": m.signature_ratio * row["fgsm_accuracy"]})
    return [{**rule, **signature_fields} for rule in fired]


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
            onset = _accept(history, t, rule, monitor)
            if onset is not None:
                return onset
    return None


def _accept(history: Sequence[Mapping[str, Any]], t: int, rule: dict[str, Any],
            monitor: OnsetThresholds | None) -> Onset | None:
    """The onset of ``rule`` firing at t, if the next check confirms it (``monitor`` None or ``confirm`` off:
    unconfirmed, accepted as it is)."""
    row, before = history[t], dict(history[t - 1]) if t > 0 else None
    if monitor is None or not monitor.confirm:
        return Onset(row["step"], row["epoch"], None, rule, before, dict(row))
    if t + 1 >= len(history):
        return None
    nxt = history[t + 1]
    if not (nxt["pgd_accuracy"] < rule["level"] and signature(nxt, monitor)):
        return None
    how = "repeat_check" if nxt["step"] == row["step"] else "next_check"
    return Onset(row["step"], row["epoch"], nxt["step"], rule, before, dict(nxt), how)


def final_collapse(history: Sequence[Mapping[str, Any]], monitor: OnsetThresholds) -> Onset | None:
    """The collapse the run ended in: the start of the last stretch of checks that all show the signature and
    reach the end of the history, or None when the last check lacks it (module docstring, the verdict).

    Confirmed (``confirmed_by`` "next_check" or "repeat_check") when the stretch holds a second check; a
    stretch of the last check alone is returned unconfirmed (``confirmed_step`` None), unless ``confirm`` is
    off. The rule is the first of R1-R4 that fires where the stretch starts.
    """
    _validate(history)
    start = len(history)
    while start > 0 and signature(history[start - 1], monitor):
        start -= 1
    if start == len(history):
        return None
    peak = max((row["pgd_accuracy"] for row in history[:start]), default=-math.inf)
    rule = _firing_rules(history, start, peak, monitor)[0]
    onset = _accept(history, start, rule, None)
    if start + 1 < len(history) and monitor.confirm:
        nxt = history[start + 1]
        how = "repeat_check" if nxt["step"] == history[start]["step"] else "next_check"
        onset = replace(onset, confirmed_step=nxt["step"], after=dict(nxt), confirmed_by=how)
    return onset


def transient_collapses(history: Sequence[Mapping[str, Any]],
                        monitor: OnsetThresholds) -> list[tuple[int, int]]:
    """(first step, last step) of each earlier stretch of signature checks that the run recovered from."""
    stretches, start = [], None
    for index, row in enumerate(history):
        if signature(row, monitor):
            start = index if start is None else start
        elif start is not None:
            stretches.append((history[start]["step"], history[index - 1]["step"]))
            start = None
    return stretches


def pending_onset(history: Sequence[Mapping[str, Any]], monitor: OnsetThresholds) -> Onset | None:
    """A collapse seen at the last check alone, still awaiting confirmation (only meaningful with
    ``confirm``): the trainer then repeats that check (module docstring). None otherwise."""
    onset = final_collapse(history, monitor)
    return onset if onset is not None and monitor.confirm and onset.confirmed_step is None else None


def chance_level(class_counts: Sequence[int] | None = None, num_classes: int | None = None) -> float:
    """The largest class share of the monitor set: what a constant classifier scores on it, clean and under
    any attack. Reports from before the class counts were stored fall back to 1 / ``num_classes``."""
    if class_counts and sum(class_counts) > 0:
        return max(class_counts) / sum(class_counts)
    if num_classes:
        return 1.0 / num_classes
    raise ValueError("the chance level needs the monitor set's class counts or the number of classes")


def held_out_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's held-out test checks as plain check rows (empty when it made none)."""
    return [{"step": row["step"], "epoch": row["epoch"], "repeat": row.get("repeat", False),
             **{key: row[test_key] for key, test_key in HELD_OUT_KEYS.items()}}
            for row in history if all(key in row for key in HELD_OUT_KEYS.values())]


def classify(history: Sequence[Mapping[str, Any]], monitor: VerdictSettings, *, chance_level: float,
             final_robust_accuracy: float | None = None,
             held_out_chance_level: float | None = None) -> Verdict:
    """The run's verdict over its monitor checks (module docstring: codes and precedence).

    ``chance_level`` is the largest class share of the monitor set (``chance_level()``);
    ``final_robust_accuracy`` the final evaluation's PGD accuracy of the *last* weights, for the sentence
    (leave it None when the final evaluation measured other weights, e.g. after a ``stop``). The held-out
    test checks, when the rows carry them, are judged too (``Verdict.held_out``), against
    ``held_out_chance_level`` (default: ``chance_level``). Raises ValueError on an empty or invalid history.
    """
    _validate(history)
    if not history:
        raise ValueError("no monitor checks to classify")
    onset = final_collapse(history, monitor)
    peak = max(history, key=lambda row: row["pgd_accuracy"])
    level = chance_level + monitor.never_robust_margin
    if onset is not None:
        code = "suspected" if monitor.confirm and onset.confirmed_step is None else "co"
    else:
        code = "never_robust" if peak["pgd_accuracy"] <= level else "no_co"
    held_out = None
    if (test_rows := held_out_rows(history)) and len(test_rows) == len(history):
        held_out = classify(test_rows, monitor, chance_level=held_out_chance_level or chance_level)
    return Verdict(code, onset, dict(peak), dict(history[0]), dict(history[-1]), len(history),
                   chance_level, level, final_robust_accuracy, held_out,
                   tuple(transient_collapses(history, monitor)))


def percent(value: float | None) -> str:
    """A fraction as a percentage for people: 0.129 -> '12.9%' (None -> 'n/a')."""
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def monitor_rows(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The monitor checks of a metrics history (metrics.jsonl rows of every kind), a repeated last check
    (kind ``recheck``) included."""
    return [row for row in history if row["kind"] in MONITOR_KINDS]


def _pp(value: float) -> str:
    return f"{100.0 * value:.3g} pp"


def _signature_text(row: Mapping[str, Any]) -> str:
    fgsm, pgd, clean = row["fgsm_accuracy"], row["pgd_accuracy"], row["clean_accuracy"]
    above = f", above clean accuracy {percent(clean)}," if fgsm > clean else ""
    return f"FGSM accuracy {percent(fgsm)}{above} against PGD accuracy {percent(pgd)}"


def _what_fired(onset: Onset, row: Mapping[str, Any]) -> str:
    """What the rule saw at the onset check ``row``, with its numbers; true for every rule."""
    rule, pgd = onset.rule, row["pgd_accuracy"]
    if rule["name"] == "wong_drop" and onset.before is not None:
        fell = (f"monitor PGD accuracy fell from {percent(onset.before['pgd_accuracy'])} at step "
                f"{onset.before['step']} to {percent(pgd)}, more than {_pp(rule['wong_drop'])} in one check")
    elif rule["name"] == "drop_from_max":
        fell = (f"monitor PGD accuracy {percent(pgd)} is more than {_pp(rule['max_drop'])} below its running "
                f"maximum {percent(rule['running_max'])}")
    elif rule["name"] == "relative_collapse":
        fell = (f"monitor PGD accuracy {percent(pgd)} is below {rule['relative_fraction']:g} times its "
                f"running maximum {percent(rule['running_max'])} (the {percent(rule['level'])} level)")
    else:
        fell = "FGSM accuracy stands far above PGD accuracy without a fall from a robust phase"
    return (f"{fell}, with the CO signature ({_signature_text(row)}: PGD below "
            f"{rule['signature_ratio']:g} times FGSM and {_pp(rule['signature_gap'])} or more below it)")


def _onset_row(onset: Onset, history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return next((row for row in history if row["step"] == onset.onset_step), onset.after)


def _confirmation(onset: Onset) -> str:
    level = percent(onset.rule["level"])
    after = (f"(PGD {percent(onset.after['pgd_accuracy'])}, FGSM {percent(onset.after['fgsm_accuracy'])}, "
             f"clean {percent(onset.after['clean_accuracy'])})")
    if onset.confirmed_by == "next_check":
        return (f"; confirmed at step {onset.confirmed_step}, where PGD accuracy was still below the {level} "
                f"level with the signature {after}.")
    if onset.confirmed_by == "repeat_check":
        return (f"; confirmed by a repeat of that last check on the same images and weights with fresh "
                f"attack noise {after}, still below the {level} level with the signature.")
    return " (unconfirmed: monitor.confirm is off)."


def _diverged(history: Sequence[Mapping[str, Any]]) -> str:
    """A sentence when clean accuracy fell far below its peak (an optimisation failure, not CO), else ''."""
    best = max(history, key=lambda row: row["clean_accuracy"])
    last = history[-1]
    peak, end = best["clean_accuracy"], last["clean_accuracy"]
    if end >= 0.6 * peak or peak - end < 0.1:
        return ""
    return (f" Clean accuracy fell from {percent(best['clean_accuracy'])} (step {best['step']}) to "
            f"{percent(last['clean_accuracy'])} with FGSM and PGD accuracy alongside: the optimisation "
            "failed (divergence), which is not catastrophic overfitting.")


def _held_out_text(verdict: Verdict) -> str:
    held = verdict.held_out
    if held is None:
        return " Evidence: the monitor's training images only (monitor.test_images is 0)."
    found = (f"CO from step {held.onset.onset_step}" if held.code == "co" and held.onset else
             {"no_co": "no collapse", "never_robust": "never robust", "co": "CO",
              "suspected": "a collapse suspected at the last check"}[held.code])
    agrees = held.code == verdict.code and (
        held.code != "co" or held.onset.onset_step == verdict.onset.onset_step)
    return (f" Evidence: the monitor's training images; the held-out check on test images "
            f"{'agrees' if agrees else 'differs'} ({found}, held-out PGD accuracy peak "
            f"{percent(held.peak['pgd_accuracy'])}).")


def verdict_text(verdict: Verdict, history: Sequence[Mapping[str, Any]]) -> str:
    """One to three sentences for a run summary: the verdict, the numbers and the evidence it rests on."""
    o, peak, first, last = verdict.onset, verdict.peak, verdict.first, verdict.last
    checks = f"{verdict.checks} monitor check" + ("s" if verdict.checks != 1 else "")
    span = f"{checks} (steps {first['step']}-{last['step']})"
    if verdict.code in ("co", "suspected") and o is not None:
        at = f"step {o.onset_step} (epoch {o.onset_epoch})"
        fired = _what_fired(o, _onset_row(o, history))
        if verdict.code == "co":
            text = (f"Catastrophic overfitting detected at {at} by the {o.rule['name']} rule: {fired}"
                    + _confirmation(o))
        else:
            text = (f"Catastrophic overfitting suspected at {at}, the last monitor check, by the "
                    f"{o.rule['name']} rule: {fired}; no repeat of that check confirms it.")
    elif verdict.code == "never_robust":
        text = (f"Never robust, so no catastrophic overfitting to detect: over {span} the monitor PGD "
                f"accuracy peaked at {percent(peak['pgd_accuracy'])} (step {peak['step']}), not above the "
                f"{percent(verdict.never_robust_level)} level, which is what a constant classifier scores on "
                f"the monitor set (its largest class share, {percent(verdict.chance_level)}) plus a "
                f"{_pp(verdict.never_robust_level - verdict.chance_level)} margin, and FGSM accuracy never "
                f"showed the CO signature.")
    else:
        text = (f"No catastrophic overfitting detected over {span}: PGD accuracy peaked at "
                f"{percent(peak['pgd_accuracy'])} (step {peak['step']}) and ended at "
                f"{percent(last['pgd_accuracy'])}.")
    if verdict.code in ("no_co", "never_robust"):
        text += _diverged(history)
    if transients := verdict.transients:
        first, last = transients[0]
        steps = f"step {first}" if last == first else f"steps {first}-{last}"
        more = f" ({len(transients)} such stretches)" if len(transients) > 1 else ""
        text += f" The signature also appeared at {steps} and went away{more}: not counted as CO."
    return text + _held_out_text(verdict)
