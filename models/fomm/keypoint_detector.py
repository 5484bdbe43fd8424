"""FOMM keypoint detector (`kp_detector`, ARCHITECTURE.md §5).

Input: RGB image (B, 3, 256, 256) in [0, 1]. Output: K = 10 keypoints `value` (B, 10, 2) in
normalized (x, y) coordinates and their 2×2 `jacobian` (B, 10, 2, 2), via a softmax heatmap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.fomm.blocks import AntiAliasInterpolation2d, Hourglass, make_coordinate_grid


def heatmap_keypoints(logits: torch.Tensor, jac_maps: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits P (B, K, h, w) and Jacobian maps Q (B, 4K, h, w) → (value (B, K, 2), jacobian (B, K, 2, 2))."""
    batch, num_kp, height, width = logits.shape
    heat = F.softmax(logits.reshape(batch, num_kp, -1) / temperature, dim=2)
    grid = make_coordinate_grid(height, width, logits.dtype, logits.device).reshape(-1, 2)
    value = heat @ grid  # (B, K, HW) @ (HW, 2): the heatmap-weighted mean position
    jac = jac_maps.reshape(batch, num_kp, 4, -1)
    jacobian = (jac * heat.unsqueeze(2)).sum(-1).reshape(batch, num_kp, 2, 2)
    return value, jacobian


class KPDetector(nn.Module):
    """Hourglass on the ×0.25 image, then unpadded 7×7 heads for heatmaps and Jacobians."""

    def __init__(self, num_kp: int = 10, num_channels: int = 3, block_expansion: int = 32,
                 max_features: int = 1024, num_blocks: int = 5, temperature: float = 0.1,
                 scale_factor: float = 0.25, pad: int = 0) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.temperature = temperature
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, 7, padding=pad)
        self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * num_kp, 7, padding=pad)
        with torch.no_grad():  # identity Jacobians at init, as the reference initialises them
            self.jacobian.weight.zero_()
            self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(num_kp))
        self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def heads(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits P (B, K, h, w) and Jacobian maps Q (B, 4K, h, w)."""
        features = self.predictor(self.down(image))
        return self.kp(features), self.jacobian(features)

    def forward_flat(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(value (B, K, 2), jacobian (B, K, 2, 2)) as plain tensors, for export."""
        return heatmap_keypoints(*self.heads(image), self.temperature)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        value, jacobian = self.forward_flat(image)
        return {"value": value, "jacobian": jacobian}
