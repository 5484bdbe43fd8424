"""Driving-face tracking: a smoothed square crop around the face, and what to do when it is lost.

Input per frame: the camera frame (BGR), the face's landmarks in frame pixels (or None), the capture
timestamp. Output: a `DrivingFrame` — the square crop resized to the engine size, the landmarks in
crop pixels, and a motion scale that eases from 1 to 0 while the face is lost (the avatar settles
back to neutral instead of freezing mid-grimace) and is 1 again as soon as the face is back.

The crop box (centre and side) goes through a One Euro filter (Casiez et al., CHI 2012), a
low-pass filter whose cutoff rises with speed: a still head gets heavy smoothing (no jitter),
fast motion little (no lag). Manual zoom and offset (hotkeys) apply on top of the automatic box.
The same box rule crops the avatar photos, so driver and avatar are framed alike.
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from avatarify.datatypes import DrivingFrame, FaceLandmarks

# Landmarks 0..467 are the face mesh; the 10 iris points would double-weight the eyes in a match.
_MESH_POINTS = 468


def _smoothing_alpha(cutoff_hz: float, dt: float) -> float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over arrays of any fixed shape, driven by real timestamps (seconds).

    min_cutoff: cutoff (Hz) when still — lower means less jitter.
    beta: how fast the cutoff rises with speed — higher means less lag.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, timestamp: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or timestamp <= self._t:
            # First sample, or a clock that did not advance: nothing to filter against.
            if self._x is None:
                self._x, self._dx = x.copy(), np.zeros_like(x)
            self._t = timestamp if self._t is None else max(self._t, timestamp)
            return self._x.astype(np.float32)
        dt = timestamp - self._t
        self._t = timestamp
        dx = (x - self._x) / dt
        a_d = _smoothing_alpha(self.d_cutoff, dt)
        self._dx = self._dx + a_d * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        tau = 1.0 / (2.0 * np.pi * cutoff)
        alpha = 1.0 / (1.0 + tau / dt)
        self._x = self._x + alpha * (x - self._x)
        return self._x.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The square crop box: (centre x, centre y, side) in pixels of the image the face was found in.


def square_face_box(landmarks: FaceLandmarks, margin: float) -> np.ndarray:
    """FOMM's crop rule on the landmark box: square it on its longer side, then add `margin` of
    the side on each side. Returns float64 [cx, cy, side]."""
    x0, y0, x1, y1 = landmarks.box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0, max(side, 1.0)])


def crop_matrix(box: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 affine that maps image pixels into a (size, size) crop of `box`."""
    cx, cy, side = (float(v) for v in box)
    scale = size / side
    return np.array([[scale, 0.0, size / 2.0 - scale * cx],
                     [0.0, scale, size / 2.0 - scale * cy]], dtype=np.float32)


def crop_square(image_bgr: np.ndarray, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (size, size) crop of `box` and the matrix that maps image pixels into it. Parts of the
    box outside the image repeat the border, so a face near the edge still gets a full crop."""
    matrix = crop_matrix(box, size)
    crop = cv2.warpAffine(image_bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


class CropTracker:
    """The automatic face box, One-Euro smoothed, with the user's manual zoom and offset on top.

    zoom > 1 shows the face larger (a smaller box); offset moves the box by shares of its side.
    """

    def __init__(self, margin: float = 0.3, min_cutoff: float = 0.4, beta: float = 0.02) -> None:
        self.margin = margin
        self.zoom = 1.0
        self.offset = np.zeros(2)
        self._filter = OneEuroFilter(min_cutoff=min_cutoff, beta=beta)
        self._smoothed: np.ndarray | None = None

    def update(self, landmarks: FaceLandmarks, timestamp: float) -> np.ndarray:
        """The box to crop for this frame: smoothed automatic box, then zoom and offset."""
        self._smoothed = self._filter(square_face_box(landmarks, self.margin), timestamp).astype(np.float64)
        return self.box()

    def box(self) -> np.ndarray | None:
        """The current box (manual adjustments applied), or None before the first face."""
        if self._smoothed is None:
            return None
        cx, cy, side = self._smoothed
        side = side / self.zoom
        return np.array([cx + self.offset[0] * side, cy + self.offset[1] * side, side])

    def reset(self) -> None:
        self._filter.reset()
        self._smoothed = None


def _ease_to_zero(elapsed_s: float, duration_s: float) -> float:
    """1 → 0 along half a cosine: starts and ends gently, so the settle does not look mechanical."""
    if duration_s <= 0 or elapsed_s >= duration_s:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * max(elapsed_s, 0.0) / duration_s))


class DrivingTracker:
    """Turns camera frames and their landmarks into DrivingFrames for the engine.

    A face counts as found when at least `min_visible` of it is inside the frame. While it is not,
    the last DrivingFrame is handed on with `motion_scale` eased from 1 to 0 over `ease_s`.
    """

    def __init__(self, size: int, margin: float = 0.3, min_cutoff: float = 0.4, beta: float = 0.02,
                 min_visible: float = 0.6, ease_s: float = 1.0) -> None:
        self.size = size
        self.crop = CropTracker(margin, min_cutoff, beta)
        self.min_visible = min_visible
        self.ease_s = ease_s
        self.last_matrix: np.ndarray | None = None  # camera pixels → crop pixels of the last face
        self._last: DrivingFrame | None = None
        self._lost_since: float | None = None

    @property
    def face_found(self) -> bool:
        return self._last is not None and self._lost_since is None

    def update(self, frame_bgr: np.ndarray, landmarks: FaceLandmarks | None,
               timestamp: float) -> DrivingFrame | None:
        """This frame's DrivingFrame; None only until a face has been seen once."""
        if landmarks is not None and landmarks.confidence >= self.min_visible:
            box = self.crop.update(landmarks, timestamp)
            crop_bgr, matrix = crop_square(frame_bgr, box, self.size)
            self.last_matrix = matrix
            self._last = DrivingFrame(crop_bgr, landmarks.transformed(matrix, (self.size, self.size)),
                                      timestamp, 1.0)
            self._lost_since = None
            return self._last
        if self._last is None:
            return None
        if self._lost_since is None:
            self._lost_since = timestamp
        scale = _ease_to_zero(timestamp - self._lost_since, self.ease_s)
        return replace(self._last, timestamp=timestamp, motion_scale=scale)


# ---------------------------------------------------------------------------------------------
# Find-best-frame: how well a driving pose matches the avatar's.


def normalized_landmarks(points: np.ndarray) -> np.ndarray:
    """Mesh points centred on their mean and scaled to unit RMS radius: comparable across
    images of any size and faces at any distance, while pose and expression still show."""
    mesh = np.asarray(points, dtype=np.float64)[:_MESH_POINTS]
    centred = mesh - mesh.mean(axis=0)
    radius = math.sqrt(float((centred ** 2).sum(axis=1).mean())) or 1.0
    return centred / radius


def pose_distance(a: FaceLandmarks, b: FaceLandmarks) -> float:
    """Mean distance between normalized landmarks (0 = same pose and expression; lower is better)."""
    return float(np.linalg.norm(normalized_landmarks(a.points) - normalized_landmarks(b.points),
                                axis=1).mean())
