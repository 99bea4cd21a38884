"""The run folder's human-facing outputs: report.json, summary.md and curves.png.

matplotlib is imported only when a plot is drawn. ``render_run`` rebuilds all three from report.json and
metrics.jsonl (``coscope report RUN_DIR``), re-running the pure onset rules and verdict (``core.co``) on the
stored monitor rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.co import Onset, Verdict, chance_level, classify, monitor_rows, percent, verdict_text
from core.spec import InterventionSpec, JobSpec

MAX_TABLE_CLASSES = 20  # summary.md lists per-class accuracies up to this many classes


def write_run_summary(out: Path, report: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """Write report.json (with ``co.verdict`` and ``co.verdict_text``), summary.md and curves.png; return
    the verdict line ("code: sentence")."""
    verdict, text = judge(report, history)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    code = (report.get("co") or {}).get("verdict")  # a rescued run's code is not its last stretch's
    summary_verdict = f"`{code}`: {text}" if verdict else text
    (out / "summary.md").write_text(summary_markdown(report, summary_verdict))
    rescues = ((report.get("co") or {}).get("rescue") or {}).get("rescues") or []
    plot_curves(history, out / "curves.png", verdict.onset if verdict and verdict.code == "co" else None,
                final=report.get("final"), rescues=[rescue["at_step"] for rescue in rescues])
    return f"{code}: {text}" if verdict else text


def judge(report: dict[str, Any], history: list[dict[str, Any]]) -> tuple[Verdict | None, str]:
    """Apply today's rules to the stored checks: update ``report["co"]`` in place with the verdict, its
    sentence and the onset; return (verdict or None, sentence). Pure: ``coscope report RUN_DIR`` and the
    API's report route re-judge old runs with it."""
    monitor = monitor_rows(history)
    co = report.get("co")
    if co is None:
        return None, "No CO monitor ran (monitor.enabled: false)."
    if not monitor:
        text = "No monitor checks were recorded, so catastrophic overfitting could not be assessed."
        co.update(onset_fields(None), verdict=None, verdict_text=text)
        return None, text
    verdict = run_verdict(report, monitor, JobSpec.model_validate(report["spec"]))
    text = verdict_text(verdict, monitor)
    co.update(verdict_fields(verdict), verdict_text=text)
    if rescues := (co.get("rescue") or {}).get("rescues"):
        text = _rescued(co, rescues, verdict)
    return verdict, text


def _rescued(co: dict[str, Any], rescues: list[dict[str, Any]], after: Verdict) -> str:
    """A rescued run's verdict is ``co`` (CO began; the rescue is what followed), with the first trigger as
    the onset and how the run ended after the last rescue as ``co.rescue.after``; returns the sentence."""
    first, last = rescues[0], rescues[-1]
    ended_collapsed = (after.code == "co" and after.onset is not None
                       and after.onset.onset_step > last["at_step"])
    co["rescue"]["after"] = {"verdict": "co" if ended_collapsed else "no_co",
                             "onset_step": after.onset.onset_step if ended_collapsed else None}
    co.update(detected=True, verdict="co", onset_step=first["onset_step"], rule={"name": first["rule"]},
              confirmed_step=first["confirmed_step"], confirmed_by="next_check")
    actions = "; ".join(
        f"rescue {r['number']} at step {r['at_step']}: the best-robust weights of step "
        f"{r['weights_from_step']} (monitor PGD {percent(r['best_monitor_pgd_accuracy'])}) and their "
        f"optimizer state restored, training went on with {r['method']} (alpha {r['alpha']:g}/255"
        + (f", noise {r['noise_magnitude']:g}/255" if r["noise_magnitude"] else "")
        + (f", learning rate x {r['lr_scale']:g}" if r["lr_scale"] != 1 else "") + ")" for r in rescues)
    outcome = (f"it collapsed again at step {after.onset.onset_step}" if ended_collapsed else
               "it did not collapse again (monitor PGD accuracy ended at "
               f"{percent(after.last['pgd_accuracy'])})")
    evidence = first["evidence"]
    text = (f"Catastrophic overfitting began at step {first['onset_step']} (the {first['rule']} rule, "
            f"confirmed at step {first['confirmed_step']}: monitor PGD {percent(evidence['pgd_accuracy'])}, "
            f"FGSM {percent(evidence['fgsm_accuracy'])}) and was rescued; {actions}. After the rescue {outcome}.")
    co["verdict_text"] = text
    return text


