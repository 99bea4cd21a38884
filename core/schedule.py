"""Learning-rate and momentum schedules as pure functions of the iteration (0-based), set every step.

``cyclic`` reproduces torch's CyclicLR(base_lr=0, max_lr, step_size_up = step_size_down = total/2) with
its default ``cycle_momentum=True``: momentum runs max -> max - 0.1 -> max inversely to the learning rate
(0.9 -> 0.8 -> 0.9 with the paper's settings; paper-notes §2). The first step uses lr = 0, as the paper.
``multistep`` divides lr_max by 10 at 50 % and 75 % of the iterations, with constant momentum.
"""

from __future__ import annotations

import math

MOMENTUM_CYCLE_DEPTH = 0.1  # CyclicLR defaults: base_momentum 0.8, max_momentum 0.9


def triangle(iteration: int, total_iterations: int) -> float:
    """Height in [0, 1] of a single triangle rising over the first half of the run and falling after."""
    half = total_iterations / 2.0
    cycle = math.floor(1 + iteration / (2 * half))
    position = abs(iteration / half - 2 * cycle + 1)
    return max(0.0, 1.0 - position)


def lr_and_momentum(schedule: str, iteration: int, total_iterations: int, lr_max: float,
                    momentum: float) -> tuple[float, float]:
    """(learning rate, momentum) for this iteration."""
    if schedule == "cyclic":
        height = triangle(iteration, total_iterations)
        low_momentum = max(0.0, momentum - MOMENTUM_CYCLE_DEPTH)
        return lr_max * height, momentum - (momentum - low_momentum) * height
    if schedule == "multistep":
        drops = (iteration >= 0.5 * total_iterations) + (iteration >= 0.75 * total_iterations)
        return lr_max * 0.1**drops, momentum
    raise ValueError(f"unknown schedule {schedule!r}")
