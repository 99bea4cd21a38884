"""Carriers, injection, orthogonal injection and DCT filters against closed forms and scipy.

Expected values are re-derived here independently (numpy formulas, explicit dot products, scipy.fft),
never by calling the code under test a second way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from core.interventions import (
    carrier_basis,
    carriers,
    dct_matrix,
    high_pass,
    inject,
    inject_orthogonal,
    low_pass,
    zigzag_frequencies,
)

SHAPE = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("single_thread")
DIM = 3 * 32 * 32  # 3072


def sign_pattern(a: int, b: int, height: int = 32, width: int = 32) -> np.ndarray:
    """sign(cos(pi a (2m+1) / 2H) cos(pi b (2n+1) / 2W)), a = row (vertical) frequency."""
    m = np.arange(height)[:, None]
    n = np.arange(width)[None, :]
    value = np.cos(np.pi * a * (2 * m + 1) / (2 * height)) * np.cos(np.pi * b * (2 * n + 1) / (2 * width))
    assert np.all(np.abs(value) > 1e-9), "the reference formula must not hit an exact zero here"
    return np.sign(value)


@pytest.fixture(scope="module")
def paper_carriers() -> torch.Tensor:
    return carriers(10, SHAPE)


def _smooth_images(count: int, amplitude: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    return (0.5 + amplitude * smooth).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------
# Paper carriers (10 classes)


def test_carriers_paper_shape_dtype_and_entries_are_plus_minus_one(paper_carriers):
    assert paper_carriers.shape == (10, *SHAPE)
    assert paper_carriers.dtype == torch.float32
    assert torch.all((paper_carriers == 1.0) | (paper_carriers == -1.0))


def test_carriers_paper_have_zero_mean_and_norm_sqrt_3072(paper_carriers):
    flat = paper_carriers.reshape(10, -1).double()
    assert torch.all(flat.sum(dim=1) == 0)
    assert torch.allclose(flat.norm(dim=1), torch.full((10,), math.sqrt(DIM), dtype=torch.float64))
    assert paper_carriers.abs().amax().item() == 1.0


def test_carriers_paper_are_identical_across_channels(paper_carriers):
    assert torch.equal(paper_carriers[:, 0], paper_carriers[:, 1])
    assert torch.equal(paper_carriers[:, 0], paper_carriers[:, 2])


def test_carriers_paper_base_five_are_mutually_orthogonal(paper_carriers):
    flat = paper_carriers[:5].reshape(5, -1).double()
    gram = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            gram[i, j] = float(torch.dot(flat[i], flat[j]))
    np.testing.assert_array_equal(gram, DIM * np.eye(5))


def test_carriers_paper_classes_five_to_nine_are_negated_base(paper_carriers):
    for k in range(5):
        assert torch.equal(paper_carriers[k + 5], -paper_carriers[k])


def test_carriers_paper_have_rank_exactly_five(paper_carriers):
    flat = paper_carriers.reshape(10, -1).numpy().astype(np.float64)
    assert np.linalg.matrix_rank(flat) == 5


def test_carriers_v0_is_positive_left_negative_right(paper_carriers):
    v0 = paper_carriers[0, 0]
    assert torch.all(v0[:, :16] == 1) and torch.all(v0[:, 16:] == -1)


def test_carriers_v1_is_positive_top_negative_bottom(paper_carriers):
    v1 = paper_carriers[1, 0]
    assert torch.all(v1[:16, :] == 1) and torch.all(v1[16:, :] == -1)


def test_carriers_v2_is_quadrant_checkerboard_top_left_positive(paper_carriers):
    v2 = paper_carriers[2, 0]
    assert torch.all(v2[:16, :16] == 1) and torch.all(v2[16:, 16:] == 1)
    assert torch.all(v2[:16, 16:] == -1) and torch.all(v2[16:, :16] == -1)


@pytest.mark.parametrize(("klass", "frequency"), [(3, (2, 1)), (4, (1, 2))])
def test_carriers_v3_v4_match_cosine_sign_formula(paper_carriers, klass, frequency):
    expected = sign_pattern(*frequency)
    for channel in range(3):
        np.testing.assert_array_equal(paper_carriers[klass, channel].numpy(), expected)
    np.testing.assert_array_equal(paper_carriers[klass + 5, 0].numpy(), -expected)


def test_carriers_v3_is_row_frequency_two_not_transposed(paper_carriers):
    # (2, 1): three horizontal bands (+, -, +) in the left half; rows 0-7 +, 8-23 -, 24-31 +.
    left = paper_carriers[3, 0, :, 0].numpy()
    np.testing.assert_array_equal(left, np.array([1] * 8 + [-1] * 16 + [1] * 8))
    assert torch.equal(paper_carriers[4, 0], paper_carriers[3, 0].T)


# ---------------------------------------------------------------------------------------------------
# General (zigzag) carriers


ZIGZAG_20 = [
    (0, 1), (1, 0),
    (2, 0), (1, 1), (0, 2),
    (0, 3), (1, 2), (2, 1), (3, 0),
    (4, 0), (3, 1), (2, 2), (1, 3), (0, 4),
    (0, 5), (1, 4), (2, 3), (3, 2), (4, 1), (5, 0),
]


def test_zigzag_frequencies_follow_jpeg_order_skipping_dc():
    assert zigzag_frequencies(20, 32, 32) == ZIGZAG_20


def test_zigzag_frequencies_raise_when_image_too_small():
    assert len(zigzag_frequencies(3, 2, 2)) == 3  # 2x2 has exactly 3 non-DC frequencies
    with pytest.raises(ValueError):
        zigzag_frequencies(4, 2, 2)


def test_carriers_twenty_classes_follow_zigzag_sign_patterns():
    general = carriers(20, SHAPE)
    assert general.shape == (20, *SHAPE)
    for k, (a, b) in enumerate(ZIGZAG_20):
        expected = sign_pattern(a, b)
        for channel in range(3):
            np.testing.assert_array_equal(general[k, channel].numpy(), expected, err_msg=f"carrier {k}")


def test_carriers_twenty_classes_are_distinct_with_full_rank():
    flat = carriers(20, SHAPE).reshape(20, -1).numpy().astype(np.float64)
    assert len({row.tobytes() for row in flat}) == 20
    assert np.linalg.matrix_rank(flat) == 20


# ---------------------------------------------------------------------------------------------------
# Injection


def test_inject_adds_beta_times_class_carrier_without_clipping(paper_carriers):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, *SHAPE, generator=generator)
    x[:, :, 0, :] = 0.0  # saturated pixels: the injection must push some outside [0, 1]
    x[:, :, -1, :] = 1.0
    y = torch.arange(12) % 10
    beta = 8 / 255
    result = inject(x, y, beta, paper_carriers)
    expected = torch.empty_like(x)
    for i in range(12):
        expected[i] = x[i] + beta * paper_carriers[int(y[i])]
    assert torch.equal(result, expected)
    assert result.min().item() < 0.0 and result.max().item() > 1.0
    assert torch.allclose(result.min(), torch.tensor(-beta))
    assert torch.allclose(result.max(), torch.tensor(1 + beta))


def test_inject_with_zero_beta_returns_input(paper_carriers):
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    assert torch.equal(inject(x, torch.tensor([0, 3, 5, 9]), 0.0, paper_carriers), x)


# ---------------------------------------------------------------------------------------------------
# Orthogonal injection


def _independent_basis() -> torch.Tensor:
    """U: the 5 base carriers (from the closed form) divided by sqrt(3072), rows of length 3072, float64."""
    patterns = [sign_pattern(*f) for f in ((0, 1), (1, 0), (1, 1), (2, 1), (1, 2))]
    rows = [np.broadcast_to(p, SHAPE).reshape(-1) / math.sqrt(DIM) for p in patterns]
    return torch.tensor(np.stack(rows), dtype=torch.float64)


def _project(flat: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """P_V of each row by explicit dot products: sum_k <u_k, x> u_k."""
    out = torch.zeros_like(flat)
    for k in range(basis.shape[0]):
        coefficient = (flat * basis[k]).sum(dim=1, keepdim=True)
        out += coefficient * basis[k]
    return out


def test_inject_orthogonal_span_component_is_exactly_beta_carrier(paper_carriers):
    x = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = torch.arange(10)
    beta = 4 / 255
    result = inject_orthogonal(x, y, beta, paper_carriers).double().reshape(10, -1)
    basis = _independent_basis()
    in_span = _project(result, basis)
    target = beta * paper_carriers[y].double().reshape(10, -1)
    assert torch.allclose(in_span, target, atol=1e-5, rtol=0)
    # and the coordinates along the orthonormal basis are exactly +-beta*sqrt(3072) or 0
    coordinates = result @ basis.T
    expected_coordinates = target @ basis.T
    assert torch.allclose(coordinates, expected_coordinates, atol=1e-4, rtol=0)


def test_inject_orthogonal_keeps_orthogonal_complement_of_input(paper_carriers):
    x = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    result = inject_orthogonal(x, y, 8 / 255, paper_carriers).double().reshape(10, -1)
    flat_x = x.double().reshape(10, -1)
    basis = _independent_basis()
    complement = result - _project(result, basis)
    assert torch.allclose(complement, flat_x - _project(flat_x, basis), atol=1e-5, rtol=0)


def test_inject_orthogonal_changes_smooth_images_by_less_than_point_one(paper_carriers):
    # The released QR bug writes values of ~1-6 into a few pixels; the true projection of smooth
    # images around 0.5 only removes a small low-frequency component.
    x = _smooth_images(32, amplitude=0.1, seed=4)
    y = torch.arange(32) % 10
    beta = 8 / 255
    shift = inject_orthogonal(x, y, beta, paper_carriers) - beta * paper_carriers[y] - x
    assert shift.abs().max().item() < 0.1
    # per pixel, |P_V x| <= sum_k |<v_k, x>| / 3072 (each carrier entry is +-1)
    flat = x.double().reshape(32, -1)
    base = paper_carriers[:5].double().reshape(5, -1)
    bound = (flat @ base.T).abs().sum(dim=1) / DIM
    assert torch.all(shift.double().reshape(32, -1).abs().amax(dim=1) <= bound + 1e-5)


def test_inject_orthogonal_removes_carrier_content_of_pure_carrier_image(paper_carriers):
    # x = 0.5 + 0.2 v_1: the carrier part is removed entirely, the constant stays.
    x = 0.5 + 0.2 * paper_carriers[1:2]
    result = inject_orthogonal(x, torch.tensor([3]), 0.0, paper_carriers)
    assert torch.allclose(result, torch.full_like(x, 0.5), atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# carrier_basis


def test_carrier_basis_of_paper_carriers_has_five_orthonormal_rows_spanning_base(paper_carriers):
    basis = carrier_basis(paper_carriers).double()
    assert basis.shape == (5, DIM)
    assert torch.allclose(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-5)
    reference = _independent_basis()
    # same 5-dimensional subspace: the change of basis between two orthonormal bases is orthogonal
    change = basis @ reference.T
    assert torch.allclose(change @ change.T, torch.eye(5, dtype=torch.float64), atol=1e-5)
    # every base carrier is reproduced by projecting onto the returned rows
    base = paper_carriers[:5].double().reshape(5, -1)
    assert torch.allclose(_project(base, basis), base, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# DCT matrix and filters


@pytest.mark.parametrize("size", [1, 2, 7, 28, 32])
def test_dct_matrix_matches_scipy_and_is_orthonormal(size):
    matrix = dct_matrix(size, dtype=torch.float64).numpy()
    expected = scipy.fft.dct(np.eye(size), type=2, norm="ortho", axis=0)
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(size), atol=1e-12)
    assert dct_matrix(size).dtype == torch.float32


def _scipy_block_filter(x: np.ndarray, bandwidth: int, corner: str) -> np.ndarray:
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    kept = np.zeros_like(coefficients)
    if corner == "low":
        kept[..., :bandwidth, :bandwidth] = coefficients[..., :bandwidth, :bandwidth]
    else:
        kept[..., -bandwidth:, -bandwidth:] = coefficients[..., -bandwidth:, -bandwidth:]
    return scipy.fft.idctn(kept, type=2, norm="ortho", axes=(-2, -1))


@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("bandwidth", [1, 7, 16])
@pytest.mark.parametrize(("function", "corner"), [(low_pass, "low"), (high_pass, "high")])
def test_block_filters_match_scipy_dctn_on_batches(size, bandwidth, function, corner):
    x = np.random.default_rng(size * 100 + bandwidth).random((3, 2, size, size))
    expected = _scipy_block_filter(x, bandwidth, corner)
    result = function(torch.from_numpy(x), bandwidth).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-10)
    # float32 too, to float precision
    result32 = function(torch.from_numpy(x).float(), bandwidth)
    assert result32.dtype == torch.float32
    np.testing.assert_allclose(result32.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(("function", "corner"), [(low_pass, "low"), (high_pass, "high")])
def test_block_filters_keep_energy_of_kept_coefficients(function, corner):
    x = np.random.default_rng(11).standard_normal((4, 3, 32, 32))
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    block = coefficients[..., :16, :16] if corner == "low" else coefficients[..., 16:, 16:]
    filtered = function(torch.from_numpy(x), 16).numpy()
    np.testing.assert_allclose((filtered**2).sum(axis=(-2, -1)), (block**2).sum(axis=(-2, -1)), rtol=1e-10)
    # Parseval on the whole image
    np.testing.assert_allclose((x**2).sum(), (coefficients**2).sum(), rtol=1e-12)


def test_low_pass_is_a_rank_b_squared_orthogonal_projector():
    # Apply to every basis image of 32x32: the operator matrix must be symmetric, idempotent and of
    # trace 16*16 = 256 (1/4 of the coefficients; the released 4-D mask bug kept 1/2).
    identity = torch.eye(32 * 32, dtype=torch.float64).reshape(32 * 32, 1, 32, 32)
    operator = low_pass(identity, 16).reshape(32 * 32, 32 * 32)
    assert torch.allclose(operator, operator.T, atol=1e-12)
    assert torch.allclose(operator @ operator, operator, atol=1e-12)
    assert abs(torch.trace(operator).item() - 256.0) < 1e-9


def test_low_pass_is_idempotent():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    once = low_pass(x, 10)
    assert torch.allclose(low_pass(once, 10), once, atol=1e-12)
    assert not torch.allclose(once, x, atol=1e-3)


def test_low_pass_plus_scipy_complement_reconstructs_input():
    x = np.random.default_rng(6).random((2, 3, 28, 28))
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    coefficients[..., :9, :9] = 0.0
    complement = scipy.fft.idctn(coefficients, type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(low_pass(torch.from_numpy(x), 9).numpy() + complement, x, atol=1e-10)


def test_low_pass_full_bandwidth_is_identity_and_bandwidth_one_keeps_mean():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(low_pass(x, 32), x, atol=1e-12)
    assert torch.allclose(high_pass(x, 32), x, atol=1e-12)
    dc = low_pass(x, 1)
    assert torch.allclose(dc, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-12)


@pytest.mark.parametrize("bandwidth", [0, 33])
def test_low_pass_rejects_bandwidth_out_of_range(bandwidth):
    with pytest.raises(ValueError):
        low_pass(torch.zeros(1, 3, 32, 32), bandwidth)
