"""The Animator interface both engines implement.

Per avatar (once): `set_avatar` with the cropped avatar photo and its landmarks; engines precompute
everything that depends only on it. Per calibration: `set_neutral` with the driving neutral pose.
Per frame: `animate` returns the animated avatar as a BGR uint8 (size, size, 3) frame.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from avatarify.datatypes import DrivingFrame, FaceLandmarks

REGIONS = ("all", "expression", "pose")


class AnimatorError(RuntimeError):
    """A user-facing problem with an engine's input (message is one clear sentence)."""


class Animator(ABC):
    """Animates one avatar photo from driving frames.

    `strength` scales motion relative to the neutral (1 = as driven); `region` selects which motion
    is transferred: "all", "expression" (face deformation, head held still) or "pose" (head only).
    Engines that cannot separate regions document it and treat every region as "all".
    """

    name: str = "base"
    # Capture time of the driving frame that the last `animate` picture shows; None means the frame
    # just given. Set by engines that run a frame ahead (engines/pipelined.py), for the latency stats.
    shown_timestamp: float | None = None

    def __init__(self, size: int = 256) -> None:
        if size not in (256, 512):
            raise AnimatorError(f"Output size {size} is not supported; use 256 or 512.")
        self.size = size
        self.strength = 1.0
        self.region = "all"

    @abstractmethod
    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks) -> None:
        """Take a new avatar: BGR uint8 (size, size, 3) face crop and its landmarks in its pixels."""

    @abstractmethod
    def set_neutral(self, driving: DrivingFrame) -> None:
        """Store the driving neutral pose; later motion is measured relative to it."""

    @abstractmethod
    def animate(self, driving: DrivingFrame) -> np.ndarray:
        """The avatar moved as the driver moved since the neutral: BGR uint8 (size, size, 3)."""

    def backend_info(self) -> dict:
        """What actually runs: {"backend": name, "providers": [...]} for the stats and the HUD."""
        return {"backend": "numpy", "providers": ["numpy-cpu"]}  # no onnxruntime session here