def run_verdict(report: dict[str, Any], monitor: list[dict[str, Any]], spec: JobSpec) -> Verdict:
    """``core.co.classify`` with what the report knows: the monitor set's class counts (1 / classes in
    reports from before they were stored) and the final PGD accuracy, when it measured the last weights."""
    co, final = report["co"], report.get("final") or {}
    settings, classes = co.get("monitor") or {}, (report.get("data") or {}).get("num_classes")
    last_weights = not co.get("stopped_early")  # after a stop the final evaluation measured the best weights
    return classify(monitor, spec.monitor, chance_level=chance_level(settings.get("class_counts"), classes),
                    final_robust_accuracy=final.get("robust_accuracy") if last_weights else None,
                    held_out_chance_level=chance_level(settings.get("test_class_counts"), classes))


def onset_fields(onset: Onset | None) -> dict[str, Any]:
    """The detection part of the report's ``co`` block."""
    keys = ("onset_step", "onset_epoch", "confirmed_step", "confirmed_by", "rule", "before", "after")
    found = onset.to_dict() if onset is not None else {}
    return {"detected": onset is not None, **{key: found.get(key) for key in keys}}


def verdict_fields(verdict: Verdict) -> dict[str, Any]:
    """The verdict part of the report's ``co`` block: the code, the onset behind it, and the chance level.
    ``detected`` is true for "co" only; the onset fields also show a "suspected" or overruled firing."""
    held = verdict.held_out
    return {**onset_fields(verdict.onset), "detected": verdict.code == "co", "verdict": verdict.code,
            "chance_level": verdict.chance_level, "never_robust_level": verdict.never_robust_level,
            "held_out": None if held is None else {  # the same rules on the monitor's held-out test checks
                "verdict": held.code, "onset_step": held.onset.onset_step if held.onset else None,
                "peak_pgd_accuracy": held.peak["pgd_accuracy"]}}


