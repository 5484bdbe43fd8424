"""The embedded engine: a piecewise-affine warp of the avatar photo along its face mesh (no weights).

Input per avatar: the avatar picture at the resolution the call shows it (the framed photo, e.g.
1280x720, or a square face crop) and its 478 landmarks. Per calibration: the driving neutral frame.
Per frame: a `DrivingFrame`. Output: the animated avatar, BGR uint8, the picture's size. Only the
region around the head is warped, so the cost follows the face's size, not the picture's.

Per avatar (`set_avatar`), everything that does not depend on the driver is precomputed:
  - the mesh: Delaunay over the 468 face points, a ring around the head (the face oval pushed
    out and stretched up over the skull; it moves with the head, so hair, ears and a hat follow
    it), a still ring a fade length outside it, and points on the border of the face region (ROI):
    fixed inside the image, sliding with the head where the crop cuts the head off. Outside the ROI
    the output is the avatar itself: the background stays put and costs nothing;
  - the barycentric weights of every point of a reduced-resolution grid over the ROI (source side),
    as a sparse matrix: per frame, the forward displacement field is one sparse product;
  - the mouth cavity colours (from the avatar's lips), the eye regions with the irises painted out
    and the iris patches (for gaze and blinks).

Per frame (`animate`): motion.py gives the target landmarks; the mesh's vertex displacements give
the forward field d on the source grid; the backward map x(q) with x + d(x) = q is found by a few
fixed-point steps x ← q − d(x) (cv2.remap samples d), on the reduced grid, then upsampled with
cv2.resize and applied by one cv2.remap. Then, only where needed: a shaded mouth cavity where the
driver opens the mouth wider than the avatar's, and per eye the iris moved (gaze) and clipped by
the lids (blinks: the lids close over it, no squashed iris).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse
from scipy.spatial import Delaunay

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import REGIONS, Animator, AnimatorError
from avatarify.motion import (EYES, FACE_OVAL, INNER_LIPS, MOUTH_CORNERS, MOUTH_INNER_BOTTOM,
                              MOUTH_INNER_TOP, NUM_LANDMARKS, NUM_MESH_POINTS, OUTER_LIPS, EyeIndices,
                              MotionSettings, MotionTarget, MotionTransfer, Similarity, as_complex,
                              as_points, head_outline, mouth_open_ratio)

log = logging.getLogger(__name__)

# The head's motion fades out over this share of the face size outside the ring (to a still ring,
# and the ROI box around it). The fade must be longer than the ring moves, or the warp folds: a
# 15 degree roll moves the ring's sides ~0.2 face sizes, 0.3 leaves room up to ~20 degrees.
ROI_MARGIN = 0.3
RING_SQUEEZE = 0.4  # the skin between face outline and ring may shrink to this share of its width
FIXED_POINT_STEPS = 3  # backward-map iterations; error shrinks ~5x per step on face motion
# The backward map is computed on a grid of one sample per this many pixels of face size (sqrt of
# the face box area), at least every 2nd pixel: ~70 samples across a face lands landmarks within
# 0.4 px at any resolution (a 256 crop gets a 2 px step, a 720p call frame 3, 1080p 4).
FACE_SIZE_PER_STEP = 90.0
MIN_AVATAR_SIDE = 32
CAVITY_START = 0.02  # mouth-open ratio above the avatar's own at which the cavity starts to show
CAVITY_FULL = 0.08  # ... and at which it is fully shown

# Cavity colours, BGR: dark red-brown at the lips fading to near-black at the back of the mouth.
CAVITY_EDGE_BGR = np.array([38, 36, 92], np.float32)
CAVITY_BACK_BGR = np.array([14, 12, 28], np.float32)
TEETH_BGR = np.array([170, 188, 200], np.float32)
IRIS_REACH = (0.22, 0.10)  # how far the iris may move, in eye widths (along, across the eye)


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

    def to_index(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution positions → fractional sample indices (cv2.remap maps into the grid)."""
        scale = 1.0 / self.step
        mx = (xy[..., 0] - self.x0 + 0.5) * scale - 0.5
        my = (xy[..., 1] - self.y0 + 0.5) * scale - 0.5
        return mx, my

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


