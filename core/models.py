"""Models with normalisation (and the paper's optional DCT filter) inside, so attacks act in [0, 1] space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.data import Dataset
from core.errors import SpecError
from core.interventions import block_mask, dct_matrix
from core.spec import JobSpec


class Normalize(nn.Module):
    """(x - mean) / std per channel; the first layer of every model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DCTFilter(nn.Module):
    """Square DCT block filter as a layer: the network only ever sees the kept band (paper-notes §3.6).

    Built from two fixed matrices, so it is one pair of batched matmuls and differentiable: an attack
    on the unfiltered input has its perturbation filtered too, as in the paper's wiring.
    """

    def __init__(self, height: int, width: int, bandwidth: int, corner: str) -> None:
        super().__init__()
        self.register_buffer("rows", dct_matrix(height))
        self.register_buffer("cols", dct_matrix(width))
        self.register_buffer("mask", block_mask(height, width, bandwidth, corner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.rows @ x @ self.cols.T
        return self.rows.T @ (coefficients * self.mask) @ self.cols


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv twice plus a shortcut.

    out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + s, where s = x when the shape is kept, else a 1x1 strided
    projection of x (``project_from="input"``: the paper's released PreActResNet18) or of relu(bn1(x))
    (``"preact"``: He et al. 2016, as fast-AT codes).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, project_from: str = "input") -> None:
        super().__init__()
        if project_from not in ("input", "preact"):
            raise ValueError(f"project_from must be 'input' or 'preact', got {project_from!r}")
        self.project_from = project_from
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(x if self.project_from == "input" else out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet18 of the paper: stem conv, 4 stages x 2 blocks (width, 2w, 4w, 8w), BN-ReLU-pool-linear.

    ``width`` = 64 is the paper's network; the global average pool equals avg_pool(4) on 32x32 inputs.
    ``project_from``: see ``PreActBlock`` ("input" is the paper's).
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3,
                 project_from: str = "input") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], width
        for multiplier, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            planes = width * multiplier
            stages += [PreActBlock(in_planes, planes, stride, project_from), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class SmallCNN(nn.Module):
    """A small CNN for 28x28 grey images (MNIST-style): two conv-pool stages and two linear layers."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(8 * width), nn.ReLU(), nn.Linear(8 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(arch: str, width: int, num_classes: int, *, in_channels: int, image_size: tuple[int, int],
                mean: Sequence[float], std: Sequence[float], spectral: tuple[int, str] | None = None) -> nn.Module:
    """Normalize -> [DCT filter] -> network. ``spectral`` = (bandwidth, 'low' | 'high') or None."""
    if arch in ("preact_resnet18", "preact_resnet18_he"):
        project_from = "input" if arch == "preact_resnet18" else "preact"
        net: nn.Module = PreActResNet18(num_classes, width, in_channels, project_from)
    elif arch == "small_cnn":
        net = SmallCNN(num_classes, width, in_channels)
        with torch.no_grad():  # materialise the lazy layer so the parameter list is fixed before SGD
            net(torch.zeros(1, in_channels, *image_size))
    else:
        raise ValueError(f"unknown arch {arch!r}")
    layers: list[nn.Module] = [Normalize(mean, std)]
    if spectral is not None:
        layers.append(DCTFilter(*image_size, *spectral))
    return nn.Sequential(*layers, net)


# oneDNN, which runs torch's CPU convolutions, computes the weight gradient of a strided 1x1 convolution in
# channels_last wrongly when it has fewer input channels than its kernel's channel block (8 with AVX2, 16 with
# AVX-512): it writes past a workspace, then hangs, crashes or returns wrong gradients (oneDNN issue 6035). Seen
# here: PreActResNet18 width 4 hung in its first epochs on a 2-thread AVX2 CPU. NCHW takes another kernel.
ONEDNN_SAFE_1X1_CHANNELS = 16


def memory_format_for(model: nn.Module, device: torch.device, channels_last: bool) -> torch.memory_format:
    """channels_last where asked, except on the CPU for a network with a strided 1x1 convolution of fewer than
    ``ONEDNN_SAFE_1X1_CHANNELS`` input channels (PreActResNet18 below width 16): NCHW there."""
    if not channels_last:
        return torch.contiguous_format
    affected = any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < ONEDNN_SAFE_1X1_CHANNELS for m in model.modules())
    return torch.contiguous_format if device.type == "cpu" and affected else torch.channels_last


def build_model_for(spec: JobSpec, data: Dataset) -> nn.Module:
    """The spec's network for ``data``: its normalisation statistics, the spectral filter of a low/high-pass
    intervention, then the architecture (on the CPU; move it)."""
    channels, height, width = data.image_shape
    return build_model(spec.model.arch, spec.model.width, data.num_classes, in_channels=channels,
                       image_size=(height, width), mean=data.mean, std=data.std,
                       spectral=spectral_layer(spec, data))


def spectral_layer(spec: JobSpec, data: Dataset) -> tuple[int, str] | None:
    kind, bandwidth = spec.intervention.kind, spec.intervention.bandwidth
    if kind not in ("low_pass", "high_pass"):
        return None
    side = min(data.image_shape[1:])
    if bandwidth > side:
        raise SpecError(f"intervention.bandwidth {bandwidth} is larger than the image side {side}")
    return bandwidth, "low" if kind == "low_pass" else "high"
