"""Monitor measurements (co-detection.md §2.2-§2.3, paper-notes §6), in [0, 1] pixel units.

Every probe runs the model as given: the caller chooses the mode (the monitor uses eval mode, see
``core.attacks.evaluating``), and the per-sample statements below (per-sample gradients from the summed
loss, a block-diagonal input Hessian) hold only when samples do not interact, i.e. in eval mode.
Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so parameter ``.grad``
is never touched. Losses are cross-entropy computed in float32 or wider.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.attacks import clip_box, gradient_cosine, input_gradient, uniform_noise


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need a non-empty batch with one label per image, "
                         f"got x {tuple(x.shape)}, y {tuple(y.shape)}")


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), y, reduction="none")


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                       generator: torch.Generator | None = None) -> float:
    """GradAlign's ``cos_x_eta``: mean cos(grad l(x), grad l(x + eta)), eta ~ U(-eps, eps), not box-clipped
    (as GradAlign and the trainer's regulariser). Samples with a zero gradient are left out."""
    _check_batch(x, y)
    with torch.enable_grad():
        g1 = input_gradient(model, x, y)
        g2 = input_gradient(model, x + uniform_noise(x, epsilon, generator), y)
    return gradient_cosine(g1, g2).item()


def linearity_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                    generator: torch.Generator | None = None) -> float:
    """ELLE's local-linearity error (Abad Rocamora et al., ICLR 2024), 3 forward passes, no backward.

    x_a = x + clip_box(U(-eps, eps)), x_b likewise (drawn in this order), then a ~ U[0, 1] per sample,
    x_c = (1 - a) x_a + a x_b; returns mean_i (l_i(x_c) - (1 - a_i) l_i(x_a) - a_i l_i(x_b))^2 with l_i the
    per-sample CE.
    """
    _check_batch(x, y)
    x_a = x + clip_box(uniform_noise(x, epsilon, generator), x)
    x_b = x + clip_box(uniform_noise(x, epsilon, generator), x)
    a = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    a_img = a.view(-1, *([1] * (x.dim() - 1)))
    x_c = (1 - a_img) * x_a + a_img * x_b
    with torch.no_grad():
        la, lb, lc = _losses(model, x_a, y), _losses(model, x_b, y), _losses(model, x_c, y)
        a = a.to(la.dtype)
        return (lc - (1 - a) * la - a * lb).pow(2).mean().item()


def input_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of ||d l_i / d x_i||_2, l_i the per-sample CE (from the gradient of the summed CE,
    whose block for sample i is d l_i / d x_i when samples are independent)."""
    _check_batch(x, y)
    with torch.enable_grad():
        grad = input_gradient(model, x, y)
    return grad.flatten(1).norm(dim=1).mean().item()


def carrier_share(delta: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean over samples of ||P_V delta_i||^2 / ||delta_i||^2, with ``basis`` the orthonormal rows of
    ``core.interventions.carrier_basis``. Samples with delta_i = 0 are left out; NaN if all are zero.
    A random direction gives about rank / dim (5 / 3072 for the paper's CIFAR-10 carriers)."""
    flat = delta.detach().reshape(delta.shape[0], -1).to(torch.float64)
    coefficients = flat @ basis.to(device=flat.device, dtype=torch.float64).T
    total = flat.pow(2).sum(1)
    valid = total > 0
    if not bool(valid.any()):
        return math.nan
    return (coefficients.pow(2).sum(1)[valid] / total[valid]).mean().item()


Subspace = Literal["full", "carrier", "complement"]


def _projector(basis: torch.Tensor | None, subspace: Subspace, like: torch.Tensor):
    if subspace == "full":
        return lambda v: v
    if basis is None:
        raise ValueError(f"subspace {subspace!r} needs an orthonormal basis (rows), "
                         "e.g. carrier_basis(carriers)")
    if subspace not in ("carrier", "complement"):
        raise ValueError(f"subspace must be 'full', 'carrier' or 'complement', got {subspace!r}")
    u = basis.to(device=like.device, dtype=like.dtype).reshape(basis.shape[0], -1)
    if u.shape[1] != like[0].numel():
        raise ValueError(f"basis rows have {u.shape[1]} entries, images {like[0].numel()}")

    def onto_span(v: torch.Tensor) -> torch.Tensor:
        flat = v.reshape(v.shape[0], -1)
        return ((flat @ u.T) @ u).reshape(v.shape)

    return onto_span if subspace == "carrier" else (lambda v: v - onto_span(v))


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(1)


def _normalised(v: torch.Tensor) -> torch.Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norms.view(-1, *([1] * (v.dim() - 1)))


def hessian_vector_product(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
                           h: float = 1e-3) -> torch.Tensor:
    """H v for the input Hessian of the summed CE, by the central difference
    (grad l(x + h v) - grad l(x - h v)) / (2 h) -- divided by 2h, unlike the released code's (g+ - g-)/2*h
    (paper-notes §6). Both points go through the model in one batch of 2N; no box clipping (a symmetric
    difference needs both points). Per sample this is H_i v_i when samples are independent."""
    with torch.enable_grad():
        grads = input_gradient(model, torch.cat([x + h * v, x - h * v]), torch.cat([y, y]))
    plus, minus = grads.split(x.shape[0])
    return (plus - minus) / (2.0 * h)


def top_hessian_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iterations: int = 20,
                            h: float = 1e-3, subspace: Subspace = "full", basis: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """The dominant eigenvalue of each sample's input Hessian H_i of CE, shape (N,).

    The released code reports the largest eigenvalue over the batch (``evd_hessian``, Lanczos on the
    block-diagonal batch Hessian): that is ``.max()`` of this; the monitor logs both max and mean.

    Power iteration, run for all samples at once on the block-diagonal Hessian of the summed CE (eval
    mode): v_i ~ N(0, I), projected and normalised per sample, then ``iterations`` times
    w_i = P H_i P v_i, v_i <- w_i / ||w_i||; the result per sample is the Rayleigh quotient v_i^T w_i of the
    last iteration. Power iteration
    converges to the eigenvalue of largest *magnitude*, reported with its sign: for piecewise-linear
    (ReLU) networks the input Hessian is the PSD Gauss-Newton term almost everywhere, so this is the top
    eigenvalue; a smooth network whose most negative eigenvalue dominates returns that negative value.
    HVPs use ``hessian_vector_product`` with step ``h`` (L2 length in [0, 1] pixel units, v has unit norm).

    ``subspace``: "full"; "carrier" (P = U^T U, the span of the orthonormal rows ``basis``, e.g.
    ``core.interventions.carrier_basis``); or "complement" (P = I - U^T U). v is projected before and
    after every HVP, so this is the dominant eigenvalue of H restricted to that subspace.
    Cost: ``iterations`` HVPs, each one forward and backward pass on a batch of 2N. ``generator`` draws
    the start vector (on x's device, like the attacks' generators).
    """
    _check_batch(x, y)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not h > 0:
        raise ValueError(f"h must be positive, got {h}")
    project = _projector(basis, subspace, x)
    x = x.detach()
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = _normalised(project(v))
    for _ in range(iterations):
        hv = project(hessian_vector_product(model, x, y, v, h))
        rayleigh = _per_sample_dot(v, hv)  # v has unit norm per sample
        v = _normalised(hv)
    return rayleigh.detach()
