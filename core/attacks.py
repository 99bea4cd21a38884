"""L-inf attacks that return the perturbation delta, in [0, 1] pixel units.

Every attack keeps x + delta in [0, 1] ("clip_box") and |delta| <= epsilon, except N-FGSM, which by design
skips the projection and reaches up to 3 epsilon with its default noise of 2 epsilon (paper-notes §4).
Gradients are taken with ``torch.autograd.grad`` with respect to delta only, so parameter ``.grad`` is
never touched, and no attack changes the model's train/eval mode: the trainer attacks in train mode
(BatchNorm batch statistics, as the paper and Wong et al.), evaluation in eval mode (``evaluating``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block, then restore the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def clip_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clamp delta so that x + delta lies in [0, 1]."""
    return torch.clamp(delta, -x, 1.0 - x)


def uniform_noise(like: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
    """U(-magnitude, magnitude) noise with the shape, dtype and device of ``like``."""
    noise = torch.empty_like(like)
    return noise.uniform_(-magnitude, magnitude, generator=generator) if magnitude > 0 else noise.zero_()


@dataclass
class SingleStep:
    """Result of a single-step attack: the perturbation plus what its first forward/backward computed."""

    delta: torch.Tensor
    logits_at_init: torch.Tensor  # logits at x + delta_0 (clean logits when there is no init noise)
    grad_at_init: torch.Tensor  # d CE / d x at x + delta_0, before taking its sign


def single_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, alpha: float,
                noise: float = 0.0, project: bool = True, generator: torch.Generator | None = None,
                box: bool = True, start_in_box: bool = False) -> SingleStep:
    """delta_0 ~ U(-noise, noise), clip_box; delta = delta_0 + alpha sign(grad); [project to eps]; clip_box.

    FGSM: noise 0, alpha = epsilon. RS-FGSM: noise epsilon, alpha 1.25 epsilon. N-FGSM: noise 2 epsilon,
    alpha epsilon, ``project=False``. As the released code, a noise-free start is delta_0 = 0 exactly, so
    the gradient is taken at x itself even where an injected image lies outside [0, 1]; ``start_in_box``
    box-clips that start too (the gradient at clip(x), an option for the ablation in docs/ablation.md).
    ``box=False`` skips both box clips (the released low-pass training attack).
    """
    delta = uniform_noise(x, noise, generator)
    if box and (noise > 0 or start_in_box):
        delta = clip_box(delta, x)
    delta.requires_grad_(True)
    logits = model(x + delta)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")  # sum: the sign is what matters
    (grad,) = torch.autograd.grad(loss, delta)
    step = delta.detach() + alpha * grad.sign()
    if project:
        step = torch.clamp(step, -epsilon, epsilon)
    return SingleStep(clip_box(step, x) if box else step, logits.detach(), grad)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *, alpha: float | None = None,
         noise: float = 0.0, project: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), with the RS-/N-FGSM variants via ``noise``.

    Distance measure: Linf. Arguments: epsilon (radius, [0, 1] units, e.g. 8/255), alpha (step,
    default epsilon), noise (init half-width, default 0), project (clamp to the eps-ball, default True).
    Shape: x (N, C, H, W) in [0, 1], y (N,) -> delta (N, C, H, W).
    """
    alpha = epsilon if alpha is None else alpha
    return single_step(model, x, y, epsilon=epsilon, alpha=alpha, noise=noise, project=project,
                       generator=generator).delta


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, alpha: float, steps: int,
        restarts: int = 1, random_start: bool = True, select: str = "strongest",
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018), L-inf, with restarts.

    Arguments: epsilon, alpha (step) in [0, 1] units; steps; restarts; random_start (U(-eps, eps) init).
    ``select="last"``: the final iterate of a single run (the paper's PGD-AT training attack).
    ``select="strongest"`` (evaluation, model in eval mode): per sample, an iterate that misclassifies
    if any restart finds one (the AutoAttack convention), else the iterate with the largest loss. A
    sample that is broken is not attacked any further, neither in this restart nor in later ones.
    Shape: x (N, C, H, W) in [0, 1], y (N,) -> delta (N, C, H, W).
    """
    if select == "last":
        if restarts != 1:
            raise ValueError("select='last' takes a single restart")
        return _pgd_run(model, x, y, epsilon, alpha, steps, random_start, generator)
    if select != "strongest":
        raise ValueError(f"select must be 'strongest' or 'last', got {select!r}")

    best_delta = torch.zeros_like(x)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    unbroken = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        active = unbroken.nonzero().squeeze(1)
        if active.numel() == 0:
            break
        xa, ya = x[active], y[active]
        delta = clip_box(uniform_noise(xa, epsilon if random_start else 0.0, generator), xa)
        for step in range(steps + 1):
            delta.requires_grad_(step < steps)
            with torch.set_grad_enabled(step < steps):
                logits = model(xa + delta)
                losses = F.cross_entropy(logits.float(), ya, reduction="none")
            wrong = logits.argmax(1) != ya
            better = wrong | (losses.detach() > best_loss[active])
            best_loss[active] = torch.where(better, losses.detach(), best_loss[active])
            best_delta[active] = torch.where(better[:, None, None, None], delta.detach(), best_delta[active])
            unbroken[active[wrong]] = False
            if step == steps:
                break
            (grad,) = torch.autograd.grad(losses.sum(), delta)
            keep = ~wrong  # broken samples leave the batch: nothing stronger than a misclassification
            active, xa, ya = active[keep], xa[keep], ya[keep]
            if active.numel() == 0:
                break
            delta = _pgd_step(delta.detach()[keep], grad[keep], xa, epsilon, alpha)
    return best_delta


def _pgd_step(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, epsilon: float,
              alpha: float) -> torch.Tensor:
    return clip_box(torch.clamp(delta + alpha * grad.sign(), -epsilon, epsilon), x)


def _pgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, alpha: float, steps: int,
             random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    delta = clip_box(uniform_noise(x, epsilon if random_start else 0.0, generator), x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _pgd_step(delta.detach(), grad, x, epsilon, alpha)
    return delta.detach()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """d CE_sum / d x at x; with ``create_graph`` the result can be differentiated again (GradAlign)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def gradient_cosine(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Mean per-sample cosine of two gradient batches, over samples where both norms are non-zero."""
    a, b = g1.flatten(1), g2.flatten(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    valid = norms > 0
    if not bool(valid.any()):
        return torch.zeros((), device=g1.device, dtype=g1.dtype)
    return ((a * b).sum(1)[valid] / norms[valid]).mean()
