"""Data interventions of Ortiz-Jiménez, de Jorge et al. (arXiv 2206.08242), in [0, 1] pixel units.

- ``carriers(num_classes, shape)``: class-wise +-1 low-frequency carriers built from signs of 2-D DCT-II
  basis functions, identical over channels (paper-notes §3.1, §3.7).
- ``inject(x, y, beta, carriers)``: x + beta * v_y, no clipping, as the paper (§3.2).
- ``inject_orthogonal(x, y, beta, carriers)``: (I - P_V) x + beta * v_y with P_V the orthogonal projector
  onto the true span of the carriers (rank 5 for the paper's 10), not the released QR bug (§3.3).
- ``low_pass(x, bandwidth)`` / ``high_pass(x, bandwidth)``: keep the top-left / bottom-right square
  bandwidth x bandwidth block of each channel's orthonormal DCT-II (§3.6; the released code's mask only
  restricted the vertical frequency).
"""

from __future__ import annotations

import math

import torch

# (a, b) = (vertical, horizontal) DCT frequency of the paper's five base carriers; classes 5-9 are the
# negatives of classes 0-4 (paper-notes §3.1).
PAPER_BASE_FREQUENCIES = ((0, 1), (1, 0), (1, 1), (2, 1), (1, 2))


def zigzag_frequencies(count: int, height: int, width: int) -> list[tuple[int, int]]:
    """The first ``count`` (row, col) DCT indices in JPEG zigzag order, skipping DC."""
    order: list[tuple[int, int]] = []
    for diagonal in range(1, height + width - 1):
        rows = range(diagonal + 1) if diagonal % 2 else range(diagonal, -1, -1)
        order.extend((a, diagonal - a) for a in rows if a < height and diagonal - a < width)
        if len(order) >= count:
            return order[:count]
    raise ValueError(f"a {height}x{width} image has only {len(order)} non-DC frequencies, need {count}")


def _dct_sign_pattern(a: int, b: int, height: int, width: int) -> torch.Tensor:
    """sign(cos(pi a (2m+1) / 2H) * cos(pi b (2n+1) / 2W)), with exact zeros mapped to +1."""
    rows = torch.cos(math.pi * a * (2 * torch.arange(height, dtype=torch.float64) + 1) / (2 * height))
    cols = torch.cos(math.pi * b * (2 * torch.arange(width, dtype=torch.float64) + 1) / (2 * width))
    product = torch.outer(rows, cols)
    product[product.abs() < 1e-12] = 0.0  # cos(pi/2) is 6e-17 in floating point, not 0
    return torch.where(product >= 0, 1.0, -1.0)


def carriers(num_classes: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """Class carriers v_0..v_{K-1} of the given (C, H, W) shape, float32 entries in {-1, +1}.

    Up to 10 classes: the paper's five base patterns and their negatives (rank 5). More classes: the
    corrected zigzag order, carrier k = sign of the (k+1)-th non-DC DCT basis function.
    """
    channels, height, width = shape
    if num_classes <= 10:
        base = [_dct_sign_pattern(a, b, height, width) for a, b in PAPER_BASE_FREQUENCIES]
        patterns = (base + [-p for p in base])[:num_classes]
    else:
        patterns = [_dct_sign_pattern(a, b, height, width)
                    for a, b in zigzag_frequencies(num_classes, height, width)]
    stacked = torch.stack(patterns).to(torch.float32)  # (K, H, W)
    return stacked[:, None].expand(num_classes, channels, height, width).contiguous()


def inject(x: torch.Tensor, y: torch.Tensor, beta: float, carriers: torch.Tensor) -> torch.Tensor:
    """x + beta * v_y. ``beta`` in [0, 1] units (8/255, not 8). Not clipped, as the paper."""
    return x + beta * carriers.to(x.dtype)[y]


def carrier_basis(carriers: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
    """Orthonormal rows (r, C*H*W) spanning the carriers; r is the true rank (5 for the paper's 10)."""
    flat = carriers.reshape(carriers.shape[0], -1).to(torch.float64)
    _, singular, rows = torch.linalg.svd(flat, full_matrices=False)
    rank = int((singular > tolerance * singular[0]).sum())
    return rows[:rank].to(carriers.dtype)


def project_onto_carriers(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """P_V x for a batch x (N, C, H, W), given ``carrier_basis`` rows."""
    flat = x.flatten(1)
    basis = basis.to(x.dtype)
    return ((flat @ basis.T) @ basis).reshape(x.shape)


def inject_orthogonal(x: torch.Tensor, y: torch.Tensor, beta: float, carriers: torch.Tensor,
                      basis: torch.Tensor | None = None) -> torch.Tensor:
    """(I - P_V) x + beta * v_y: remove the carrier-span component of each image, then inject."""
    basis = carrier_basis(carriers) if basis is None else basis
    return inject(x - project_onto_carriers(x, basis), y, beta, carriers)


def dct_matrix(size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix D (size x size): coefficients = D @ signal, signal = D.T @ coefficients."""
    k = torch.arange(size, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None, :]
    matrix = torch.cos(math.pi * k * (2 * n + 1) / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype=dtype, device=device)


def block_mask(height: int, width: int, bandwidth: int, corner: str) -> torch.Tensor:
    """1 on the square bandwidth x bandwidth block at the 'low' (top-left) or 'high' (bottom-right) corner."""
    if not 1 <= bandwidth <= min(height, width):
        raise ValueError(f"bandwidth must be between 1 and {min(height, width)}, got {bandwidth}")
    mask = torch.zeros(height, width)
    if corner == "low":
        mask[:bandwidth, :bandwidth] = 1.0
    elif corner == "high":
        mask[height - bandwidth:, width - bandwidth:] = 1.0
    else:
        raise ValueError(f"corner must be 'low' or 'high', got {corner!r}")
    return mask


def spectral_filter(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply a DCT-domain mask over the last two axes of x (any leading shape)."""
    height, width = x.shape[-2:]
    rows = dct_matrix(height, x.dtype, x.device)
    cols = dct_matrix(width, x.dtype, x.device)
    coefficients = rows @ x @ cols.T
    return rows.T @ (coefficients * mask.to(x.dtype).to(x.device)) @ cols


def low_pass(x: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """Keep the top-left bandwidth x bandwidth DCT block of every channel (the lowest frequencies)."""
    return spectral_filter(x, block_mask(x.shape[-2], x.shape[-1], bandwidth, "low"))


def high_pass(x: torch.Tensor, bandwidth: int) -> torch.Tensor:
    """Keep the bottom-right bandwidth x bandwidth DCT block of every channel (the highest frequencies)."""
    return spectral_filter(x, block_mask(x.shape[-2], x.shape[-1], bandwidth, "high"))


def carrier_only_probe(epsilon: float, carriers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images epsilon * v_t on a zero background with labels t (paper-notes §3.5)."""
    return epsilon * carriers, torch.arange(carriers.shape[0])
