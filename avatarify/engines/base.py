"""The Animator interface both engines implement.

Per avatar (once): `set_avatar` with the avatar picture as the call shows it (the photo framed for the
camera at full resolution, or a square face crop) and its landmarks; engines precompute everything
that depends only on it. Per calibration: `set_neutral` with the driving neutral pose. Per frame:
`animate` returns the animated avatar: a BGR uint8 picture of the avatar picture's size.
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
    # (x0, y0, x1, y1) of the avatar picture that holds the photo's own pixels; beyond it the call
    # framing filled the picture (a narrow photo in a wide frame). Set before `set_avatar`; engines
    # never sample the fill into the moving face. None: the whole picture is the photo.
    photo_box: tuple[int, int, int, int] | None = None

    def __init__(self) -> None:
        self.strength = 1.0
        self.region = "all"

    @abstractmethod
    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks) -> None:
        """Take a new avatar: its BGR uint8 picture (any size) and its landmarks in its pixels."""

    @abstractmethod
    def set_neutral(self, driving: DrivingFrame) -> None:
        """Store the driving neutral pose; later motion is measured relative to it."""

    @abstractmethod
    def animate(self, driving: DrivingFrame) -> np.ndarray:
        """The avatar moved as the driver moved since the neutral: BGR uint8, the picture's size."""

    def finish(self) -> tuple[np.ndarray, float] | None:
        """The picture still in flight and the capture time of its frame, when the source ends;
        None for engines that finish each frame in `animate`."""
        return None

    @staticmethod
    def detect_avatar_face(avatar_bgr: np.ndarray) -> FaceLandmarks:
        """The avatar's landmarks when the caller has none (static Face Mesh), or AnimatorError."""
        from avatarify.landmarks import FaceMeshDetector

        with FaceMeshDetector(static=True) as detector:
            landmarks = detector.detect(avatar_bgr)
        if landmarks is None:
            raise AnimatorError("No face found in the avatar image; use a photo with one clearly "
                                "visible, roughly frontal face.")
        return landmarks

    def backend_info(self) -> dict:
        """What actually runs: {"backend": name, "providers": [...]} for the stats and the HUD."""
        return {"backend": "numpy", "providers": ["numpy-cpu"]}  # no onnxruntime session here

    def run_stats(self) -> dict:
        """Engine-specific keys for the --stats JSON (e.g. the remote engine's `rtt_ms`)."""
        return {}

    def close(self) -> None:
        """Release what the engine holds beyond memory (e.g. a server connection)."""
