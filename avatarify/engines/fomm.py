"""FOMM engine: the neural Animator on top of a runner (torch / onnxruntime / TensorRT).

Inputs: the avatar picture at the call's resolution with its landmarks, and driving crops, as BGR
uint8. The network sees the avatar's square face crop (FOMM's box rule) and the driving crop, both
converted at the edges to RGB float NCHW 256×256; its 256-px prediction goes back into the
full-resolution picture through compose.PasteBack (inverse crop map, soft head mask that follows
the driver's head motion, colour matched at the seam): hair, room and shoulders outside the mask
keep the photo's own pixels. Motion strength s = `strength` × `DrivingFrame.motion_scale`.
The avatar's rest prediction (run once per avatar) must be finite: NaN or infinity there (weights that
overflow, a precision the weights do not survive) ends in one AnimatorError naming the weights,
instead of an avatar that animates to black frames.
FOMM cannot separate head pose from expression, so every `region` is treated as "all".
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from avatarify.compose import PasteBack
from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import Animator, AnimatorError
from avatarify.motion import STABLE_POINTS, Similarity, as_complex, fit_similarity, scaled_head_motion
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


def network_to_bgr(prediction: np.ndarray) -> np.ndarray:
    """RGB float (1, 3, 256, 256) → BGR uint8 (256, 256, 3)."""
    rgb = np.clip(prediction[0].transpose(1, 2, 0), 0.0, 1.0)
    return np.ascontiguousarray((rgb[:, :, ::-1] * 255.0 + 0.5).astype(np.uint8))


class FommAnimator(Animator):
    """Animator backed by a FommRunner; build it with a runner or with `FommAnimator.create`.

    `margin` is the crop rule's margin (the driving crop's, so avatar and driver are framed alike).
    """

    name = "fomm"

    def __init__(self, runner: FommRunner, margin: float = 0.3, frame_io=None,
                 weights: str = "the FOMM weights") -> None:
        super().__init__()
        self.runner = runner
        self.margin = margin
        # On a GPU, avatarify.device_io converts the crop and the prediction where the network runs
        # (`animate(paste_back, crop_bgr, strength, head)`, the torch path pasting back there too);
        # None converts with numpy and OpenCV on the host.
        self.frame_io = frame_io
        self.weights = weights  # what the finite-output check names: the checkpoint or the export folder
        self.details: dict = {}  # how the backend was chosen (avatarify.backends), for stats and HUD
        self.paste_back: PasteBack | None = None
        self._has_neutral = False
        self._neutral_points: np.ndarray | None = None  # driving neutral landmarks, driving-crop px

    @classmethod
    def create(cls, backend: str, checkpoint: str | Path | None = None, onnx_dir: str | Path | None = None,
               device: str = "cpu", fp16: bool = False, precision: str | None = None,
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
                                   optimized=optimized), weights=str(checkpoint))
        if backend == "onnxruntime":
            if onnx_dir is None:
                raise AnimatorError("The onnxruntime backend needs the folder written by `python -m export`.")
            return cls(OnnxRuntimeRunner(onnx_dir, device=device, fp16=fp16), weights=f"the ONNX export in {onnx_dir}")
        raise AnimatorError(f"Unknown FOMM backend {backend!r}; use torch or onnxruntime.")

    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks | None) -> None:
        if landmarks is None:
            landmarks = self.detect_avatar_face(avatar_bgr)
        self.paste_back = PasteBack(avatar_bgr, landmarks, NETWORK_SIZE, self.margin)
        source = bgr_to_network(self.paste_back.crop_bgr)
        self.runner.prepare_source(source)
        # Until a neutral is set, the avatar itself is the reference pose: animate stays usable.
        self.runner.set_neutral(source)
        # The network's avatar at rest: where a prediction matches it, the photo's own detail stays.
        rest = self.runner.animate(source, 0.0)
        if not np.isfinite(rest).all():
            raise AnimatorError(f"{self.weights} gives NaN or infinite output for the first frame: the weights "
                                f"are damaged or do not survive this precision; use the original checkpoint "
                                f"(vox-adv-cpk.pth.tar) or --precision fp32.")
        self.paste_back.set_reference(network_to_bgr(rest))
        self._has_neutral = False
        self._neutral_points = None

    def set_neutral(self, driving: DrivingFrame) -> None:
        self.runner.set_neutral(bgr_to_network(driving.crop_bgr))
        self._has_neutral = True
        self._neutral_points = None if driving.landmarks is None else driving.landmarks.points

    def animate(self, driving: DrivingFrame) -> np.ndarray:
        if self.paste_back is None:
            raise AnimatorError("No avatar is set; call set_avatar first.")
        if not self._has_neutral:
            self.set_neutral(driving)  # first frame is the neutral, as FOMM's demo does
        strength = float(self.strength) * float(driving.motion_scale)
        head = self.head_motion(driving, strength)
        if self.frame_io is not None:
            return self.frame_io.animate(self.paste_back, driving.crop_bgr, strength, head)
        prediction = network_to_bgr(self.runner.animate(bgr_to_network(driving.crop_bgr), strength))
        return self.paste_back.paste(prediction, head)

    def head_motion(self, driving: DrivingFrame, strength: float) -> Similarity | None:
        """The driver's head motion since the neutral in network-crop pixels, scaled by the
        strength (the paste-back mask follows it); None without landmarks."""
        if self._neutral_points is None or driving.landmarks is None:
            return None
        stable = list(STABLE_POINTS)
        scale = NETWORK_SIZE / driving.crop_bgr.shape[0]  # driving crop px → network px
        neutral = as_complex(self._neutral_points[stable] * scale)
        head = fit_similarity(neutral, as_complex(driving.landmarks.points[stable] * scale))
        return scaled_head_motion(head, complex(neutral.mean()), strength)

    def backend_info(self) -> dict:
        return {"backend": self.runner.name, "providers": list(self.runner.providers), **self.details}
