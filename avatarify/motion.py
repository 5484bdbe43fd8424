"""Motion transfer: from driving landmarks to where the avatar's landmarks should go.

Input per avatar: the avatar's 478 landmarks (its pixels). Per calibration: the driving neutral
landmarks (driving-crop pixels). Per frame: the driving landmarks and their capture timestamp, the
user's strength and region, and the app's motion scale. Output: `MotionTarget` — the avatar's 478
landmarks moved (avatar pixels) with their depth, the head's 3-D motion (`Pose3D`) and the motion of
its outline seen from the front (a similarity), in avatar pixels.

How:
  1. Smoothing: a One Euro filter over all driving landmarks (x, y and depth), driven by the real
     capture timestamps (switchable off, so the quality bench can measure what it buys).
  2. Head motion: a 3-D rotation, scale (leaning toward the camera) and shift fitted from the
     neutral to the current landmarks with Face Mesh's depth (Umeyama's least squares, iteratively
     reweighted so a few badly tracked points cannot tilt the head) on points that expressions
     barely move (nose, eye corners, forehead centre line, the outline at ear level). It turns
     about the head's pivot: the stable points' centre, at the depth of the outline at ear level.
     Without depth (2-D landmark sources) the same fit is a similarity in the image plane.
  3. Expression: what is left of each landmark after undoing the head motion, relative to the
     neutral. The driver→avatar similarity (fitted once per calibration on the same stable points)
     carries it into the avatar's geometry: its scale is FOMM's adapt-scale (driving face size →
     avatar face size), its rotation keeps "down" meaning the avatar's chin direction. Each eye's
     upper lid follows that eye's own openness as a ratio (blinks, winks, squints shut the avatar's
     eye fully whatever its size; eyes opened wider than the neutral are amplified, see
     `MotionSettings.eye_wider_gain`), and the lid's edge carries its lashes with it both ways.
  4. The head motion is re-expressed about the avatar's own pivot and applied to the avatar's 3-D
     landmarks (x, y, Face Mesh's depth), then projected (orthographically): a turn moves the nose
     across the face and the near cheek out, as on the driver.
  5. A deadband: Face Mesh in tracking mode wobbles ~0.3 px even on identical frames, and every
     sub-pixel move of the warp re-samples (blurs) the avatar. Head motion, each landmark's
     expression and each eye's openness are shrunk by a non-negative garrote, x ↦ x·(1 − t²/|x|²)
     for |x| > t, else 0 (t: `MotionSettings.deadband`, `head_deadband`, shares of the face width):
     a still face gives the avatar's exact pixels, while motion a few t large passes almost
     unchanged (bias t²/|x|, no lag).

2-D similarities are handled as complex numbers (z ↦ m·z + c, m = scale·e^{iθ}): composing, inverting
and scaling them by a strength is then one line each. This module is the one place that converts
between driving-crop and avatar coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avatarify.tracking import OneEuroFilter

NUM_LANDMARKS = 478
NUM_MESH_POINTS = 468

# ---------------------------------------------------------------------------------------------
# MediaPipe Face Mesh index groups (refined topology). Engines and tests take them from here.

# The face outline, clockwise from the forehead top.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# Points that move with the skull, not with expressions, and that Face Mesh places most precisely:
# the nose bridge and tip, the eye corners, the forehead's centre line, and for leverage on roll
# and scale the face outline at ear level. The outline over the forehead has no edge to lock on to
# and wobbles most; on the synthetic clips this set fits rigid head motion 15-45% closer to the
# truth than the forehead outline did. The jaw, lips, lids and brows are left out.
STABLE_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 98, 327, 33, 133, 362, 263, 234, 127, 454, 356)
# Inner lip contour as a polygon: upper lip from image-left corner to image-right, lower lip back.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
MOUTH_INNER_TOP, MOUTH_INNER_BOTTOM = 13, 14
MOUTH_CORNERS = (78, 308)
FACE_SIDES = (234, 454)  # the face oval at ear level, image left and right: the face's width
FOREHEAD, CHIN = 10, 152  # the face oval's top (upper forehead) and bottom

HEAD_SCALE = 1.25  # the head outline: face oval pushed out by 25% from the face centre
# ... and its top lifted by this share of the face height: the skull's vertex is about a third of the
# face height above Face Mesh's top (landmark 10, upper forehead), and 1.25 already covers 1/8.
SKULL_LIFT = 0.2


@dataclass(frozen=True)
class EyeIndices:
    """One eye: lid margins corner to corner (polygon = upper + reversed lower), the iris."""

    upper_lid: tuple[int, ...]
    lower_lid: tuple[int, ...]
    iris_centre: int
    iris_ring: tuple[int, ...]

    @property
    def opening(self) -> tuple[int, ...]:
        """The eye opening as a closed polygon (upper lid, then lower lid back, corners once)."""
        return self.upper_lid + tuple(reversed(self.lower_lid[1:-1]))

    @property
    def corners(self) -> tuple[int, int]:
        return self.upper_lid[0], self.upper_lid[-1]

    @property
    def lid_middles(self) -> tuple[int, int]:
        """The upper and lower lid points halfway between the corners (159/145, 386/374)."""
        return self.upper_lid[len(self.upper_lid) // 2], self.lower_lid[len(self.lower_lid) // 2]


EYES = (
    EyeIndices((33, 246, 161, 160, 159, 158, 157, 173, 133), (33, 7, 163, 144, 145, 153, 154, 155, 133),
               468, (469, 470, 471, 472)),  # image left (the subject's right eye)
    EyeIndices((362, 398, 384, 385, 386, 387, 388, 466, 263), (362, 382, 381, 380, 374, 373, 390, 249, 263),
               473, (474, 475, 476, 477)),  # image right
)
IRIS_POINTS = tuple(range(NUM_MESH_POINTS, NUM_LANDMARKS))
# The ring just above each upper lid margin (MediaPipe's eye "upper 1" contour), point for point with
# EyeIndices.upper_lid[1:-1]: between the two lie the lashes and the lid's edge.
LASH_RINGS = ((247, 30, 29, 27, 28, 56, 190), (414, 286, 258, 257, 259, 260, 467))
# Each brow (upper edge outer to inner, then lower edge), image left then right, the same side as EYES.
BROWS = ((70, 63, 105, 66, 107, 46, 53, 52, 65, 55), (300, 293, 334, 296, 336, 276, 283, 282, 295, 285))


# Brows moved alone pushed into a forehead that stayed put: the skin between them folded into a
# hard, straight-topped edge over a raised brow (s7 driven by d6's raised brows). The forehead
# skin follows them instead, fading out towards the face oval's top (the hair stays): the skin
# just above a brow moves this share of the brow's move (all of it: skin over a raised brow rises
# with it; 0.6 still left the fold's straight top).
FOREHEAD_FOLLOW = 1.0


def forehead_rig(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh points between the brows' upper edges and the face oval's top, and how each follows
    the brows: (n,) indices and (n, 20) weights on the brow points of BROWS (both brows in order;
    each row: FOREHEAD_FOLLOW times the point's fade from the brow (1) to the oval's top (0),
    spread over the brow points near it across the face)."""
    mesh = np.asarray(points, dtype=np.float64)[:NUM_MESH_POINTS]
    brow_points = np.array([i for brow in BROWS for i in brow])
    upper = np.array(sorted((i for brow in BROWS for i in brow[:5]), key=lambda i: mesh[i, 0]))
    oval = np.array(FACE_OVAL)
    top = oval[mesh[oval, 1] < mesh[upper, 1].max()]
    top = top[np.argsort(mesh[top, 0])]
    x, y = mesh[:, 0], mesh[:, 1]
    brow_y = np.interp(x, mesh[upper, 0], mesh[upper, 1])
    span = brow_y - np.interp(x, mesh[top, 0], mesh[top, 1])  # brow to the oval's top, px
    rise = (brow_y - y) / np.maximum(span, 1e-6)  # 0 at the brow, 1 at the top
    above = (x >= mesh[upper, 0].min()) & (x <= mesh[upper, 0].max()) & (span > 1.0) & (rise > 0.0) & (rise < 1.0)
    above[brow_points] = False
    for eye, lashes in zip(EYES, LASH_RINGS):  # set from the eye's openness, never from the brows
        above[list(eye.upper_lid) + list(eye.lower_lid) + list(lashes)] = False
    chosen = np.flatnonzero(above)
    sigma = max(0.125 * float(np.ptp(mesh[upper, 0])), 1.0)  # about a quarter of one brow's width
    near = np.exp(-0.5 * ((x[chosen, None] - x[brow_points][None, :]) / sigma) ** 2)
    near /= np.maximum(near.sum(axis=1, keepdims=True), 1e-12)
    return chosen, (FOREHEAD_FOLLOW * (1.0 - rise[chosen]))[:, None] * near


