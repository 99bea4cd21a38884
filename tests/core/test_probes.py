"""Monitor probes (core/probes.py) against closed forms and independent re-derivations, on tiny models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.interventions import carrier_basis, carriers
from core.probes import (
    carrier_share,
    gradient_alignment,
    hessian_vector_product,
    input_gradient_norm,
    linearity_error,
    top_hessian_eigenvalues,
)

SHAPE = (1, 8, 8)  # 64 input dims: exact 64x64 Hessians are cheap
DIM = 64


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 10))
    with torch.no_grad():
        model[1].weight.mul_(8.0)  # sharper softmax: a non-trivial Hessian
    return model.eval()


def tanh_model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    return model.eval()


def batch(n: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=g), torch.randint(0, 10, (n,), generator=g)


def exact_hessians(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample 64x64 input Hessians of the per-sample CE, in float64, by autograd.functional.hessian."""
    model64 = _double(model)
    out = []
    for xi, yi in zip(x.double(), y, strict=True):
        def loss(flat: torch.Tensor, yi: torch.Tensor = yi) -> torch.Tensor:
            return F.cross_entropy(model64(flat.view(1, *SHAPE)), yi.view(1))
        out.append(torch.autograd.functional.hessian(loss, xi.flatten()))
    return out


def _double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


def dominant(eigenvalues: torch.Tensor) -> float:
    return eigenvalues[eigenvalues.abs().argmax()].item()


def test_gradient_alignment_of_a_linear_model_at_tiny_eps_is_one() -> None:
    model = linear_model()
    x, y = batch()
    assert gradient_alignment(model, x, y, 0.0) == pytest.approx(1.0, abs=1e-6)
    value = gradient_alignment(model, x, y, 1e-4, generator=torch.Generator().manual_seed(0))
    assert 0.999 < value <= 1.0 + 1e-6
    # a nonlinear model at a large radius is visibly less aligned
    assert gradient_alignment(tanh_model(), x, y, 0.5, generator=torch.Generator().manual_seed(0)) < 0.99


