"""The online CO monitor: measurements on a fixed, un-augmented monitor set, in eval mode.

Every ``monitor.every_steps`` steps and at each epoch end the trainer calls ``Monitor.check``, which
returns one ``kind: monitor`` row for ``metrics.jsonl`` with the keys ``core.co.detect_onset`` reads
(clean, FGSM and PGD accuracy) plus the leading indicators of co-detection.md §2.3: FGSM-PGD gap,
gradient alignment, ELLE linearity error and mean input-gradient norm; for injected data also the share
of the FGSM perturbation in the carrier span, the accuracy on reversed-carrier test images and on the
carrier-only probe (paper-notes §3.4-3.5, §6); optionally the top input-Hessian eigenvalue.

Cost per check, N monitor images: one FGSM (its first pass also gives the clean accuracy, the
input-gradient norm and the first gradient of the alignment), a PGD-k that stops attacking broken
samples, one more gradient for the alignment and three forward passes for the linearity error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.attacks import evaluating, gradient_cosine, input_gradient, pgd, single_step, uniform_noise
from core.data import Dataset, balanced_order, class_counts
from core.evaluate import InputTransform
from core.interventions import carrier_basis, carrier_only_probe, carriers, inject
from core.probes import carrier_share, linearity_error, top_hessian_eigenvalues
from core.spec import PER_255, JobSpec

CURVATURE_IMAGES = 32  # monitor images used by the (costly) Hessian probe
REPEAT_SEED = 104_729  # seed offset of a repeated check's attack noise (any value no step reaches would do)


class Monitor:
    """Holds the monitor set (fixed indices, transformed once) and measures a model on it."""

    def __init__(self, spec: JobSpec, data: Dataset, transform: InputTransform, device: torch.device) -> None:
        self.spec, self.settings = spec, spec.monitor
        self.epsilon = spec.training.epsilon * PER_255
        # class-stratified draws whose every prefix is stratified too: the indicators read the first
        # ``indicator_images``, the curvature probe the first CURVATURE_IMAGES (splits may be sorted by class)
        count = min(self.settings.train_images, len(data.train))
        self.indices = balanced_order(data.train.labels, spec.seed + 17)[:count].tolist()  # in the report
        index = torch.tensor(self.indices, device=device)
        self.y = data.train.labels[index]
        self.x = transform(data.train.images[index], self.y)
        self.class_counts = class_counts(self.y, data.num_classes)
        self.indicator_class_counts = class_counts(self.y[:self.settings.indicator_images], data.num_classes)
        test_order = balanced_order(data.test.labels, spec.seed + 19).to(device)
        test_index = test_order[:min(self.settings.test_images, len(data.test))]
        self.test_y = data.test.labels[test_index]
        self.test_x = transform(data.test.images[test_index], self.test_y)
        self.test_class_counts = class_counts(self.test_y, data.num_classes)
        self.injected = spec.intervention.injects
        self.class_carriers = carriers(data.num_classes, data.image_shape).to(device)
        self.basis = carrier_basis(self.class_carriers)
        if self.injected:  # x - beta v_y: the carrier now points to another class (paper-notes §3.4)
            probe_index = test_order[:min(len(data.test), max(len(test_index), count))]
            labels = data.test.labels[probe_index]
            clean = transform(data.test.images[probe_index], labels)
            beta = spec.intervention.beta * PER_255
            self.reversed_x = inject(clean, labels, -2 * beta, self.class_carriers)  # remove, then reverse
            self.reversed_y = labels
            self.carrier_x, self.carrier_y = carrier_only_probe(self.epsilon, self.class_carriers)
            self.carrier_y = self.carrier_y.to(device)

    def check(self, model: nn.Module, step: int, epoch: int, curvature: bool = False,
              repeat: bool = False) -> dict[str, Any]:
        """One monitor row for the model as it is now (eval mode inside; mode restored after). ``repeat``: the
        same check again with fresh attack noise (the like-for-like confirmation of a last-check firing)."""
        seed = self.spec.seed * 7919 + step + REPEAT_SEED * repeat
        generator = torch.Generator(self.x.device).manual_seed(seed)
        # a repeat is its own kind: stores keep one row per (kind, step), and it shares the last check's step
        row: dict[str, Any] = ({"kind": "recheck", "step": step, "epoch": epoch, "repeat": True} if repeat
                               else {"kind": "monitor", "step": step, "epoch": epoch})
        with evaluating(model):
            row.update(self._attack_metrics(model, self.x, self.y, generator))
            if len(self.test_y):
                test = self._attack_metrics(model, self.test_x, self.test_y, generator, indicators=False)
                row.update({f"test_{key}": value for key, value in test.items()})
            if self.injected:
                row["reversed_carrier_accuracy"] = _accuracy(model, self.reversed_x, self.reversed_y)
                row["carrier_only_accuracy"] = _accuracy(model, self.carrier_x, self.carrier_y)
            if curvature:
                subspace = self.settings.curvature_subspace
                eigenvalues = top_hessian_eigenvalues(
                    model, self.x[:CURVATURE_IMAGES], self.y[:CURVATURE_IMAGES],
                    self.settings.curvature_iterations, subspace=subspace,
                    basis=None if subspace == "full" else self.basis, generator=generator)
                row[f"hessian_top_eigenvalue_max_{subspace}"] = float(eigenvalues.max())  # the released code's
                row[f"hessian_top_eigenvalue_mean_{subspace}"] = float(eigenvalues.mean())
        return row

    def _attack_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                        indicators: bool = True) -> dict[str, float]:
        """Per-sample means over chunks of the training batch size (on a CPU, 4 batches of 128 run about
        twice as fast as one of 512). Accuracies use every monitor image; the leading indicators, which
        are averages of smooth quantities, use the first ``indicator_images`` to keep checks cheap."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        chunk = min(self.spec.training.batch_size, 256)
        for start in range(0, len(y), chunk):
            part_y = y[start:start + chunk]
            with_indicators = indicators and start < self.settings.indicator_images
            part = self._chunk_metrics(model, x[start:start + chunk], part_y, generator, with_indicators)
            for key, value in part.items():
                sums[key] = sums.get(key, 0.0) + value * len(part_y)
                counts[key] = counts.get(key, 0) + len(part_y)
        metrics = {key: value / counts[key] for key, value in sums.items()}
        metrics["fgsm_pgd_gap"] = metrics["fgsm_accuracy"] - metrics["pgd_accuracy"]
        return metrics

    def _chunk_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                       indicators: bool) -> dict[str, float]:
        eps, settings = self.epsilon, self.settings
        fgsm = single_step(model, x, y, epsilon=eps, alpha=eps, generator=generator)
        delta = pgd(model, x, y, epsilon=eps, alpha=settings.pgd_step_fraction * eps, steps=settings.pgd_steps,
                    generator=generator)
        metrics = {
            "clean_accuracy": _fraction(fgsm.logits_at_init.argmax(1) == y),
            "fgsm_accuracy": _accuracy(model, x + fgsm.delta, y),
            "pgd_accuracy": _accuracy(model, x + delta, y),
        }
        if indicators:
            at_noise = input_gradient(model, x + uniform_noise(x, eps, generator), y)
            metrics["gradient_alignment"] = float(gradient_cosine(fgsm.grad_at_init, at_noise))
            metrics["linearity_error"] = linearity_error(model, x, y, eps, generator)
            metrics["input_gradient_norm"] = float(fgsm.grad_at_init.flatten(1).norm(dim=1).mean())
            if self.injected:
                metrics["fgsm_carrier_share"] = carrier_share(fgsm.delta, self.basis)
        return metrics


def _fraction(hits: torch.Tensor) -> float:
    return float(hits.float().mean())


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return _fraction(model(x).argmax(1) == y)
