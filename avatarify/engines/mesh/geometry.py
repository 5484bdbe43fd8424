"""Geometry shared by the mesh engine's modules: the reduced sampling grid over the ROI, polygon
masks and boxes, the Face Mesh points the warp is built on, smoothstep, the weights of grey.

Inputs and outputs are numpy arrays in the avatar picture's pixels (x, y), float32 unless said."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarify.motion import FACE_OVAL, LASH_RINGS, NUM_MESH_POINTS, STABLE_POINTS

WARP_SPACING = 0.05  # face widths between the warp mesh's points away from the features (see warp_points)
OUTLINE_CLEARANCE = 0.25  # of WARP_SPACING: how far from the face outline its points must lie
GREY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights of grey (Rec. 601, as cv2's)


@dataclass
class _Grid:
    """A reduced-resolution sampling of the ROI. Sample (i, j) sits at full-resolution pixel
    x0 + (j + 0.5)·step − 0.5 (cv2.resize's pixel-centre convention, so upsampling lines up)."""

    x0: int
    y0: int
    width: int  # ROI size in full-resolution pixels (multiples of step)
    height: int
    step: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height // self.step, self.width // self.step

    def points(self) -> np.ndarray:
        """(h, w, 2) float32 full-resolution x,y of every sample."""
        rows, cols = self.shape
        xs = self.x0 + (np.arange(cols) + 0.5) * self.step - 0.5
        ys = self.y0 + (np.arange(rows) + 0.5) * self.step - 0.5
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx, gy], axis=-1).astype(np.float32)

    def to_index(self, xy: np.ndarray) -> np.ndarray:
        """Full-resolution positions (..., 2) → fractional sample indices (column, row)."""
        return (xy - (self.x0, self.y0) + 0.5) / self.step - 0.5

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


def _polygon_mask(points: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased float32 [0, 1] mask of a polygon (full-res px) in a box at `origin` (x, y)."""
    mask = np.zeros(shape, np.uint8)
    shift = 4  # sub-pixel vertex precision for cv2.fillPoly
    pts = np.round((points - np.asarray(origin, np.float32)) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=shift)
    return mask.astype(np.float32) * (1.0 / 255.0)


def _box_around(points: np.ndarray, pad: float, limit: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) around points plus pad, clipped to limit."""
    x0 = max(int(np.floor(points[:, 0].min() - pad)), limit[0])
    y0 = max(int(np.floor(points[:, 1].min() - pad)), limit[1])
    x1 = min(int(np.ceil(points[:, 0].max() + pad)) + 1, limit[2])
    y1 = min(int(np.ceil(points[:, 1].max() + pad)) + 1, limit[3])
    return x0, y0, x1, y1


def warp_points(mesh: np.ndarray) -> np.ndarray:
    """The Face Mesh points (indices) the warp's mesh is built on: every point of the features'
    contours (lips, eyes and the rings around them, brows, nose, face outline) and the head-pose
    points, plus enough of the rest (cheeks, forehead, chin) to keep WARP_SPACING face widths
    between them. Expressions there are smooth, and each triangle costs a draw per frame: about
    half the 468 points carry the warp at half the cost."""
    from mediapipe.python.solutions import face_mesh_connections as contours

    keep = {i for name in ("FACEMESH_LIPS", "FACEMESH_LEFT_EYE", "FACEMESH_RIGHT_EYE", "FACEMESH_LEFT_EYEBROW",
                           "FACEMESH_RIGHT_EYEBROW", "FACEMESH_FACE_OVAL", "FACEMESH_NOSE")
            for edge in getattr(contours, name) for i in edge}
    keep |= set(STABLE_POINTS) | {i for ring in LASH_RINGS for i in ring}
    points = np.asarray(mesh, dtype=np.float64)[:NUM_MESH_POINTS]
    spacing = WARP_SPACING * float(np.ptp(points[:, 0]))
    # Nor on the face outline: a point there made a sliver triangle with two outline points, which
    # a turn flipped (drawn, it showed as a folded wedge of cheek at the face's edge).
    clear = _distance_to_polygon(points, points[list(FACE_OVAL)]) >= OUTLINE_CLEARANCE * spacing
    kept = sorted(keep)
    for i in range(NUM_MESH_POINTS):
        if i not in keep and clear[i] and np.linalg.norm(points[kept] - points[i], axis=1).min() >= spacing:
            kept.append(i)
    return np.array(sorted(kept))


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which points lie strictly inside the polygon (M, 2)."""
    polygon = np.asarray(polygon, np.float32)
    return np.array([cv2.pointPolygonTest(polygon, (float(x), float(y)), False) > 0 for x, y in points], bool)


def _distance_to_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) distance of each point to the nearest edge of a closed polygon (M, 2)."""
    start, end = polygon, np.roll(polygon, -1, axis=0)
    edge = end - start
    t = ((points[:, None] - start[None]) * edge[None]).sum(axis=2) / np.maximum((edge * edge).sum(axis=1), 1e-12)
    nearest = start[None] + np.clip(t, 0.0, 1.0)[..., None] * edge[None]
    return np.linalg.norm(points[:, None] - nearest, axis=2).min(axis=1)


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) around two boxes (a may be None)."""
    if a is None:
        return tuple(int(v) for v in b)
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _moving(offsets: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: the grid samples whose (rows, cols, 2) offset moves them more than 1e-3 px.
    Compared per component: numpy's any() over a last axis of two cost 0.5 ms per frame at 720p,
    these two comparisons 0.02 ms."""
    return (np.abs(offsets[..., 0]) > 1e-3) | (np.abs(offsets[..., 1]) > 1e-3)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
