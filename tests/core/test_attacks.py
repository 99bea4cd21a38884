"""FGSM / N-FGSM / PGD against closed forms on linear models, and invariants on a small CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.attacks import evaluating, fgsm, pgd, single_step

EPS = 8 / 255


pytestmark = pytest.mark.usefixtures("single_thread")


def linear_model(in_shape: tuple[int, int, int] = (3, 8, 8), classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], classes))
    return model.double()


def analytic_ce_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x for f(x) = W x + b: W^T (softmax(W x + b) - onehot(y)), per sample, float64."""
    linear = model[1]
    weight, bias = linear.weight.detach().double(), linear.bias.detach().double()
    flat = x.double().reshape(x.shape[0], -1)
    logits = flat @ weight.T + bias
    probabilities = torch.exp(logits - torch.logsumexp(logits, dim=1, keepdim=True))
    onehot = torch.zeros_like(probabilities)
    onehot[torch.arange(x.shape[0]), y] = 1.0
    return ((probabilities - onehot) @ weight).reshape(x.shape)


def tiny_cnn(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU net whose BatchNorm running statistics are set from data (so it is not constant)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the statistics of that batch
    calibration = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        model.train()(calibration)
    return model.eval()


@pytest.fixture(scope="module")
def cnn_task() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny CNN and a batch labelled with its own predictions: clean accuracy is exactly 100 %."""
    model = tiny_cnn()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with evaluating(model), torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------------------------------------------
# FGSM and variants


def test_fgsm_matches_closed_form_sign_gradient_on_linear_model():
    model = linear_model()
    generator = torch.Generator().manual_seed(2)
    x = (0.3 + 0.4 * torch.rand(16, 3, 8, 8, generator=generator)).double()
    y = torch.randint(0, 10, (16,), generator=generator)
    gradient = analytic_ce_gradient(model, x, y)
    delta = fgsm(model, x, y, EPS)
    assert torch.all(delta.abs() == EPS)  # x is far from the box: every pixel moves by exactly eps
    # the attack's loss is evaluated in float32, so a sign is only meaningful where |grad| >~ 1e-7
    clear = gradient.abs() > 1e-6
    assert clear.float().mean().item() > 0.99
    assert torch.equal(delta[clear], EPS * torch.sign(gradient[clear]))


def test_fgsm_near_box_boundary_clips_to_unit_box():
    model = linear_model(seed=3)
    generator = torch.Generator().manual_seed(4)
    choices = torch.tensor([0.0, 1.0, 0.01, 0.99, 0.5], dtype=torch.float64)
    x = choices[torch.randint(0, 5, (16, 3, 8, 8), generator=generator)]
    y = torch.randint(0, 10, (16,), generator=generator)
    delta = fgsm(model, x, y, EPS)
    adversarial = x + delta
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    assert delta.abs().max().item() <= EPS
    # closed form: eps * sign(grad), then clamped to [-x, 1 - x]
    step = EPS * torch.sign(analytic_ce_gradient(model, x, y))
    expected = torch.minimum(torch.maximum(step, -x), 1.0 - x)
    assert torch.allclose(delta, expected, atol=1e-15, rtol=0)
    assert (delta.abs() < EPS).any()  # some pixels really were clipped by the box


def test_fgsm_nfgsm_without_projection_stays_within_three_eps_and_box(cnn_task):
    model, x, y = cnn_task
    delta = fgsm(model, x, y, EPS, alpha=EPS, noise=2 * EPS, project=False,
                 generator=torch.Generator().manual_seed(5))
    assert delta.abs().max().item() <= 3 * EPS + 1e-7
    assert delta.abs().max().item() > EPS  # the projection really is skipped
    assert (x + delta).min().item() >= 0.0 and (x + delta).max().item() <= 1.0


def test_fgsm_nfgsm_with_projection_stays_within_eps_and_box(cnn_task):
    model, x, y = cnn_task
    delta = fgsm(model, x, y, EPS, alpha=EPS, noise=2 * EPS, project=True,
                 generator=torch.Generator().manual_seed(5))
    assert delta.abs().max().item() <= EPS + 1e-7
    assert (x + delta).min().item() >= 0.0 and (x + delta).max().item() <= 1.0


def test_fgsm_is_deterministic_for_a_seeded_generator(cnn_task):
    model, x, y = cnn_task
    first = fgsm(model, x, y, EPS, noise=EPS, generator=torch.Generator().manual_seed(6))
    second = fgsm(model, x, y, EPS, noise=EPS, generator=torch.Generator().manual_seed(6))
    third = fgsm(model, x, y, EPS, noise=EPS, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and not torch.equal(first, third)


# ---------------------------------------------------------------------------------------------------
# PGD


def test_pgd_last_without_random_start_matches_explicit_loop_on_linear_model():
    model = linear_model(seed=8)
    generator = torch.Generator().manual_seed(9)
    x = (0.05 + 0.9 * torch.rand(8, 3, 8, 8, generator=generator)).double()
    y = torch.randint(0, 10, (8,), generator=generator)
    alpha, steps = 2 / 255, 6
    expected = torch.zeros_like(x)
    for _ in range(steps):
        gradient = analytic_ce_gradient(model, x + expected, y)
        assert gradient.abs().min().item() > 1e-5
        expected = expected + alpha * torch.sign(gradient)
        expected = torch.clamp(expected, -EPS, EPS)
        expected = torch.minimum(torch.maximum(expected, -x), 1.0 - x)
    delta = pgd(model, x, y, epsilon=EPS, alpha=alpha, steps=steps, random_start=False, select="last")
    assert torch.allclose(delta, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("select", "restarts"), [("last", 1), ("strongest", 3)])
def test_pgd_stays_in_ball_and_box_and_keeps_mode(mode, select, restarts):
    model = tiny_cnn().train(mode == "train")  # own copy: train mode updates BatchNorm statistics
    generator = torch.Generator().manual_seed(10)
    x = torch.rand(16, 3, 8, 8, generator=generator)
    x[:4] = (x[:4] > 0.5).float()  # saturated images: the box is active
    y = torch.randint(0, 10, (16,), generator=generator)
    delta = pgd(model, x, y, epsilon=EPS, alpha=2 / 255, steps=4, restarts=restarts, select=select,
                generator=generator)
    assert model.training == (mode == "train")
    assert all(m.training == (mode == "train") for m in model.modules())
    assert delta.shape == x.shape and not delta.requires_grad
    assert delta.abs().max().item() <= EPS + 1e-7
    assert (x + delta).min().item() >= 0.0 and (x + delta).max().item() <= 1.0


@pytest.mark.parametrize(("select", "restarts"), [("last", 1), ("strongest", 2)])
def test_attacks_leave_parameter_grads_untouched(select, restarts):
    model = tiny_cnn(seed=11)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(13))
    parameters = list(model.parameters())
    pgd(model, x, y, epsilon=EPS, alpha=2 / 255, steps=3, restarts=restarts, select=select)
    fgsm(model, x, y, EPS, noise=EPS)
    assert all(p.grad is None for p in parameters)

    preset = [torch.full_like(p, 0.25) for p in parameters]
    for p, g in zip(parameters, preset, strict=True):
        p.grad = g.clone()
    pgd(model, x, y, epsilon=EPS, alpha=2 / 255, steps=3, restarts=restarts, select=select)
    fgsm(model, x, y, EPS, noise=EPS)
    assert all(torch.equal(p.grad, g) for p, g in zip(parameters, preset, strict=True))


def test_pgd_strongest_with_restarts_is_no_weaker_than_clean_or_single_last_run(cnn_task):
    model, x, y = cnn_task
    epsilon, alpha, steps = 2 / 255, 0.5 / 255, 5
    last = pgd(model, x, y, epsilon=epsilon, alpha=alpha, steps=steps, select="last",
               generator=torch.Generator().manual_seed(14))
    strongest = pgd(model, x, y, epsilon=epsilon, alpha=alpha, steps=steps, restarts=3, select="strongest",
                    generator=torch.Generator().manual_seed(14))
    clean_accuracy = accuracy(model, x, y)
    last_accuracy = accuracy(model, x + last, y)
    strongest_accuracy = accuracy(model, x + strongest, y)
    assert clean_accuracy == 1.0
    assert 0.0 < last_accuracy < 1.0  # the attack is informative: it breaks some samples, not all
    assert strongest_accuracy <= last_accuracy <= clean_accuracy


class Recorder(nn.Module):
    """Wraps a model and records every input it sees with its predicted class."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        self.seen.append((x.detach().clone(), logits.detach().argmax(1)))
        return logits


def test_pgd_strongest_returns_misclassifying_delta_for_every_sample_broken_in_any_restart(cnn_task):
    model, x, y = cnn_task
    recorder = Recorder(model).eval()
    epsilon = 2 / 255
    delta = pgd(recorder, x, y, epsilon=epsilon, alpha=0.5 / 255, steps=4, restarts=3, select="strongest",
                generator=torch.Generator().manual_seed(15))
    # map every evaluated input back to its sample (clean samples are far apart compared to epsilon)
    broken = torch.zeros(x.shape[0], dtype=torch.bool)
    evaluated = 0
    for inputs, predictions in recorder.seen:
        if inputs.shape[0] == 0:
            continue
        distance = (inputs[:, None] - x[None]).flatten(2).abs().amax(dim=2)  # (batch, N)
        owner = distance.argmin(dim=1)
        assert torch.all(distance[torch.arange(inputs.shape[0]), owner] <= epsilon + 1e-6)
        broken[owner[predictions != y[owner]]] = True
        evaluated += inputs.shape[0]
    assert evaluated > x.shape[0]  # several iterates were looked at
    assert 0 < int(broken.sum()) < x.shape[0]
    with torch.no_grad():
        fooled = model(x + delta).argmax(1) != y
    assert torch.equal(fooled, broken)


class StepModel(nn.Module):
    """Piecewise-constant logits in the mean pixel z (zero gradient, so PGD only moves by its random start).

    z < 0.5: class 0 is (barely) predicted, CE(label 0) ~ 2.2, high loss but correct.
    z > 0.5: class 1 is predicted, CE(label 0) ~ 0.74, low loss but wrong.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1).mean(dim=1, keepdim=True)
        correct = torch.tensor([0.1] + [0.0] * 9)
        wrong = torch.tensor([1.0, 1.1] + [-10.0] * 8)
        logits = torch.where(z > 0.5, wrong, correct)
        return logits + 0.0 * z  # keep the input in the graph


def test_pgd_strongest_prefers_misclassifying_restart_over_higher_loss_correct_one():
    model = StepModel()
    x = torch.full((64, 1, 1, 1), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    assert torch.all(model(x + 0.05).argmax(1) != y) and torch.all(model(x - 0.05).argmax(1) == y)
    # each restart lands on the wrong side with probability 1/2: with 5 restarts only ~1/32 of the
    # samples should never be broken; keeping the highest-loss iterate instead would leave ~1/2 correct
    delta = pgd(model, x, y, epsilon=0.1, alpha=0.01, steps=1, restarts=5, select="strongest",
                generator=torch.Generator().manual_seed(19))
    assert delta.abs().max().item() <= 0.1 + 1e-7
    robust = (model(x + delta).argmax(1) == y).float().mean().item()
    assert robust < 0.15


def test_pgd_rejects_unknown_select_and_last_with_restarts(cnn_task):
    model, x, y = cnn_task
    with pytest.raises(ValueError):
        pgd(model, x, y, epsilon=EPS, alpha=2 / 255, steps=1, select="best")
    with pytest.raises(ValueError):
        pgd(model, x, y, epsilon=EPS, alpha=2 / 255, steps=1, restarts=2, select="last")


# ---------------------------------------------------------------------------------------------------
# evaluating


def test_evaluating_sets_eval_and_restores_train():
    model = tiny_cnn(seed=16).train()
    with evaluating(model) as inside:
        assert inside is model
        assert not model.training and not any(m.training for m in model.modules())
    assert model.training and all(m.training for m in model.modules())


def test_evaluating_keeps_eval_model_in_eval():
    model = tiny_cnn(seed=17).eval()
    with evaluating(model):
        assert not model.training
    assert not model.training


def test_evaluating_restores_train_after_exception():
    model = tiny_cnn(seed=18).train()
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("boom")
    assert model.training


def test_fgsm_takes_its_gradient_at_the_input_even_outside_the_box():
    # the released FGSM starts from delta_0 = 0 at the injected image itself (pixels may lie outside [0, 1])
    model = linear_model()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 0, 0, 0] = 1.02  # an injected pixel above the box
    y = torch.tensor([0, 1, 2, 3])
    attack = single_step(model, x, y, epsilon=EPS, alpha=EPS)
    with torch.no_grad():
        assert torch.equal(attack.logits_at_init, model(x))
    assert torch.allclose(attack.grad_at_init, analytic_ce_gradient(model, x, y))
    clipped = single_step(model, x, y, epsilon=EPS, alpha=EPS, start_in_box=True)  # the gradient at clip(x)
    with torch.no_grad():
        assert torch.equal(clipped.logits_at_init, model(x.clamp(0, 1)))
    assert (x + attack.delta).min() >= 0 and (x + attack.delta).max() <= 1  # the step is still boxed


def test_single_step_without_the_box_leaves_x_plus_delta_unclipped():
    model = linear_model()
    x = torch.full((2, 3, 8, 8), 0.999, dtype=torch.float64)
    y = torch.tensor([0, 1])
    boxed = single_step(model, x, y, epsilon=EPS, alpha=EPS, noise=EPS, generator=torch.Generator().manual_seed(0))
    free = single_step(model, x, y, epsilon=EPS, alpha=EPS, noise=EPS, generator=torch.Generator().manual_seed(0),
                       box=False)
    assert (x + boxed.delta).max() <= 1.0
    assert (x + free.delta).max() > 1.0
    assert free.delta.abs().max() <= EPS + 1e-12  # still projected to the eps-ball
