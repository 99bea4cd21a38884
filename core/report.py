"""The run folder's human-facing outputs: report.json, summary.md and curves.png.

matplotlib is imported only when a plot is drawn. ``render_run`` rebuilds all three from report.json and
metrics.jsonl (``coscope report RUN_DIR``), re-running the pure onset rule on the stored monitor rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.co import Onset, detect_onset, verdict_text
from core.spec import JobSpec


def write_run_summary(out: Path, report: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """Write report.json (with ``co.verdict``), summary.md and curves.png; return the verdict sentence."""
    spec = JobSpec.model_validate(report["spec"])
    monitor = [row for row in history if row["kind"] == "monitor"]
    onset = detect_onset(monitor, spec.monitor) if monitor else None
    verdict = verdict_text(onset, monitor, spec.monitor) if monitor else "No CO monitor ran (monitor.enabled: false)."
    if report.get("co") is not None:  # re-rendering applies the current rule to the stored checks
        report["co"].update(onset_fields(onset), verdict=verdict)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report, verdict))
    plot_curves(history, out / "curves.png", onset)
    return verdict


def onset_fields(onset: Onset | None) -> dict[str, Any]:
    """The detection part of the report's ``co`` block."""
    keys = ("onset_step", "onset_epoch", "confirmed_step", "rule", "before", "after")
    found = onset.to_dict() if onset is not None else {}
    return {"detected": onset is not None, **{key: found.get(key) for key in keys}}


def render_run(run_dir: Path) -> str:
    """Re-render summary.md and curves.png of a finished run; return the verdict."""
    report = json.loads((run_dir / "report.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return write_run_summary(run_dir, report, history)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def summary_markdown(report: dict[str, Any], verdict: str) -> str:
    spec, final, co = report["spec"], report["final"], report.get("co")
    t, attack, intervention = spec["training"], final["attack"], spec["intervention"]
    if intervention["kind"] in ("inject", "inject_orthogonal"):
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
        f"- Final (last weights): clean {_pct(final['clean_accuracy'])}, robust {_pct(final['robust_accuracy'])}"
        f" under PGD-{attack['steps']}-{attack['restarts']} on {attack['test_images']} test images.",
    ]
    if co and co["best_checkpoint"]["step"] is not None:
        best = co["best_checkpoint"]
        best_final = best.get("final") or {}
        lines.append(f"- Best-robust weights (step {best['step']}, monitor PGD {_pct(best['monitor_pgd_accuracy'])}):"
                     f" clean {_pct(best_final.get('clean_accuracy'))},"
                     f" robust {_pct(best_final.get('robust_accuracy'))}.")
    lines.append(f"- Training {report['timing']['train_seconds']:.0f} s "
                 f"({report['timing']['train_images_per_second']:.0f} images/s), monitor "
                 f"{report['timing']['monitor_seconds']:.0f} s, evaluation {report['timing']['eval_seconds']:.0f} s"
                 f" on {report['environment']['device']}.")
    return "\n".join(lines) + "\n"


def plot_curves(history: list[dict[str, Any]], path: Path, onset: Onset | None = None) -> None:
    """Training curves; with monitor rows also clean/FGSM/PGD accuracy, gradient alignment and linearity
    error against steps, with the onset marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in history if row["kind"] == "train"]
    monitor = [row for row in history if row["kind"] == "monitor"]
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
    loss_axis.set(xlabel="step", title="Training loss and accuracy")
    accuracy_axis.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="Monitor set accuracy")
    alignment_axis.set(xlabel="step", ylabel="cosine", title="Gradient alignment cos(∇ℓ(x), ∇ℓ(x+η))")
    linearity_axis.set(xlabel="step", ylabel="error", title="Local linearity error (ELLE)")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        if onset is not None:
            axis.axvline(onset.onset_step, color="red", linestyle="--", linewidth=1, label="CO onset")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
