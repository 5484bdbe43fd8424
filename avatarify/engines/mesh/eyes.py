"""The mesh engine's eyes: each eye opening triangulated as a fan around its iris centre, and where
the iris vertex goes for a driver's gaze (along the eye, and across it between the moved lids).

Input: the avatar's landmarks (per avatar) and the target landmarks (per frame), avatar px. Output:
the fan triangles, the iris vertex's target, and the fans' source shifts (the eye sliding under a lid)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from avatarify.engines.mesh.geometry import _smoothstep
from avatarify.motion import EYES, EyeIndices

log = logging.getLogger(__name__)

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


class EyeRig:
    """The eyes' part of MeshAnimator (module docstring)."""

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
        share = (iris.imag - lower) / (upper - lower) if abs(upper - lower) > 1e-6 else 0.5
        rig.share = float(np.clip(share, *GAZE_SHARE))
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
