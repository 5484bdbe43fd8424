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
    outline), fade rings outside it whose share of the head's motion falls as a smoothstep to a
    still ring half a face size out (a quarter of that over the room beside the head, where the
    person mask shows none), and points on the ROI's border (fixed inside the photo, sliding
    along the picture's own edge where it cuts the head). Hair, cloth and collar so bend smoothly
    between the head's motion and the body's: an earlier head layer over an inpainted room plate
    cut them in a hard line (hair on the shoulders, a headscarf, a collar) and showed the plate's
    low resolution. Face vertices carry Face Mesh's depth; the ring lies in the plane of the
    head's outline. Each iris centre is a vertex too, and its eye opening a fan of triangles
    around it, so a gaze moves the photo's own iris. The warp samples only the photo's own pixels
    (`photo_box`: never the call framing's fill beside a narrow photo);
  - the mouth's colours and light, and the photo's moustache over the lips (if any).

Per frame (`animate`): motion.py gives the target landmarks, their depth and the head's 3-D pose.
The moved mesh is drawn on a reduced grid over the ROI (one sample per few pixels) back to front:
the room, the outline's band, then the face's triangles from far to near; a face triangle whose
orientation flipped shows its back and is not drawn, so a turned head hides its far side instead of
folding it (a flipped triangle of the room, the band or the face's outermost row is a squeeze, and
is drawn: left out, it opened a hole). Each grid sample takes its triangle's affine map (target →
source); the map is upsampled and applied by one cv2.remap, only within the box of pixels that can
change. Then, where the driver opens the mouth wider than the avatar: the mouth interior, the driver's own teeth and tongue from the driving frame
(inside their inner lips, eroded, so their lips never show, its colours carried out to the avatar's
lips), lit as the avatar's cheeks are (brightness, and a little of their warmth: teeth stay white),
over a shaded cavity, under the avatar's moustache if it has one, faded in with the opening.

