"""AutoAttack (Croce & Hein 2020) on the final evaluation's images, with the authors' code (``pyautoattack``).

The package is imported inside ``autoattack_correct`` only, so importing core never loads it. Its attacks
keep every adversarial image in [0, 1], as ``core.attacks.clip_box`` does: an injected pixel more than
epsilon outside the box is moved further than epsilon into it. FAB-T rejects perturbations larger than
epsilon, so it cannot break such an image; APGD and Square do not check. Clean predictions use the
unclipped images, as every other accuracy of the report. The attacks reseed the global RNGs;
``autoattack_correct`` restores them, and it freezes the parameters so that FAB's ``backward`` leaves no
``.grad`` on the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import torch
from torch import nn

from core.attacks import evaluating
from core.data import class_counts
from core.evaluate import CPU_ATTACK_BATCH, InputTransform, fraction, per_class_accuracy
from core.spec import PER_255

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version's attacks, in its order
MAX_TARGETS = 9  # target classes of APGD-T and FAB-T in the standard version


@dataclass
class AutoAttackResult:
    """Per image: is it still classified correctly after every attack; and the running accuracy."""

    correct: torch.Tensor  # bool (N,)
    per_attack: dict[str, float]  # accuracy after each attack, cumulative (the package's own report)
    seconds: float
    warnings: list[str] = field(default_factory=list)  # the package's checks (zero gradients, ...)


def autoattack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                       num_classes: int, batch_size: int = 512, seed: int = 0) -> AutoAttackResult:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), L-inf, in eval mode.

    Distance measure: Linf. Arguments: epsilon (radius, [0, 1] units, e.g. 8/255), num_classes (APGD-T and
    FAB-T take min(9, num_classes - 1) target classes; APGD-T is left out below 4 classes, where its
    targeted DLR loss is undefined), batch_size (at most 128 on a CPU), seed (every attack's seed).
    Each attack runs on the images that survived the previous ones, as the package's
    ``run_standard_evaluation`` does; calling it once per attack gives the per-attack accuracies.
    Shape: x (N, C, H, W) transformed inputs (the model normalises inside), y (N,) -> bool (N,).
    """
    from pyautoattack import AutoAttack

    if x.device.type == "cpu":
        batch_size = min(batch_size, CPU_ATTACK_BATCH)
    correct = torch.ones(len(y), dtype=torch.bool, device=y.device)
    per_attack, started = {}, time.perf_counter()
    with evaluating(model), _frozen(model), _kept_rng(x.device), _caught_warnings() as warnings:
        attack = AutoAttack(model, norm="Linf", eps=epsilon, version="standard", seed=seed, device=x.device)
        targets = min(MAX_TARGETS, num_classes - 1)
        attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = targets
        for name in [n for n in STANDARD if n != "apgd-t" or num_classes >= 4]:
            alive = correct.nonzero().squeeze(1)
            if alive.numel():
                attack.attacks_to_run = [name]
                _, predicted = attack.run_standard_evaluation(x[alive], y[alive], batch_size=batch_size)
                correct[alive] = predicted == y[alive]
            per_attack[name] = fraction(correct)
    return AutoAttackResult(correct, per_attack, time.perf_counter() - started, warnings)


def autoattack_section(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       transform: InputTransform, *, epsilon: float, num_classes: int,
                       class_names: Sequence[str] | None = None, batch_size: int = 512,
                       seed: int = 0) -> dict[str, Any]:
    """The report's ``final.autoattack`` block for uint8 ``images``; ``epsilon`` in /255, as in the spec."""
    result = autoattack_correct(model, transform(images, labels), labels, epsilon=epsilon * PER_255,
                                num_classes=num_classes, batch_size=batch_size, seed=seed)
    by_class = per_class_accuracy(result.correct, labels, num_classes)
    return {"accuracy": fraction(result.correct), "per_attack": result.per_attack, "images": len(labels),
            "class_counts": class_counts(labels, num_classes),
            "per_class": [{"label": c, "name": class_names[c] if class_names else str(c),
                           "robust_accuracy": by_class[c]} for c in range(num_classes)],
            "seconds": result.seconds, "implementation": f"pyautoattack {version('pyautoattack')}",
            "version": "standard", "norm": "Linf", "epsilon": epsilon, "units": "/255", "seed": seed,
            "warnings": result.warnings}


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients for the block (FAB calls ``backward``); restores each ``requires_grad``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _kept_rng(device: torch.device) -> Iterator[None]:
    """Restore the global RNG states the attacks reseed (CPU, and the CUDA device when on one)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() not in self.messages:
            self.messages.append(record.getMessage())


@contextmanager
def _caught_warnings() -> Iterator[list[str]]:
    """The package's check messages (logger ``auto-attack``), once each, instead of on stderr."""
    logger, handler = logging.getLogger("auto-attack"), _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