def head_outline(points: np.ndarray) -> np.ndarray:
    """The outline of the whole head (float64 (36, 2), along FACE_OVAL): the face oval pushed out
    from its centre (hair at the temples, ears), its upper half stretched up into the dome of the
    skull, which Face Mesh (it stops at the upper forehead) does not cover; hair and headwear sit
    on it. The mesh engine moves it with the head; paste-back masks use it as the head's extent."""
    mesh = np.asarray(points, dtype=np.float64)[:NUM_MESH_POINTS]
    oval = mesh[list(FACE_OVAL)]
    centre = oval.mean(axis=0)
    ring = centre + (oval - centre) * HEAD_SCALE
    up = mesh[FOREHEAD] - mesh[CHIN]
    height = float(np.linalg.norm(up))
    up /= max(height, 1e-6)
    rise = np.maximum((oval - centre) @ up, 0.0)
    return ring + (SKULL_LIFT * height * rise / max(float(rise.max()), 1e-6))[:, None] * up


# ---------------------------------------------------------------------------------------------
# Openness measures: one home for the engine, the clips and the quality benchmark.


def mouth_open_ratio(points: np.ndarray) -> float:
    """Inner-lip gap over mouth width (13/14 over 78/308): ~0 closed, ~0.5 wide open.

    Invariant to head roll, shift and scale, so it compares faces of different sizes and poses.
    """
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    gap = np.linalg.norm(p[MOUTH_INNER_TOP] - p[MOUTH_INNER_BOTTOM])
    width = np.linalg.norm(p[MOUTH_CORNERS[0]] - p[MOUTH_CORNERS[1]])
    return float(gap / max(width, 1e-6))


