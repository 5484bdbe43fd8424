"""Building blocks shared by the FOMM networks (ARCHITECTURE.md §3, §4).

Conv blocks (Same/Down/Up/Res), the hourglass, the anti-aliased ×0.25 downsampler and the small
coordinate helpers (normalized grid, Gaussian heatmaps, closed-form 2×2 inverse, flow warp).
All tensors are NCHW float32; coordinates are normalized to [-1, 1] with the last dim ordered (x, y).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KP_VARIANCE = 0.01  # σ² of the dense-motion Gaussians, in normalized coordinates


def make_coordinate_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Grid Z of shape (H, W, 2) with Z[y, x] = (gx(x), gy(y)), -1/+1 on the edge pixel centres."""
    xs = torch.arange(width, dtype=dtype, device=device)
    ys = torch.arange(height, dtype=dtype, device=device)
    # 2·(x/(W−1)) − 1 in this order of operations, as the reference computes it (parity).
    gx = 2 * (xs / (width - 1)) - 1
    gy = 2 * (ys / (height - 1)) - 1
    return torch.stack((gx.view(1, -1).expand(height, width), gy.view(-1, 1).expand(height, width)), dim=2)


def gaussian_heatmaps(kp_value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """exp(−½‖z − p‖²/σ²) for each keypoint: (B, K, 2) on grid (H, W, 2) → (B, K, H, W)."""
    diff = grid.view(1, 1, *grid.shape) - kp_value.view(*kp_value.shape[:2], 1, 1, 2)
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / KP_VARIANCE)


def inverse_2x2(matrix: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of (..., 2, 2) matrices; exportable where torch.inverse is not."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    det = a * d - b * c
    rows = (torch.stack((d, -b), dim=-1), torch.stack((-c, a), dim=-1))
    return torch.stack(rows, dim=-2) / det[..., None, None]


def grid_sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The reference's grid_sample: bilinear, zero padding, align_corners=False (ARCHITECTURE §3)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp(tensor: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `tensor` (B, C, H, W) at `flow` (B, h, w, 2), resizing the flow first if h, w ≠ H, W."""
    if flow.shape[1:3] != tensor.shape[2:]:
        flow = F.interpolate(flow.permute(0, 3, 1, 2), size=tensor.shape[2:], mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    return grid_sample(tensor, flow)


class SameBlock2d(nn.Module):
    """conv → BN → ReLU at unchanged resolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv3x3 → BN → ReLU → 2×2 average pool (halves H and W)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class UpBlock2d(nn.Module):
    """Nearest ×2 upsampling → conv3x3 → BN → ReLU (doubles H and W)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(ReLU(BN2(conv1(ReLU(BN1(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Registration order conv1, conv2, norm1, norm2 gives the checkpoint's key order.
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


def _hourglass_channels(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2 ** level)


class Encoder(nn.Module):
    """Hourglass encoder: returns [input, e1, …, eN] (all levels, for the skips)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            in_ch = in_features if i == 0 else _hourglass_channels(block_expansion, max_features, i)
            blocks.append(DownBlock2d(in_ch, _hourglass_channels(block_expansion, max_features, i + 1)))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for block in self.down_blocks:
            levels.append(block(levels[-1]))
        return levels


class Decoder(nn.Module):
    """Hourglass decoder: upsample, then concatenate the matching skip after it (upsampled first)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            factor = 1 if level == num_blocks - 1 else 2
            in_ch = factor * _hourglass_channels(block_expansion, max_features, level + 1)
            blocks.append(UpBlock2d(in_ch, _hourglass_channels(block_expansion, max_features, level)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        out = levels[-1]
        for block, skip in zip(self.up_blocks, reversed(levels[:-1])):
            out = torch.cat((block(out), skip), dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass; output has `out_filters` = E + C_in channels at the input size."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256) -> None:
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def antialias_kernel(channels: int, scale: float) -> torch.Tensor:
    """Normalised 2-D Gaussian (channels, 1, k, k) with σ = (1/s − 1)/2, k = 2·round(4σ) + 1."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    mean = (size - 1) / 2
    t = torch.arange(size, dtype=torch.float32)
    g = torch.exp(-((t - mean) ** 2) / (2 * sigma ** 2))
    kernel = g[:, None] * g[None, :]
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).contiguous()


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur then keep every (1/s)-th pixel starting at 0; 256×256 → 64×64 for s = 0.25.

    The kernel is a persistent buffer named `weight` because the checkpoint stores it.
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("weight", antialias_kernel(channels, scale))
        self.groups = channels
        self.stride = int(round(1 / scale))
        self.pad = self.weight.shape[-1] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A strided conv computes exactly the samples a full conv + [::stride] slice keeps, 16× cheaper.
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.pad, groups=self.groups)
