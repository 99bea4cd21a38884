"""The reference-style loop and our trainer step run the same algorithm (same attack, loss, schedule), so
the throughput benchmark compares engineering only."""

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reference_loop import ReferenceFGSM, reference_optimizer, reference_step  # noqa: E402

from core.attacks import fgsm  # noqa: E402
from core.models import build_model  # noqa: E402
from core.schedule import lr_and_momentum  # noqa: E402
from core.spec import TrainingSpec  # noqa: E402
from core.trainer import train_step  # noqa: E402

EPSILON = 8 / 255
STEPS, TOTAL_STEPS = 4, 8  # a short cyclic schedule, so the learning rate is far from 0 within 4 steps


@pytest.fixture
def batches(single_thread):
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator))
            for _ in range(STEPS)]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("preact_resnet18", 8, 10, in_channels=3, image_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)


def test_reference_attack_is_fgsm(batches):
    model = small_model().train()
    images, labels = batches[0]
    state = copy.deepcopy(model.state_dict())
    reference_delta = ReferenceFGSM(model, EPSILON, EPSILON)(images, labels)
    model.load_state_dict(state)  # both attacks update BatchNorm running statistics once
    ours = fgsm(model, images, labels, EPSILON)
    assert reference_delta.abs().max() <= EPSILON + 1e-7
    assert (reference_delta - ours).abs().max() < 1e-6
    assert (reference_delta != 0).float().mean() > 0.5  # a real perturbation, not an all-zero one


def test_channels_last_changes_rounding_only(batches):
    """The trainer's activation layout: the same FGSM perturbation up to signs of gradients that round to 0."""
    model = small_model().train()
    images, labels = batches[0]
    state = copy.deepcopy(model.state_dict())
    plain = fgsm(model, images, labels, EPSILON)
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last)
    last = fgsm(model, images.contiguous(memory_format=torch.channels_last), labels, EPSILON)
    assert (plain == last).float().mean() > 0.999


def test_reference_step_matches_train_step(batches):
    reference_model, our_model = small_model().train(), small_model().train()
    optimizer, scheduler = reference_optimizer(reference_model, TOTAL_STEPS)
    attack = ReferenceFGSM(reference_model, EPSILON, EPSILON)
    ours = torch.optim.SGD(our_model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    spec = TrainingSpec(method="fgsm", epsilon=8, alpha=8, noise_magnitude=0)
    for step, (images, labels) in enumerate(batches):
        loss, correct = reference_step(reference_model, optimizer, scheduler, attack, images, labels)
        lr, momentum = lr_and_momentum("cyclic", step, TOTAL_STEPS, 0.2, 0.9)
        for group in ours.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        sums = train_step(our_model, ours, images, labels, spec, None)
        assert sums[0].item() / len(labels) == pytest.approx(loss, rel=1e-4)
        assert sums[1].item() == correct
    reference_state, our_state = reference_model.state_dict(), our_model.state_dict()
    moved = max((reference_state[name].float() - small_model().state_dict()[name].float()).abs().max().item()
                for name in reference_state)
    assert moved > 1e-3  # the steps did train
    for name, value in reference_state.items():
        torch.testing.assert_close(our_state[name].float(), value.float(), rtol=1e-4, atol=1e-5, msg=name)
