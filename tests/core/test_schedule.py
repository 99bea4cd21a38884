"""Learning-rate / momentum schedules against torch's CyclicLR and the multistep closed form."""

from __future__ import annotations

import random

import pytest
import torch

from core.schedule import lr_and_momentum

TOTAL = 11730  # 30 epochs x 391 iterations, the paper's run
LR_MAX, MOMENTUM = 0.2, 0.9


def torch_cyclic_trace(total: int, lr_max: float, momentum: float) -> tuple[list[float], list[float]]:
    """(lr, momentum) that torch's CyclicLR gives at every iteration, stepping once per iteration.

    With momentum 0.9 torch's own defaults are used (cycle_momentum, base 0.8, max 0.9); otherwise the
    cycle is momentum - 0.1 .. momentum, the depth the module documents.
    """
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.0, momentum=momentum)
    momentum_range = {} if momentum == 0.9 else {"base_momentum": momentum - 0.1, "max_momentum": momentum}
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=0.0, max_lr=lr_max, step_size_up=total / 2, step_size_down=total / 2,
        **momentum_range,
    )
    lrs, momenta = [], []
    for _ in range(total):
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        momenta.append(group["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


@pytest.fixture(scope="module")
def paper_trace() -> tuple[list[float], list[float]]:
    return torch_cyclic_trace(TOTAL, LR_MAX, MOMENTUM)


def test_lr_and_momentum_cyclic_matches_torch_cyclic_lr_at_key_iterations(paper_trace):
    lrs, momenta = paper_trace
    for iteration in (0, 1, 2, 5864, 5865, 5866, 11728, 11729):
        lr, momentum = lr_and_momentum("cyclic", iteration, TOTAL, LR_MAX, MOMENTUM)
        assert lr == pytest.approx(lrs[iteration], rel=1e-9, abs=1e-12), iteration
        assert momentum == pytest.approx(momenta[iteration], rel=1e-9, abs=1e-12), iteration


def test_lr_and_momentum_cyclic_matches_torch_cyclic_lr_at_sampled_iterations(paper_trace):
    lrs, momenta = paper_trace
    sampled = random.Random(0).sample(range(TOTAL), 500)
    for iteration in sampled:
        lr, momentum = lr_and_momentum("cyclic", iteration, TOTAL, LR_MAX, MOMENTUM)
        assert lr == pytest.approx(lrs[iteration], rel=1e-9, abs=1e-12), iteration
        assert momentum == pytest.approx(momenta[iteration], rel=1e-9, abs=1e-12), iteration


@pytest.mark.parametrize("total", [7, 10, 391])
def test_lr_and_momentum_cyclic_matches_torch_for_short_and_odd_runs(total):
    lrs, momenta = torch_cyclic_trace(total, 0.05, 0.8)
    for iteration in range(total):
        lr, momentum = lr_and_momentum("cyclic", iteration, total, 0.05, 0.8)
        assert lr == pytest.approx(lrs[iteration], rel=1e-9, abs=1e-12), iteration
        assert momentum == pytest.approx(momenta[iteration], rel=1e-9, abs=1e-12), iteration


def test_lr_and_momentum_cyclic_gives_paper_values_at_start_and_peak():
    assert lr_and_momentum("cyclic", 0, TOTAL, LR_MAX, MOMENTUM) == (0.0, pytest.approx(0.9))
    lr, momentum = lr_and_momentum("cyclic", 5865, TOTAL, LR_MAX, MOMENTUM)
    assert lr == pytest.approx(0.2, rel=1e-12)
    assert momentum == pytest.approx(0.8, rel=1e-12)
    # the triangle: halfway up the first half, lr is half the maximum and momentum 0.85
    lr, momentum = lr_and_momentum("cyclic", 5865 // 2 + 1, TOTAL, LR_MAX, MOMENTUM)
    assert lr == pytest.approx(0.2 * (2933 / 5865), rel=1e-12)
    assert momentum == pytest.approx(0.9 - 0.1 * (2933 / 5865), rel=1e-12)


def test_lr_and_momentum_multistep_divides_by_ten_at_half_and_three_quarters():
    total = 200
    for iteration in range(total):
        lr, momentum = lr_and_momentum("multistep", iteration, total, LR_MAX, MOMENTUM)
        if iteration < 100:
            expected = 0.2
        elif iteration < 150:
            expected = 0.02
        else:
            expected = 0.002
        assert lr == pytest.approx(expected, rel=1e-12), iteration
        assert momentum == MOMENTUM


def test_lr_and_momentum_multistep_boundaries_on_paper_length():
    assert lr_and_momentum("multistep", 5864, TOTAL, 0.1, 0.9)[0] == pytest.approx(0.1)
    assert lr_and_momentum("multistep", 5865, TOTAL, 0.1, 0.9)[0] == pytest.approx(0.01)
    assert lr_and_momentum("multistep", 8797, TOTAL, 0.1, 0.9)[0] == pytest.approx(0.01)  # 0.75*T = 8797.5
    assert lr_and_momentum("multistep", 8798, TOTAL, 0.1, 0.9)[0] == pytest.approx(0.001)


def test_lr_and_momentum_rejects_unknown_schedule():
    with pytest.raises(ValueError):
        lr_and_momentum("cosine", 0, 10, 0.1, 0.9)