def eye_open_ratios(points: np.ndarray) -> tuple[float, float]:
    """Lid gap over eye width per eye (159/145 over 33/133, 386/374 over 362/263), image left first."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    ratios = []
    for eye in EYES:
        gap = np.linalg.norm(p[eye.lid_middles[0]] - p[eye.lid_middles[1]])
        width = np.linalg.norm(p[eye.corners[0]] - p[eye.corners[1]])
        ratios.append(float(gap / max(width, 1e-6)))
    return ratios[0], ratios[1]


def eye_open_ratio(points: np.ndarray) -> float:
    """Mean lid gap over eye width of both eyes: ~0.3 open, ~0.05 closed (MediaPipe never reaches 0)."""
    return float(np.mean(eye_open_ratios(points)))


def brow_heights(points: np.ndarray) -> tuple[float, float]:
    """Per side (image left first) how high the brow sits over its eye's upper lid, along the face's
    up direction (chin 152 to forehead 10), over the face height: ~0.1 at rest, more when raised.
    The lid, not the eye corners, is the reference because a frown lowers the brows onto it."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    up = p[FOREHEAD] - p[CHIN]
    height = max(float(np.linalg.norm(up)), 1e-6)
    up /= height
    heights = []
    for brow, eye in zip(BROWS, EYES):
        lid = p[list(eye.upper_lid[1:-1])].mean(axis=0)
        heights.append(float((p[list(brow)].mean(axis=0) - lid) @ up / height))
    return heights[0], heights[1]


def iris_heights(points: np.ndarray) -> tuple[float, float]:
    """Per eye (image left first) the iris centre's height above the line through the eye's corners,
    over the eye's width: > 0 looking up, < 0 looking down (and as a lid closes: Face Mesh's iris
    sinks with it). Roll, shift and scale leave it unchanged."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    heights = []
    for eye in EYES:
        corner = complex(*p[eye.corners[0]])
        axis = complex(*p[eye.corners[1]]) - corner
        # Both eyes' corners run image left to right, so with y down "up" is the negative imaginary part.
        heights.append(float(-((complex(*p[eye.iris_centre]) - corner) / axis).imag))
    return heights[0], heights[1]

# ---------------------------------------------------------------------------------------------
# Similarities as complex numbers


def as_complex(points: np.ndarray) -> np.ndarray:
    """(N, 2) x,y → (N,) complex x + iy."""
    p = np.asarray(points, dtype=np.float64)
    return p[:, 0] + 1j * p[:, 1]


def as_points(z: np.ndarray) -> np.ndarray:
    """(N,) complex → (N, 2) float32 x,y."""
    return np.stack([z.real, z.imag], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Similarity:
    """z ↦ m·z + c: rotation by arg(m), scale by |m|, then translation c (all in pixels)."""

    m: complex = 1.0 + 0.0j
    c: complex = 0.0j

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.m * z + self.c

    def inverse(self) -> "Similarity":
        return Similarity(1.0 / self.m, -self.c / self.m)

    def then(self, other: "Similarity") -> "Similarity":
        """Apply self, then other."""
        return Similarity(other.m * self.m, other.m * self.c + other.c)

    def matrix(self) -> np.ndarray:
        """The 2x3 affine matrix (for cv2.warpAffine)."""
        a, b = self.m.real, self.m.imag
        return np.array([[a, -b, self.c.real], [b, a, self.c.imag]], dtype=np.float64)

    @property
    def scale(self) -> float:
        return abs(self.m)

    @property
    def angle_deg(self) -> float:
        return math.degrees(math.atan2(self.m.imag, self.m.real))


def _median(values: np.ndarray) -> float:
    """np.median of a short 1-D array, at a tenth of its cost (it runs per frame)."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else float((ordered[middle - 1] + ordered[middle]) / 2.0)


