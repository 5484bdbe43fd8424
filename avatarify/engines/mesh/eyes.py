"""The mesh engine's eyes: each eye opening triangulated as a fan around its iris centre (the warp
moves the lids and keeps the iris vertex between them), then painted over from the photo's own eye
turned to the driver's gaze: its eyeball moved whole with the iris (the iris keeps its size and
shape), the white of the eye where the photo's lids hid it, the rows under the lid margins moving
with the lids.

Why a paint and not the warp alone: the warp can only stretch the photo's eye between the moved
lids. Looking down or opened wide, the driver shows white above the iris; the stretched photo
showed a taller iris instead, and Face Mesh read its move (on the real driving videos) at under
half the driver's, with vertical gaze r 0.71 on d6 (0.86 with the paint).

Input: the avatar's picture and landmarks (per avatar), the target landmarks (per frame), avatar px.
Output: the fan triangles, the iris vertex's target, and each eye opening painted into the warped box."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from avatarify.engines.mesh.geometry import GREY_BGR, _box_around, _inside, _polygon_mask, _smoothstep
from avatarify.motion import EYES, EyeIndices

log = logging.getLogger(__name__)

IRIS_REACH = 0.22  # how far along the eye the iris may move from the avatar's own place, in eye widths
# The iris centre stays this far between the lower (0) and upper (1) lid where it then stands: the
# moved lids leave it visible. (The fan's iris vertex nearer a lid squashes the triangles beside it,
# but the paint covers them; on the real driving videos (0.15, 0.85) gave d6 vertical gaze r
# 0.86 / 0.88 and eye r 0.91 / 0.88, (0.25, 0.75) 0.85 / 0.87 and 0.91 / 0.89.)
GAZE_SHARE = (0.2, 0.8)
# The iris moves across the eye this many times as far as the driver's over their eye's corners:
# Face Mesh reads the painted iris's move at about two thirds (real driving videos) and a glance
# of a few hundredths of an eye width not at all (a 1 px move at 256 px); d6's vertical gaze r
# 0.79 / 0.82 at 1, 0.83 / 0.85 at 1.5, 0.85 / 0.87 at 2 (GAZE_SHARE 0.25, 0.75).
GAZE_GAIN = 2.0
# The vertical gaze fades out as the lids close from the second to the first share of their own
# opening (looking down lowers the upper lid too, a blink shuts it): there Face Mesh's iris sinks
# with the lid, which is no gaze.
GAZE_OPEN = (0.4, 0.7)
# The rows under each lid margin (its shadow and the lashes' dark line, the edge Face Mesh reads as
# the lid) move with the margin, within this share of the photo's opening, fading into the turned
# eyeball over as much again. Left behind as the lid moved, a lowered lid read as not moving (eye r
# 0.71 on one eye of real driver d19, 0.86 with them); dragged into the eye with the eyeball they
# read as a second lid; wider, they kept the iris's top and bottom rows at the lids and its move
# read less (d6's vertical gaze r 0.73 / 0.80 at 0.15, 0.80 / 0.82 at 0.05).
LID_BAND = 0.05
TURN_STEPS = 12  # how finely `_turned_in` turns a point toward the eye's corners
# The iris with its dark rim: this times Face Mesh's iris ring radius (the ring lies on the iris's
# edge; the limbus reaches a little beyond).
IRIS_COVER = 1.15
WHITE_EDGE_PX = 0.7  # the white colour fades in over this many output px (Gaussian sigma)
WHITE_MIN_PIXELS = 6  # the least of the photo's white that gives its colour
WHITE_BRIGHTEST = 0.1  # the share of those pixels, brightest first, whose median is the white
# The white painted where the photo's lids hid the eyeball is shaded as an eyeball is: darker
# toward the corners (this share at a corner) and in the upper lid's shadow (this share at the
# margin, fading over WHITE_LID_SHADOW_WIDTH eye widths); and only this share of its colour is
# kept: a shadowed photo's few white pixels are skin-tinted, and a flat tinted patch the lids
# opened over read as a hole in the eye (Grace Hopper, real driver d6 widening the eyes). Darker
# shading (0.3 corners, 0.55 under the lid) lowered the eye-opening r Face Mesh reads (d12 0.902 -> 0.893).
WHITE_CORNER_SHADE = 0.2
WHITE_LID_SHADE = 0.2
WHITE_LID_SHADOW_WIDTH = 0.05
WHITE_CHROMA = 0.4
# An eye's fan is drawn as if this share of the face size deeper than its corners: behind the lid
# skin around it (Face Mesh's lid and lash-ring depths differ by far less), in front of the head's
# far side.
FAN_BEHIND = 0.02


@dataclass
class _Lids:
    """An eye's frame in some landmarks (its first corner and the vector to the other, complex px:
    corner to corner = 0..1 along the real axis) and its lid margins in it, each sorted along."""

    corner: complex
    axis: complex
    lower: tuple[np.ndarray, np.ndarray]  # (along, across) of the lower lid's margin
    upper: tuple[np.ndarray, np.ndarray]

    def inside(self, along: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Where the lower and the upper lid lie across the eye at `along` (frame units)."""
        return np.interp(along, *self.lower), np.interp(along, *self.upper)

    def local(self, xy: np.ndarray) -> np.ndarray:
        """Avatar px (x + iy, complex) -> the eye's frame."""
        return (xy - self.corner) / self.axis

    def pixels(self, z: np.ndarray) -> np.ndarray:
        """The eye's frame -> avatar px (x + iy, complex)."""
        return self.corner + z * self.axis


