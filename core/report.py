"""Plots and summaries of a run folder; matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and accuracies against steps, with per-epoch test accuracy, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in history if row["kind"] == "train"]
    epochs = [row for row in history if row["kind"] == "epoch"]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [row["step"] for row in train]
        loss_axis.plot(steps, [row["train_loss"] for row in train], label="training loss")
        accuracy_axis.plot(steps, [row["train_adv_accuracy"] for row in train], label="train (attacked)")
        clean = [(row["step"], row["train_clean_accuracy"]) for row in train if row["train_clean_accuracy"] is not None]
        if clean:
            accuracy_axis.plot(*zip(*clean, strict=True), label="train (clean)")
    if epochs:
        accuracy_axis.plot([row["step"] for row in epochs], [row["test_clean_accuracy"] for row in epochs],
                           "o-", label="test clean (per epoch)")
    loss_axis.set(xlabel="step", ylabel="loss", title="Training loss")
    accuracy_axis.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="Accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