def test_linearity_error_matches_a_re_derivation_with_the_same_draws() -> None:
    model = tanh_model()
    x, y = batch()
    eps = 0.3  # large enough that the error is far above float32 rounding of the losses
    value = linearity_error(model, x, y, eps, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # same draws, same order: eta_a, eta_b, then a
    eta_a = torch.empty_like(x).uniform_(-eps, eps, generator=g)
    eta_b = torch.empty_like(x).uniform_(-eps, eps, generator=g)
    a = torch.rand(x.shape[0], generator=g)
    x_a = torch.clamp(x + eta_a, 0.0, 1.0)
    x_b = torch.clamp(x + eta_b, 0.0, 1.0)
    total = 0.0
    for i in range(x.shape[0]):
        x_c = (1 - a[i]) * x_a[i] + a[i] * x_b[i]
        loss = [F.cross_entropy(model(p[None]), y[i : i + 1]).item() for p in (x_a[i], x_b[i], x_c)]
        total += (loss[2] - (1 - a[i].item()) * loss[0] - a[i].item() * loss[1]) ** 2
    assert value == pytest.approx(total / x.shape[0], rel=1e-4, abs=1e-10)
    assert value > 1e-6
    assert linearity_error(model, x, y, 0.0) == pytest.approx(0.0, abs=1e-10)  # all three points coincide


def test_input_gradient_norm_matches_a_per_sample_loop() -> None:
    model = tanh_model()
    x, y = batch()
    norms = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        norms.append(grad.norm().item())
    assert input_gradient_norm(model, x, y) == pytest.approx(sum(norms) / len(norms), rel=1e-5)


def test_carrier_share_closed_forms() -> None:
    v = carriers(10, (3, 32, 32))
    basis = carrier_basis(v)
    assert basis.shape[0] == 5
    assert carrier_share(v, basis) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((4, 3, 32, 32), generator=g)
    flat = noise.flatten(1).double()
    orthogonal = (flat - (flat @ basis.double().T) @ basis.double()).view(noise.shape)
    assert carrier_share(orthogonal, basis) == pytest.approx(0.0, abs=1e-10)
    signs = torch.randint(0, 2, (256, 3, 32, 32), generator=g).float() * 2 - 1
    share = carrier_share(signs, basis)
    assert 5 / 3072 / 3 < share < 3 * 5 / 3072
    # zero perturbations are left out; all zero is undefined
    with_zero = torch.cat([v[:1], torch.zeros_like(v[:1])])
    assert carrier_share(with_zero, basis) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(carrier_share(torch.zeros_like(v[:2]), basis))


def test_hessian_vector_product_matches_the_exact_hessian() -> None:
    model = tanh_model()
    x, y = batch(3)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    hv = hessian_vector_product(model, x, y, v, h=1e-3)
    for i, hess in enumerate(exact_hessians(model, x, y)):
        expected = hess @ v[i].flatten().double()
        atol = 0.02 * expected.abs().max().item()
        assert torch.allclose(hv[i].flatten().double(), expected, rtol=0.02, atol=atol)


@pytest.mark.parametrize("make_model", [linear_model, tanh_model])
def test_top_hessian_eigenvalue_matches_the_exact_hessian(make_model) -> None:
    model = make_model()
    x, y = batch()
    expected = [dominant(torch.linalg.eigvalsh(h)) for h in exact_hessians(model, x, y)]
    values = top_hessian_eigenvalues(model, x, y, iterations=60, generator=torch.Generator().manual_seed(0))
    assert values.tolist() == pytest.approx(expected, rel=0.03)  # per sample: its max is the released code's


def test_top_hessian_eigenvalue_does_not_depend_on_h() -> None:
    model = tanh_model()
    x, y = batch()
    values = [top_hessian_eigenvalues(model, x, y, iterations=40, h=h,
                                      generator=torch.Generator().manual_seed(0)).mean().item() for h in (1e-2, 1e-3)]
    assert values[0] == pytest.approx(values[1], rel=0.02)
    assert abs(values[0]) > 1e-2  # a real signal, not h^2-scaled noise


def test_restricted_eigenvalues_match_the_projected_exact_hessian() -> None:
    model = linear_model()  # PSD input Hessian: restricted top <= full top
    x, y = batch()
    basis = carrier_basis(carriers(10, SHAPE))
    u = basis.double().reshape(basis.shape[0], -1)
    carrier_p = u.T @ u
    complement_p = torch.eye(DIM, dtype=torch.float64) - carrier_p
    hessians = exact_hessians(model, x, y)
    full = top_hessian_eigenvalues(model, x, y, iterations=60, generator=torch.Generator().manual_seed(0))
    for subspace, p in (("carrier", carrier_p), ("complement", complement_p)):
        expected = [dominant(torch.linalg.eigvalsh(p @ h @ p)) for h in hessians]
        values = top_hessian_eigenvalues(model, x, y, iterations=60, subspace=subspace, basis=basis,
                                         generator=torch.Generator().manual_seed(0))
        assert values.tolist() == pytest.approx(expected, rel=0.03)
        assert bool((values <= full * 1.01).all())
    with pytest.raises(ValueError):
        top_hessian_eigenvalues(model, x, y, subspace="carrier")  # no basis
    with pytest.raises(ValueError):
        top_hessian_eigenvalues(model, x, y, subspace="sideways", basis=basis)


def test_probes_leave_parameter_grads_and_mode_alone() -> None:
    model = tanh_model()
    x, y = batch(4)
    g = torch.Generator().manual_seed(0)
    basis = carrier_basis(carriers(10, SHAPE))
    with torch.no_grad():  # gradient probes must work even when called under no_grad
        gradient_alignment(model, x, y, 0.03, generator=g)
        input_gradient_norm(model, x, y)
        top_hessian_eigenvalues(model, x, y, iterations=2, subspace="complement", basis=basis, generator=g)
    linearity_error(model, x, y, 0.03, generator=g)
    carrier_share(torch.randn_like(x), basis)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
