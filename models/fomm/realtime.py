"""Real-time split of FOMM: per avatar, per calibration and per frame (ARCHITECTURE.md §11).

Every module here takes and returns flat tensors (no dicts), uses the closed-form 2×2 inverse and
no scipy, so it exports to ONNX as is.

- `SourceNet` (once per avatar): source image (1, 3, 256, 256) → SOURCE_OUTPUTS: source keypoints
  and Jacobians, encoder features, ×0.25 source, its keypoint Gaussians and the warped background
  slot of the dense-motion input.
- `calibrate` (once per neutral pose, host side): neutral keypoints → neutral value, inverse neutral
  Jacobians and the adapt-scale factor α (convex-hull area ratio).
- `FrameNet` (per frame): driving keypoints + the cached tensors + α + strength s → prediction
  (1, 3, 256, 256). `FusedFrameNet` also runs the keypoint detector on the driving image inside.
- `fast_frame_net`: FusedFrameNet on the rewritten layers of `models.fomm.fast` (folded BN,
  transposed up convs, oneDNN packing; optional bf16/fp16). Not exported; torch runner only.

Motion transfer with strength s (s = 1 is FOMM's relative normalization, s = 0 the source pose):
    value  = (kp_driving − kp_neutral)·(α·s) + kp_source
    J_norm = (s·J_driving·J_neutral⁻¹ + (1 − s)·I) · J_source
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.fomm.blocks import gaussian_heatmaps, grid_sample, inverse_2x2, make_coordinate_grid
from models.fomm.dense_motion import DenseMotionNetwork, keypoint_transforms, warp_source_per_keypoint
from models.fomm.fast import fast_networks
from models.fomm.generator import OcclusionAwareGenerator
from models.fomm.keypoint_detector import KPDetector
from models.fomm.keypoints import adapt_movement_scale

MOTION_SIZE = 64  # dense-motion resolution for 256×256 inputs

KEYPOINT_OUTPUTS = ("kp_value", "kp_jacobian")
SOURCE_OUTPUTS = ("source_value", "source_jacobian", "source_features", "source_down", "source_heat",
                  "source_background")
CALIBRATION_INPUTS = ("neutral_value", "neutral_jacobian_inv", "adapt_scale", "strength")
FRAME_INPUTS = ("driving_value", "driving_jacobian") + SOURCE_OUTPUTS + CALIBRATION_INPUTS
FUSED_FRAME_INPUTS = ("driving_image",) + SOURCE_OUTPUTS + CALIBRATION_INPUTS
FRAME_OUTPUTS = ("prediction",)


def _motion_grid() -> torch.Tensor:
    return make_coordinate_grid(MOTION_SIZE, MOTION_SIZE)


class _InferenceModule(nn.Module):
    """Wrappers are inference-only: starting in eval mode keeps exporters (which restore the
    wrapper's train flag recursively) from switching the wrapped BatchNorms to batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False


class KeypointNet(_InferenceModule):
    """image (B, 3, 256, 256) → (kp_value (B, 10, 2), kp_jacobian (B, 10, 2, 2))."""

    def __init__(self, kp_detector: KPDetector) -> None:
        super().__init__()
        self.kp_detector = kp_detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kp_detector.forward_flat(image)


class SourceNet(_InferenceModule):
    """Everything that depends only on the avatar image; see SOURCE_OUTPUTS for the order."""

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator) -> None:
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.register_buffer("grid", _motion_grid(), persistent=False)

    def forward(self, source_image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        value, jacobian = self.kp_detector.forward_flat(source_image)
        features = self.generator.encode(source_image)
        source_down = self.generator.dense_motion_network.down(source_image)
        heat = gaussian_heatmaps(value, self.grid)
        identity = self.grid.unsqueeze(0).expand(source_image.shape[0], -1, -1, -1)
        background = grid_sample(source_down, identity)  # slot 0: Z is not an exact identity (§3)
        return value, jacobian, features, source_down, heat, background


def transfer_motion(driving_value: torch.Tensor, driving_jacobian: torch.Tensor, source_value: torch.Tensor,
                    source_jacobian: torch.Tensor, neutral_value: torch.Tensor, neutral_jacobian_inv: torch.Tensor,
                    adapt_scale: torch.Tensor, strength: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative keypoints and Jacobians scaled by strength (module docstring); the scalars are (B,)
    tensors, one per frame of the batch (a server batches frames of several avatars)."""
    per_frame = strength.reshape(-1, 1, 1, 1)
    value = (driving_value - neutral_value) * (adapt_scale * strength).reshape(-1, 1, 1) + source_value
    identity = torch.eye(2, dtype=driving_jacobian.dtype, device=driving_jacobian.device)
    relative = driving_jacobian @ neutral_jacobian_inv
    # s·R + (1−s)·I is exactly R at s = 1 and exactly I at s = 0 (no rounding at the ends).
    blended = relative * per_frame + identity * (1 - per_frame)
    return value, blended @ source_jacobian


class FrameNet(_InferenceModule):
    """Per-frame path from driving keypoints: FRAME_INPUTS → prediction (1, 3, 256, 256)."""

    def __init__(self, generator: OcclusionAwareGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.register_buffer("grid", _motion_grid(), persistent=False)

    def forward(self, driving_value: torch.Tensor, driving_jacobian: torch.Tensor,
                source_value: torch.Tensor, source_jacobian: torch.Tensor, source_features: torch.Tensor,
                source_down: torch.Tensor, source_heat: torch.Tensor, source_background: torch.Tensor,
                neutral_value: torch.Tensor, neutral_jacobian_inv: torch.Tensor,
                adapt_scale: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        dense_motion: DenseMotionNetwork = self.generator.dense_motion_network
        value, jacobian = transfer_motion(driving_value, driving_jacobian, source_value, source_jacobian,
                                          neutral_value, neutral_jacobian_inv, adapt_scale, strength)
        affine = source_jacobian @ inverse_2x2(jacobian)
        transforms = keypoint_transforms(self.grid, value, source_value, affine)
        warped = warp_source_per_keypoint(source_down, transforms)
        heat = gaussian_heatmaps(value, self.grid) - source_heat

        batch = source_features.shape[0]
        background_slot = dense_motion.hourglass_input(torch.zeros_like(source_background[:, :1]),
                                                       source_background.unsqueeze(1))
        motion_input = torch.cat((background_slot, dense_motion.hourglass_input(heat, warped)), dim=1)
        mask, occlusion = dense_motion.heads(motion_input)

        identity = self.grid.view(1, 1, MOTION_SIZE, MOTION_SIZE, 2).expand(batch, -1, -1, -1, -1)
        flow = dense_motion.combine(mask, torch.cat((identity, transforms), dim=1))
        return self.generator.decode(grid_sample(source_features, flow), occlusion)


class FusedFrameNet(_InferenceModule):
    """FrameNet with the keypoint detector on the driving image inside: FUSED_FRAME_INPUTS → prediction."""

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator) -> None:
        super().__init__()
        self.kp_detector = kp_detector
        self.frame = FrameNet(generator)

    def forward(self, driving_image: torch.Tensor, *cached: torch.Tensor) -> torch.Tensor:
        value, jacobian = self.kp_detector.forward_flat(driving_image)
        return self.frame(value, jacobian, *cached)


def fast_frame_net(kp_detector: KPDetector, generator: OcclusionAwareGenerator, precision: str = "fp32",
                   keypoint_precision: str = "fp32") -> FusedFrameNet:
    """FusedFrameNet (same inputs and output) on the fast layers of models.fomm.fast.

    In fp32 the prediction differs from FusedFrameNet's by ~5e-6 on average and up to ~6e-4 at a
    few pixels where the flow crosses a zero-padded border (grid sampling magnifies rounding there).
    """
    device = next(generator.parameters()).device
    return FusedFrameNet(*fast_networks(kp_detector, generator, precision, keypoint_precision)).to(device)


@dataclass
class Calibration:
    """Neutral pose state fed to the per-frame path (tensors of shape (1, 10, 2), (1, 10, 2, 2), (1,))."""

    neutral_value: torch.Tensor
    neutral_jacobian_inv: torch.Tensor
    adapt_scale: torch.Tensor


def calibrate(source_value: torch.Tensor, neutral_value: torch.Tensor, neutral_jacobian: torch.Tensor,
              adapt_scale: bool = False) -> Calibration:
    """Once per neutral pose: invert the neutral Jacobians and compute α (1 when adapt_scale is off)."""
    alpha = adapt_movement_scale(source_value, neutral_value) if adapt_scale else 1.0
    return Calibration(neutral_value=neutral_value, neutral_jacobian_inv=inverse_2x2(neutral_jacobian),
                       adapt_scale=torch.tensor([alpha], dtype=neutral_value.dtype, device=neutral_value.device))
