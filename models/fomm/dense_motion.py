"""FOMM dense motion network (`generator.dense_motion_network`, ARCHITECTURE.md §6).

Inputs: source image (B, 3, 256, 256), driving and source keypoints (dicts with `value`
(B, K, 2) and `jacobian` (B, K, 2, 2)). Outputs: `sparse_deformed` (B, K+1, 3, 64, 64), `mask`
(B, K+1, 64, 64), `deformation` (B, 64, 64, 2) and `occlusion_map` (B, 1, 64, 64).

The forward pass is built from small steps (`keypoint_transforms`, `hourglass_input`, `heads`,
`combine`) so the real-time split can reuse them with cached source-only parts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.fomm.blocks import (AntiAliasInterpolation2d, Hourglass, gaussian_heatmaps, grid_sample,
                                make_coordinate_grid)


def keypoint_transforms(grid: torch.Tensor, driving_value: torch.Tensor, source_value: torch.Tensor,
                        affine: torch.Tensor) -> torch.Tensor:
    """T_k(z) = A_k·(z − d_k) + s_k on grid (h, w, 2) → (B, K, h, w, 2).

    A (B, K, 2, 2) is broadcast over pixels by einsum instead of the reference's per-pixel repeat:
    the same values with far less memory (ARCHITECTURE §12.7).
    """
    offsets = grid.view(1, 1, *grid.shape) - driving_value.view(*driving_value.shape[:2], 1, 1, 2)
    moved = torch.einsum("bkij,bkhwj->bkhwi", affine, offsets)
    return moved + source_value.view(*source_value.shape[:2], 1, 1, 2)


def warp_source_per_keypoint(source_down: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Sample the ×0.25 source (B, C, h, w) at each slot's grid (B, N, h, w, 2) → (B, N, C, h, w)."""
    batch, slots, height, width, _ = transforms.shape
    channels = source_down.shape[1]
    repeated = source_down.unsqueeze(1).expand(batch, slots, channels, height, width)
    warped = grid_sample(repeated.reshape(batch * slots, channels, height, width),
                         transforms.reshape(batch * slots, height, width, 2))
    return warped.reshape(batch, slots, channels, height, width)


class DenseMotionNetwork(nn.Module):
    """Predicts the dense flow and occlusion map from keypoint-local affine motions."""

    def __init__(self, block_expansion: int = 64, num_blocks: int = 5, max_features: int = 1024,
                 num_kp: int = 10, num_channels: int = 3, scale_factor: float = 0.25) -> None:
        super().__init__()
        in_features = (num_kp + 1) * (num_channels + 1)
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3)
        self.down = AntiAliasInterpolation2d(num_channels, scale_factor)
        self.num_kp = num_kp

    @staticmethod
    def hourglass_input(heat: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Interleave per slot [heat, R, G, B]: heat (B, N, h, w), warped (B, N, 3, h, w) → (B, 4N, h, w)."""
        batch, slots, channels, height, width = warped.shape
        stacked = torch.cat((heat.unsqueeze(2), warped), dim=2)
        return stacked.reshape(batch, slots * (channels + 1), height, width)

    def heads(self, motion_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hourglass → (mask softmaxed over slots (B, K+1, h, w), occlusion (B, 1, h, w))."""
        features = self.hourglass(motion_input)
        mask = F.softmax(self.mask(features), dim=1)
        occlusion = torch.sigmoid(self.occlusion(features))
        return mask, occlusion

    @staticmethod
    def combine(mask: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
        """D(z) = Σ_k M_k(z)·T_k(z): mask (B, N, h, w), transforms (B, N, h, w, 2) → (B, h, w, 2)."""
        return (mask.unsqueeze(-1) * transforms).sum(dim=1)

    def forward(self, source_image: torch.Tensor, kp_driving: dict[str, torch.Tensor],
                kp_source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        source_down = self.down(source_image)
        batch, _, height, width = source_down.shape
        grid = make_coordinate_grid(height, width, source_down.dtype, source_down.device)

        heat = gaussian_heatmaps(kp_driving["value"], grid) - gaussian_heatmaps(kp_source["value"], grid)
        heat = torch.cat((heat.new_zeros(batch, 1, height, width), heat), dim=1)

        # The reference inverts with torch.inverse; keep it here so this module is the parity oracle.
        affine = kp_source["jacobian"] @ torch.inverse(kp_driving["jacobian"])
        transforms = keypoint_transforms(grid, kp_driving["value"], kp_source["value"], affine)
        identity = grid.view(1, 1, height, width, 2).expand(batch, 1, height, width, 2)
        transforms = torch.cat((identity, transforms), dim=1)

        warped = warp_source_per_keypoint(source_down, transforms)
        mask, occlusion = self.heads(self.hourglass_input(heat, warped))
        return {"sparse_deformed": warped, "mask": mask,
                "deformation": self.combine(mask, transforms), "occlusion_map": occlusion}
