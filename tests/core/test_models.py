"""The PreActResNet18 block against its formula: the paper's projection shortcut reads the block input; the
activation layout the trainer picks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.models import PreActBlock, build_model, memory_format_for

pytestmark = pytest.mark.usefixtures("single_thread")


def _block(project_from: str) -> PreActBlock:
    torch.manual_seed(0)
    block = PreActBlock(4, 8, stride=2, project_from=project_from)
    for bn in (block.bn1, block.bn2):  # non-trivial statistics, so relu(bn1(x)) differs from x
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return block.eval()


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _formula(block: PreActBlock, x: torch.Tensor, shortcut_input: torch.Tensor) -> torch.Tensor:
    pre = torch.clamp(_bn(x, block.bn1), min=0)
    out = F.conv2d(pre, block.conv1.weight, stride=2, padding=1)
    out = F.conv2d(torch.clamp(_bn(out, block.bn2), min=0), block.conv2.weight, padding=1)
    return out + F.conv2d(shortcut_input, block.shortcut.weight, stride=2)


def test_the_papers_block_projects_the_block_input():
    block, x = _block("input"), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), _formula(block, x, shortcut_input=x), atol=1e-5)


def test_the_he_block_projects_the_preactivation():
    block, x = _block("preact"), torch.randn(2, 4, 8, 8)
    preactivation = torch.clamp(_bn(x, block.bn1), min=0)
    with torch.no_grad():
        assert torch.allclose(block(x), _formula(block, x, shortcut_input=preactivation), atol=1e-5)
        assert not torch.allclose(block(x), _formula(block, x, shortcut_input=x), atol=1e-3)


def test_arch_names_pick_the_block():
    args = {"in_channels": 3, "image_size": (16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    paper, he = build_model("preact_resnet18", 4, 10, **args), build_model("preact_resnet18_he", 4, 10, **args)
    assert paper[-1].layers[2].project_from == "input" and he[-1].layers[2].project_from == "preact"
    assert paper.state_dict().keys() == he.state_dict().keys()  # same parameters, another wiring


ARGS = {"in_channels": 3, "image_size": (16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it


def test_channels_last_is_refused_on_the_cpu_only_for_narrow_strided_1x1_convolutions():
    narrow, wide = build_model("preact_resnet18", 8, 10, **ARGS), build_model("preact_resnet18", 16, 10, **ARGS)
    small_cnn = build_model("small_cnn", 4, 10, in_channels=1, image_size=(28, 28), mean=(0.5,), std=(0.25,))
    assert memory_format_for(narrow, CPU, True) == torch.contiguous_format  # its 1x1 shortcut reads 8 channels
    assert memory_format_for(wide, CPU, True) == torch.channels_last  # 16 and more: the kernel is right
    assert memory_format_for(narrow, CUDA, True) == torch.channels_last  # cuDNN has no such bug
    assert memory_format_for(small_cnn, CPU, True) == torch.channels_last  # no 1x1 convolution at all
    assert memory_format_for(wide, CPU, False) == torch.contiguous_format  # asked for NCHW