@dataclass
class _EyeRig:
    """One eye, precomputed on the avatar."""

    indices: EyeIndices
    iris_centre: np.ndarray  # avatar px
    iris_radius: float
    iris_patch_bgr: np.ndarray  # float32 square patch centred on the iris
    iris_alpha: np.ndarray  # float32 soft disk, same size
    width: float  # corner to corner, avatar px


@dataclass
class _MouthRig:
    open_ratio: float  # the avatar's own inner-lip gap over mouth width
    edge_bgr: np.ndarray  # cavity colour next to the lips (tinted by the avatar's lips)


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


class MeshAnimator(Animator):
    """Piecewise-affine face-mesh warp with mouth cavity, blinks and gaze (see module docstring)."""

    name = "mesh"

    def __init__(self, motion: MotionSettings | None = None) -> None:
        super().__init__()
        self.motion = MotionTransfer(motion)
        self.step = 2  # set per avatar from its face size
        self._image_size = (0, 0)  # (width, height) of the avatar picture
        self._avatar_bgr: np.ndarray | None = None
        self._last_output: np.ndarray | None = None
        self.last_map: np.ndarray | None = None  # (h, w, 2) backward map over the ROI (tests, HUD)
        self.last_target: MotionTarget | None = None

    # ------------------------------------------------------------------------------------------
    # Per avatar
    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks | None) -> None:
        avatar_bgr = self._checked_avatar(avatar_bgr)
        if landmarks is None:
            landmarks = self.detect_avatar_face(avatar_bgr)
        points = np.asarray(landmarks.points, dtype=np.float32)
        if points.shape != (NUM_LANDMARKS, 2):
            raise AnimatorError(f"The mesh engine needs MediaPipe's {NUM_LANDMARKS} face landmarks, "
                                f"got {len(points)}.")
        self._avatar_bgr = avatar_bgr
        self._avatar_points = points
        self.motion.set_avatar(points)
        self._build_mesh(points)
        self._build_mouth(avatar_bgr, points)
        self._build_eyes(avatar_bgr, points)
        self._last_output = None
        self.last_map = None

    def _checked_avatar(self, avatar_bgr: np.ndarray) -> np.ndarray:
        if avatar_bgr is None or avatar_bgr.ndim != 3 or avatar_bgr.shape[2] != 3:
            raise AnimatorError("The avatar must be a colour (BGR) image.")
        if min(avatar_bgr.shape[:2]) < MIN_AVATAR_SIDE:
            raise AnimatorError(f"The avatar picture is {avatar_bgr.shape[1]}x{avatar_bgr.shape[0]} px; "
                                f"it must be at least {MIN_AVATAR_SIDE} px on each side.")
        self._image_size = (avatar_bgr.shape[1], avatar_bgr.shape[0])
        return np.ascontiguousarray(avatar_bgr, dtype=np.uint8)

    def _build_mesh(self, points: np.ndarray) -> None:
        mesh = points[:NUM_MESH_POINTS].astype(np.float64)
        ring = head_outline(mesh)
        face_size = float(np.sqrt(np.prod(mesh.max(axis=0) - mesh.min(axis=0))))
        self.step = max(2, int(round(face_size / FACE_SIZE_PER_STEP)))
        self._grid = self._roi_grid(ring, face_size)
        grid = self._grid
        inset = 1.0  # ring points stay this far inside the ROI so no triangle folds over the border
        self._ring_box = (grid.x0 + inset, grid.y0 + inset,
                          grid.x0 + grid.width - 1 - inset, grid.y0 + grid.height - 1 - inset)
        self._ring_src = np.clip(ring, self._ring_box[:2], self._ring_box[2:]).astype(np.float32)
        self._ring_gap = np.linalg.norm(self._ring_src - mesh[list(FACE_OVAL)], axis=1).astype(np.float32)
        self._ring_limits = self._ring_target_limits(grid)
        border = np.concatenate([self._border_points(grid), self._still_ring(ring, ROI_MARGIN * face_size, grid)])
        self._edge_nearest, self._edge_share = self._edge_shares(border, ROI_MARGIN * face_size)
        # Face points outside the ROI (a face cut by the crop edge) are pulled in, so the border
        # stays the mesh's convex hull.
        inside = np.clip(mesh, self._ring_box[:2], self._ring_box[2:]).astype(np.float32)
        self._vertices_src = np.concatenate([inside, self._ring_src, border])
        self._num_moving = NUM_MESH_POINTS + len(ring)
        triangulation = Delaunay(self._vertices_src.astype(np.float64))
        self._weights = self._barycentric_matrix(triangulation, grid.points().reshape(-1, 2))
        self._grid_points = grid.points()
        gy, gx = np.mgrid[grid.y0:grid.y0 + grid.height, grid.x0:grid.x0 + grid.width].astype(np.float32)
        self._full_grid = np.ascontiguousarray(np.stack([gx, gy], axis=-1))

    def _ring_target_limits(self, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """Bounds for moved ring points: inside the ROI where its border is fixed (so no triangle
        folds over it), free where the ROI ends at the image's own edge (that edge slides)."""
        lo = np.array(self._ring_box[:2], np.float32)
        hi = np.array(self._ring_box[2:], np.float32)
        lo[[grid.x0 == 0, grid.y0 == 0]] = -np.inf
        width, height = self._image_size
        hi[[grid.x0 + grid.width == width, grid.y0 + grid.height == height]] = np.inf
        return lo, hi

    @staticmethod
    def _still_ring(ring: np.ndarray, margin_px: float, grid: _Grid) -> np.ndarray:
        """Fixed points `margin_px` outside the ring, along the rays from its centre: the head's
        motion fades out over the same distance all around it (not out to the ROI's corners),
        so the room close beside the head is already still. Points off the image are dropped (the
        image edge slides there instead), as are points that would crowd the ROI border."""
        out = ring - ring.mean(axis=0)
        still = ring + margin_px * out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        lo = np.array([grid.x0, grid.y0]) + 2.0
        hi = np.array([grid.x0 + grid.width, grid.y0 + grid.height]) - 3.0
        return still[((still >= lo) & (still <= hi)).all(axis=1)].astype(np.float32)

    def _edge_shares(self, border: np.ndarray, reach_px: float) -> tuple[np.ndarray, np.ndarray]:
        """Per border point: the nearest ring point and the share of its motion the point takes.
        The ROI border inside the image stays put (share 0): the background does not move. Where
        the ROI ends at the image's own edge (a head cut by the crop), the edge moves with the head
        as the ring's motion fades over `reach_px`, as it does inside the ROI; pinning it would
        tear hair or a hat that the crop cuts."""
        on_image_edge = (border < 0.0).any(axis=1) | (border > np.array(self._image_size) - 1).any(axis=1)
        distance = np.linalg.norm(border[:, None, :] - self._ring_src[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        share = np.clip(1.0 - distance.min(axis=1) / max(reach_px, 1.0), 0.0, 1.0) * on_image_edge
        return nearest, share.astype(np.float32)

    def _roi_grid(self, ring: np.ndarray, face_size: float) -> _Grid:
        """The warped region: the ring plus a margin, clipped to the image, sides multiples of step."""
        step = self.step
        image_w, image_h = self._image_size
        x0, y0, x1, y1 = _box_around(ring, ROI_MARGIN * face_size, (0, 0, image_w, image_h))
        x0, y0 = (x0 // step) * step, (y0 // step) * step
        width = min(-(-(x1 - x0) // step) * step, image_w - x0)
        height = min(-(-(y1 - y0) // step) * step, image_h - y0)
        return _Grid(x0, y0, width - width % step, height - height % step, step)

    @staticmethod
    def _border_points(grid: _Grid, per_side: int = 16) -> np.ndarray:
        """Points along the ROI border: fixed inside the image (the warp is the identity there, so
        no seam); on the image's own edge they slide with the head (see _edge_shares)."""
        x0, y0 = grid.x0 - 0.5, grid.y0 - 0.5
        x1, y1 = grid.x0 + grid.width - 0.5, grid.y0 + grid.height - 0.5
        t = np.linspace(0.0, 1.0, per_side, endpoint=False)
        top = np.stack([x0 + t * (x1 - x0), np.full_like(t, y0)], axis=1)
        right = np.stack([np.full_like(t, x1), y0 + t * (y1 - y0)], axis=1)
        bottom = np.stack([x1 - t * (x1 - x0), np.full_like(t, y1)], axis=1)
        left = np.stack([np.full_like(t, x0), y1 - t * (y1 - y0)], axis=1)
        return np.concatenate([top, right, bottom, left]).astype(np.float32)

    @staticmethod
    def _barycentric_matrix(triangulation: Delaunay, samples: np.ndarray) -> scipy.sparse.csr_matrix:
        """Sparse (samples × vertices) barycentric weights: weights @ vertex_values interpolates any
        per-vertex quantity (here: displacement) piecewise-linearly over the mesh."""
        simplex = triangulation.find_simplex(samples)
        inside = simplex >= 0
        rows = np.nonzero(inside)[0]
        tri = simplex[inside]
        transform = triangulation.transform[tri]  # (n, 3, 2): inverse affine + offset per triangle
        b = np.einsum("nij,nj->ni", transform[:, :2], samples[inside] - transform[:, 2])
        bary = np.concatenate([b, 1.0 - b.sum(axis=1, keepdims=True)], axis=1)
        vertices = triangulation.simplices[tri]
        return scipy.sparse.csr_matrix(
            (bary.astype(np.float32).ravel(), (np.repeat(rows, 3), vertices.ravel())),
            shape=(len(samples), len(triangulation.points)))

    def _build_mouth(self, avatar_bgr: np.ndarray, points: np.ndarray) -> None:
        outer = _polygon_mask(points[list(OUTER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        inner = _polygon_mask(points[list(INNER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        lips = (outer - inner) > 0.5
        lip_bgr = np.median(avatar_bgr[lips], axis=0).astype(np.float32) if lips.any() else CAVITY_EDGE_BGR
        # The cavity next to the lips is a shadowed continuation of the lips' own hue.
        edge = 0.5 * CAVITY_EDGE_BGR + 0.5 * 0.35 * lip_bgr
        self._mouth = _MouthRig(mouth_open_ratio(points), edge.astype(np.float32))

    def _build_eyes(self, avatar_bgr: np.ndarray, points: np.ndarray) -> None:
        """Per eye: the iris patch and disk, and the avatar with irises painted out (for gaze)."""
        irisless = avatar_bgr.copy()
        rigs = []
        for eye in EYES:
            centre = points[eye.iris_centre].astype(np.float32)
            radius = float(np.linalg.norm(points[list(eye.iris_ring)] - centre, axis=1).mean())
            radius = max(radius, 1.0)
            half = int(np.ceil(radius * 1.3)) + 1
            patch = cv2.getRectSubPix(avatar_bgr, (2 * half + 1, 2 * half + 1), tuple(map(float, centre)))
            yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
            alpha = np.clip(radius + 0.5 - np.sqrt(xx * xx + yy * yy), 0.0, 1.0)
            opening = _polygon_mask(points[list(eye.opening)], (0, 0), avatar_bgr.shape[:2])
            disk = np.zeros(avatar_bgr.shape[:2], np.uint8)
            cv2.circle(disk, tuple(int(round(v)) for v in centre), int(np.ceil(radius * 1.15)), 255, -1)
            disk[opening < 0.01] = 0
            irisless = cv2.inpaint(irisless, disk, max(2.0, radius * 0.5), cv2.INPAINT_TELEA)
            width = float(np.linalg.norm(points[eye.corners[0]] - points[eye.corners[1]]))
            rigs.append(_EyeRig(eye, centre, radius, patch.astype(np.float32), alpha, width))
        self._eyes = rigs
        self._irisless_bgr = irisless

    # ------------------------------------------------------------------------------------------
    # Per calibration
    def set_neutral(self, driving: DrivingFrame) -> None:
        if driving.landmarks is None:
            raise AnimatorError("No face in the driving frame; look at the camera and calibrate again.")
        self.motion.set_neutral(driving.landmarks.points)

    # ------------------------------------------------------------------------------------------
    # Per frame
    def animate(self, driving: DrivingFrame) -> np.ndarray:
        if self._avatar_bgr is None:
            raise AnimatorError("No avatar is set; call set_avatar first.")
        if driving.landmarks is None:
            return self._last_output if self._last_output is not None else self._avatar_bgr.copy()
        if not self.motion.ready:
            log.info("no neutral pose calibrated yet; using the first driving frame as the neutral")
            self.set_neutral(driving)
        if self.region not in REGIONS:
            raise AnimatorError(f"Unknown region {self.region!r}; use one of {', '.join(REGIONS)}.")
        target = self.motion.target(driving.landmarks.points, driving.timestamp, self.strength,
                                    self.region, driving.motion_scale)
        self.last_target = target
        output = self.render(target)
        self._last_output = output
        return output

    def render(self, target: MotionTarget) -> np.ndarray:
        """The avatar with its landmarks moved to `target.points` (avatar px)."""
        backward = self.backward_map(target)
        self.last_map = backward
        grid = self._grid
        rows, cols = grid.slices
        # Reflected, not repeated: where a cut-off head moves into the frame, hair texture continues.
        warped = cv2.remap(self._avatar_bgr, backward, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        self._paint_eyes(warped, backward, target)
        self._paint_mouth(warped, target.points)
        output = self._avatar_bgr.copy()
        output[rows, cols] = warped
        return output

    def landing_error(self, target: MotionTarget) -> np.ndarray:
        """Per face landmark, how far (px) the backward map for `target` misses: where the output
        pixel at the target position samples the avatar, minus the avatar's own landmark. NaN for
        points outside the ROI."""
        backward = self.backward_map(target)
        grid = self._grid
        at = target.points[:NUM_MESH_POINTS] - np.array([grid.x0, grid.y0], np.float32)
        sampled = cv2.remap(backward, at[None, :, 0], at[None, :, 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)[0]
        inside = (at >= 0).all(axis=1) & (at[:, 0] <= grid.width - 1) & (at[:, 1] <= grid.height - 1)
        error = np.linalg.norm(sampled - self._avatar_points[:NUM_MESH_POINTS], axis=1)
        return np.where(inside, error, np.nan)

    @property
    def roi(self) -> tuple[slice, slice]:
        """The (rows, cols) the engine may change; outside it the output is the avatar."""
        return self._grid.slices

    def _vertex_targets(self, target: MotionTarget) -> np.ndarray:
        """Where every mesh vertex goes: face points to the targets, ring points with the head (and
        with what of the face outline's expression the skin between cannot take up), border points
        nowhere (or sliding with the head on the image's own edge)."""
        ring = as_points(target.head(as_complex(self._ring_src + self._ring_expression(target))))
        ring = np.clip(ring, *self._ring_limits)
        moving = np.concatenate([target.points[:NUM_MESH_POINTS], ring])
        vertices = self._vertices_src.copy()
        vertices[:self._num_moving] = moving
        ring_motion = ring - self._ring_src
        vertices[self._num_moving:] += self._edge_share[:, None] * ring_motion[self._edge_nearest]
        return vertices

    def _ring_expression(self, target: MotionTarget) -> np.ndarray:
        """The ring's share of the face outline's expression (a dropping jaw, mostly): the skin
        between outline and ring is squeezed to RING_SQUEEZE of its width before the ring gives
        way, so the collar stays still while talking and a wide-open jaw still cannot fold it."""
        if target.expression is None:
            return np.zeros_like(self._ring_src)
        outline = target.expression[list(FACE_OVAL)]
        length = np.linalg.norm(outline, axis=1, keepdims=True)
        slack = (1.0 - RING_SQUEEZE) * self._ring_gap[:, None]
        return outline * (np.maximum(length - slack, 0.0) / np.maximum(length, 1e-6))

    def backward_map(self, target: MotionTarget) -> np.ndarray:
        """(h, w, 2) float32 source position (avatar px) of every ROI pixel of the output."""
        grid = self._grid
        displacement = self._vertex_targets(target) - self._vertices_src
        forward = np.asarray(self._weights @ displacement, dtype=np.float32).reshape(*grid.shape, 2)
        # Fixed point of x = q − d(x): starts from q − d(q), contracts as long as the mesh is not
        # folded (|∇d| < 1); three steps reach well under 0.1 px on face motion.
        source = self._grid_points - forward
        for _ in range(FIXED_POINT_STEPS):
            mx, my = grid.to_index(source)
            sampled = cv2.remap(forward, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            source = self._grid_points - sampled
        # Upsample the offset, not the positions: it is 0 at the fixed border, so the half-sample
        # the upsampling clamps at the ROI edge costs nothing there.
        offset = cv2.resize(source - self._grid_points, (grid.width, grid.height), interpolation=cv2.INTER_LINEAR)
        return cv2.add(offset, self._full_grid, dst=offset)

    # ------------------------------------------------------------------------------------------
    # Mouth: a shaded cavity where the driver opens wider than the avatar's own mouth
    def _paint_mouth(self, warped: np.ndarray, points: np.ndarray) -> None:
        opening = mouth_open_ratio(points) - self._mouth.open_ratio
        strength = float(np.clip((opening - CAVITY_START) / (CAVITY_FULL - CAVITY_START), 0.0, 1.0))
        if strength <= 0.0:
            return
        grid = self._grid
        lips = points[list(INNER_LIPS)] - (grid.x0, grid.y0)
        x0, y0, x1, y1 = _box_around(lips, 2.0, (0, 0, grid.width, grid.height))
        if x1 - x0 < 3 or y1 - y0 < 3:
            return
        mask = _polygon_mask(lips, (x0, y0), (y1 - y0, x1 - x0))
        cavity = self._cavity(mask, points, (x0, y0))
        alpha = (mask * strength)[..., None]
        region = warped[y0:y1, x0:x1].astype(np.float32)
        warped[y0:y1, x0:x1] = (region + alpha * (cavity - region) + 0.5).astype(np.uint8)

    def _cavity(self, mask: np.ndarray, points: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
        """Cavity colours for a mouth mask (box at `origin`, ROI px): darker away from the lips (the
        back of the mouth), and a soft hint of upper teeth just under the upper lip, widest mid-mouth."""
        depth = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        left, right = points[MOUTH_CORNERS[0]], points[MOUTH_CORNERS[1]]
        mouth_width = float(np.linalg.norm(right - left))
        shade = np.clip(depth / max(0.12 * mouth_width, 1.0), 0.0, 1.0)[..., None]
        cavity = self._mouth.edge_bgr + shade * (CAVITY_BACK_BGR - self._mouth.edge_bgr)
        band = max(0.11 * mouth_width, 1.0)
        below_lip = np.cumsum(mask, axis=0)  # px of opening above each pixel: 0 at the upper lip
        vertical = np.clip(1.0 - below_lip / band, 0.0, 1.0) * mask
        xs = np.arange(mask.shape[1], dtype=np.float32) + origin[0] + self._grid.x0
        u = (xs - 0.5 * (left[0] + right[0])) / max(0.5 * abs(right[0] - left[0]), 1.0)
        horizontal = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
        gap = float(np.linalg.norm(points[MOUTH_INNER_TOP] - points[MOUTH_INNER_BOTTOM]))
        teeth = (0.85 * min(gap / (2.5 * band), 1.0)) * np.sqrt(vertical) * vertical * horizontal[None, :]
        return cavity + teeth[..., None] * (TEETH_BGR - cavity)

    # ------------------------------------------------------------------------------------------
    # Eyes: the iris moved inside the opening, the lids closing over it
    def _paint_eyes(self, warped: np.ndarray, backward: np.ndarray, target: MotionTarget) -> None:
        for rig in self._eyes:
            self._paint_eye(warped, backward, target, rig)

    def _paint_eye(self, warped: np.ndarray, backward: np.ndarray, target: MotionTarget, rig: _EyeRig) -> None:
        points = target.points
        eye = rig.indices
        head_scale = target.head.scale
        iris_target = self._iris_in_eye(points[eye.iris_centre], rig, points)
        # Where the mesh warp alone puts the avatar's iris: the nearest output pixel that samples it.
        opening_target = points[list(eye.opening)]
        opening_src = self._avatar_points[list(eye.opening)]
        gap_target = np.linalg.norm(points[list(eye.upper_lid)] - points[list(eye.lower_lid)], axis=1).mean()
        gap_src = np.linalg.norm(opening_src[:len(eye.upper_lid)] -
                                 self._avatar_points[list(eye.lower_lid)], axis=1).mean()
        closing = float(np.clip(1.0 - gap_target / max(gap_src * head_scale, 1e-6), 0.0, 1.0))
        moved_centre = self._mesh_moved(rig.iris_centre, target)
        shift = float(np.linalg.norm(iris_target - moved_centre))
        # Fade in the re-painted eye with the change, so the identity motion stays pixel-exact.
        blend = float(np.clip(max(shift / 1.0, closing / 0.1), 0.0, 1.0))
        if blend <= 0.0:
            return
        grid = self._grid
        origin = np.array([grid.x0, grid.y0], np.float32)
        pad = rig.iris_radius * head_scale + 2.0
        x0, y0, x1, y1 = _box_around(opening_target - origin, pad, (0, 0, grid.width, grid.height))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        background = cv2.remap(self._irisless_bgr, np.ascontiguousarray(backward[y0:y1, x0:x1]), None,
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        iris, iris_alpha = self._placed_iris(rig, iris_target - origin - (x0, y0), head_scale, target.head,
                                             (x1 - x0, y1 - y0))
        eye_bgr = background + iris_alpha[..., None] * (iris - background)
        opening_mask = _polygon_mask(opening_target - origin, (x0, y0), (y1 - y0, x1 - x0))
        alpha = (opening_mask * blend)[..., None]
        region = warped[y0:y1, x0:x1].astype(np.float32)
        warped[y0:y1, x0:x1] = (region + alpha * (eye_bgr - region) + 0.5).astype(np.uint8)

    def _iris_in_eye(self, iris: np.ndarray, rig: _EyeRig, points: np.ndarray) -> np.ndarray:
        """The iris target kept inside the eye: in the eye's own frame (corner to corner = 0..1) at
        most IRIS_REACH from where the avatar's iris sits, so a tracking glitch cannot roll it out."""
        corners = list(rig.indices.corners)
        src = as_complex(self._avatar_points[corners])
        dst = as_complex(points[corners])
        home = (complex(*rig.iris_centre) - src[0]) / (src[1] - src[0])
        u = (complex(float(iris[0]), float(iris[1])) - dst[0]) / (dst[1] - dst[0])
        reach_x, reach_y = IRIS_REACH
        u = complex(np.clip(u.real, home.real - reach_x, home.real + reach_x),
                    np.clip(u.imag, home.imag - reach_y, home.imag + reach_y))
        z = dst[0] + u * (dst[1] - dst[0])
        return np.array([z.real, z.imag], np.float32)

    def _mesh_moved(self, source_point: np.ndarray, target: MotionTarget) -> np.ndarray:
        """Where the warp carries an avatar point inside an eye: the iris centre is not a mesh vertex,
        so it moves with the similarity of the nearest eye's corners."""
        nearest = min(self._eyes, key=lambda r: float(np.linalg.norm(r.iris_centre - source_point)))
        corners = list(nearest.indices.corners)
        src = as_complex(self._avatar_points[corners])
        dst = as_complex(target.points[corners])
        m = (dst[1] - dst[0]) / (src[1] - src[0])
        moved = m * (complex(source_point[0], source_point[1]) - src[0]) + dst[0]
        return np.array([moved.real, moved.imag], np.float32)

    @staticmethod
    def _placed_iris(rig: _EyeRig, centre: np.ndarray, scale: float, head: Similarity,
                     box_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The iris patch and its disk, rotated/scaled with the head, centred at `centre` (box px)."""
        half = (rig.iris_patch_bgr.shape[1] - 1) / 2.0
        rotation = np.angle(head.m, deg=True)
        matrix = cv2.getRotationMatrix2D((half, half), -rotation, scale)
        matrix[:, 2] += centre - (half, half)
        iris = cv2.warpAffine(rig.iris_patch_bgr, matrix, box_size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(rig.iris_alpha, matrix, box_size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return iris, alpha