def fit_similarity(src: np.ndarray, dst: np.ndarray, iterations: int = 3) -> Similarity:
    """Least-squares similarity taking complex points `src` onto `dst`, made robust by reweighting
    (Huber-like: points off by more than ~2x the median residual count less)."""
    weights = np.ones(len(src))
    sim = Similarity()
    for _ in range(iterations):
        w = weights / weights.sum()
        src_mean, dst_mean = (w * src).sum(), (w * dst).sum()
        s, d = src - src_mean, dst - dst_mean
        denom = (w * (s * s.conjugate()).real).sum()
        m = (w * d * s.conjugate()).sum() / max(denom, 1e-12)
        sim = Similarity(complex(m), complex(dst_mean - m * src_mean))
        residual = np.abs(sim(src) - dst)
        limit = 2.0 * max(_median(residual), 1e-3)
        weights = np.minimum(1.0, limit / np.maximum(residual, 1e-9))
    return sim


def garrote(values: np.ndarray, threshold: float) -> np.ndarray:
    """Non-negative garrote of complex (or real) values by magnitude: 0 up to `threshold`, then
    x·(1 − t²/|x|²): continuous, no more than twice as steep as the input, and the bias t²/|x|
    fades as |x| grows (a deadband that leaves real motion almost untouched)."""
    if threshold <= 0.0:
        return values
    magnitude_sq = np.maximum(np.abs(values) ** 2, 1e-18)
    return values * np.maximum(1.0 - threshold * threshold / magnitude_sq, 0.0)


def scaled_head_motion(head: Similarity, centre: complex, k: float) -> Similarity:
    """The head motion `head` (in avatar pixels) scaled by k about the face centre: rotation angle,
    log-scale and the centre's displacement all times k (k=0 → identity, k=1 → `head`)."""
    if k == 1.0:
        return head
    m = complex(abs(head.m) ** k * np.exp(1j * k * np.angle(head.m)))
    shift = k * (head(np.array([centre]))[0] - centre)
    # z ↦ m (z − centre) + centre + shift
    return Similarity(m, centre + shift - m * centre)


# ---------------------------------------------------------------------------------------------
# 3-D head pose

# Face oval points at ear level: Face Mesh puts them near the tragus, about halfway back on the head
# (z ≈ +0.45 face widths behind the face's centre, the nose tip ≈ −0.25). Their mean depth is the
# plane of the head's outline seen from the front, and the pivot of head rotation lies in it.
EAR_LEVEL_POINTS = (234, 127, 454, 356)


