"""compose.PasteBack on torch tensors: the paste-back of the torch CUDA path, so the network's
prediction never leaves the GPU and only the composed picture is downloaded.

Input: a PasteBack (its per-avatar data: picture, ROI, remap maps, head mask, seam weights, the
network's avatar at rest), then per frame the prediction as a BGR uint8 (256, 256, 3) tensor on the
device and the head motion. Output: the composed BGR uint8 picture as a tensor on the device.
The arithmetic is PasteBack.paste's, step by step: OpenCV's resizes and Gaussian blurs are linear
and separable along each axis, so their matrices are taken from OpenCV itself once per avatar (each
applied to identity matrices: same weights, same border rule) and applied as matrix products; its
remaps and the mask's affine warp are bilinear samples at the positions OpenCV samples (the
fixed-point maps' 1/32-pixel grid). The result matches the numpy paste to about one 8-bit level
(OpenCV rounds the uint8 remap with fixed-point weights).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avatarify.compose import CHANGE_BLUR, CHANGE_FULL, COLOUR_DOWN, COLOUR_LIMIT, COLOUR_REACH, PasteBack
from avatarify.motion import Similarity


def resize_matrix(source: int, target: int, interpolation: int) -> np.ndarray:
    """(target, source) matrix R: cv2.resize along one axis of length `source` is R @ x."""
    return cv2.resize(np.eye(source, dtype=np.float32), (source, target), interpolation=interpolation)


def blur_matrix(length: int, sigma: float) -> np.ndarray:
    """(length, length) matrix B: cv2.GaussianBlur(x, (0, 0), sigma) along one axis is B @ x (its
    kernel size and BORDER_REFLECT_101). One column at a time: on a one-pixel-wide image the other
    axis' blur is the identity."""
    columns = [cv2.GaussianBlur(np.eye(length, dtype=np.float32)[:, j:j + 1], (0, 0), sigma) for j in range(length)]
    return np.hstack(columns)


def _separable(rows: torch.Tensor, image: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ image @ cols.T for (H, W) or (C, H, W) images."""
    return rows @ image @ cols.T


class TorchPasteBack:
    """PasteBack.paste on `device` for one avatar (module docstring)."""

    def __init__(self, paste_back: PasteBack, device: torch.device | str) -> None:
        self.source = paste_back
        self.reference_of = paste_back.reference  # rebuilt when the avatar or its reference changes
        self.device = device = torch.device(device)
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)  # noqa: E731
        self.picture = torch.from_numpy(paste_back.picture_bgr).to(device)
        self.roi = paste_back.roi
        self.picture_roi = tensor(paste_back.picture_bgr[paste_back.roi]).permute(2, 0, 1)  # (3, h, w)
        self.mask = tensor(paste_back.mask)
        height, width = paste_back.mask.shape
        self.shape = (height, width)
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
        self.xs, self.ys = xs.to(device), ys.to(device)  # float64: the map's rounding to 1/32 px is exact
        # Remap positions: the fixed-point maps' exact sample points, as grid_sample coordinates.
        map_x, map_y = cv2.convertMaps(paste_back.maps[0], paste_back.maps[1], cv2.CV_32FC1)
        side = paste_back.crop_size - 1
        self.grid = tensor(np.stack([map_x * 2.0 / side - 1.0, map_y * 2.0 / side - 1.0], axis=-1))[None]
        small_w, small_h = paste_back._small_size()
        self.down = (tensor(resize_matrix(height, small_h, cv2.INTER_AREA)),
                     tensor(resize_matrix(width, small_w, cv2.INTER_AREA)))
        self.up = (tensor(resize_matrix(small_h, height, cv2.INTER_LINEAR)),
                   tensor(resize_matrix(small_w, width, cv2.INTER_LINEAR)))
        sigma = max(COLOUR_REACH * paste_back.face_size / COLOUR_DOWN, 1.0)
        self.spread = (tensor(blur_matrix(small_h, sigma)), tensor(blur_matrix(small_w, sigma)))
        self.seam = tensor(paste_back._seam)
        self.seam_weight = _separable(self.spread[0], self.seam, self.spread[1])
        self.reference = None
        if paste_back.reference is not None:
            self.reference = tensor(paste_back.reference).permute(2, 0, 1)  # (3, 256, 256) BGR
            change_blur = tensor(blur_matrix(paste_back.crop_size, CHANGE_BLUR))
            self.change_blur = (change_blur, change_blur)

    def warped(self, crop: torch.Tensor) -> torch.Tensor:
        """A (C, 256, 256) float crop in the ROI's pixels (cv2.remap, BORDER_REPLICATE)."""
        return F.grid_sample(crop[None], self.grid, mode="bilinear", padding_mode="border",
                             align_corners=True)[0]

    def colour_matched(self, warped: torch.Tensor) -> torch.Tensor:
        difference = _separable(self.down[0], self.picture_roi - warped, self.down[1])
        spread = _separable(self.spread[0], difference * self.seam, self.spread[1])
        weight = self.seam_weight
        field = torch.clamp(spread / torch.clamp(weight, min=1e-3), -COLOUR_LIMIT, COLOUR_LIMIT)
        field = field * torch.clamp(weight / 0.05, 0.0, 1.0)
        return warped + _separable(self.up[0], field, self.up[1])

    def with_photo_detail(self, prediction: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
        change = prediction - self.reference
        amount = _separable(self.change_blur[0], change.abs().amax(dim=0), self.change_blur[1])
        replace = self.warped(torch.clamp(amount / CHANGE_FULL, 0.0, 1.0)[None])
        kept = self.picture_roi + self.warped(change)
        return kept + replace * (matched - kept)

    def moved_mask(self, head: Similarity | None) -> torch.Tensor:
        motion = self.source.roi_motion(head)
        if motion is None:
            return self.mask
        # cv2.warpAffine samples the source at the inverse map, on a 1/32-pixel grid. Only the six
        # numbers of the map go to the device; the pixel grid lives there.
        (a, b, c), (d, e, f) = cv2.invertAffineTransform(motion).tolist()
        height, width = self.shape
        source_x = torch.round((a * self.xs + b * self.ys + c) * 32.0) / 32.0
        source_y = torch.round((d * self.xs + e * self.ys + f) * 32.0) / 32.0
        grid = torch.stack([source_x * (2.0 / (width - 1)) - 1.0, source_y * (2.0 / (height - 1)) - 1.0], dim=-1)
        moved = F.grid_sample(self.mask[None, None], grid[None].float(), mode="bilinear", padding_mode="zeros",
                              align_corners=True)[0, 0]
        return torch.maximum(self.mask, moved)

    def paste(self, prediction_bgr: torch.Tensor, head: Similarity | None = None) -> torch.Tensor:
        """The picture (H, W, 3) uint8 with the prediction ((256, 256, 3) uint8 BGR) blended in."""
        prediction = prediction_bgr.permute(2, 0, 1).float()
        warped = torch.floor(self.warped(prediction) + 0.5)  # cv2.remap rounds a uint8 picture
        inside = self.colour_matched(warped)
        if self.reference is not None:
            inside = self.with_photo_detail(prediction, inside)
        blended = self.picture_roi + self.moved_mask(head) * (inside - self.picture_roi)
        output = self.picture.clone()
        output[self.roi] = torch.clamp(blended + 0.5, 0, 255).to(torch.uint8).permute(1, 2, 0)
        return output
