"""Motion transfer: from driving landmarks to where the avatar's landmarks should go.

Input per avatar: the avatar's 478 landmarks (its pixels). Per calibration: the driving neutral
landmarks (driving-crop pixels). Per frame: the driving landmarks and their capture timestamp, the
user's strength and region, and the app's motion scale. Output: `MotionTarget` — the avatar's 478
landmarks moved (avatar pixels) and the head motion as a similarity in avatar pixels.

How:
  1. Smoothing: a One Euro filter over all driving landmarks, driven by the real capture timestamps
     (switchable off, so the quality bench can measure what it buys).
  2. Head motion: a similarity (rotation, scale, translation) fitted from the neutral to the current
     landmarks on points that expressions barely move (upper face oval, forehead, nose bridge), by
     iteratively reweighted least squares so a few badly tracked points cannot tilt the head.
  3. Expression: what is left of each landmark after undoing the head motion, relative to the
     neutral. The driver→avatar similarity (fitted once per calibration on the same stable points)
     carries it into the avatar's geometry: its scale is FOMM's adapt-scale (driving face size →
     avatar face size), its rotation keeps "down" meaning the avatar's chin direction.
  4. The head motion is re-expressed about the avatar's face centre, so a driver nodding in one
     corner of their crop turns the avatar about its own face.
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
        limit = 2.0 * max(float(np.median(residual)), 1e-3)
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
    # Face Mesh never closes the lids fully (a shut eye still measures ~0.17 of its open gap), so
    # driver eye openness below this share of the neutral's counts as shut.
    eye_closed_below: float = 0.2


@dataclass
class MotionTarget:
    """Where the avatar's landmarks go this frame (avatar pixels) and the head motion applied."""

    points: np.ndarray  # (478, 2) float32
    head: Similarity  # avatar pixels → avatar pixels, strength already applied
    expression: np.ndarray = field(repr=False, default=None)  # (478, 2) float32 deltas before head


class MotionTransfer:
    """Relative motion transfer from a driving face to an avatar (see the module docstring)."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._filter = OneEuroFilter(self.settings.min_cutoff, self.settings.beta, self.settings.d_cutoff)
        self._stable = np.array(STABLE_POINTS)
        self._avatar: np.ndarray | None = None  # complex (478,)
        self._avatar_centre = 0j
        self._neutral: np.ndarray | None = None  # complex (478,), driving crop pixels
        self._to_avatar = Similarity()  # driving-neutral pixels → avatar pixels
        self._deadband_px = 0.0  # per landmark, driving crop pixels (set with the neutral)
        self._head_deadband_px = 0.0

    # -- setup ---------------------------------------------------------------------------------
    def set_avatar(self, avatar_points: np.ndarray) -> None:
        self._avatar = as_complex(avatar_points)
        self._avatar_centre = complex(self._avatar[self._stable].mean())
        self._calibrate()

    def set_neutral(self, neutral_points: np.ndarray) -> None:
        """Driving neutral landmarks (crop pixels); also restarts the smoothing."""
        self._neutral = as_complex(neutral_points)
        face_width = abs(self._neutral[FACE_SIDES[1]] - self._neutral[FACE_SIDES[0]])
        self._deadband_px = self.settings.deadband * float(face_width)
        self._head_deadband_px = self.settings.head_deadband * float(face_width)
        self._filter.reset()
        self._calibrate()

    def _calibrate(self) -> None:
        if self._avatar is not None and self._neutral is not None:
            self._to_avatar = fit_similarity(self._neutral[self._stable], self._avatar[self._stable],
                                             self.settings.robust_iterations)

    @property
    def ready(self) -> bool:
        return self._avatar is not None and self._neutral is not None

    @property
    def driving_to_avatar(self) -> Similarity:
        """Driving-neutral crop pixels → avatar pixels (the adapt-scale alignment)."""
        return self._to_avatar

    # -- per frame -----------------------------------------------------------------------------
    def smooth(self, points: np.ndarray, timestamp: float) -> np.ndarray:
        """The driving landmarks after the One Euro filter (or as they are when smoothing is off)."""
        if not self.settings.smoothing:
            return np.asarray(points, dtype=np.float32)
        return self._filter(points, timestamp)

    def head_motion(self, driving: np.ndarray) -> Similarity:
        """Neutral → current head motion in driving crop pixels, fitted on the stable points."""
        return fit_similarity(self._neutral[self._stable], driving[self._stable], self.settings.robust_iterations)

    def target(self, driving_points: np.ndarray, timestamp: float, strength: float = 1.0,
               region: str = "all", motion_scale: float = 1.0) -> MotionTarget:
        """Avatar landmark positions for this driving frame (see the module docstring)."""
        if not self.ready:
            raise RuntimeError("MotionTransfer needs set_avatar and set_neutral before target")
        driving = as_complex(self.smooth(driving_points, timestamp))
        k = float(strength) * float(motion_scale)
        head_drv = self.head_motion(driving)
        undone = head_drv.inverse()(driving)
        # Residual in the neutral's frame, then carried into the avatar's frame (rotation + adapt-scale).
        residual = garrote(undone - self._neutral, self._deadband_px)
        expression = self._to_avatar.m * residual * k
        # The same head motion seen in avatar pixels: to_avatar ∘ head ∘ to_avatar⁻¹.
        head_avatar = self._to_avatar.inverse().then(self._still_head(head_drv)).then(self._to_avatar)
        head = scaled_head_motion(head_avatar, self._avatar_centre, k)
        if region == "expression":
            head = Similarity()
        if region == "pose":
            expression = np.zeros_like(expression)
        else:
            expression = self._with_eye_openness(expression, undone, k)
        points = head(self._avatar + expression)
        return MotionTarget(as_points(points), head, as_points(expression))

    def _still_head(self, head: Similarity) -> Similarity:
        """The head motion through the deadband: its mean displacement of the stable points is
        garroted (scaling the motion about the face centre), so tracker wobble leaves it at rest."""
        stable = self._neutral[self._stable]
        moved = float(np.abs(head(stable) - stable).mean())
        keep = float(garrote(moved, self._head_deadband_px)) / max(moved, 1e-12)  # 0 → identity
        return scaled_head_motion(head, complex(stable.mean()), keep)

    def eye_openness(self, undone: np.ndarray, eye: EyeIndices) -> float:
        """Driver's lid gap over the neutral's (head motion undone), mapped so that Face Mesh's
        "shut" reads 0; wider than neutral stays as measured."""
        upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
        gap = np.abs(undone[upper] - undone[lower]).mean()
        neutral_gap = np.abs(self._neutral[upper] - self._neutral[lower]).mean()
        # The deadband on the lid gap (in px, like the landmarks'), so a still eye stays as it is.
        ratio = 1.0 + float(garrote(gap - neutral_gap, self._deadband_px)) / max(neutral_gap, 1e-6)
        if ratio >= 1.0:
            return ratio
        floor = self.settings.eye_closed_below
        return max(0.0, (ratio - floor) / (1.0 - floor))

    def _with_eye_openness(self, expression: np.ndarray, undone: np.ndarray, k: float) -> np.ndarray:
        """Set the avatar's upper lids from the driver's eye openness as a ratio, not as pixels:
        eyes of different sizes then shut together, and a blink closes the avatar's eye fully."""
        expression = expression.copy()
        for eye in EYES:
            openness = 1.0 + k * (self.eye_openness(undone, eye) - 1.0)
            upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
            lower_now = self._avatar[lower] + expression[lower]
            gap = self._avatar[upper] - self._avatar[lower]
            expression[upper] = lower_now + openness * gap - self._avatar[upper]
        return expression