def render_run(run_dir: Path) -> str:
    """Re-render summary.md and curves.png of a finished run; return the verdict line."""
    report = json.loads((run_dir / "report.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return write_run_summary(run_dir, report, history)


def summary_markdown(report: dict[str, Any], verdict: str) -> str:
    spec, final, co = report["spec"], report["final"], report.get("co")
    t, attack, intervention = spec["training"], final["attack"], spec["intervention"]
    if InterventionSpec.model_validate(intervention).injects:
        applied = f"`{intervention['kind']}` (beta {intervention['beta']}/255)"
    elif intervention["kind"] in ("low_pass", "high_pass"):
        applied = f"`{intervention['kind']}` (bandwidth {intervention['bandwidth']})"
    else:
        applied = "none"
    lines = [
        "# Run summary", "",
        f"**Verdict.** {verdict}", "",
        f"- Method `{t['method']}` at epsilon {t['epsilon']}/255, intervention {applied},"
        f" {t['epochs']} epochs on `{spec['dataset']['name']}`"
        f" ({report['data']['train_images']} training images).",
        f"- Final (last weights): clean {percent(final['clean_accuracy'])}, robust {percent(final['robust_accuracy'])}"
        f" under PGD-{attack['steps']}-{attack['restarts']} on {attack['test_images']} test images.",
    ]
    if "autoattack" in final:
        lines.append(_autoattack_line(final["autoattack"]))
    if co and co["best_checkpoint"]["step"] is not None:
        best = co["best_checkpoint"]
        best_final = best.get("final") or {}
        best_aa = best_final.get("autoattack")
        best_aa = f", AutoAttack {percent(best_aa['accuracy'])}" if best_aa else ""
        lines.append(f"- Best-robust weights (step {best['step']}, "
                     f"monitor PGD {percent(best['monitor_pgd_accuracy'])}):"
                     f" clean {percent(best_final.get('clean_accuracy'))},"
                     f" robust {percent(best_final.get('robust_accuracy'))}{best_aa}.")
    lines.append(f"- Training {report['timing']['train_seconds']:.0f} s "
                 f"({report['timing']['train_images_per_second']:.0f} images/s), monitor "
                 f"{report['timing']['monitor_seconds']:.0f} s, evaluation {report['timing']['eval_seconds']:.0f} s"
                 f" on {report['environment']['device']}.")
    return "\n".join(lines + _per_class_table(final)) + "\n"


def _autoattack_line(autoattack: dict[str, Any]) -> str:
    """One summary line for ``final.autoattack``: the accuracy after all attacks and after each one."""
    steps = ", ".join(f"{name.upper()} {percent(value)}" for name, value in autoattack["per_attack"].items())
    return (f"- AutoAttack ({autoattack['version']}, {autoattack['implementation']}) at epsilon"
            f" {autoattack['epsilon']}/255 on the same {autoattack['images']} images: robust"
            f" {percent(autoattack['accuracy'])} (after {steps}; {autoattack['seconds']:.0f} s).")


def _per_class_table(final: dict[str, Any]) -> list[str]:
    """Clean (all test images) and robust (attacked images) accuracy per class, with the attacked counts."""
    rows, counts = final.get("per_class"), final["attack"].get("class_counts")
    if not rows or not counts:
        return []  # reports from before per-class evaluation
    if len(rows) > MAX_TABLE_CLASSES:
        return ["", f"Per-class accuracies of the {len(rows)} classes: `final.per_class` in report.json."]
    attack, autoattack = final["attack"], final.get("autoattack")
    columns = ["class", "attacked", "clean", f"PGD-{attack['steps']}-{attack['restarts']}"]
    tested = final.get("clean_test_images", "the")
    lines = ["", f"Per class, final evaluation (clean on all {tested} test images, robust on the attacked"
                 " ones):", "",
             "| " + " | ".join(columns + ["AutoAttack"] * bool(autoattack)) + " |",
             "|" + "---|" * (len(columns) + bool(autoattack))]
    for row, count in zip(rows, counts, strict=True):
        cells = [row["name"], str(count), percent(row["clean_accuracy"]), percent(row["robust_accuracy"])]
        if autoattack:
            cells.append(percent(autoattack["per_class"][row["label"]]["robust_accuracy"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_curves(history: list[dict[str, Any]], path: Path, onset: Onset | None = None,
                final: dict[str, Any] | None = None, rescues: list[int] | tuple[int, ...] = ()) -> None:
    """Training curves; with monitor rows also clean/FGSM/PGD accuracy, gradient alignment and linearity
    error against steps, with the onset marked; the final PGD (and AutoAttack) test accuracies at the last
    step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in history if row["kind"] == "train"]
    monitor = monitor_rows(history)
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    loss_axis, accuracy_axis, alignment_axis, linearity_axis = axes.flat
    if train:
        steps = [row["step"] for row in train]
        loss_axis.plot(steps, [row["train_loss"] for row in train], label="training loss")
        loss_axis.plot(steps, [row["train_adv_accuracy"] for row in train], label="train accuracy (attacked)")
        clean = [(row["step"], row["train_clean_accuracy"]) for row in train if row["train_clean_accuracy"] is not None]
        if clean:
            loss_axis.plot(*zip(*clean, strict=True), label="train accuracy (clean)")
    if monitor:
        steps = [row["step"] for row in monitor]
        for key, label in (("clean_accuracy", "clean"), ("fgsm_accuracy", "FGSM"), ("pgd_accuracy", "PGD")):
            accuracy_axis.plot(steps, [row[key] for row in monitor], "o-", markersize=3, label=label)
        alignment_axis.plot(steps, [row["gradient_alignment"] for row in monitor], "o-", markersize=3)
        linearity_axis.semilogy(steps, [max(row["linearity_error"], 1e-12) for row in monitor], "o-", markersize=3)
    if final is not None and history:
        _mark_final(accuracy_axis, max(row["step"] for row in history), final)
    loss_axis.set(xlabel="step", title="Training loss and accuracy")
    accuracy_axis.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="Monitor set accuracy")
    alignment_axis.set(xlabel="step", ylabel="cosine", title="Gradient alignment cos(∇ℓ(x), ∇ℓ(x+η))")
    linearity_axis.set(xlabel="step", ylabel="error", title="Local linearity error (ELLE)")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        if onset is not None:
            axis.axvline(onset.onset_step, color="red", linestyle="--", linewidth=1, label="CO onset")
        for number, step in enumerate(rescues):
            axis.axvline(step, color="green", linestyle=":", linewidth=1.5,
                         label="CO rescue" if not number else None)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mark_final(axis: Any, step: int, final: dict[str, Any]) -> None:
    """The final test accuracies as markers at the last step (they are measured on test images, not on the
    monitor set)."""
    attack = final["attack"]
    axis.plot([step], [final["robust_accuracy"]], "D", color="black",
              label=f"final PGD-{attack['steps']}-{attack['restarts']} (test)")
    if "autoattack" in final:
        axis.plot([step], [final["autoattack"]["accuracy"]], "X", color="purple", markersize=8,
                  label="final AutoAttack (test)")