The eyes are the warp's: blinks, winks and widening move the lids (with their lashes) and the photo's
own eye between them; a gaze moves the iris vertex along the eye (as far as the driver's iris moves
in theirs, at most IRIS_REACH) and across it (looking down at notes, up), as far as the moved lids
leave it inside the opening (GAZE_SHARE of the way between them), so a closing lid covers it
instead of folding over it. Moving across, the photo's eye slides under the lid it moves toward
(the fan is drawn behind the lids, and there samples the photo's eye shifted away from that lid),
so the iris goes under the lid as a whole instead of being squashed against it. An earlier
version re-painted an inpainted eyeball and a re-sampled iris under the lids: it differed from the
photo even at rest (no dark rim under the lid, a softer iris), Face Mesh read those lids less
faithfully (real driving videos, driver vs output eye-opening r 0.84 / 0.80 / 0.86 with it, 0.89 /
0.87 / 0.90 warp-only; bench/eye_stages.py), and it cost ~1 ms per frame at 256 px.
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
# and the ROI box around it), along FADE_RINGS rings whose share of the motion falls as a smoothstep:
# the displacement has no kink at the head's outline nor at the still ring, so hair, cloth and a
# collar bend smoothly between the head's motion and the body's instead of tearing. The fade must
# be longer than the ring moves, or the warp folds (each band may take at most its own width).
ROI_MARGIN = 0.5
FADE_RINGS = 4
# Where the person mask shows no person (the room beside the head), the motion fades out over this
# shorter reach: the wall and the shelf beside a head bend less; the mask is blurred by
# ROOM_MASK_BLUR face sizes first, so the share changes smoothly from hair to room (no fold).
ROOM_FADE = 0.12
ROOM_MASK_BLUR = 0.08
RING_SQUEEZE = 0.4  # the skin between face outline and ring may shrink to this share of its width
# A moved triangle whose doubled signed area (px²) falls below this, or flips sign, shows its back:
# it is not drawn (the far cheek of a turned head, a lid closed over the eye).
FLIP_AREA_PX2 = 1e-3
WARP_SPACING = 0.05  # face widths between the warp mesh's points away from the features (see warp_points)
# The backward map is computed on a grid of one sample per this many pixels of face size (sqrt of
# the face box area), at least every 2nd pixel: ~70 samples across a face lands landmarks within
# 0.4 px at any resolution (a 256 crop gets a 2 px step, a 720p call frame 3, 1080p 4).
FACE_SIZE_PER_STEP = 90.0
# Full-resolution pixels per band of the remap (see MeshAnimator._warp_bands): the band's map (8
# bytes a pixel) stays in the cache from its upsampling to the remap; measured best at 720p (bands
# of ~80 px: 2.85 ms against 3.0 at 32 px and 4.4 for the whole box at once) and at a 256 crop (one band).
WARP_BAND_PIXELS = 65536
MIN_AVATAR_SIDE = 32
# Hair within HAIR_REACH face sizes beyond the head outline moves with the head as one piece (the
# outline grows over it, plus HAIR_MARGIN of the reach), above NECK_START face heights below the chin.
HAIR_REACH = 0.35
HAIR_MARGIN = 0.3
NECK_START = 0.03
EDGE_ROOM = 0.2  # the ring keeps this share of the face size inside a photo edge beside the fill
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
# The iris centre stays this far between the lower (0) and upper (1) lid: nearer a lid the fan's
# triangles beside it are squashed so thin that the grid's map misses the lid's landmarks by up to
# 0.8 px (at 0.15 / 0.85).
GAZE_SHARE = (0.25, 0.75)
# The iris vertex moves across the eye this many times as far as the driver's iris moved over their
# eye's corner line: static Face Mesh reads little of it. Moved by 0.08 eye widths without the slide
# under the lid, it read 0.005-0.019 higher or lower (astronaut, a real photo, a cartoon, two real
# drivers' first frames); with the slide, a glance 0.04 eye widths down (x2.5) reads 0.011-0.028
# lower, one up only 0.000-0.009 higher (the drivers' frames). More gain distorts the iris
# visibly, and GAZE_SHARE bounds it anyway.
GAZE_GAIN = 2.5
# The vertical gaze fades out as the lids close from the second to the first share of their own
# opening (looking down lowers the upper lid too, a blink shuts it).
GAZE_OPEN = (0.4, 0.7)
# An eye's fan is drawn as if this share of the face size deeper than its corners: behind the lid
# skin around it (Face Mesh's lid and lash-ring depths differ by far less), in front of the head's
# far side.
FAN_BEHIND = 0.02


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
    across it (in the eye's frame, see _eye_frame), and its position for the avatar's own landmarks
    (moves are taken relative to it, so the avatar at rest stays exact)."""

    indices: EyeIndices
    vertex: int
    along: float
    across: float
    rest: np.ndarray
    share: float = 0.5  # the rest place's share of the way from the lower lid to the upper one
    opening: float = 1.0  # the lids' distance across there, in the eye's frame (eye widths)
    # The slide of the photo's eye under a lid (see MeshAnimator._slides): the photo's own lid gap
    # at the iris (px), the unit vector from its lower lid to its upper one (complex, avatar px),
    # and per lid the vertices of its margin and how far (px) each may slide.
    gap: float = 0.0
    up: complex = -1j
    lids: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    reach: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))


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
    except Exception as exc:  # noqa: BLE001 - any failure costs the hair-aware ring, not the app
        log.warning("no person mask for the avatar (%s); its hair and the room beside the head bend with "
                    "the head's full fade", exc)
        return None
    mask = result.segmentation_mask
    return None if mask is None else np.asarray(mask, dtype=np.float32)


def _fade_reach(points: np.ndarray, body: np.ndarray | None) -> np.ndarray:
    """Per point, the share of ROI_MARGIN over which the head's motion fades out there: all of it
    over a person (hair, cloth, neck bend along), ROOM_FADE of it over the room (`body`: the
    blurred person mask, 0..1; None: all person)."""
    if body is None:
        return np.ones(len(points))
    xy = np.clip(np.round(points).astype(int), 0, np.array(body.shape[::-1]) - 1)
    room = ROOM_FADE / ROI_MARGIN
    return room + (1.0 - room) * np.clip(body[xy[:, 1], xy[:, 0]], 0.0, 1.0)


def _moving(offsets: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: the grid samples whose (rows, cols, 2) offset moves them more than 1e-3 px.
    Compared per component: numpy's any() over a last axis of two cost 0.5 ms per frame at 720p,
    these two comparisons 0.02 ms."""
    return (np.abs(offsets[..., 0]) > 1e-3) | (np.abs(offsets[..., 1]) > 1e-3)


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
        self._bounds = (0, 0, 0, 0)  # the photo's own pixels in the picture (see _photo_bounds)
        # The last frame's grid offsets and changed box: last_map is upsampled from them on demand.
        self._last_warp: tuple[np.ndarray, tuple[int, int, int, int]] | None = None
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
        self._build_mouth(avatar_bgr, points)
        self._last_output = None
        self._last_warp = None

    def _checked_avatar(self, avatar_bgr: np.ndarray) -> np.ndarray:
        if avatar_bgr is None or avatar_bgr.ndim != 3 or avatar_bgr.shape[2] != 3:
            raise AnimatorError("The avatar must be a colour (BGR) image.")
        if min(avatar_bgr.shape[:2]) < MIN_AVATAR_SIDE:
            raise AnimatorError(f"The avatar picture is {avatar_bgr.shape[1]}x{avatar_bgr.shape[0]} px; "
                                f"it must be at least {MIN_AVATAR_SIDE} px on each side.")
        self._image_size = (avatar_bgr.shape[1], avatar_bgr.shape[0])
        self._bounds = self._photo_bounds(self._image_size)
        return np.ascontiguousarray(avatar_bgr, dtype=np.uint8)

    def _photo_bounds(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the picture's pixels that are the photo's own (`photo_box`, the whole
        picture by default). The warp never samples beyond them: the fill beside a narrow photo
        is blurred and would show as a smear or a row of stray pixels inside the moving head."""
        width, height = size
        if self.photo_box is None:
            return 0, 0, width, height
        x0, y0, x1, y1 = (int(v) for v in self.photo_box)
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = max(min(x1, width), x0 + 1), max(min(y1, height), y0 + 1)
        return x0, y0, x1, y1

    def _build_mesh(self, points: np.ndarray, depth: np.ndarray | None, person: np.ndarray | None) -> None:
        mesh = points[:NUM_MESH_POINTS].astype(np.float64)
        face_size = float(np.sqrt(np.prod(mesh.max(axis=0) - mesh.min(axis=0))))
        self._face_size = face_size
        ring = head_outline(mesh)
        if person is not None:
            grown = self._ring_over_hair(ring, person > 0.5, self._neck_depth(points, person.shape) < NECK_START,
                                         HAIR_REACH * face_size)
            ring = self._clear_of_fill(ring, grown, EDGE_ROOM * face_size)
        self.step = max(2, int(round(face_size / FACE_SIZE_PER_STEP)))
        self._grid = self._roi_grid(ring, face_size)
        grid = self._grid
        inset = 1.0  # ring points stay this far inside the ROI so no triangle folds over the border
        self._ring_box = (grid.x0 + inset, grid.y0 + inset,
                          grid.x0 + grid.width - 1 - inset, grid.y0 + grid.height - 1 - inset)
        self._ring_src = np.clip(ring, self._ring_box[:2], self._ring_box[2:]).astype(np.float32)
        self._ring_on_edge = self._on_photo_edge(ring, grid)
        self._ring_gap = np.linalg.norm(self._ring_src - mesh[list(FACE_OVAL)], axis=1).astype(np.float32)
        self._ring_limits = self._ring_target_limits(grid)
        margin_px = ROI_MARGIN * face_size
        body = None
        if person is not None:  # how much of a person (hair, cloth) lies around each point, 0..1
            body = cv2.GaussianBlur(person, (0, 0), max(ROOM_MASK_BLUR * face_size, 1.0))
        fade, fade_nearest, fade_share = self._fade_rings(ring, margin_px, grid, body)
        border = self._border_points(grid)
        edge_nearest, edge_share = self._edge_shares(border, margin_px, body)
        border = np.concatenate([fade, border])
        self._edge_nearest = np.concatenate([fade_nearest, edge_nearest])
        self._edge_share = np.concatenate([fade_share, edge_share])
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
        # border), the head outline's band (hair, ears, neck), the face (sorted by depth per frame;
        # the eyes' fans count FAN_BEHIND face sizes deeper: the eyeballs lie behind the lids, and
        # where a fan slides under a lid the lid's edge is drawn over it).
        outer = (triangles >= self._num_moving).any(axis=1)
        face = (triangles < faces).all(axis=1)
        self._tri = triangles
        self._tri_fan = np.isin(triangles, iris_vertices).any(axis=1)
        self._fan_behind = np.where(self._tri_fan, FAN_BEHIND * face_size, 0.0)
        self._tri_layer = np.where(outer, 0, np.where(face, 2, 1)).astype(np.int32)
        self._tri_sign = np.sign(self._signed_areas(self._vertices_src[triangles]))
        on_outline = np.isin(triangles, np.flatnonzero(np.isin(self._warp_points, list(FACE_OVAL)))).any(axis=1)
        self._tri_unculled = (self._tri_layer < 2) | on_outline
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

    def _clear_of_fill(self, outline: np.ndarray, grown: np.ndarray, room_px: float) -> np.ndarray:
        """The ring grown over the hair, kept `room_px` inside the photo's edges that border the
        call framing's fill (never inside the head's own outline): there the photo's edge stays
        still, and the hair between ring and edge bends over that room. Pinned on such an edge,
        a head moving away from it stretched the hair beside the face into a saw-tooth."""
        width, height = self._image_size
        bx0, by0, bx1, by1 = self._bounds
        lo = np.array([bx0 + room_px if bx0 > 0 else -np.inf, by0 + room_px if by0 > 0 else -np.inf])
        hi = np.array([bx1 - room_px if bx1 < width else np.inf, by1 - room_px if by1 < height else np.inf])
        kept = np.clip(grown, lo, hi)
        # Never inside the outline: a face the fill's edge cuts keeps its outline as the ring.
        centre = outline.mean(axis=0)
        inside = np.linalg.norm(kept - centre, axis=1) < np.linalg.norm(outline - centre, axis=1)
        return np.where(inside[:, None], outline, kept)

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
        """Where the avatar's iris sits along its eye, and where the iris vertex sits at rest."""
        points = self._avatar_points
        frame, iris = _eye_frame(points, eye)
        rig = _Gaze(eye, vertex, iris.real, iris.imag, np.zeros(2))
        lower, upper = _lids_across(points, eye, frame, iris.real)
        rig.opening = max(abs(upper - lower), 1e-6)
        rig.share = float(np.clip((iris.imag - lower) / (upper - lower), *GAZE_SHARE)) if abs(upper - lower) > 1e-6 else 0.5
        rig.rest, _ = self._iris_position(points, rig)
        rig.gap = abs(upper - lower) * abs(frame[1])
        rig.up = complex(frame[1] * 1j * np.sign(upper - lower) / abs(frame[1]))
        vertex_of = {int(index): v for v, index in enumerate(self._warp_points)}
        lids, reach = [], []
        for lid in (eye.lower_lid[1:-1], eye.upper_lid[1:-1]):
            lids.append(np.array([vertex_of[i] for i in lid], np.int64))
            # Each margin point slides at most half the photo's own gap there: its source stays
            # inside the photo's eye (at the corners, where the gap closes, it does not slide).
            at = (points[list(lid), 0] + 1j * points[list(lid), 1] - frame[0]) / frame[1]
            gaps = [abs(np.subtract(*_lids_across(points, eye, frame, float(a.real)))) for a in at]
            reach.append(0.5 * np.array(gaps) * abs(frame[1]))
        rig.lids, rig.reach = (lids[0], lids[1]), (reach[0], reach[1])
        return rig

    @staticmethod
    def _iris_position(points: np.ndarray, gaze: _Gaze) -> tuple[np.ndarray, float]:
        """The iris centre for these landmarks: along the eye where their iris is, at most IRIS_REACH
        from the avatar's own place (a tracking glitch cannot roll it out); across, where their iris
        is (the driver's vertical gaze: its height over the corners moved as the driver's), but no
        nearer either lid than GAZE_SHARE of the way between them where it then stands. A closing lid
        pushes it ahead (Face Mesh's iris sinks with the lid, and the lid covers it) instead of
        folding over it, and looking down, where the lid drops with the eye, keeps it visible. The
        move across is GAZE_GAIN times the driver's (see there). Also returns where it then stands
        between the lids (0: lower, 1: upper)."""
        eye = gaze.indices
        frame, iris = _eye_frame(points, eye)
        along = float(np.clip(iris.real, gaze.along - IRIS_REACH, gaze.along + IRIS_REACH))
        lower, upper = _lids_across(points, eye, frame, along)
        across = gaze.across + GAZE_GAIN * (iris.imag - gaze.across)
        share = (across - lower) / (upper - lower) if abs(upper - lower) > 1e-6 else gaze.share
        # A closing eye keeps the iris at its own share between the lids (squashed under the lid
        # as it comes down, as before vertical gaze): there Face Mesh's iris sinks with the lid,
        # which is no gaze, and following it would slide the eye under the lower lid in every
        # blink. (The real driving videos' eye r is the same either way, to 0.001.)
        opened = float(_smoothstep((abs(upper - lower) / gaze.opening - GAZE_OPEN[0]) / (GAZE_OPEN[1] - GAZE_OPEN[0])))
        share = float(np.clip(gaze.share + opened * (share - gaze.share), *GAZE_SHARE))
        position = frame[0] + complex(along, lower + share * (upper - lower)) * frame[1]
        return np.array([position.real, position.imag]), share

    def _slides(self, shares: list[float]) -> np.ndarray | None:
        """Per vertex, how far (avatar px) the eye's fan samples the photo beside its lid margin:
        where the iris moves toward a lid (looking down: the lower one), the photo's eye slides under
        that lid (its margin's fan corners sample the photo's eye the iris's move away from the
        margin), so the iris goes under the lid as a whole instead of being squashed against it; the
        other half of the fan stretches. None: no eye slides."""
        slides = None
        for gaze, share in zip(self._gaze_eyes, shares):
            move = share - gaze.share
            if abs(move) < 1e-4:
                continue
            side = 0 if move < 0.0 else 1  # toward the lower lid (0) or the upper one (1)
            # The iris's move relative to the lids in the photo's own px: that lid's margin samples
            # that far into the eye.
            into = gaze.up if side == 0 else -gaze.up
            amount = np.minimum(abs(move) * gaze.gap, gaze.reach[side])
            if slides is None:
                slides = np.zeros((len(self._vertices_src), 2))
            slides[gaze.lids[side], 0] += amount * into.real
            slides[gaze.lids[side], 1] += amount * into.imag
        return slides

    def _on_photo_edge(self, ring: np.ndarray, grid: _Grid) -> np.ndarray:
        """(R, 2) bool: ring points that lie on the photo's own edge (a head the photo cuts), per
        axis. They stay on that edge as the head moves and slide along it, as the ROI border does
        there: pulled off it, the strip between them and the edge smears the edge's row of pixels
        down into the hair, and rotated, they zig-zag against the border points."""
        bx0, by0, bx1, by1 = self._bounds
        low = np.array([grid.x0 == bx0, grid.y0 == by0]) & (ring <= np.array(self._ring_box[:2]))
        high = (np.array([grid.x0 + grid.width == bx1, grid.y0 + grid.height == by1])
                & (ring >= np.array(self._ring_box[2:])))
        return low | high

    def _ring_target_limits(self, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """Bounds for moved ring points: inside the ROI where its border is fixed (so no triangle
        folds over it), free where the ROI ends at the image's own edge (that edge slides)."""
        lo = np.array(self._ring_box[:2], np.float32)
        hi = np.array(self._ring_box[2:], np.float32)
        bx0, by0, bx1, by1 = self._bounds
        width, height = self._image_size
        lo[[grid.x0 == bx0 == 0, grid.y0 == by0 == 0]] = -np.inf
        hi[[grid.x0 + grid.width == bx1 == width, grid.y0 + grid.height == by1 == height]] = np.inf
        return lo, hi

    def _fade_rings(self, ring: np.ndarray, margin_px: float, grid: _Grid,
                    body: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points on FADE_RINGS rings outside the head's ring, along the rays from its centre, the
        last one `margin_px` out: (points, the ring point each follows, its (x, y) share of that
        point's motion). The share falls from 1 to 0 as a smoothstep over the distance, so the
        motion fades out smoothly all around the head (not out to the ROI's corners) and the room
        a margin away is still. Points off the photo are dropped (its edge slides there instead),
        as are points that would crowd the ROI border."""
        centre = ring.mean(axis=0)
        radius = np.linalg.norm(ring - centre, axis=1)
        rays = (ring - centre) / np.maximum(radius[:, None], 1e-6)
        # Measured from the ring's envelope (the largest radius among neighbouring rays): where
        # the ring juts out over hair, the rays beside it must not place their fade points inside
        # it, or shares 1 and less interleave and the hair zig-zags.
        envelope = np.array([np.take(radius, range(i - 3, i + 4), mode="wrap").max() for i in range(len(ring))])
        lo = np.array([grid.x0, grid.y0]) + 2.0
        hi = np.array([grid.x0 + grid.width, grid.y0 + grid.height]) - 3.0
        points, nearest, shares = [], [], []
        for t in np.arange(1, FADE_RINGS + 1) / FADE_RINGS:
            at = centre + (envelope[:, None] + t * margin_px) * rays
            keep = ((at >= lo) & (at <= hi)).all(axis=1)
            at = at[keep]
            share = 1.0 - _smoothstep(t / _fade_reach(at, body))
            points.append(at)
            nearest.append(np.flatnonzero(keep))
            shares.append(np.repeat(share[:, None], 2, axis=1))
        return (np.concatenate(points).astype(np.float32), np.concatenate(nearest),
                np.concatenate(shares).astype(np.float32))

    def _edge_shares(self, border: np.ndarray, reach_px: float,
                     body: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per border point: the nearest ring point and the share of its motion the point takes,
        along the border only ((N, 2): x share, y share). The ROI border inside the image stays put
        (share 0): the background does not move. Where the ROI ends at the image's own edge (a head
        cut by the crop), the edge slides along itself with the head as the ring's motion fades
        over `reach_px`, as it does inside the ROI; pinning it would tear hair or a hat that the
        crop cuts. It never leaves its edge, so the mesh keeps covering the picture."""
        bx0, by0, bx1, by1 = self._bounds
        off = (border < (bx0, by0)) | (border > (bx1 - 1.0, by1 - 1.0))  # beyond left/right, top/bottom
        # Only the picture's own edge slides: where the photo ends beside the fill, a sliding edge
        # would shear the photo's last rows against the still fill beside them (a line).
        width, height = self._image_size
        off &= (border < 0.0) | (border > (width - 1.0, height - 1.0))
        distance = np.linalg.norm(border[:, None, :] - self._ring_src[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        fade = 1.0 - _smoothstep(distance.min(axis=1) / (max(reach_px, 1.0) * _fade_reach(border, body)))
        # On a top or bottom edge the point slides across (x), on a left or right edge up and down
        # (y); a corner point stays.
        slides = np.stack([off[:, 1] & ~off[:, 0], off[:, 0] & ~off[:, 1]], axis=1)
        return nearest, (fade[:, None] * slides).astype(np.float32)

    def _roi_grid(self, ring: np.ndarray, face_size: float) -> _Grid:
        """The warped region: the ring plus a margin, clipped to the photo's own pixels (`_bounds`),
        sides multiples of step."""
        step = self.step
        bx0, by0, bx1, by1 = self._bounds
        x0, y0, x1, y1 = _box_around(ring, ROI_MARGIN * face_size, self._bounds)
        x0, y0 = bx0 + ((x0 - bx0) // step) * step, by0 + ((y0 - by0) // step) * step
        width = min(-(-(x1 - x0) // step) * step, bx1 - x0)
        height = min(-(-(y1 - y0) // step) * step, by1 - y0)
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
        if offsets is None:
            offsets = np.zeros_like(self._grid_points)
        box = self._changed_box(offsets, target)
        self.last_box = box
        if box is None:  # nothing moved: the avatar's own pixels
            self._last_warp = None
            return self._avatar_bgr.copy()
        self._last_warp = (offsets, box)
        self.last_map_origin = self._box_origin(box)
        output = self._avatar_bgr.copy()
        self._warp_bands(output, offsets, box)
        self._paint_mouth(output[self._box_slices(box)], self._box_origin(box), target.points, driving)
        return output

    def _warp_bands(self, output: np.ndarray, offsets: np.ndarray, box: tuple[int, int, int, int]) -> None:
        """Remap the changed box into `output` band of WARP_BAND_PIXELS by band, each only
        over the columns whose samples (or their neighbours) move: the motion fades out along a
        ring, so the box's corners and the room beside the head stay put, and upsampling and remap
        cost per pixel (at 720p about a sixth of the box). The same picture as one remap of the
        whole box: a band is upsampled with a sample of overlap all round, so its interpolation
        sees the same samples, and a pixel whose samples all stay put (under 1e-3 px, less than
        remap's 1/32 px step) would sample itself; only the map's float rounding differs (real
        drivers at 720p: 0.004 % of the pixels, by at most 4 levels)."""
        c0, r0, c1, r1 = box
        moving = _moving(offsets[r0:r1, c0:c1])
        # Sampled from the photo's own pixels only (the relative map is taken from its corner): a
        # source beyond its edge repeats the edge (the edge slides with the head, so that is at
        # most a sample or two), never the fill beside it nor a mirrored copy of the hair.
        bx0, by0, bx1, by1 = self._bounds
        photo = self._avatar_bgr[by0:by1, bx0:bx1]
        step, rows, cols = self.step, r1 - r0, c1 - c0
        band = max(1, WARP_BAND_PIXELS // (cols * step * step))  # grid rows per band
        for top in range(0, rows, band):
            bottom = min(top + band, rows)
            near = np.flatnonzero(moving[max(top - 1, 0):bottom + 1].any(axis=0))
            if not near.size:
                continue
            left, right = max(near[0] - 1, 0), min(near[-1] + 2, cols)  # the columns written
            up, down = max(top - 1, 0), min(bottom + 1, rows)  # the samples upsampled: one more all round
            wide_left, wide_right = max(left - 1, 0), min(right + 1, cols)
            x0, y0 = self._grid.x0 + (c0 + left) * step, self._grid.y0 + (r0 + top) * step  # written from
            offset = cv2.add(np.ascontiguousarray(offsets[r0 + up:r0 + down, c0 + wide_left:c0 + wide_right]),
                             (float(x0 - bx0), float(y0 - by0), 0.0, 0.0))  # relative to what is written
            offset = cv2.resize(offset, ((wide_right - wide_left) * step, (down - up) * step),
                                interpolation=cv2.INTER_LINEAR)
            y, x = (top - up) * step, (left - wide_left) * step
            height, width = (bottom - top) * step, (right - left) * step
            cv2.remap(photo, offset[y:y + height, x:x + width], None, cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
                      dst=output[y0:y0 + height, x0:x0 + width], borderMode=cv2.BORDER_REPLICATE)

    def _box_origin(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Avatar px (x, y) of the top-left pixel of a box of grid samples (c0, r0, c1, r1)."""
        return np.array([self._grid.x0 + box[0] * self.step, self._grid.y0 + box[1] * self.step], np.float32)

    def _box_slices(self, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        """The avatar's (rows, cols) of a box of grid samples."""
        x0, y0 = (int(v) for v in self._box_origin(box))
        return slice(y0, y0 + (box[3] - box[1]) * self.step), slice(x0, x0 + (box[2] - box[0]) * self.step)

    def _changed_box(self, offsets: np.ndarray, target: MotionTarget) -> tuple[int, int, int, int] | None:
        """The box of grid samples (c0, r0, c1, r1) whose pixels can differ from the avatar: where
        the map moves, plus where the mouth interior is painted. None: nothing changes."""
        moving = _moving(offsets)
        box = None
        rows, cols = np.nonzero(moving.any(axis=1))[0], np.nonzero(moving.any(axis=0))[0]
        if rows.size:
            box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
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
        if relative:  # the box's origin (from the photo's corner) is a constant: added on the grid
            x0, y0 = (float(v) for v in self._box_origin(box) - self._bounds[:2])
            offset = cv2.add(offset, (x0, y0, 0.0, 0.0))  # numpy's broadcast add is ~15x slower here
        # Upsample the offset, not the positions: it is 0 at the fixed border, so the half-sample
        # the upsampling clamps at the box's edge costs nothing there.
        offset = cv2.resize(offset, ((c1 - c0) * step, (r1 - r0) * step), interpolation=cv2.INTER_LINEAR)
        if relative:
            return offset
        return cv2.add(offset, self._full_grid[r0 * step:r1 * step, c0 * step:c1 * step], dst=offset)

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
        if self._last_warp is None:
            return None
        relative = self._upsampled(*self._last_warp, relative=True)
        height, width = relative.shape[:2]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        corner = np.asarray(self._bounds[:2], np.float32)  # the relative map is from the photo's corner
        return relative + np.stack([xs, ys], axis=-1) + corner

    @property
    def roi(self) -> tuple[slice, slice]:
        """The (rows, cols) the engine may change; outside it the output is the avatar."""
        return self._grid.slices

    def _vertex_targets(self, target: MotionTarget) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Where every mesh vertex goes and how deep it then lies: face points to the targets, ring
        points with the head outline (and with what of the face outline's expression the skin
        between cannot take up), border points nowhere (or sliding with the head on the image's
        own edge)."""
        ring = as_points(target.head(as_complex(self._ring_src + self._ring_expression(target))))
        ring = np.where(self._ring_on_edge, self._ring_src, np.clip(ring, *self._ring_limits))
        vertices = self._vertices_src.copy()
        faces = len(self._warp_points)
        vertices[:faces - len(EYES)] = target.points[self._warp_points[:-len(EYES)]]
        shares = []
        for gaze in self._gaze_eyes:  # relative to its place for the avatar's own landmarks: exact at rest
            position, share = self._iris_position(target.points, gaze)
            vertices[gaze.vertex] += position - gaze.rest
            shares.append(share)
        vertices[faces:self._num_moving] = ring
        ring_motion = ring - self._ring_src
        vertices[self._num_moving:] += self._edge_share * ring_motion[self._edge_nearest]
        depth = self._vertex_depth + target.pose.shift[2]
        if target.depth is not None:
            depth[:faces] = target.depth[self._warp_points]
        return vertices, depth, self._slides(shares)

    def _ring_expression(self, target: MotionTarget) -> np.ndarray:
        """The ring's share of what the face outline does beyond the head's similarity (a dropping
        jaw, and the outline's sides on a turn: the near cheek swings out, the far one in): the
        skin between outline and ring is squeezed to RING_SQUEEZE of its width before the ring
        gives way, so the collar stays still while talking, and neither a wide-open jaw nor a
        turned cheek pushes the outline past the ring (the band would fold into a saw-tooth edge).
        Where the outline moves inward (the far cheek of a turn), the ring follows it at once: a
        band left behind was stretched into a smear of the skin's edge."""
        oval = self._avatar_points[list(FACE_OVAL)]
        outline = as_points(target.head.inverse()(as_complex(target.points[list(FACE_OVAL)]))) - oval
        normal = self._ring_src - oval
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
        outward = (outline * normal).sum(axis=1, keepdims=True)
        inward = np.minimum(outward, 0.0) * normal  # followed fully
        rest = outline - inward
        length = np.linalg.norm(rest, axis=1, keepdims=True)
        slack = (1.0 - RING_SQUEEZE) * self._ring_gap[:, None]
        squeezed = rest * (np.maximum(length - slack, 0.0) / np.maximum(length, 1e-6))
        return (inward + squeezed).astype(np.float32)

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
        vertices, depth, slides = self._vertex_targets(target)
        # Per column, not any() over the short last axis: 0.02 ms instead of 0.18 per frame.
        moved = (vertices[:, 0] != self._vertices_src[:, 0]) | (vertices[:, 1] != self._vertices_src[:, 1])
        drawn = moved[self._tri[:, 0]] | moved[self._tri[:, 1]] | moved[self._tri[:, 2]]
        if not drawn.any():
            self.last_triangles = None
            return None
        tri = self._tri[drawn]
        corners = vertices[tri].astype(np.float64)
        areas = self._signed_areas(corners)
        # Only the face inside its outline is a surface that turns away; a flipped triangle of the
        # room, the band around the head or the face's outermost row is a squeeze past zero, and
        # leaving it out opened a hole through which the band's own map showed: a seam down the
        # turned cheek. Drawn, it is a sliver of the edge folded over itself.
        facing = (areas * self._tri_sign[drawn] > FLIP_AREA_PX2) | self._tri_unculled[drawn]
        tri, corners, layer = tri[facing], corners[facing], self._tri_layer[drawn][facing]
        fans = self._tri_fan[drawn][facing]
        far = depth[tri].mean(axis=1) + self._fan_behind[drawn][facing]
        order = np.lexsort((-far, layer))  # by layer, then far (large z) first
        tri, corners = tri[order], corners[order]
        sources = self._vertices_src[tri].astype(np.float64)
        if slides is not None:  # the eyes' fans sample the photo's eye slid under a lid
            fans = fans[order]
            sources[fans] += slides[tri[fans]]
        ids = self._rasterized(corners, grid)
        self.last_triangles = np.where(ids < len(tri), ids, -1)
        # Per triangle the affine map less the identity; one more row (all 0) for samples no moved
        # triangle covers, which the rasterizer leaves at that index.
        affine = self._target_to_source(corners, sources).reshape(-1, 6)
        affine[:, [0, 4]] -= 1.0
        coefficients = np.zeros((len(tri) + 1, 6), np.float32)
        coefficients[:len(tri)] = affine
        c = np.take(coefficients, ids.ravel(), axis=0)  # ~3x faster than fancy indexing here
        x, y = self._grid_x, self._grid_y
        offsets = np.empty((x.size, 2), np.float32)
        offsets[:, 0] = c[:, 0] * x + c[:, 1] * y + c[:, 2]
        offsets[:, 1] = c[:, 3] * x + c[:, 4] * y + c[:, 5]
        return offsets.reshape(*grid.shape, 2)

    @staticmethod
    def _rasterized(corners: np.ndarray, grid: _Grid) -> np.ndarray:
        """(rows, cols) int32 grid of the index of the last triangle drawn over each sample (the
        triangle count where none is), triangles drawn in the given order, with 1/16 sample
        precision."""
        shift = 4

        def on_grid(points: np.ndarray) -> np.ndarray:
            return np.round(grid.to_index(points) * (1 << shift)).astype(np.int32)

        ids = np.full(grid.shape, len(corners), np.int32)
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

