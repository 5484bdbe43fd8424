"""The fast per-frame layers (models/fomm/fast.py) are exact rewrites of the originals (float64).

Their end-to-end closeness to the exact split, in fp32 and reduced precision, is tested through the
torch runner in test_runners.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.fomm.blocks import DownBlock2d, ResBlock2d, UpBlock2d
from models.fomm.fast import FastResBlock, conv_bn_relu, up_block, upsample_conv_as_transposed


def _randomized(block: torch.nn.Module) -> torch.nn.Module:
    """Float64 block in eval mode with non-trivial BatchNorm statistics (folding must matter)."""
    torch.manual_seed(0)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return block.double().eval()


def test_nearest_upsample_conv_equals_the_stride_2_transposed_conv():
    torch.manual_seed(0)
    weight, x = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 7, 9, dtype=torch.float64)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, padding=1)
    got = F.conv_transpose2d(x, upsample_conv_as_transposed(weight), stride=2, padding=1)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-12


@pytest.mark.parametrize("block_type", [DownBlock2d, UpBlock2d, ResBlock2d])
def test_folded_blocks_equal_the_originals_in_float64(block_type):
    block = _randomized(block_type(6) if block_type is ResBlock2d else block_type(4, 6))
    x = torch.randn(1, 6 if block_type is ResBlock2d else 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        if block_type is DownBlock2d:
            got = F.avg_pool2d(conv_bn_relu(block, torch.float64)(x), 2)
        elif block_type is UpBlock2d:
            got = up_block(block, torch.float64)(x)
        else:
            got = FastResBlock(block, torch.float64)(x)
        assert (got - block(x)).abs().max() < 1e-10