def _eye_lids(points: np.ndarray, eye: EyeIndices) -> _Lids:
    corner = complex(*points[eye.corners[0]])
    axis = complex(*points[eye.corners[1]]) - corner
    margins = []
    for lid in (eye.lower_lid, eye.upper_lid):
        at = (points[list(lid), 0] + 1j * points[list(lid), 1] - corner) / axis
        order = np.argsort(at.real)
        margins.append((at.real[order], at.imag[order]))
    return _Lids(corner, axis, margins[0], margins[1])


def _iris_in(points: np.ndarray, eye: EyeIndices, lids: _Lids) -> complex:
    return complex(lids.local(complex(*points[eye.iris_centre])))


@dataclass
class _Gaze:
    """One eye of the photo: its iris's mesh vertex, its lids in its frame, its iris there (centre,
    radius) and the colour of its white, and where `_iris_place` puts the iris for the avatar's own
    landmarks (moves are taken relative to it, so the avatar at rest stays exact)."""

    indices: EyeIndices
    vertex: int
    photo: _Lids
    iris: complex  # the photo's iris centre, in its eye's frame
    radius: float  # the iris's radius with its rim (IRIS_COVER), eye widths
    white_bgr: np.ndarray  # the photo's white of this eye (uint8 BGR)
    rest: complex = 0j
    share: float = 0.5  # the rest place's share of the way from the lower lid to the upper one
    opening: float = 1.0  # the lids' distance across there, in the eye's frame (eye widths)


@dataclass
class _EyeTarget:
    """One eye this frame: its lids in the target landmarks, the painted iris centre in their frame,
    and how open the lids are at the iris (1: open; 0: closing, see GAZE_OPEN)."""

    lids: _Lids
    iris: complex
    opened: float


