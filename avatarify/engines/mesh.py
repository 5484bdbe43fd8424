"""The embedded engine: the avatar photo's face mesh moved in 3-D and drawn back to front (no weights).

Input per avatar: the avatar picture at the resolution the call shows it (the framed photo, e.g.
1280x720, or a square face crop) and its 478 landmarks with Face Mesh's depth. Per calibration: the
driving neutral frame. Per frame: a `DrivingFrame`. Output: the animated avatar, BGR uint8, the
picture's size. Only the region around the head (ROI) is warped, so the cost follows the face's
size, not the picture's.

Per avatar (`set_avatar`), everything that does not depend on the driver is precomputed:
  - the mesh: Delaunay over about half of the 468 face points (every feature contour, evenly spaced
    points between: `warp_points`), a ring around the head (the face oval pushed out and stretched
    up over the skull, then grown over the hair the person mask shows; it moves with the head's
    outline), a still ring a fade length outside it, and points on the ROI's border (fixed inside
    the picture, sliding along its edge where the picture cuts the head). Face vertices carry Face
    Mesh's depth; the ring lies in the plane of the head's outline. Each iris centre is a vertex
    too, and its eye opening a fan of triangles around it, so a gaze moves the photo's own iris;
  - the head as a layer over the room: a matte (MediaPipe's person mask inside the head outline,
    fading into the still neck below the chin) and a room plate (the photo with the head
    inpainted at low resolution), so a moving head uncovers room instead of stretching the wall,
    the hair or the shirt beside it;
  - the mouth's colours and light, and the photo's moustache over the lips (if any).

Per frame (`animate`): motion.py gives the target landmarks, their depth and the head's 3-D pose.
The moved mesh is drawn on a reduced grid over the ROI (one sample per few pixels) back to front:
the room, the outline's band, then the face's triangles from far to near; a triangle whose
orientation flipped shows its back and is not drawn, so a turned head hides its far side instead of
folding it. Each grid sample takes its triangle's affine map (target → source); the map is
upsampled and applied by one cv2.remap, and the warped head is blended over the room plate by its
moved matte, only within the box of pixels that can change. Then, where the driver opens the mouth
wider than the avatar: the mouth interior, the driver's own teeth and tongue from the driving frame
(inside their inner lips, eroded, so their lips never show, its colours carried out to the avatar's
lips), lit as the avatar's cheeks are (brightness, and a little of their warmth: teeth stay white),
over a shaded cavity, under the avatar's moustache if it has one, faded in with the opening.

The eyes are the warp's: blinks, winks and widening move the lids (with their lashes) and the photo's
own eye between them; a gaze moves the iris vertex along the eye (as far as the driver's iris moves
in theirs, at most IRIS_REACH), across it the iris keeps its share of the way between the lids, so a
closing lid covers it instead of folding over it. An earlier version re-painted an inpainted eyeball
and a re-sampled iris under the lids: it differed from the photo even at rest (no dark rim under
the lid, a softer iris), Face Mesh read those lids less faithfully (real driving videos, driver vs
output eye-opening r 0.84 / 0.80 / 0.86 with it, 0.89 / 0.87 / 0.90 warp-only; bench/eye_stages.py),
and it cost ~1 ms per frame at 256 px.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import REGIONS, Animator, AnimatorError
from avatarify.motion import (CHIN, EYES, FACE_OVAL, FOREHEAD, INNER_LIPS, LASH_RINGS, STABLE_POINTS, MOUTH_CORNERS, MOUTH_INNER_BOTTOM,
                              MOUTH_INNER_TOP, NUM_LANDMARKS, NUM_MESH_POINTS, OUTER_LIPS, EyeIndices,
                              MotionSettings, MotionTarget, MotionTransfer, as_complex,
                              as_points, head_outline, mouth_open_ratio)

log = logging.getLogger(__name__)

# The head's motion fades out over this share of the face size outside the ring (to a still ring,
# and the ROI box around it). The fade must be longer than the ring moves, or the warp folds: a
# 15 degree roll moves the ring's sides ~0.2 face sizes, 0.3 leaves room up to ~20 degrees.
ROI_MARGIN = 0.3
RING_SQUEEZE = 0.4  # the skin between face outline and ring may shrink to this share of its width
# A moved triangle whose doubled signed area (px²) falls below this, or flips sign, shows its back:
# it is not drawn (the far cheek of a turned head, a lid closed over the eye).
FLIP_AREA_PX2 = 1e-3
WARP_SPACING = 0.05  # face widths between the warp mesh's points away from the features (see warp_points)
# The backward map is computed on a grid of one sample per this many pixels of face size (sqrt of
# the face box area), at least every 2nd pixel: ~70 samples across a face lands landmarks within
# 0.4 px at any resolution (a 256 crop gets a 2 px step, a 720p call frame 3, 1080p 4).
FACE_SIZE_PER_STEP = 90.0
MIN_AVATAR_SIDE = 32
# The head layer: hair within HAIR_REACH face sizes beyond the head outline moves with it as one
# piece (the outline grows over it, plus HAIR_MARGIN of the reach); below the chin the head fades
# into the still neck and torso between NECK_FADE[0] and NECK_FADE[1] face heights; the person
# mask's edge is feathered by HAIR_FEATHER face sizes (Gaussian sigma).
HAIR_REACH = 0.35
HAIR_MARGIN = 0.3
NECK_FADE = (0.03, 0.25)
HAIR_FEATHER = 0.006
HAIR_EDGE = 0.015  # the head layer fades out over this share of the face size inside the outline
NECK_JAW = (58, 288)  # the jaw at mouth level, image left and right: the neck hangs below them
PLATE_SIDE = 128  # the room behind the head is inpainted at about this resolution (it is smooth)
CAVITY_START = 0.02  # mouth-open ratio above the avatar's own at which the cavity starts to show
CAVITY_FULL = 0.08  # ... and at which it is fully shown
# The driver's mouth interior is used inside their inner lips eroded by this share of their lip gap
# (their lips never show), its colours carried out to the avatar's inner lips (no dark cavity ring
# between them), lit as the avatar: their skin's brightness matched by a gain within this range.
MOUTH_INSET = 0.12
MOUTH_GAIN_RANGE = (0.6, 1.6)
# The white balance of the interior follows the avatar's light along the warm-cool axis only (the
# way daylight, lamps and old prints differ; a green-magenta difference between two faces is their
# skin, not their light), from the two people's cheeks, by at most this log red/blue gain each way:
# skin hue differs between people as much as light does, and a few % already tints white teeth
# (their saturation rises by about the red/blue gain spread).
MOUTH_WHITE_REACH = 0.02
CHEEKS = (50, 280, 118, 347)  # below the eyes, above any beard: the skin whose light is matched
# The avatar's moustache hangs over the opened mouth: pixels darker than this share of its cheeks'
# grey, hanging unbroken from the upper lip's middle, in blobs wider than MOUSTACHE_MIN_WIDTH face
# sizes (thinner dark lines are the closed lips' seam and its shadow), drawn over the interior.
MOUSTACHE_DARK = 0.65
MOUSTACHE_MIN_WIDTH = 0.02
# The upper lip's outer and inner contours: the moustache moves with them as one piece.
UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
MOUTH_FEATHER = 0.003  # the interior's edge fades over the lips' inner edge (Gaussian sigma, face sizes)
GREY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # BGR weights of grey (Rec. 601, as cv2's)

# Cavity colours, BGR: dark red-brown at the lips fading to near-black at the back of the mouth.
CAVITY_EDGE_BGR = np.array([38, 36, 92], np.float32)
CAVITY_BACK_BGR = np.array([14, 12, 28], np.float32)
TEETH_BGR = np.array([170, 188, 200], np.float32)
IRIS_REACH = 0.22  # how far along the eye the iris may move from the avatar's own place, in eye widths
GAZE_SHARE = (0.15, 0.85)  # the iris stays this far between the lower (0) and upper (1) lid


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


@dataclass
class _Gaze:
    """One eye's iris as a mesh vertex (gaze): its vertex, the avatar's iris place along the eye and
    across it between the lids (see MeshAnimator._gaze_rig), and its position for the avatar's own
    landmarks (moves are taken relative to it, so the avatar at rest stays exact)."""

    indices: EyeIndices
    vertex: int
    along: float
    share: float
    rest: np.ndarray


def _eye_frame(points: np.ndarray, eye: EyeIndices) -> tuple[tuple[complex, complex], complex]:
    """The eye's own frame (its first corner and the vector to the other: corner to corner = 0..1
    along the real axis) and the iris centre in it."""
    corner = complex(*points[eye.corners[0]])
    axis = complex(*points[eye.corners[1]]) - corner
    return (corner, axis), (complex(*points[eye.iris_centre]) - corner) / axis


def _lids_across(points: np.ndarray, eye: EyeIndices, frame: tuple[complex, complex],
                 along: float) -> tuple[float, float]:
    """Where the lower and the upper lid lie across the eye (in its frame) at `along`."""
    corner, axis = frame
    across = []
    for lid in (eye.lower_lid, eye.upper_lid):
        at = (points[list(lid), 0] + 1j * points[list(lid), 1] - corner) / axis
        order = np.argsort(at.real)
        across.append(float(np.interp(along, at.real[order], at.imag[order])))
    return across[0], across[1]


@dataclass
class _MouthRig:
    open_ratio: float  # the avatar's own inner-lip gap over mouth width
    edge_bgr: np.ndarray  # cavity colour next to the lips (tinted by the avatar's lips)
    lip_bgr: np.ndarray  # the avatar's median lip colour
    skin_bgr: np.ndarray  # the avatar's cheeks' colour (the interior's light follows it)
    hair: np.ndarray | None = None  # float32 [0, 1] moustache over the lips (avatar px), or None
    hair_bgr: np.ndarray | None = None  # the avatar's pixels under `hair`
    hair_origin: tuple[int, int] = (0, 0)  # avatar px (x, y) of `hair`'s first pixel


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
    kept = sorted(keep)
    for i in range(NUM_MESH_POINTS):
        if i not in keep and np.linalg.norm(points[kept] - points[i], axis=1).min() >= spacing:
            kept.append(i)
    return np.array(sorted(kept))


def _rows_filled(image_bgr: np.ndarray, unknown: np.ndarray, fallback_bgr: np.ndarray) -> np.ndarray:
    """`image_bgr` with its `unknown` pixels filled row by row, linearly between the nearest known
    pixels left and right (constant beyond the last one): rooms are mostly horizontal bands (a wall
    over a shelf, a desk edge), which radial inpainting smears into a blotch of the band beside the
    head. Rows with nothing known take `fallback_bgr`; a light blur across rows evens the seams."""
    filled = fallback_bgr.astype(np.float32)
    columns = np.arange(image_bgr.shape[1])
    for row in np.flatnonzero(unknown.any(axis=1)):
        known = ~unknown[row]
        if not known.any():
            continue
        for channel in range(3):
            filled[row, ~known, channel] = np.interp(columns[~known], columns[known], image_bgr[row, known, channel])
    smooth = cv2.GaussianBlur(filled, (0, 0), 1.0)
    filled[unknown] = smooth[unknown]
    return np.clip(filled + 0.5, 0, 255).astype(np.uint8)


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) around two boxes (a may be None)."""
    if a is None:
        return tuple(int(v) for v in b)
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _person_mask(image_bgr: np.ndarray) -> np.ndarray | None:
    """float32 [0, 1] person mask of the picture (MediaPipe selfie segmentation, general model), or
    None where MediaPipe cannot run it."""
    try:
        import mediapipe as mp

        with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
            result = segmenter.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    except Exception as exc:  # noqa: BLE001 - any failure leaves the head unlayered, not the app down
        log.warning("no person mask for the avatar (%s); the room beside the head will stretch with it", exc)
        return None
    mask = result.segmentation_mask
    return None if mask is None else np.asarray(mask, dtype=np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class MeshAnimator(Animator):
    """Piecewise-affine face-mesh warp with mouth interior, lids and gaze (see module docstring)."""

    name = "mesh"

    def __init__(self, motion: MotionSettings | None = None) -> None:
        super().__init__()
        self.motion = MotionTransfer(motion)
        self.step = 2  # set per avatar from its face size
        self._image_size = (0, 0)  # (width, height) of the avatar picture
        self._avatar_bgr: np.ndarray | None = None
        self._last_output: np.ndarray | None = None
        self._last_relative: np.ndarray | None = None  # the last frame's relative map (see last_map)
        self.last_map_origin: np.ndarray | None = None  # avatar px (x, y) of last_map's first pixel
        self.last_target: MotionTarget | None = None
        self._mouth_gain = np.ones(3, np.float32)  # driver -> avatar colour gain of the mouth interior

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
        depth = None if landmarks.depth is None else np.asarray(landmarks.depth, dtype=np.float32)
        if depth is None:
            log.info("the avatar's landmarks have no depth: head turns are applied in the image plane")
        self._avatar_bgr = avatar_bgr
        self._avatar_points = points
        self.motion.set_avatar(points, depth)
        person = _person_mask(avatar_bgr)
        self._build_mesh(points, depth, person)
        self._build_layers(avatar_bgr, points, person)
        self._build_mouth(avatar_bgr, points)
        self._last_output = None
        self._last_relative = None

    def _checked_avatar(self, avatar_bgr: np.ndarray) -> np.ndarray:
        if avatar_bgr is None or avatar_bgr.ndim != 3 or avatar_bgr.shape[2] != 3:
            raise AnimatorError("The avatar must be a colour (BGR) image.")
        if min(avatar_bgr.shape[:2]) < MIN_AVATAR_SIDE:
            raise AnimatorError(f"The avatar picture is {avatar_bgr.shape[1]}x{avatar_bgr.shape[0]} px; "
                                f"it must be at least {MIN_AVATAR_SIDE} px on each side.")
        self._image_size = (avatar_bgr.shape[1], avatar_bgr.shape[0])
        return np.ascontiguousarray(avatar_bgr, dtype=np.uint8)

    def _build_mesh(self, points: np.ndarray, depth: np.ndarray | None, person: np.ndarray | None) -> None:
        mesh = points[:NUM_MESH_POINTS].astype(np.float64)
        face_size = float(np.sqrt(np.prod(mesh.max(axis=0) - mesh.min(axis=0))))
        self._face_size = face_size
        ring = head_outline(mesh)
        if person is not None:
            ring = self._ring_over_hair(ring, person > 0.5, self._neck_depth(points, person.shape) < NECK_FADE[0],
                                        HAIR_REACH * face_size)
        self.step = max(2, int(round(face_size / FACE_SIZE_PER_STEP)))
        self._grid = self._roi_grid(ring, face_size)
        grid = self._grid
        inset = 1.0  # ring points stay this far inside the ROI so no triangle folds over the border
        self._ring_box = (grid.x0 + inset, grid.y0 + inset,
                          grid.x0 + grid.width - 1 - inset, grid.y0 + grid.height - 1 - inset)
        self._ring_src = np.clip(ring, self._ring_box[:2], self._ring_box[2:]).astype(np.float32)
        self._ring_gap = np.linalg.norm(self._ring_src - mesh[list(FACE_OVAL)], axis=1).astype(np.float32)
        self._ring_limits = self._ring_target_limits(grid)
        margin_px = ROI_MARGIN * face_size
        border = np.concatenate([self._border_points(grid), self._still_ring(ring, margin_px, grid)])
        self._edge_nearest, self._edge_share = self._edge_shares(border, margin_px)
        # Face points outside the ROI (a face cut by the crop edge) are pulled in, so the border
        # stays the mesh's convex hull.
        # The iris centres are vertices too (gaze moves them); they come last of the face points.
        self._warp_points = np.concatenate([warp_points(mesh), [eye.iris_centre for eye in EYES]])
        faces = len(self._warp_points)
        inside = np.clip(points[self._warp_points].astype(np.float64), self._ring_box[:2],
                         self._ring_box[2:]).astype(np.float32)
        self._vertices_src = np.concatenate([inside, self._ring_src, border])
        self._num_moving = faces + len(ring)
        iris_vertices = list(range(faces - len(EYES), faces))
        others = [i for i in range(len(self._vertices_src)) if i not in iris_vertices]
        triangles = np.asarray(others, np.int32)[Delaunay(self._vertices_src[others].astype(np.float64)).simplices]
        triangles, self._gaze_eyes = self._eye_fans(triangles, iris_vertices)
        # Drawing layers, back to front: the room (triangles touching the still ring or the ROI
        # border), the head outline's band (hair, ears, neck), the face (sorted by depth per frame).
        outer = (triangles >= self._num_moving).any(axis=1)
        face = (triangles < faces).all(axis=1)
        self._tri = triangles
        self._tri_layer = np.where(outer, 0, np.where(face, 2, 1)).astype(np.int32)
        self._tri_sign = np.sign(self._signed_areas(self._vertices_src[triangles]))
        # Depth of each vertex at rest: the face's own; the outline band sits in the plane of the
        # head's outline (the pivot's depth), the room far behind it.
        pivot_z = float(self.motion.avatar_pivot[2])
        self._vertex_depth = np.full(len(self._vertices_src), pivot_z, np.float64)
        if depth is not None:
            self._vertex_depth[:faces] = depth[self._warp_points]
        self._grid_points = grid.points()  # float32 (rows, cols, 2)
        self._grid_x = np.ascontiguousarray(self._grid_points[..., 0]).ravel()
        self._grid_y = np.ascontiguousarray(self._grid_points[..., 1]).ravel()
        gy, gx = np.mgrid[grid.y0:grid.y0 + grid.height, grid.x0:grid.x0 + grid.width].astype(np.float32)
        self._full_grid = np.ascontiguousarray(np.stack([gx, gy], axis=-1))
        self.last_triangles: np.ndarray | None = None  # per grid sample: drawn triangle, -1 = at rest
        self.room_samples: np.ndarray | None = None  # per grid sample: only moved room covers it

    @staticmethod
    def _neck_depth(points: np.ndarray, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """float32 (rows, cols) field over a box at `origin` (x, y): how far each pixel lies below the
        chin along the face's down direction, in face heights (negative above the chin)."""
        chin, forehead = points[CHIN].astype(np.float64), points[FOREHEAD].astype(np.float64)
        height = max(float(np.linalg.norm(chin - forehead)), 1.0)
        down = (chin - forehead) / height
        ys = np.arange(origin[1], origin[1] + shape[0], dtype=np.float32)[:, None] - chin[1]
        xs = np.arange(origin[0], origin[0] + shape[1], dtype=np.float32)[None, :] - chin[0]
        return ((xs * down[0] + ys * down[1]) / height).astype(np.float32)

    @staticmethod
    def _ring_over_hair(ring: np.ndarray, hair: np.ndarray, above_neck: np.ndarray, reach_px: float) -> np.ndarray:
        """The head outline pushed out along its rays until it covers the person's hair (`hair`:
        bool person mask over the image, `above_neck` where it counts), by at most `reach_px`: big
        hair then moves with the head as one piece instead of being stretched by the fade."""
        centre = ring.mean(axis=0)
        rays = (ring - centre) / np.maximum(np.linalg.norm(ring - centre, axis=1, keepdims=True), 1e-6)
        steps = np.arange(1.0, reach_px + 1.0, 1.0)
        at = ring[:, None, :] + steps[None, :, None] * rays[:, None, :]  # (R, S, 2)
        xy = np.round(at).astype(np.int64)
        height, width = hair.shape
        inside = (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)
        xs, ys = np.clip(xy[..., 0], 0, width - 1), np.clip(xy[..., 1], 0, height - 1)
        covered = inside & hair[ys, xs] & above_neck[ys, xs]
        # The hair reaches as far as its last pixel along the ray that a run from the ring reaches.
        run = np.cumprod(covered | ~inside, axis=1).astype(bool) & covered
        extra = np.where(run.any(axis=1), steps[np.argmax(np.where(run, steps[None, :], 0.0), axis=1)], 0.0)
        # Neighbouring rays agree (a strand or a gap between strands must not spike the outline).
        extra = np.array([np.median(np.take(extra, range(i - 2, i + 3), mode="wrap")) for i in range(len(extra))])
        return ring + (extra[:, None] + HAIR_MARGIN * reach_px * (extra[:, None] > 0)) * rays

    @staticmethod
    def _signed_areas(corners: np.ndarray) -> np.ndarray:
        """Twice the signed area of triangles given as (T, 3, 2) corners (sign = orientation)."""
        e1 = corners[:, 1] - corners[:, 0]
        e2 = corners[:, 2] - corners[:, 0]
        return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]

    def _eye_fans(self, triangles: np.ndarray, iris_vertices: list[int]) -> tuple[np.ndarray, list[_Gaze]]:
        """Each eye opening triangulated as a fan around its iris centre, so the iris can move
        anywhere inside the opening without folding the mesh (Delaunay alone would tie it to points
        beyond the lids). An eye whose opening the Delaunay mesh does not bound by its own lid edges
        (a nearly shut eye in the photo) keeps its triangles, and its iris stays where it is."""
        vertex_of = {int(index): vertex for vertex, index in enumerate(self._warp_points)}
        gaze_eyes = []
        for eye, centre in zip(EYES, iris_vertices):
            ring = np.array([vertex_of[index] for index in eye.opening], np.int32)
            outline = self._vertices_src[ring].astype(np.float32)
            candidates = np.flatnonzero(np.isin(triangles, ring).all(axis=1))
            centroids = self._vertices_src[triangles[candidates]].mean(axis=1)
            covered = candidates[[cv2.pointPolygonTest(outline, (float(x), float(y)), False) > 0
                                  for x, y in centroids]]
            kept = np.delete(triangles, covered, axis=0)
            kept_edges = {frozenset(map(int, edge)) for t in kept for edge in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
            lid_edges = {frozenset(map(int, edge)) for edge in zip(ring, np.roll(ring, -1))}
            if not covered.size or not lid_edges <= kept_edges:
                log.debug("eye at landmark %d: its opening is not bounded by its lid edges; its iris stays put",
                          eye.iris_centre)
                continue
            fan = np.array([[centre, a, b] for a, b in zip(ring, np.roll(ring, -1))], np.int32)
            triangles = np.concatenate([kept, fan])
            gaze_eyes.append(self._gaze_rig(eye, centre))
        return triangles, gaze_eyes

    def _gaze_rig(self, eye: EyeIndices, vertex: int) -> _Gaze:
        """Where the avatar's iris sits in its eye: along the eye and across it, as a share of the way
        from the lower lid to the upper one."""
        points = self._avatar_points
        frame, iris = _eye_frame(points, eye)
        lower, upper = _lids_across(points, eye, frame, iris.real)
        share = (iris.imag - lower) / (upper - lower) if abs(upper - lower) > 1e-6 else 0.5
        rig = _Gaze(eye, vertex, iris.real, float(np.clip(share, *GAZE_SHARE)), np.zeros(2))
        rig.rest = self._iris_position(points, rig)
        return rig

    @staticmethod
    def _iris_position(points: np.ndarray, gaze: _Gaze) -> np.ndarray:
        """The iris centre for these landmarks: along the eye where their iris is, at most IRIS_REACH
        from the avatar's own place (a tracking glitch cannot roll it out); across, at the avatar's
        own share of the way between the lids, so it stays between them and a closing lid covers it
        (Face Mesh's iris sinks as the lid closes; following it down would fold the lid)."""
        eye = gaze.indices
        frame, iris = _eye_frame(points, eye)
        along = float(np.clip(iris.real, gaze.along - IRIS_REACH, gaze.along + IRIS_REACH))
        lower, upper = _lids_across(points, eye, frame, along)
        position = frame[0] + complex(along, lower + gaze.share * (upper - lower)) * frame[1]
        return np.array([position.real, position.imag])

    def _build_layers(self, avatar_bgr: np.ndarray, points: np.ndarray, person: np.ndarray | None) -> None:
        """The head as a layer over the room: its matte (the person above the neck, feathered, fading
        into the still neck below the chin; the face itself always in) as the alpha of a BGRA copy
        of the avatar, and the room plate (the avatar with the head painted out, inpainted from the
        room around it). A moving head then uncovers room, not a stretched copy of its own hair,
        and the room beside it never bends."""
        grid = self._grid
        rows, cols = grid.slices
        self._plate_bgr = None
        if person is None:
            return
        neck = self._neck_depth(points, person.shape)
        hard = (person > 0.5).astype(np.float32)
        face = _polygon_mask(points[list(FACE_OVAL)], (0, 0), person.shape)
        hard = np.maximum(hard, face)
        sigma = max(HAIR_FEATHER * self._face_size, 0.5)
        soft = cv2.GaussianBlur(hard, (0, 0), sigma) * self._head_region(points, person.shape)
        alpha = soft * (1.0 - _smoothstep((neck - NECK_FADE[0]) / (NECK_FADE[1] - NECK_FADE[0])))
        self._alpha_f32 = alpha.astype(np.float32)
        head = ((soft[rows, cols] > 0.02) & (neck[rows, cols] < NECK_FADE[0])).astype(np.uint8)
        grow = max(int(round(2.0 * sigma)), 1)
        head = cv2.dilate(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        self._plate_bgr = avatar_bgr.copy()
        self._plate_bgr[rows, cols] = self._inpainted(np.ascontiguousarray(avatar_bgr[rows, cols]), head)
        # Triangles of the room layer over no part of the matte only move room, which the plate
        # hides: they need not be drawn while the head is layered over the room.
        corners = self._vertices_src[self._tri]
        lo = np.clip(np.floor(corners.min(axis=1)).astype(int), 0, None)
        hi = np.ceil(corners.max(axis=1)).astype(int) + 1
        over_matte = np.array([alpha[y0:y1, x0:x1].max(initial=0.0) > 0.0 for (x0, y0), (x1, y1) in zip(lo, hi)])
        self._tri_layered = (self._tri_layer > 0) | over_matte
        # Grid cells where the plate differs from the avatar (it shows there once the head leaves).
        cells = cv2.resize(head.astype(np.float32), (grid.shape[1], grid.shape[0]), interpolation=cv2.INTER_AREA)
        self._plate_cells = cells > 0.0

    def _head_region(self, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """float32 [0, 1] over the picture: what can belong to the head layer — inside the head
        outline (grown over the hair) and the neck below the jaw, feathered inward. The shoulders
        beside the neck and stray strands beyond the outline stay with the room."""
        mesh = points[:NUM_MESH_POINTS].astype(np.float64)
        down = mesh[CHIN] - mesh[FOREHEAD]
        jaw = mesh[list(NECK_JAW)]
        middle, half = jaw.mean(axis=0), 0.5 * (jaw[1] - jaw[0])
        # The neck is narrower than the jaw at mouth level; the collar beside it stays with the room.
        neck = np.array([middle - 0.8 * half, middle + 0.8 * half,
                         middle + 0.65 * half + NECK_FADE[1] * down, middle - 0.65 * half + NECK_FADE[1] * down])
        region = np.zeros(shape, np.uint8)
        for polygon in (self._ring_src, neck):
            cv2.fillPoly(region, [np.round(polygon * 16).astype(np.int32)], 1, cv2.LINE_AA, shift=4)
        # Soft inward: nothing beyond the outline moves with the head (the band outside it is
        # stretched by the fade, and hair there would be smeared into streaks).
        # A head the picture's edge cuts keeps going beyond it: the edge does not count as outline
        # (the outline keeps an inset from the edge; the rows and columns beside it continue it).
        edge = 2
        region[:edge], region[-edge:] = region[edge], region[-edge - 1]
        region[:, :edge], region[:, -edge:] = region[:, edge:edge + 1], region[:, -edge - 1:-edge]
        feather = max(HAIR_EDGE * self._face_size, 1.0)
        pad = int(feather) + 2
        region = cv2.copyMakeBorder(region, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        shrunk = cv2.erode(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(feather) + 1,) * 2))
        soft = cv2.GaussianBlur(shrunk.astype(np.float32), (0, 0), feather / 2.0, borderType=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(soft[pad:-pad, pad:-pad])

    @staticmethod
    def _inpainted(image_bgr: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """`image_bgr` with `hole` (uint8 0/1) filled from around it (see `_rows_filled`), at about
        PLATE_SIDE px (the room behind a head is out of focus and smooth; full resolution would cost
        seconds)."""
        if not hole.any():
            return image_bgr.copy()
        height, width = hole.shape
        scale = min(1.0, PLATE_SIDE / max(height, width))
        small_size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
        small = cv2.resize(image_bgr, small_size, interpolation=cv2.INTER_AREA)
        small_hole = (cv2.resize(hole.astype(np.float32), small_size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        filled = _rows_filled(small, small_hole > 0, cv2.inpaint(small, small_hole * 255, 3.0, cv2.INPAINT_TELEA))
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
        plate = image_bgr.copy()
        plate[hole > 0] = filled[hole > 0]
        return plate

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
        so the room close beside the head is already still. Points off the ROI are dropped (the
        image edge slides there instead), as are points that would crowd the ROI border."""
        out = ring - ring.mean(axis=0)
        still = ring + margin_px * out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        lo = np.array([grid.x0, grid.y0]) + 2.0
        hi = np.array([grid.x0 + grid.width, grid.y0 + grid.height]) - 3.0
        return still[((still >= lo) & (still <= hi)).all(axis=1)].astype(np.float32)

    def _edge_shares(self, border: np.ndarray, reach_px: float) -> tuple[np.ndarray, np.ndarray]:
        """Per border point: the nearest ring point and the share of its motion the point takes,
        along the border only ((N, 2): x share, y share). The ROI border inside the image stays put
        (share 0): the background does not move. Where the ROI ends at the image's own edge (a head
        cut by the crop), the edge slides along itself with the head as the ring's motion fades
        over `reach_px`, as it does inside the ROI; pinning it would tear hair or a hat that the
        crop cuts. It never leaves its edge, so the mesh keeps covering the picture."""
        limit = np.array(self._image_size, np.float32) - 1.0
        off = (border < 0.0) | (border > limit)  # (N, 2): beyond the left/right, top/bottom edge
        distance = np.linalg.norm(border[:, None, :] - self._ring_src[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        fade = np.clip(1.0 - distance.min(axis=1) / max(reach_px, 1.0), 0.0, 1.0)
        # On a top or bottom edge the point slides across (x), on a left or right edge up and down
        # (y); a corner point stays.
        slides = np.stack([off[:, 1] & ~off[:, 0], off[:, 0] & ~off[:, 1]], axis=1)
        return nearest, (fade[:, None] * slides).astype(np.float32)

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
        no seam); on the image's own edge they slide along it with the head (see _edge_shares)."""
        x0, y0 = grid.x0 - 0.5, grid.y0 - 0.5
        x1, y1 = grid.x0 + grid.width - 0.5, grid.y0 + grid.height - 0.5
        t = np.linspace(0.0, 1.0, per_side, endpoint=False)
        top = np.stack([x0 + t * (x1 - x0), np.full_like(t, y0)], axis=1)
        right = np.stack([np.full_like(t, x1), y0 + t * (y1 - y0)], axis=1)
        bottom = np.stack([x1 - t * (x1 - x0), np.full_like(t, y1)], axis=1)
        left = np.stack([np.full_like(t, x0), y1 - t * (y1 - y0)], axis=1)
        return np.concatenate([top, right, bottom, left]).astype(np.float32)

    def _build_mouth(self, avatar_bgr: np.ndarray, points: np.ndarray) -> None:
        outer = _polygon_mask(points[list(OUTER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        inner = _polygon_mask(points[list(INNER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        lips = (outer - inner) > 0.5
        lip_bgr = np.median(avatar_bgr[lips], axis=0).astype(np.float32) if lips.any() else CAVITY_EDGE_BGR
        # The cavity next to the lips is a shadowed continuation of the lips' own hue.
        edge = 0.5 * CAVITY_EDGE_BGR + 0.5 * 0.35 * lip_bgr
        skin = self._cheeks_bgr(avatar_bgr, points)
        hair, (hx, hy) = self._moustache(avatar_bgr, points, float(skin @ GREY_BGR))
        hair_bgr = None if hair is None else avatar_bgr[hy:hy + hair.shape[0], hx:hx + hair.shape[1]].astype(np.float32)
        self._mouth = _MouthRig(mouth_open_ratio(points), edge.astype(np.float32), lip_bgr, skin,
                                hair, hair_bgr, (hx, hy))

    # ------------------------------------------------------------------------------------------
    # Per calibration
    def set_neutral(self, driving: DrivingFrame) -> None:
        if driving.landmarks is None:
            raise AnimatorError("No face in the driving frame; look at the camera and calibrate again.")
        self.motion.set_neutral(driving.landmarks.points, driving.landmarks.depth)
        # The driver's light and white balance, once per calibration, from their cheeks and picture.
        self._mouth_gain = self._colour_gain(driving.crop_bgr, np.asarray(driving.landmarks.points, np.float64))

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
                                    self.region, driving.motion_scale, driving.landmarks.depth)
        self.last_target = target
        output = self.render(target, driving)
        self._last_output = output
        return output

    def render(self, target: MotionTarget, driving: DrivingFrame | None = None) -> np.ndarray:
        """The avatar with its landmarks moved to `target.points` (avatar px); `driving` (optional)
        lends its mouth interior where the mouth opens wider than the avatar's."""
        offsets = self._grid_offsets(target)
        layered = offsets is not None and self._plate_bgr is not None and not target.pose.is_identity
        if offsets is None:
            offsets = np.zeros_like(self._grid_points)
        alpha = self._moved_matte(offsets) if layered else None
        box = self._changed_box(offsets, target, alpha)
        self.last_box = box
        if box is None:  # nothing moved: the avatar's own pixels
            self._last_relative = None
            return self._avatar_bgr.copy()
        relative = self._upsampled(offsets, box, relative=True)
        self._last_relative = relative
        self.last_map_origin = self._box_origin(box)
        # Reflected, not repeated: where a cut-off head moves into the frame, hair continues.
        warped = cv2.remap(self._avatar_bgr, relative, None, cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
        if alpha is not None:
            warped = self._over_room(warped, alpha, box)
        origin = self._box_origin(box)
        self._paint_mouth(warped, origin, target.points, driving)
        output = self._avatar_bgr.copy()
        output[self._box_slices(box)] = warped
        return output

    def _box_origin(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Avatar px (x, y) of the top-left pixel of a box of grid samples (c0, r0, c1, r1)."""
        return np.array([self._grid.x0 + box[0] * self.step, self._grid.y0 + box[1] * self.step], np.float32)

    def _box_slices(self, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        """The avatar's (rows, cols) of a box of grid samples."""
        x0, y0 = (int(v) for v in self._box_origin(box))
        return slice(y0, y0 + (box[3] - box[1]) * self.step), slice(x0, x0 + (box[2] - box[0]) * self.step)

    def _moved_matte(self, offsets: np.ndarray) -> np.ndarray:
        """The head's matte where the map carries it: float32 [0, 1] per grid sample. Beyond the
        picture's edge it is 0: what a head moving in from a cut edge uncovers is room."""
        alpha = cv2.remap(self._alpha_f32, cv2.add(offsets, self._grid_points), None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if self.room_samples is not None:
            alpha[self.room_samples] = 0.0
        return alpha

    def _changed_box(self, offsets: np.ndarray, target: MotionTarget,
                     alpha: np.ndarray | None) -> tuple[int, int, int, int] | None:
        """The box of grid samples (c0, r0, c1, r1) whose pixels can differ from the avatar: where
        the map moves; with the head layered over the room (`alpha`: its moved matte), only where
        the matte or the room plate shows (beyond, the room is the avatar's own pixels whatever
        the map does there); plus where the mouth interior is painted. None: nothing changes."""
        if alpha is not None:
            parts = [alpha > 0.0, self._plate_cells]
        else:
            parts = [(np.abs(offsets) > 1e-3).any(axis=2)]
        box = None
        for part in parts:
            rows, cols = np.nonzero(part.any(axis=1))[0], np.nonzero(part.any(axis=0))[0]
            if rows.size:
                box = _union(box, (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        if self._mouth_strength(target.points) > 0.0:
            box = _union(box, self._mouth_box(target))
        if box is None:
            return None
        rows, cols = self._grid.shape
        pad = 1  # the upsampled map needs a sample beyond the moving ones
        return max(box[0] - pad, 0), max(box[1] - pad, 0), min(box[2] + pad, cols), min(box[3] + pad, rows)

    def _mouth_box(self, target: MotionTarget) -> tuple[int, int, int, int]:
        """The grid box of the mouth at the target: its interior is painted up to 2 px beyond the
        inner lips, which may reach past the samples the moving mesh changes."""
        grid = self._grid
        at = (target.points[list(INNER_LIPS)] - (grid.x0, grid.y0)) / grid.step
        pad = 2.0 + 2.0 / grid.step
        c0, r0 = np.floor(at.min(axis=0) - pad).astype(int)
        c1, r1 = np.ceil(at.max(axis=0) + pad).astype(int)
        return c0, r0, c1, r1

    def _upsampled(self, offsets: np.ndarray, box: tuple[int, int, int, int], relative: bool = False) -> np.ndarray:
        """The full-resolution backward map over a box of grid samples, float32: avatar px, or with
        `relative` each pixel's source less its own position in the box (cv2.WARP_RELATIVE_MAP
        then samples the whole avatar: no pass adding the pixel grid, and a faster remap)."""
        c0, r0, c1, r1 = box
        step = self.step
        offset = np.ascontiguousarray(offsets[r0:r1, c0:c1])
        if relative:  # the box's own origin is a constant: added on the grid, before upsampling
            x0, y0 = (float(v) for v in self._box_origin(box))
            offset = cv2.add(offset, (x0, y0, 0.0, 0.0))  # numpy's broadcast add is ~15x slower here
        # Upsample the offset, not the positions: it is 0 at the fixed border, so the half-sample
        # the upsampling clamps at the box's edge costs nothing there.
        offset = cv2.resize(offset, ((c1 - c0) * step, (r1 - r0) * step), interpolation=cv2.INTER_LINEAR)
        if relative:
            return offset
        return cv2.add(offset, self._full_grid[r0 * step:r1 * step, c0 * step:c1 * step], dst=offset)

    def _over_room(self, warped: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The warped head over the still room plate: plate + alpha·(head − plate), the moved matte
        upsampled from the grid like the map (so its edge is soft over one grid step)."""
        c0, r0, c1, r1 = box
        height, width = warped.shape[:2]
        matte = cv2.resize(alpha[r0:r1, c0:c1], (width, height), interpolation=cv2.INTER_LINEAR)
        plate = self._plate_bgr[self._box_slices(box)]
        return cv2.blendLinear(warped, plate, matte, cv2.subtract(1.0, matte))

    def landing_error(self, target: MotionTarget) -> np.ndarray:
        """Per face landmark, how far (px) the backward map for `target` misses: where the output
        pixel at the target position samples the avatar, minus the avatar's own landmark. NaN for
        points outside the ROI."""
        backward = self.backward_map(target)
        if backward is None:
            backward = self._full_grid
        grid = self._grid
        at = target.points[:NUM_MESH_POINTS] - np.array([grid.x0, grid.y0], np.float32)
        sampled = cv2.remap(backward, at[None, :, 0], at[None, :, 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)[0]
        inside = (at >= 0).all(axis=1) & (at[:, 0] <= grid.width - 1) & (at[:, 1] <= grid.height - 1)
        error = np.linalg.norm(sampled - self._avatar_points[:NUM_MESH_POINTS], axis=1)
        return np.where(inside, error, np.nan)

    @property
    def last_map(self) -> np.ndarray | None:
        """(h, w, 2) float32 backward map (avatar px) of the last frame over the box that changed
        (its first pixel at `last_map_origin`), or None when nothing moved; for benches and tests."""
        if self._last_relative is None:
            return None
        height, width = self._last_relative.shape[:2]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        return self._last_relative + np.stack([xs, ys], axis=-1)

    @property
    def roi(self) -> tuple[slice, slice]:
        """The (rows, cols) the engine may change; outside it the output is the avatar."""
        return self._grid.slices

    def _vertex_targets(self, target: MotionTarget) -> tuple[np.ndarray, np.ndarray]:
        """Where every mesh vertex goes and how deep it then lies: face points to the targets, ring
        points with the head outline (and with what of the face outline's expression the skin
        between cannot take up), border points nowhere (or sliding with the head on the image's
        own edge)."""
        ring = as_points(target.head(as_complex(self._ring_src + self._ring_expression(target))))
        ring = np.clip(ring, *self._ring_limits)
        vertices = self._vertices_src.copy()
        faces = len(self._warp_points)
        vertices[:faces - len(EYES)] = target.points[self._warp_points[:-len(EYES)]]
        for gaze in self._gaze_eyes:  # relative to its place for the avatar's own landmarks: exact at rest
            vertices[gaze.vertex] += self._iris_position(target.points, gaze) - gaze.rest
        vertices[faces:self._num_moving] = ring
        ring_motion = ring - self._ring_src
        vertices[self._num_moving:] += self._edge_share * ring_motion[self._edge_nearest]
        depth = self._vertex_depth + target.pose.shift[2]
        if target.depth is not None:
            depth[:faces] = target.depth[self._warp_points]
        return vertices, depth

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

    def backward_map(self, target: MotionTarget) -> np.ndarray | None:
        """(h, w, 2) float32 source position (avatar px) of every ROI pixel of the output, or None
        when no vertex moves (the output is the avatar)."""
        offsets = self._grid_offsets(target)
        if offsets is None:
            return None
        rows, cols = self._grid.shape
        return self._upsampled(offsets, (0, 0, cols, rows))

    def _grid_offsets(self, target: MotionTarget) -> np.ndarray | None:
        """(rows, cols, 2) float32: how far (avatar px) the source of every grid sample lies from the
        sample (the backward map less the identity), or None when no vertex moves.

        The moved mesh is drawn back to front on the reduced grid (the room, the head outline's
        band, then the face's triangles from far to near), each grid sample keeping the last
        triangle drawn over it: nearer parts hide farther ones. A triangle whose orientation
        flipped shows its back (the far cheek turned away, the side of the nose): it is not drawn,
        so a turned head hides its far side instead of folding it over. Each sample's source is
        its triangle's affine map (target → source); samples no moved triangle covers stay put.
        """
        grid = self._grid
        vertices, depth = self._vertex_targets(target)
        moved = (vertices != self._vertices_src).any(axis=1)
        drawn = moved[self._tri].any(axis=1)
        self.room_samples = None
        if not drawn.any():
            self.last_triangles = None
            return None
        room = None
        if self._plate_bgr is not None and not target.pose.is_identity:
            # Moved triangles of the room layer over no part of the matte only move room, which
            # the plate hides: one call marks them all as room instead of drawing each.
            room = drawn & ~self._tri_layered
            drawn &= self._tri_layered
        tri = self._tri[drawn]
        corners = vertices[tri].astype(np.float64)
        areas = self._signed_areas(corners)
        facing = areas * self._tri_sign[drawn] > FLIP_AREA_PX2
        tri, corners, layer = tri[facing], corners[facing], self._tri_layer[drawn][facing]
        order = np.lexsort((-depth[tri].mean(axis=1), layer))  # by layer, then far (large z) first
        tri, corners = tri[order], corners[order]
        room_corners = None if room is None or not room.any() else vertices[self._tri[room]]
        ids = self._rasterized(corners, grid, room_corners)
        self.last_triangles = np.where(ids < len(tri), ids, -1)
        self.room_samples = ids > len(tri)
        # Per triangle the affine map less the identity; one more row (all 0) for samples no moved
        # triangle covers, which the rasterizer leaves at that index.
        affine = self._target_to_source(corners, self._vertices_src[tri].astype(np.float64)).reshape(-1, 6)
        affine[:, [0, 4]] -= 1.0
        coefficients = np.zeros((len(tri) + 2, 6), np.float32)
        coefficients[:len(tri)] = affine
        c = np.take(coefficients, ids.ravel(), axis=0)  # ~3x faster than fancy indexing here
        x, y = self._grid_x, self._grid_y
        offsets = np.empty((x.size, 2), np.float32)
        offsets[:, 0] = c[:, 0] * x + c[:, 1] * y + c[:, 2]
        offsets[:, 1] = c[:, 3] * x + c[:, 4] * y + c[:, 5]
        return offsets.reshape(*grid.shape, 2)

    @staticmethod
    def _rasterized(corners: np.ndarray, grid: _Grid, room: np.ndarray | None = None) -> np.ndarray:
        """(rows, cols) int32 grid of the index of the last triangle drawn over each sample (the
        triangle count where none is, one more where only `room` triangles are), triangles drawn
        in the given order over the room ones, with 1/16 sample precision."""
        shift = 4

        def on_grid(points: np.ndarray) -> np.ndarray:
            return np.round(grid.to_index(points) * (1 << shift)).astype(np.int32)

        ids = np.full(grid.shape, len(corners), np.int32)
        if room is not None:
            cv2.fillPoly(ids, list(on_grid(room)), len(corners) + 1, cv2.LINE_8, shift)
        fill = cv2.fillConvexPoly
        for index, triangle in enumerate(on_grid(corners)):
            fill(ids, triangle, index, cv2.LINE_8, shift)
        return ids

    @staticmethod
    def _target_to_source(target: np.ndarray, source: np.ndarray) -> np.ndarray:
        """(T, 2, 3) affine maps taking each target triangle (T, 3, 2) onto its source triangle:
        with E, F the triangles' edge matrices (columns: corner 1 and 2 less corner 0), the linear
        part is F·E⁻¹ and the offset puts corner 0 onto its source. Written out per element: numpy's
        batched 2x2 products cost more than the arithmetic."""
        e00, e10 = target[:, 1, 0] - target[:, 0, 0], target[:, 1, 1] - target[:, 0, 1]
        e01, e11 = target[:, 2, 0] - target[:, 0, 0], target[:, 2, 1] - target[:, 0, 1]
        f00, f10 = source[:, 1, 0] - source[:, 0, 0], source[:, 1, 1] - source[:, 0, 1]
        f01, f11 = source[:, 2, 0] - source[:, 0, 0], source[:, 2, 1] - source[:, 0, 1]
        det = e00 * e11 - e01 * e10
        det = np.where(np.abs(det) < 1e-9, 1e-9, det)
        i00, i01, i10, i11 = e11 / det, -e01 / det, -e10 / det, e00 / det
        maps = np.empty((len(target), 2, 3))
        maps[:, 0, 0] = f00 * i00 + f01 * i10
        maps[:, 0, 1] = f00 * i01 + f01 * i11
        maps[:, 1, 0] = f10 * i00 + f11 * i10
        maps[:, 1, 1] = f10 * i01 + f11 * i11
        maps[:, 0, 2] = source[:, 0, 0] - (maps[:, 0, 0] * target[:, 0, 0] + maps[:, 0, 1] * target[:, 0, 1])
        maps[:, 1, 2] = source[:, 0, 1] - (maps[:, 1, 0] * target[:, 0, 0] + maps[:, 1, 1] * target[:, 0, 1])
        return maps

    # ------------------------------------------------------------------------------------------
    # Mouth: where the driver opens wider than the avatar's own mouth, a mouth interior: the
    # driver's own (teeth, tongue) where their frame shows it, over a shaded cavity
    def _mouth_strength(self, points: np.ndarray) -> float:
        """How much of the mouth interior shows (0..1): where the target mouth opens wider than the
        avatar's own, faded in between CAVITY_START and CAVITY_FULL."""
        opening = mouth_open_ratio(points) - self._mouth.open_ratio
        return float(np.clip((opening - CAVITY_START) / (CAVITY_FULL - CAVITY_START), 0.0, 1.0))

    def _paint_mouth(self, warped: np.ndarray, origin: np.ndarray, points: np.ndarray,
                     driving: DrivingFrame | None = None) -> None:
        """Paint the mouth interior into `warped` (a block of the output whose top-left pixel is
        `origin`, avatar px), faded in with the opening."""
        strength = self._mouth_strength(points)
        if strength <= 0.0:
            return
        height, width = warped.shape[:2]
        lips = points[list(INNER_LIPS)] - origin
        feather = max(MOUTH_FEATHER * self._face_size, 0.5)
        x0, y0, x1, y1 = _box_around(lips, 2.0 + 2.0 * feather, (0, 0, width, height))
        if x1 - x0 < 3 or y1 - y0 < 3:
            return
        mask = _polygon_mask(lips, (x0, y0), (y1 - y0, x1 - x0))
        driver = None
        if driving is not None and driving.landmarks is not None:
            driver, share = self._driver_mouth(driving, lips - (x0, y0), (x1 - x0, y1 - y0))
        interior = self._cavity(mask, points, origin + (x0, y0), teeth=driver is None)
        if driver is not None:
            interior = cv2.blendLinear(driver, interior, share, cv2.subtract(1.0, share))
        hair = self._hair_over(points, origin + (x0, y0), (x1 - x0, y1 - y0))
        if hair is not None:
            interior = cv2.blendLinear(hair[0], interior, hair[1], cv2.subtract(1.0, hair[1]))
        # Full inside the inner lips, fading out over their edge: a cut edge reads as a hole.
        alpha = np.maximum(mask, cv2.GaussianBlur(mask, (0, 0), feather)) * strength
        region = warped[y0:y1, x0:x1]
        # uint8 blend (cv2 rounds): numpy's float round trip of the block cost as much as the rest.
        warped[y0:y1, x0:x1] = cv2.blendLinear(cv2.convertScaleAbs(interior), region, alpha, cv2.subtract(1.0, alpha))

    def _driver_mouth(self, driving: DrivingFrame, lips: np.ndarray,
                      size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
        """The driver's mouth interior mapped onto the avatar's inner lips (`lips`, box px) in a box
        of `size` (w, h): float32 BGR lit as the avatar, and its share — the driver's inner-lip
        polygon eroded by MOUTH_INSET of its opening (neither their lips nor their skin ever
        shows), its colours carried out beyond that over the band up to the lips.
        (None, _) when the driver's mouth shows no interior."""
        crop = driving.crop_bgr
        driver_points = np.asarray(driving.landmarks.points, dtype=np.float64)
        inner = driver_points[list(INNER_LIPS)]
        gap = float(np.linalg.norm(driver_points[MOUTH_INNER_TOP] - driver_points[MOUTH_INNER_BOTTOM]))
        inset = max(MOUTH_INSET * gap, 1.0)
        reach = 2.0 * inset
        bx0, by0, bx1, by1 = _box_around(inner, 2.0 + 3.0 * reach, (0, 0, crop.shape[1], crop.shape[0]))
        if gap < 2.0 * inset + 1.0 or bx1 - bx0 < 3 or by1 - by0 < 3:
            return None, np.zeros((size[1], size[0]), np.float32)
        hole = _polygon_mask(inner, (bx0, by0), (by1 - by0, bx1 - bx0))
        radius = max(int(round(inset)), 1)
        inside = cv2.erode((hole > 0.5).astype(np.uint8), cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))).astype(np.float32)
        if not inside.any():
            return None, np.zeros((size[1], size[0]), np.float32)
        inside = cv2.GaussianBlur(inside, (0, 0), max(0.3 * inset, 0.5)) * inside  # soft, never outside
        # Driver box px -> avatar box px: the affine that best lays their inner lips on the avatar's.
        to_avatar, _ = cv2.estimateAffine2D((inner - (bx0, by0)).astype(np.float32), lips.astype(np.float32),
                                            method=cv2.LMEDS)
        if to_avatar is None:
            return None, np.zeros((size[1], size[0]), np.float32)
        patch = cv2.multiply(crop[by0:by1, bx0:bx1].astype(np.float32), (*(float(g) for g in self._mouth_gain), 0.0))
        # Between the eroded interior and the avatar's inner lips lies a band (the inset, and where
        # the two mouths' shapes differ) that the cavity's dark red would fill: a dark ring, the
        # interior looking cut into the photo. The interior's own colours are carried out over it
        # instead (a normalised blur: each pixel the alpha-weighted mean of the interior near it),
        # as the driver's teeth and tongue do reach their lips. Done at the driver's resolution,
        # before the mapping up: it is several times fewer pixels than the avatar's mouth.
        blurred = cv2.GaussianBlur(np.dstack((patch * inside[..., None], inside)), (0, 0), reach)
        cover = blurred[..., 3]
        carried = blurred[..., :3] / np.maximum(cover, 1e-3)[..., None]
        colour = carried + inside[..., None] * (patch - carried)
        # Fully the driver's up to ~2.3 insets past the eroded edge (1.3 past their own lips: the
        # two mouths' shapes differ by about that), the cavity beyond; a narrower carry left a
        # dark rim, a wider one loses the faint shading Face Mesh reads the lips' edge by.
        share = np.minimum(np.maximum(inside, 8.0 * cover), 1.0)
        colour = cv2.warpAffine(np.clip(colour, 0.0, 255.0), to_avatar, size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        share = cv2.warpAffine(share, to_avatar, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return colour, share

    def _colour_gain(self, crop_bgr: np.ndarray, driver_points: np.ndarray) -> np.ndarray:
        """Per-channel gain putting the driver's mouth interior under the avatar's light: their
        cheeks' brightness to the avatar's, and their cheeks' warmth a little towards the
        avatar's (MOUTH_WHITE_REACH). Not their lips' colour to the avatar's: that ratio is mostly
        the two people's lip and skin hue, and it turned white teeth orange on warm faces."""
        driver, avatar = self._cheeks_bgr(crop_bgr, driver_points), self._mouth.skin_bgr
        brightness = np.clip(float(avatar @ GREY_BGR) / max(float(driver @ GREY_BGR), 1.0), *MOUTH_GAIN_RANGE)
        warmth = np.log(avatar[2] / avatar[0]) - np.log(driver[2] / driver[0])
        half = 0.5 * float(np.clip(warmth, -2.0 * MOUTH_WHITE_REACH, 2.0 * MOUTH_WHITE_REACH))
        white = np.array([np.exp(-half), 1.0, np.exp(half)], np.float32)
        white /= float(white @ GREY_BGR)  # the balance moves hue only; brightness is the cheeks'
        return (brightness * white).astype(np.float32)

    @staticmethod
    def _cheeks_bgr(image_bgr: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Median colour of small patches on the cheeks (CHEEKS): the face's skin under its light."""
        mesh = points[:NUM_MESH_POINTS]
        radius = max(int(round(0.03 * float(np.sqrt(np.prod(np.ptp(mesh, axis=0)))))), 1)
        height, width = image_bgr.shape[:2]
        patches = []
        for x, y in np.round(points[list(CHEEKS)]).astype(int):
            patch = image_bgr[max(y - radius, 0):min(y + radius + 1, height),
                              max(x - radius, 0):min(x + radius + 1, width)]
            patches.append(patch.reshape(-1, 3))
        pixels = np.concatenate(patches).astype(np.float32)
        return np.maximum(np.median(pixels, axis=0), 1.0) if len(pixels) else np.full(3, 128.0, np.float32)

    def _moustache(self, avatar_bgr: np.ndarray, points: np.ndarray,
                   skin_grey: float) -> tuple[np.ndarray | None, tuple[int, int]]:
        """The avatar's hair over its lips (float32 [0, 1], avatar px, and its box's origin), or
        None: pixels darker than MOUSTACHE_DARK of the cheeks', in blobs wider than the lips'
        seam (an opening removes the seam and its shadow), whole blobs that cross the middle of
        the upper lip (the row between 164 and 0, over the inner lips' middle half), so a
        moustache's drooping ends count too; none below the lips' seam (the upper inner lip,
        carried on level beyond the corners): what hangs there, beside the lower lip, would cross
        the opening as a straight cut once moved with the upper lip. A beard below the lips does
        not matter: the interior opens above it."""
        corners = points[[61, 291]]
        width = float(np.ptp(corners[:, 0]))
        x0, y0, x1, y1 = _box_around(np.array([[corners[:, 0].min() - 0.3 * width, points[164, 1]],
                                               [corners[:, 0].max() + 0.3 * width, points[17, 1]]]), 0.0,
                                     (0, 0, avatar_bgr.shape[1], avatar_bgr.shape[0]))
        row = int(round(0.5 * (points[164, 1] + points[0, 1]))) - y0
        middle = np.round(np.sort(points[[81, 311], 0]) - x0).astype(int)
        if x1 - x0 < 3 or not 0 <= row < y1 - y0 or middle[1] <= max(middle[0], 0):
            return None, (0, 0)
        grey = cv2.cvtColor(np.ascontiguousarray(avatar_bgr[y0:y1, x0:x1]), cv2.COLOR_BGR2GRAY)
        dark = (grey < MOUSTACHE_DARK * skin_grey).astype(np.uint8)
        side = max(int(round(MOUSTACHE_MIN_WIDTH * self._face_size)), 3)
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
        crossing = np.unique(labels[row, max(middle[0], 0):middle[1]])
        # A blob smaller than a few seam widths square is a shadow or a mole, not a moustache.
        kept = [label for label in crossing if label > 0 and stats[label, cv2.CC_STAT_AREA] >= 10 * side * side]
        if not kept:
            return None, (0, 0)
        hair = np.isin(labels, kept).astype(np.float32)
        seam = points[[78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]] - (x0, y0)
        below = np.vstack([[-1.0, seam[0, 1]], seam, [x1 - x0, seam[-1, 1]], [x1 - x0, y1 - y0], [-1.0, y1 - y0]])
        cv2.fillPoly(hair, [np.round(below).astype(np.int32)], 0.0)
        return cv2.GaussianBlur(hair, (0, 0), max(2.0 * MOUTH_FEATHER * self._face_size, 0.5)), (x0, y0)

    def _hair_over(self, points: np.ndarray, origin: np.ndarray,
                   size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The avatar's moustache (float32 BGR and alpha) in a box of `size` (w, h) at `origin`
        (avatar px), moved with the target's upper lip as one piece, or None. Not carried by the
        warp: it stretches the hair at the lips' seam down across the opening into streaks, where
        a moustache hangs over an open mouth unchanged."""
        rig = self._mouth
        if rig.hair is None:
            return None
        upper = list(UPPER_LIP)
        move, _ = cv2.estimateAffinePartial2D((self._avatar_points[upper] - rig.hair_origin).astype(np.float32),
                                              (points[upper] - origin).astype(np.float32), method=cv2.LMEDS)
        if move is None:
            return None
        colour = cv2.warpAffine(rig.hair_bgr, move, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(rig.hair, move, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return colour, alpha

    def _cavity(self, mask: np.ndarray, points: np.ndarray, origin: np.ndarray, teeth: bool = True) -> np.ndarray:
        """Cavity colours for a mouth mask (box at `origin`, avatar px): darker away from the lips
        (the back of the mouth), and with `teeth` a soft hint of upper teeth just under the upper
        lip, widest mid-mouth (not where the driver lends their own: a second, painted set)."""
        depth = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        left, right = points[MOUTH_CORNERS[0]], points[MOUTH_CORNERS[1]]
        mouth_width = float(np.linalg.norm(right - left))
        shade = np.clip(depth / max(0.12 * mouth_width, 1.0), 0.0, 1.0)[..., None]
        cavity = self._mouth.edge_bgr + shade * (CAVITY_BACK_BGR - self._mouth.edge_bgr)
        if not teeth:
            return cavity
        band = max(0.11 * mouth_width, 1.0)
        below_lip = np.cumsum(mask, axis=0)  # px of opening above each pixel: 0 at the upper lip
        vertical = np.clip(1.0 - below_lip / band, 0.0, 1.0) * mask
        xs = np.arange(mask.shape[1], dtype=np.float32) + origin[0]
        u = (xs - 0.5 * (left[0] + right[0])) / max(0.5 * abs(right[0] - left[0]), 1.0)
        horizontal = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
        gap = float(np.linalg.norm(points[MOUTH_INNER_TOP] - points[MOUTH_INNER_BOTTOM]))
        teeth = (0.85 * min(gap / (2.5 * band), 1.0)) * np.sqrt(vertical) * vertical * horizontal[None, :]
        return cavity + teeth[..., None] * (TEETH_BGR - cavity)

