"""FOMM engine: the neural Animator on top of a runner (torch / onnxruntime / TensorRT).

Inputs: avatar crop and driving crops as BGR uint8 (any square size). They are converted at the
edges to RGB float NCHW 256×256 for the network; the prediction is resized back to `size`
(256 or 512) as BGR uint8. Motion strength s = `strength` × `DrivingFrame.motion_scale`.
The first avatar is also run through the whole network once: a prediction with NaN or infinity
(weights that overflow, a precision the weights do not survive) ends in one AnimatorError naming the
weights, instead of an avatar that animates to black frames.
FOMM cannot separate head pose from expression, so every `region` is treated as "all".
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import Animator, AnimatorError
from avatarify.runners import FommRunner, OnnxRuntimeRunner, TorchRunner

log = logging.getLogger(__name__)

NETWORK_SIZE = 256


def bgr_to_network(image_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) → RGB float32 (1, 3, 256, 256) in [0, 1]."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise AnimatorError(f"Expected a BGR uint8 image, got shape {image_bgr.shape} and {image_bgr.dtype}.")
    if image_bgr.shape[:2] != (NETWORK_SIZE, NETWORK_SIZE):
        shrinking = image_bgr.shape[0] > NETWORK_SIZE
        image_bgr = cv2.resize(image_bgr, (NETWORK_SIZE, NETWORK_SIZE),
                               interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def network_to_bgr(prediction: np.ndarray, size: int) -> np.ndarray:
    """RGB float (1, 3, 256, 256) → BGR uint8 (size, size, 3)."""
    rgb = np.clip(prediction[0].transpose(1, 2, 0), 0.0, 1.0)
    bgr = np.ascontiguousarray((rgb[:, :, ::-1] * 255.0 + 0.5).astype(np.uint8))
    if size != NETWORK_SIZE:
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_CUBIC)
    return bgr


class FommAnimator(Animator):
    """Animator backed by a FommRunner; build it with a runner or with `FommAnimator.create`."""

    name = "fomm"

    def __init__(self, runner: FommRunner, size: int = 256, weights: str = "the FOMM weights") -> None:
        super().__init__(size)
        self.runner = runner
        self.weights = weights  # what the first-prediction check names: the checkpoint or the export folder
        self._has_neutral = False
        self._checked = False

    @classmethod
    def create(cls, backend: str, checkpoint: str | Path | None = None, onnx_dir: str | Path | None = None,
               device: str = "cpu", fp16: bool = False, size: int = 256, precision: str | None = None,
               optimized: bool = False) -> "FommAnimator":
        """A FommAnimator for backend "torch" (needs checkpoint) or "onnxruntime" (needs onnx_dir).

        torch: `precision` fp32 | bf16 | fp16 (fp16=True means "fp16"); `optimized` see TorchRunner.
        """
        if backend == "torch":
            from models.fomm.checkpoint import load_fomm

            if checkpoint is None:
                raise AnimatorError("The torch backend needs --checkpoint PATH.")
            precision = precision or ("fp16" if fp16 else "fp32")
            return cls(TorchRunner(*load_fomm(checkpoint), device=device, precision=precision,
                                   optimized=optimized), size, str(checkpoint))
        if backend == "onnxruntime":
            if onnx_dir is None:
                raise AnimatorError("The onnxruntime backend needs the folder written by `python -m export`.")
            return cls(OnnxRuntimeRunner(onnx_dir, device=device, fp16=fp16), size, f"the ONNX export in {onnx_dir}")
        raise AnimatorError(f"Unknown FOMM backend {backend!r}; use torch or onnxruntime.")

    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks) -> None:
        avatar = bgr_to_network(avatar_bgr)
        self.runner.prepare_source(avatar)
        # Until a neutral is set, the avatar itself is the reference pose: animate stays usable.
        self.runner.set_neutral(avatar)
        self._has_neutral = False
        if not self._checked:
            self._check_first_prediction(avatar)

    def _check_first_prediction(self, avatar: np.ndarray) -> None:
        """The avatar driven by itself: the first prediction must be finite (see the module docstring)."""
        prediction = self.runner.animate(avatar, 1.0)
        if not np.isfinite(prediction).all():
            raise AnimatorError(f"{self.weights} gives NaN or infinite output for the first frame: the weights "
                                f"are damaged or do not survive this precision; use the original checkpoint "
                                f"(vox-adv-cpk.pth.tar) or --precision fp32.")
        self._checked = True

    def set_neutral(self, driving: DrivingFrame) -> None:
        self.runner.set_neutral(bgr_to_network(driving.crop_bgr))
        self._has_neutral = True

    def animate(self, driving: DrivingFrame) -> np.ndarray:
        if not self._has_neutral:
            self.set_neutral(driving)  # first frame is the neutral, as FOMM's demo does
        strength = float(self.strength) * float(driving.motion_scale)
        return network_to_bgr(self.runner.animate(bgr_to_network(driving.crop_bgr), strength), self.size)

    def backend_info(self) -> dict:
        return {"backend": self.runner.name, "providers": list(self.runner.providers)}
