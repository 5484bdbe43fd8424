"""FOMM occlusion-aware generator (`generator`, ARCHITECTURE.md §7).

Input: source image (B, 3, 256, 256) and keypoint dicts `kp_driving`, `kp_source`. Output dict:
`mask`, `sparse_deformed`, `occlusion_map`, `deformed`, `prediction` (B, 3, 256, 256) in (0, 1),
plus `deformation` (the flow D, B×64×64×2). `encode` and `decode` are the source-only and
per-frame halves that the real-time split calls directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.fomm.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, warp
from models.fomm.dense_motion import DenseMotionNetwork


class OcclusionAwareGenerator(nn.Module):
    """Encoder → warp by the dense flow → occlusion → residual bottleneck → decoder."""

    def __init__(self, num_channels: int = 3, num_kp: int = 10, block_expansion: int = 64,
                 max_features: int = 512, num_down_blocks: int = 2, num_bottleneck_blocks: int = 6) -> None:
        super().__init__()
        # Registration order fixes the state_dict order of the checkpoint (dense motion first).
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels)
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)

        def width(level: int) -> int:
            return min(max_features, block_expansion * 2 ** level)

        self.down_blocks = nn.ModuleList(DownBlock2d(width(i), width(i + 1)) for i in range(num_down_blocks))
        self.up_blocks = nn.ModuleList(UpBlock2d(width(num_down_blocks - i), width(num_down_blocks - i - 1))
                                       for i in range(num_down_blocks))
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(num_down_blocks)))
        self.final = nn.Conv2d(block_expansion, num_channels, 7, padding=3)

    def encode(self, source_image: torch.Tensor) -> torch.Tensor:
        """Source features X (B, 256, 64, 64): depends only on the avatar."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    @staticmethod
    def occlude(warped_features: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        """The warped features times the occlusion map (resized to them bilinearly when it differs)."""
        if occlusion.shape[2:] != warped_features.shape[2:]:
            occlusion = F.interpolate(occlusion, size=warped_features.shape[2:], mode="bilinear",
                                      align_corners=False)
        return warped_features * occlusion

    def decode(self, warped_features: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        """Occlude the warped features, then bottleneck and decoder → prediction (B, 3, 256, 256)."""
        out = self.bottleneck(self.occlude(warped_features, occlusion))
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def forward(self, source_image: torch.Tensor, kp_driving: dict[str, torch.Tensor],
                kp_source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.encode(source_image)
        motion = self.dense_motion_network(source_image, kp_driving=kp_driving, kp_source=kp_source)
        flow = motion["deformation"]
        prediction = self.decode(warp(features, flow), motion["occlusion_map"])
        return {"mask": motion["mask"], "sparse_deformed": motion["sparse_deformed"],
                "occlusion_map": motion["occlusion_map"], "deformed": warp(source_image, flow),
                "prediction": prediction, "deformation": flow}
