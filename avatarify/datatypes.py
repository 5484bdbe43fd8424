"""Small value types passed between stages: face landmarks and one driving frame."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass
class FaceLandmarks:
    """Landmarks of one face, in pixels of the image they were found in.

    `points` is (N, 2) float32 x,y; with MediaPipe Face Mesh refined N = 478 (468 mesh + 10 iris).
    `depth` is (N,) float32 z in the same pixel scale as x,y (Face Mesh's relative depth: smaller is
    nearer the camera, about 0 at the face's centre), or None for 2-D-only landmark sources.
    """

    points: np.ndarray
    confidence: float
    image_size: tuple[int, int]  # (width, height) of the image the points live in
    depth: np.ndarray | None = None

    @cached_property
    def box(self) -> tuple[float, float, float, float]:
        """Tight box (x0, y0, x1, y1) around the points; computed once (several stages ask per frame),
        as no stage changes the points of a FaceLandmarks: they make a new one."""
        x0, y0 = self.points.min(axis=0)
        x1, y1 = self.points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def transformed(self, matrix: np.ndarray, image_size: tuple[int, int]) -> "FaceLandmarks":
        """The same landmarks mapped by a 2x3 affine `matrix` into an image of `image_size`."""
        m = np.asarray(matrix, dtype=np.float32)
        pts = self.points @ m[:, :2].T + m[:, 2]
        depth = None
        if self.depth is not None:  # depth scales with the (mean) scale of the map, like x and y
            depth = (self.depth * np.sqrt(abs(float(np.linalg.det(m[:, :2]))))).astype(np.float32)
        return FaceLandmarks(pts.astype(np.float32), self.confidence, image_size, depth)


@dataclass
class DrivingFrame:
    """What an engine needs of one webcam frame.

    crop_bgr: square BGR uint8 crop of the camera frame around the driving face (engine size).
    landmarks: the driving face's landmarks in crop pixels, or None when no face was found.
    timestamp: media time in seconds, the clock of every time-based stage (smoothing, the face-lost
        ease): a live camera's capture time (`time.perf_counter()` when the frame was read), a video
        file's own timestamp of the frame, so a file animates the same at any processing speed.
    motion_scale: 1 = full motion relative to the neutral; 0 = the neutral pose (the app eases
        this toward 0 while the face is lost, so the avatar settles instead of freezing mid-grimace).
    captured_at: `time.perf_counter()` when the camera frame was read, the start of its latency
        (engines that show an earlier frame's picture report it as `shown_timestamp`); None: the
        same as `timestamp`.
    """

    crop_bgr: np.ndarray
    landmarks: FaceLandmarks | None
    timestamp: float
    motion_scale: float = 1.0
    captured_at: float | None = None

    @property
    def capture_time(self) -> float:
        return self.timestamp if self.captured_at is None else self.captured_at