class EyeRig:
    """The eyes' part of MeshAnimator (module docstring)."""

    def _eye_fans(self, triangles: np.ndarray, iris_vertices: list[int]) -> tuple[np.ndarray, list[_Gaze]]:
        """Each eye opening triangulated as a fan around its iris centre, so the lids can close over
        it without folding the mesh (Delaunay alone would tie it to points beyond the lids). An eye
        whose opening the Delaunay mesh does not bound by its own lid edges (a nearly shut eye in
        the photo) keeps its triangles, and its iris stays where it is."""
        vertex_of = {int(index): vertex for vertex, index in enumerate(self._warp_points)}
        gaze_eyes = []
        for eye, centre in zip(EYES, iris_vertices):
            ring = np.array([vertex_of[index] for index in eye.opening], np.int32)
            outline = self._vertices_src[ring]
            candidates = np.flatnonzero(np.isin(triangles, ring).all(axis=1))
            centroids = self._vertices_src[triangles[candidates]].mean(axis=1)
            covered = candidates[_inside(centroids, outline)]
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
        """The photo's eye, its iris, and where the iris sits at rest."""
        points = self._avatar_points
        photo = _eye_lids(points, eye)
        iris = _iris_in(points, eye, photo)
        ring = points[list(eye.iris_ring)] - points[eye.iris_centre]
        radius = IRIS_COVER * float(np.linalg.norm(ring, axis=1).mean()) / abs(photo.axis)
        lower, upper = photo.inside(iris.real)
        rig = _Gaze(eye, vertex, photo, iris, radius, np.zeros(3, np.uint8))
        rig.opening = max(float(abs(upper - lower)), 1e-6)
        rig.white_bgr = self._eye_white(rig)
        share = (iris.imag - lower) / (upper - lower) if abs(upper - lower) > 1e-6 else 0.5
        rig.share = float(np.clip(share, *GAZE_SHARE))
        rig.rest = self._iris_place(points, rig, photo)[0]
        return rig

    def _eye_white(self, gaze: _Gaze) -> np.ndarray:
        """The colour of the photo's white of this eye: the median of the brightest tenth of its
        pixels inside the lids (clear of the rows they shadow) and beyond the iris's rim (the rest
        are lashes, the eye's corner, the rim's shade), or of the whole opening where the photo
        shows too little white."""
        opening = self._avatar_points[list(gaze.indices.opening)]
        x0, y0, x1, y1 = _box_around(opening, 0.0, (0, 0, self._avatar_bgr.shape[1], self._avatar_bgr.shape[0]))
        ys, xs = np.mgrid[y0:y1, x0:x1]
        z = gaze.photo.local(xs + 1j * ys)
        inside = np.minimum(*_from_lids(z, gaze.photo)) > 0.0
        white = _shows(z, gaze) & (np.abs(z - gaze.iris) >= gaze.radius)
        pixels = self._avatar_bgr[y0:y1, x0:x1]
        chosen = pixels[white] if white.sum() >= WHITE_MIN_PIXELS else pixels[inside]
        if not len(chosen):
            return np.full(3, 255, np.uint8)
        grey = chosen.astype(np.float32) @ GREY_BGR
        bright = np.median(chosen[grey >= np.quantile(grey, 1.0 - WHITE_BRIGHTEST)], axis=0)
        level = float(bright @ GREY_BGR)
        return np.clip(level + WHITE_CHROMA * (bright - level), 0, 255).astype(np.uint8)

    @staticmethod
    def _iris_place(points: np.ndarray, gaze: _Gaze, lids: _Lids) -> tuple[complex, float]:
        """The iris centre for these landmarks, in their eye's frame (`lids`): along the eye where
        their iris is, at most IRIS_REACH from the avatar's own place (a tracking glitch cannot
        roll it out); across, where their iris is over the eye's corners (the driver's vertical
        gaze, moved GAZE_GAIN times as far as the driver's), but no nearer either lid than GAZE_SHARE of the way
        between them where it then stands, and at the avatar's own share between them as the lids
        close (GAZE_OPEN): there Face Mesh's iris sinks with the lid, and following it would roll
        the eye down in every blink. A closing lid so covers the iris instead of folding over it.
        Also returns how open the lids are there for that (1: open, 0: closing)."""
        iris = _iris_in(points, gaze.indices, lids)
        along = float(np.clip(iris.real, gaze.iris.real - IRIS_REACH, gaze.iris.real + IRIS_REACH))
        lower, upper = (float(v) for v in lids.inside(along))
        across = gaze.iris.imag + GAZE_GAIN * (iris.imag - gaze.iris.imag)
        share = (across - lower) / (upper - lower) if abs(upper - lower) > 1e-6 else gaze.share
        opened = float(_smoothstep((abs(upper - lower) / gaze.opening - GAZE_OPEN[0]) / (GAZE_OPEN[1] - GAZE_OPEN[0])))
        share = float(np.clip(gaze.share + opened * (share - gaze.share), *GAZE_SHARE))
        return complex(along, lower + share * (upper - lower)), opened

    def _iris_targets(self, points: np.ndarray) -> list[_EyeTarget]:
        """Per eye with a gaze rig: its lids in these (target) landmarks, where the painted iris
        centre goes in their frame (the photo's own place, moved as `_iris_place` moves it from
        rest) and how open the lids are."""
        targets = []
        for gaze in self._gaze_eyes:
            lids = _eye_lids(points, gaze.indices)
            place, opened = self._iris_place(points, gaze, lids)
            targets.append(_EyeTarget(lids, gaze.iris + place - gaze.rest, opened))
        return targets

    def _paint_eyes(self, warped: np.ndarray, origin: np.ndarray, points: np.ndarray,
                    eyes: list[_EyeTarget]) -> None:
        """Paint each eye opening into `warped` (a block of the output whose top-left pixel is
        `origin`, avatar px) from the photo's own eye (see `_eye_sources`), for these landmarks'
        `_iris_targets`."""
        height, width = warped.shape[:2]
        for gaze, eye in zip(self._gaze_eyes, eyes):
            opening = points[list(gaze.indices.opening)] - origin
            x0, y0, x1, y1 = _box_around(opening, 1.0, (0, 0, width, height))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            mask = _polygon_mask(opening, (x0, y0), (y1 - y0, x1 - x0))
            ys, xs = np.mgrid[y0:y1, x0:x1]
            z = eye.lids.local(xs + origin[0] + 1j * (ys + origin[1]))
            source, white = self._eye_sources(z, eye, gaze)
            painted = cv2.remap(self._avatar_bgr, np.float32(source.real), np.float32(source.imag),
                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            if white.any():
                colour = _shaded_white(z, eye.lids, gaze.white_bgr)
                painted = cv2.blendLinear(colour, painted, white, cv2.subtract(1.0, white))
            region = warped[y0:y1, x0:x1]
            warped[y0:y1, x0:x1] = cv2.blendLinear(painted, region, mask, cv2.subtract(1.0, mask))

    @staticmethod
    def _eye_sources(z: np.ndarray, eye: _EyeTarget, gaze: _Gaze) -> tuple[np.ndarray, np.ndarray]:
        """Where the photo is sampled (avatar px, complex) for output points `z` (the target eye's
        frame), and how much of the photo's white colour covers it instead (float32 0..1): the
        photo's eyeball moved whole with its iris to `eye.iris`, as an eye turns, the rows under
        the lid margins with the lids (`_rims`). Where the eyeball lands beyond the photo's lids
        (or on their rows), the iris is taken at the same distance from its centre turned toward
        the eye's corners (an iris is alike all round), and the white is the photo's white colour:
        its few pixels beside the iris, stretched, read as a mottled smear. As the lids close
        (`_EyeTarget.opened`), the photo's eye is squashed between them instead, its lid margins'
        dark rows meeting as a shut eye's do (a slit of white and iris reads as a half-open eye:
        eye r 0.845 instead of 0.863 on one eye of real driver d19). At rest this is the photo's
        own eye."""
        offset = z - eye.iris
        source = gaze.iris + offset
        rim, attached = _rims(z, eye.lids, gaze, float(eye.iris.real - gaze.iris.real))
        hidden = ~_shows(source, gaze) & (attached < 1.0)  # (the rims cover the rest)
        white = np.zeros(z.shape, np.float32)
        if hidden.any():
            cap = hidden & (np.abs(offset) < gaze.radius)
            source[cap] = _turned_in(offset[cap], gaze)
            white[hidden & ~cap] = 1.0
            white = cv2.GaussianBlur(white, (0, 0), WHITE_EDGE_PX) * (1.0 - attached)
        source = rim + (1.0 - attached) * (source - rim)
        if eye.opened < 1.0:
            squashed = _between_lids(z, eye.lids, gaze.photo)
            source = squashed + eye.opened * (source - squashed)
            white *= eye.opened
        return gaze.photo.pixels(source), white


def _shaded_white(z: np.ndarray, lids: _Lids, white_bgr: np.ndarray) -> np.ndarray:
    """The white of an eyeball at points `z` of the eye's frame, uint8 BGR: `white_bgr` darkened
    toward the corners and under the upper lid."""
    from_upper = np.maximum(_from_lids(z, lids)[0], 0.0)
    shade = (1.0 - WHITE_CORNER_SHADE * np.clip(2.0 * z.real - 1.0, -1.0, 1.0) ** 2) * (
        1.0 - WHITE_LID_SHADE * np.exp(-from_upper / WHITE_LID_SHADOW_WIDTH))
    return np.clip(shade[..., None] * white_bgr.astype(np.float32), 0, 255).astype(np.uint8)


def _between_lids(z: np.ndarray, lids: _Lids, photo: _Lids) -> np.ndarray:
    """Points of an eye's frame at the same share of the way between `lids` taken to the photo's
    eye between its own (along the eye where they are)."""
    lower, upper = lids.inside(z.real)
    gap = upper - lower
    # Kept between the lids: the mask's soft edge reaches points just beyond them, whose share of
    # a nearly shut gap would land anywhere in the photo.
    share = np.clip(np.divide(z.imag - lower, gap, out=np.zeros_like(gap), where=np.abs(gap) > 1e-9), 0.0, 1.0)
    lower_photo, upper_photo = photo.inside(z.real)
    return z.real + 1j * (lower_photo + share * (upper_photo - lower_photo))


def _rims(z: np.ndarray, lids: _Lids, gaze: _Gaze, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows under the lid margins move with them: for output points `z` (the target eye's
    frame) the photo's point as deep inside its own nearer margin, along the eye where the
    eyeball's turn (`turn`, eye widths) takes `z`, and how much that makes of each point (1 within
    LID_BAND, fading out over as much again): the lid's shadow on the eyeball turns with it."""
    band = LID_BAND * gaze.opening
    from_upper, from_lower = _from_lids(z, lids)
    along = np.clip(z.real - turn, 0.0, 1.0)
    lower, upper = gaze.photo.inside(along)
    down = np.sign(lower - upper)
    depth = np.clip(np.minimum(from_upper, from_lower), 0.0, 0.5 * np.abs(lower - upper))
    across = np.where(from_upper <= from_lower, upper + depth * down, lower - depth * down)
    attached = 1.0 - _smoothstep((np.minimum(from_upper, from_lower) - band) / band)
    return along + 1j * across, attached.astype(np.float32)


def _from_lids(z: np.ndarray, lids: _Lids) -> tuple[np.ndarray, np.ndarray]:
    """How far points of an eye's frame lie inside its upper and its lower lid margin, across the
    eye (eye widths; < 0 beyond that margin)."""
    lower, upper = lids.inside(z.real)
    down = np.sign(lower - upper)  # the frame's across runs up or down the image, per eye
    return (z.imag - upper) * down, (lower - z.imag) * down


def _shows(source: np.ndarray, gaze: _Gaze) -> np.ndarray:
    """Whether the photo's eye at `source` (its frame) may show inside the target eye: inside the
    photo's lids, clear of the rows under them (`_rims`: those stay beside a margin)."""
    band = LID_BAND * gaze.opening
    inside = (source.real > 0.0) & (source.real < 1.0)
    for depth in _from_lids(source, gaze.photo):
        inside &= depth >= band - 1e-6
    return inside


def _turned_in(offset: np.ndarray, gaze: _Gaze) -> np.ndarray:
    """The photo's points (its frame) at each `offset`'s distance from its iris centre, turned from
    the offset's direction toward the nearer corner's side until `_shows` lets them show (an iris
    is alike all round); the iris's centre where no turn does."""
    radius, angle = np.abs(offset), np.angle(offset)
    side = np.where(np.abs(angle) <= 0.5 * np.pi, 0.0, np.where(angle > 0.0, np.pi, -np.pi))
    found = np.zeros(offset.shape, bool)
    source = np.full(offset.shape, gaze.iris, complex)
    for step in np.linspace(0.0, 1.0, TURN_STEPS + 1)[1:]:
        candidate = gaze.iris + radius * np.exp(1j * (angle + step * (side - angle)))
        new = ~found & _shows(candidate, gaze)
        source[new] = candidate[new]
        found |= new
    return source
