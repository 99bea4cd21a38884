"""What a job costs before it runs, and which queue it goes to by default.

Unit: **image-passes**, one forward and backward pass of one image through a width-64 PreActResNet18. An
attack step costs one pass, so an FGSM training step costs 2 per image and PGD-k k + 1. Like ``core.spec``,
this module imports pydantic only (through the spec), so the API uses it without importing torch.
"""

from __future__ import annotations

import math
from typing import Literal

from core.spec import JobSpec

# (train, test) images of the datasets the trainer knows; imagefolder's size is unknown before decoding
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
                 "mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000),
                 "imagefolder": (50_000, 10_000)}
MONITOR_PASSES = 6  # per monitor image and check besides its PGD: clean, FGSM (2), grad alignment (2), ELLE
AUTOATTACK_PASSES = 4_000  # per attacked image that survives all of standard AutoAttack: APGD-CE 100, APGD-T
# 9 x 100, FAB-T 9 x 100 (a forward and a Jacobian each), Square 5000 forwards (a third of a pass); broken
# images stop early (measured: about 2,500 per robust image at width 16)
GPU_QUEUE_COST = 1_000_000  # image-passes above which a job goes to the gpu queue unless the client names
# one: about four hours of a 2-core CPU, which does about 72 width-64 passes/s (36 FGSM-AT images/s,
# docs/benchmarks.md). The paper's 30-epoch run costs about 9e6, the CPU-scale examples about 5e4.

Queue = Literal["cpu", "gpu"]


def dataset_images(spec: JobSpec) -> tuple[int, int]:
    """(train, test) images a run uses, after subsets."""
    data = spec.dataset
    if data.name == "synthetic":
        train_size, test_size = data.synthetic_train_size, data.synthetic_test_size
    else:
        train_size, test_size = DATASET_SIZES[data.name]
    train = min(data.train_subset, train_size) if data.train_subset else train_size
    test = min(data.test_subset, test_size) if data.test_subset else test_size
    return train, test


def attack_passes(spec: JobSpec) -> int:
    """Forward+backward passes per training image and step."""
    training = spec.training
    return {"standard": 1, "fgsm": 2, "rs_fgsm": 2, "n_fgsm": 2, "grad_align": 4,
            "pgd": training.pgd_steps + 1}[training.method]


def model_factor(spec: JobSpec) -> float:
    """Cost of one pass relative to the width-64 PreActResNet18 (convolution cost grows with width^2)."""
    scale = (spec.model.width / 64) ** 2
    return scale if spec.model.arch == "preact_resnet18" else 0.05 * scale


def estimate_cost(spec: JobSpec) -> float:
    """Estimated image-passes of a job: training, CO-monitor checks and the final PGD (and AutoAttack)
    evaluation."""
    training, evaluation, monitor = spec.training, spec.evaluation, spec.monitor
    train, test = dataset_images(spec)
    attacked = min(evaluation.test_subset or test, test)
    steps = training.epochs * math.ceil(train / training.batch_size)
    if training.max_steps is not None:
        steps = min(steps, training.max_steps)
    cost = min(training.epochs * train, steps * training.batch_size) * attack_passes(spec)
    if monitor.enabled:
        checks = steps / monitor.every_steps + training.epochs
        images = monitor.train_images + monitor.test_images
        cost += checks * images * (monitor.pgd_steps + MONITOR_PASSES)
        if monitor.curvature_every_epochs:
            curvature_checks = training.epochs // monitor.curvature_every_epochs
            cost += curvature_checks * images * monitor.curvature_iterations * 2
    cost += test + attacked * evaluation.restarts * (evaluation.pgd_steps + 1)
    if evaluation.autoattack == "standard":
        cost += attacked * AUTOATTACK_PASSES
    return cost * model_factor(spec)


def default_queue(spec: JobSpec) -> Queue:
    """The queue of a job whose client named none: gpu above ``GPU_QUEUE_COST``; a dry run trains nothing."""
    if spec.dry_run:
        return "cpu"
    return "gpu" if estimate_cost(spec) > GPU_QUEUE_COST else "cpu"