def rotation_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = Rz(roll)·Ry(yaw)·Rx(pitch) in camera axes (x right, y down, z away from the camera):
    yaw > 0 turns the nose toward image left, pitch > 0 tips it down, roll > 0 turns the face
    clockwise on screen."""
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation built as in `rotation_from_angles`."""
    r = np.asarray(rotation, dtype=np.float64)
    yaw = math.degrees(math.asin(float(np.clip(-r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def _rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis times angle (radians) of a rotation matrix."""
    r = np.asarray(rotation, dtype=np.float64)
    angle = math.acos(float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    if angle < 1e-9:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle > math.pi - 1e-6:  # half-turn: the axis is the eigenvector of eigenvalue 1
        w, v = np.linalg.eigh((r + np.eye(3)) / 2.0)
        axis = v[:, int(np.argmax(w))]
        return axis / np.linalg.norm(axis) * angle
    return axis / (2.0 * math.sin(angle)) * angle


def _rotation_matrix(vector: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: a rotation vector (axis times angle) as a matrix."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    k = np.asarray(vector, dtype=np.float64) / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def in_plane_rotation(angle_rad: float) -> np.ndarray:
    """Rotation about the camera axis (a roll), as a 3x3 matrix."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Pose3D:
    """A head motion in 3-D: p ↦ scale·R·(p − pivot) + pivot + shift, for (N, 3) x, y, z points (px;
    z away from the camera). Projection is orthographic: leaning toward the camera is the scale."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    scale: float = 1.0
    pivot: np.ndarray = field(default_factory=lambda: np.zeros(3))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        return self.scale * (p - self.pivot) @ self.rotation.T + self.pivot + self.shift

    def inverse(self) -> "Pose3D":
        moved_pivot = self.pivot + self.shift
        return Pose3D(self.rotation.T, 1.0 / self.scale, moved_pivot, self.pivot - moved_pivot)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.rotation, np.eye(3)) and self.scale == 1.0 and not np.any(self.shift))

    def scaled(self, k: float) -> "Pose3D":
        """The motion times k about its pivot: rotation angle, log-scale and shift (0 → identity)."""
        if k == 1.0:
            return self
        return Pose3D(_rotation_matrix(k * _rotation_vector(self.rotation)), float(self.scale ** k),
                      self.pivot, k * self.shift)

    def conjugated(self, to_other: Similarity, other_pivot: np.ndarray) -> "Pose3D":
        """The same motion seen through a 2-D similarity (roll and scale between two faces, as
        z·|m| for depth): the rotation turned by the similarity's angle, the shift carried by it,
        the pivot the other face's own."""
        if self.is_identity:
            # turn·I·turnᵀ is I only up to rounding, and an unmoved head must stay exactly unmoved: a
            # pose that is not the identity makes the engines resample a head that did not move
            # (with the old head layer, its room plate showed as dark slivers beside the collar).
            return Pose3D(pivot=np.asarray(other_pivot, dtype=np.float64))
        turn = in_plane_rotation(math.atan2(to_other.m.imag, to_other.m.real))
        return Pose3D(turn @ self.rotation @ turn.T, self.scale, np.asarray(other_pivot, dtype=np.float64),
                      abs(to_other.m) * turn @ self.shift)

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll), see `rotation_from_angles`."""
        return angles_from_rotation(self.rotation)

    def similarity(self) -> Similarity:
        """The motion of the head's outline seen from the front: a head turning about its centre
        keeps its outline, so only the roll (the rotation's in-plane part), the scale and the
        pivot's shift move it."""
        r = self.rotation
        roll = math.atan2(r[1, 0] - r[0, 1], r[0, 0] + r[1, 1])
        m = complex(self.scale * math.cos(roll), self.scale * math.sin(roll))
        centre = complex(self.pivot[0], self.pivot[1])
        return Similarity(m, centre + complex(self.shift[0], self.shift[1]) - m * centre)


def fit_pose(src: np.ndarray, dst: np.ndarray, pivot: np.ndarray, iterations: int = 3) -> Pose3D:
    """Least-squares rotation, scale and shift (Umeyama) taking (N, 3) `src` onto `dst`, made robust
    by reweighting as `fit_similarity` does; expressed about `pivot`."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    weights = np.ones(len(src))
    pose = Pose3D(pivot=np.asarray(pivot, dtype=np.float64))
    for _ in range(iterations):
        w = weights / weights.sum()
        src_mean, dst_mean = w @ src, w @ dst
        x, y = src - src_mean, dst - dst_mean
        u, sigma, vt = np.linalg.svd((w[:, None] * y).T @ x)
        d = np.array([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt))) or 1.0])  # no reflection
        rotation = (u * d) @ vt
        scale = float((sigma * d).sum() / max(float(w @ (x * x).sum(axis=1)), 1e-12))
        # dst = scale·R·src + t; about the pivot: shift = scale·R·pivot + t − pivot.
        t = dst_mean - scale * rotation @ src_mean
        pose = Pose3D(rotation, scale, pose.pivot, scale * rotation @ pose.pivot + t - pose.pivot)
        residual = np.linalg.norm(pose(src) - dst, axis=1)
        limit = 2.0 * max(_median(residual), 1e-3)
        weights = np.minimum(1.0, limit / np.maximum(residual, 1e-9))
    return pose


def head_pivot(points: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    """The point the head turns about: the stable points' centre across, at the depth of the ear-level
    outline (0 without depth)."""
    xy = np.asarray(points, dtype=np.float64)[list(STABLE_POINTS)].mean(axis=0)
    z = 0.0 if depth is None else float(np.asarray(depth, dtype=np.float64)[list(EAR_LEVEL_POINTS)].mean())
    return np.array([xy[0], xy[1], z])


# ---------------------------------------------------------------------------------------------
# Motion transfer


@dataclass
class MotionSettings:
    """Knobs of the motion transfer.

    The One Euro values were tuned on the synthetic clips at 30 fps (bench/clips.py, tracking-mode
    landmarks): on a still noisy face the landmark jitter drops ~6.5x, the half-way point of a sudden
    12 px head shift comes < 0.1 frame later, and a 3-frame blink keeps r = 0.98 with the unfiltered
    eye ratio. A higher beta or d_cutoff trades jitter for even less lag.
    """

    smoothing: bool = True
    min_cutoff: float = 0.5  # Hz: smoothing of a still face (lower = less jitter)
    beta: float = 0.2  # how fast the cutoff opens with speed (higher = less lag)
    d_cutoff: float = 4.0  # Hz: smoothing of the speed estimate that opens the cutoff
    robust_iterations: int = 3
    # Deadbands as shares of the driving face's width (~125 px in a 256 crop). Per landmark 0.0045
    # (~0.55 px): on a still face the filtered tracker wobble stays below it (p99 ~0.45 px).
    deadband: float = 0.0045
    # For the head (mean move of the stable points) 0.005 (~0.65 px): Face Mesh shifts the whole
    # mesh by ~0.5 px as the mouth opens, which must not bob the head, hair and room while talking.
    head_deadband: float = 0.005
    # Face Mesh never closes the lids fully: a real shut eye still measures 0.17 (the synthetic
    # clips) to 0.5 (a real driver behind glasses) of its open gap, and on the engine's output a lid
    # warped fully shut reads 0.24-0.68 (median 0.41) of the photo's open gap, a lid at half its gap
    # 0.62-0.76 (six avatars: three real drivers' first frames, the astronaut, Grace Hopper, a real
    # photo). Driver openness below this share of the neutral's therefore counts as shut, and
    # above it the lid opens linearly: what Face Mesh reads on the avatar then follows what it reads
    # on the driver at nearer full size (0.2 left the output's blinks at half the driver's). Not
    # the median 0.41: Face Mesh lets the open eye follow a wink a little, and more would shut it.
    eye_closed_below: float = 0.35
    # Eyes opened wider than the neutral move the avatar's upper lid this many times the driver's
    # change. The mesh engine can only stretch the photo's eye (it has no more eyeball to show), and
    # Face Mesh reads the output's lid opened 25% / 50% wider as 9-17% / 12-36% wider (same six
    # avatars; median slope 0.55).
    eye_wider_gain: float = 1.8
    # The brows move this many times the driver's (scaled) move, for the same reason: Face Mesh reads
    # a brow the engine moved by 0.03 face heights as 0.015-0.025 (median 0.021) higher or lower on
    # five of those six avatars (Grace Hopper's brows, behind her glasses' rims, read less still).
    # As for the eyes, what Face Mesh reads on the output then moves about as far as what it reads
    # on the driver (on the real driving videos the brows' amplitude went from 0.71-0.86 to 0.93-1.05).
    brow_gain: float = 1.4


@dataclass
class MotionTarget:
    """Where the avatar's landmarks go this frame (avatar pixels) and the head motion applied."""

    points: np.ndarray  # (478, 2) float32
    head: Similarity  # the head outline's motion (roll, scale, shift), avatar px, strength applied
    expression: np.ndarray = field(repr=False, default=None)  # (478, 2) float32 deltas before head
    depth: np.ndarray | None = field(repr=False, default=None)  # (478,) float32 z of the moved points
    pose: Pose3D = field(repr=False, default_factory=Pose3D)  # the head's 3-D motion, avatar px


def _xyz(points: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    """(N, 3) float64 x, y, z (z = 0 without depth)."""
    p = np.asarray(points, dtype=np.float64)
    z = np.zeros(len(p)) if depth is None else np.asarray(depth, dtype=np.float64)
    return np.column_stack([p[:, :2], z])


class MotionTransfer:
    """Relative motion transfer from a driving face to an avatar (see the module docstring)."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._filter = OneEuroFilter(self.settings.min_cutoff, self.settings.beta, self.settings.d_cutoff)
        self._stable = np.array(STABLE_POINTS)
        self._brows = [np.array(brow) for brow in BROWS]
        self._brow_points = np.array([i for brow in BROWS for i in brow])
        self._forehead = (np.zeros(0, int), np.zeros((0, len(self._brow_points))))  # forehead_rig
        self._avatar: np.ndarray | None = None  # (478, 3) x, y, z avatar px
        self._avatar_pivot = np.zeros(3)
        self._avatar_has_depth = False
        self._neutral: np.ndarray | None = None  # (478, 3), driving crop px
        self._neutral_pivot = np.zeros(3)
        self._neutral_has_depth = False
        self._to_avatar = Similarity()  # driving-neutral pixels → avatar pixels
        self._deadband_px = 0.0  # per landmark, driving crop pixels (set with the neutral)
        self._head_deadband_px = 0.0

    # -- setup ---------------------------------------------------------------------------------
    def set_avatar(self, avatar_points: np.ndarray, depth: np.ndarray | None = None) -> None:
        self._avatar = _xyz(avatar_points, depth)
        self._forehead = forehead_rig(avatar_points)
        self._avatar_has_depth = depth is not None
        self._avatar_pivot = head_pivot(avatar_points, depth)
        self._calibrate()

    def set_neutral(self, neutral_points: np.ndarray, depth: np.ndarray | None = None) -> None:
        """Driving neutral landmarks (crop pixels, and their depth when known); also restarts the
        smoothing."""
        self._neutral = _xyz(neutral_points, depth)
        self._neutral_has_depth = depth is not None
        self._neutral_pivot = head_pivot(neutral_points, depth)
        face_width = float(np.linalg.norm(self._neutral[FACE_SIDES[1], :2] - self._neutral[FACE_SIDES[0], :2]))
        self._deadband_px = self.settings.deadband * face_width
        self._head_deadband_px = self.settings.head_deadband * face_width
        self._filter.reset()
        self._calibrate()

    def _calibrate(self) -> None:
        if self._avatar is not None and self._neutral is not None:
            stable = self._stable
            self._to_avatar = fit_similarity(as_complex(self._neutral[stable, :2]),
                                             as_complex(self._avatar[stable, :2]), self.settings.robust_iterations)

    @property
    def ready(self) -> bool:
        return self._avatar is not None and self._neutral is not None

    @property
    def in_3d(self) -> bool:
        """Whether head turns are fitted in 3-D (both faces came with depth) or in the image plane."""
        return self._avatar_has_depth and self._neutral_has_depth

    @property
    def avatar_pivot(self) -> np.ndarray:
        """The avatar's head pivot (x, y, z avatar px; see `head_pivot`)."""
        return self._avatar_pivot

    @property
    def driving_to_avatar(self) -> Similarity:
        """Driving-neutral crop pixels → avatar pixels (the adapt-scale alignment)."""
        return self._to_avatar

    # -- per frame -----------------------------------------------------------------------------
    def smooth(self, points: np.ndarray, timestamp: float) -> np.ndarray:
        """The driving landmarks (any shape: x,y or x,y,z rows) after the One Euro filter, or as
        they are when smoothing is off."""
        if not self.settings.smoothing:
            return np.asarray(points, dtype=np.float32)
        return self._filter(points, timestamp)

    def head_pose(self, driving: np.ndarray) -> Pose3D:
        """Neutral → current head motion in driving crop pixels (about the driver's head pivot),
        fitted on the stable points: in 3-D when both faces have depth, else in the image plane."""
        stable = self._stable
        if self.in_3d:
            return fit_pose(self._neutral[stable], driving[stable], self._neutral_pivot,
                            self.settings.robust_iterations)
        sim = fit_similarity(as_complex(self._neutral[stable, :2]), as_complex(driving[stable, :2]),
                             self.settings.robust_iterations)
        pivot = self._neutral_pivot
        moved = sim(np.array([complex(pivot[0], pivot[1])]))[0]
        return Pose3D(in_plane_rotation(math.atan2(sim.m.imag, sim.m.real)), abs(sim.m), pivot,
                      np.array([moved.real - pivot[0], moved.imag - pivot[1], 0.0]))

    def target(self, driving_points: np.ndarray, timestamp: float, strength: float = 1.0,
               region: str = "all", motion_scale: float = 1.0,
               driving_depth: np.ndarray | None = None) -> MotionTarget:
        """Avatar landmark positions for this driving frame (see the module docstring)."""
        if not self.ready:
            raise RuntimeError("MotionTransfer needs set_avatar and set_neutral before target")
        depth = driving_depth if self._neutral_has_depth else None
        driving = np.asarray(self.smooth(_xyz(driving_points, depth), timestamp), dtype=np.float64)
        k = float(strength) * float(motion_scale)
        head_drv = self.head_pose(driving)
        undone = head_drv.inverse()(driving)
        # Residual in the neutral's frame, then carried into the avatar's frame (roll + adapt-scale).
        residual = self._neutral_delta(undone)
        expression = self._carried(residual) * k
        head = self._still_head(head_drv).conjugated(self._to_avatar, self._avatar_pivot).scaled(k)
        if region == "expression":
            head = Pose3D(pivot=self._avatar_pivot)
        if region == "pose":
            expression = np.zeros_like(expression)
        else:
            expression = self._with_eye_openness(expression, undone, k)
            for brow in self._brows:
                expression[brow] *= self.settings.brow_gain
            skin, follow = self._forehead
            expression[skin] += follow @ expression[self._brow_points]
        moved = head(self._avatar + expression)
        return MotionTarget(moved[:, :2].astype(np.float32), head.similarity(),
                            expression[:, :2].astype(np.float32), moved[:, 2].astype(np.float32), head)

    def _neutral_delta(self, undone: np.ndarray) -> np.ndarray:
        """Each landmark's move from the neutral (head motion undone), through the per-landmark
        deadband (on its image-plane length; depth follows the same factor)."""
        delta = undone - self._neutral
        planar = delta[:, 0] + 1j * delta[:, 1]
        kept = np.abs(garrote(planar, self._deadband_px)) / np.maximum(np.abs(planar), 1e-12)
        return delta * kept[:, None]

    def _carried(self, delta: np.ndarray) -> np.ndarray:
        """Driving-neutral deltas in the avatar's frame: turned by the driver→avatar roll, scaled by
        its adapt-scale (depth by the same scale)."""
        m = self._to_avatar.m
        planar = m * (delta[:, 0] + 1j * delta[:, 1])
        return np.column_stack([planar.real, planar.imag, abs(m) * delta[:, 2]])

    def _still_head(self, head: Pose3D) -> Pose3D:
        """The head motion through the deadband: its mean image-plane displacement of the stable
        points is garroted (scaling the motion about its pivot), so tracker wobble leaves it at rest."""
        stable = self._neutral[self._stable]
        moved = float(np.linalg.norm((head(stable) - stable)[:, :2], axis=1).mean())
        keep = float(garrote(moved, self._head_deadband_px)) / max(moved, 1e-12)  # 0 → identity
        return head.scaled(keep) if keep > 0.0 else Pose3D(pivot=head.pivot)

    def eye_openness(self, undone: np.ndarray, eye: EyeIndices) -> float:
        """Driver's lid gap over the neutral's (head motion undone), mapped so that Face Mesh's
        "shut" reads 0; wider than neutral amplified by `eye_wider_gain`."""
        upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
        gap = np.linalg.norm(undone[upper, :2] - undone[lower, :2], axis=1).mean()
        neutral_gap = np.linalg.norm(self._neutral[upper, :2] - self._neutral[lower, :2], axis=1).mean()
        # The deadband on the lid gap, so a still eye stays as it is: the landmarks' own, shrunk by
        # the square root of the lid points averaged (their wobble averages out as much); the
        # landmarks' full deadband would swallow the first tenth of every blink and wink.
        threshold = self._deadband_px / math.sqrt(len(upper))
        ratio = 1.0 + float(garrote(gap - neutral_gap, threshold)) / max(neutral_gap, 1e-6)
        if ratio >= 1.0:
            return 1.0 + self.settings.eye_wider_gain * (ratio - 1.0)
        floor = self.settings.eye_closed_below
        return max(0.0, (ratio - floor) / (1.0 - floor))

    def _with_eye_openness(self, expression: np.ndarray, undone: np.ndarray, k: float) -> np.ndarray:
        """Set the avatar's upper lids from the driver's eye openness as a ratio, not as pixels:
        eyes of different sizes then shut together, and a blink closes the avatar's eye fully."""
        expression = expression.copy()
        for eye, lashes in zip(EYES, LASH_RINGS):
            openness = 1.0 + k * (self.eye_openness(undone, eye) - 1.0)
            upper, lower, lashes = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1]), list(lashes)
            lower_now = self._avatar[lower, :2] + expression[lower, :2]
            gap = self._avatar[upper, :2] - self._avatar[lower, :2]
            expression[upper, :2] = lower_now + openness * gap - self._avatar[upper, :2]
            # The band between the lid's edge and the ring above it (lashes, the dark rim Face Mesh
            # reads as the lid) moves with the edge as one piece, closing and opening wider; the
            # skin above stretches or folds. A band that stretches, or that keeps the lash ring's
            # own tracker wobble, reads (to the eye and to Face Mesh) as a lid that moved less.
            band = self._avatar[lashes, :2] - self._avatar[upper, :2]
            expression[lashes, :2] = self._avatar[upper, :2] + expression[upper, :2] + band - self._avatar[lashes, :2]
        return expression
