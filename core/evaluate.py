"""Clean and PGD evaluation of a model on (transformed) test images, in eval mode."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.attacks import evaluating, pgd

CPU_ATTACK_BATCH = 128  # images attacked at once on a CPU: bounds host memory (a width-64 PGD step on 512
# images holds ~2.4 GB of activations); eval mode makes samples independent, so only the noise draw order changes
InputTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (uint8 images, labels) -> [0,1]-ish


def clean_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: InputTransform,
                  batch_size: int = 512) -> torch.Tensor:
    """Per image: is it classified correctly (bool, on the labels' device)."""
    hits = []
    with evaluating(model), torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            hits.append(model(transform(x, y)).argmax(1) == y)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=labels.device)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: InputTransform,
                   batch_size: int = 512) -> float:
    """Fraction of images classified correctly (a true per-sample mean, not a mean of batch means)."""
    return fraction(clean_correct(model, images, labels, transform, batch_size))


def pgd_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: InputTransform, *,
                epsilon: float, alpha: float, steps: int, restarts: int, batch_size: int = 512,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: does it survive PGD-``steps``-``restarts`` (broken when any restart breaks it)."""
    hits = []
    if labels.device.type == "cpu":
        batch_size = min(batch_size, CPU_ATTACK_BATCH)
    with evaluating(model):
        for start in range(0, len(labels), batch_size):
            y = labels[start:start + batch_size]
            x = transform(images[start:start + batch_size], y)
            delta = pgd(model, x, y, epsilon=epsilon, alpha=alpha, steps=steps, restarts=restarts,
                        select="strongest", generator=generator)
            with torch.no_grad():
                hits.append(model(x + delta).argmax(1) == y)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=labels.device)


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: InputTransform, *,
                    epsilon: float, alpha: float, steps: int, restarts: int, batch_size: int = 512,
                    generator: torch.Generator | None = None) -> float:
    """PGD-``steps``-``restarts`` accuracy; a sample counts as broken when any restart breaks it."""
    return fraction(pgd_correct(model, images, labels, transform, epsilon=epsilon, alpha=alpha, steps=steps,
                             restarts=restarts, batch_size=batch_size, generator=generator))


def per_class_accuracy(hits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for a class with no image), from per-image hits."""
    total = torch.bincount(labels.cpu(), minlength=num_classes)
    right = torch.bincount(labels.cpu(), weights=hits.cpu().double(), minlength=num_classes)
    return [float(r / n) if n else None for r, n in zip(right.tolist(), total.tolist(), strict=True)]


def fraction(hits: torch.Tensor) -> float:
    return float(hits.float().sum()) / max(1, hits.numel())


def robust_accuracy_max_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             transform: InputTransform, *, epsilon: float, alpha: float, steps: int, restarts: int,
                             batch_size: int = 512, generator: torch.Generator | None = None) -> float:
    """The released code's convention, for comparison: every restart runs all steps on every sample, and
    per sample the final iterate with the largest loss is kept (paper-notes §5). Slower and never stronger
    than ``robust_accuracy``."""
    correct = torch.zeros((), device=labels.device)
    with evaluating(model):
        for start in range(0, len(labels), batch_size):
            y = labels[start:start + batch_size]
            x = transform(images[start:start + batch_size], y)
            best_delta, best_loss = torch.zeros_like(x), torch.full_like(y, -float("inf"), dtype=torch.float32)
            for _ in range(restarts):
                delta = pgd(model, x, y, epsilon=epsilon, alpha=alpha, steps=steps, select="last",
                            generator=generator)
                with torch.no_grad():
                    loss = F.cross_entropy(model(x + delta).float(), y, reduction="none")
                better = loss > best_loss
                best_delta[better], best_loss[better] = delta[better], loss[better]
            with torch.no_grad():
                correct += (model(x + best_delta).argmax(1) == y).sum()
    return float(correct) / max(1, len(labels))
