"""The mesh engine's mouth: where the driver opens the mouth wider than the avatar, its interior:
the driver's own teeth and tongue from the driving frame (inside their inner lips, eroded, so their
lips never show, its colours carried out to the avatar's lips), lit as the avatar's cheeks are and
rolled off under the avatar's white, over a shaded cavity, under the avatar's moustache if it has one,
faded in with the opening.

Input: the avatar picture and landmarks (per avatar), the driver's lips light (per calibration), the
target landmarks and the driving frame (per frame). Output: the interior painted into the warped box."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from avatarify.datatypes import DrivingFrame
from avatarify.engines.mesh.geometry import GREY_BGR, _box_around, _polygon_mask
from avatarify.motion import (FACE_OVAL, INNER_LIPS, MOUTH_CORNERS, MOUTH_INNER_BOTTOM, MOUTH_INNER_TOP,
                              NUM_MESH_POINTS, OUTER_LIPS, MotionTarget, mouth_open_ratio)

log = logging.getLogger(__name__)

CAVITY_START = 0.02  # mouth-open ratio above the avatar's own at which the cavity starts to show
CAVITY_FULL = 0.08  # ... and at which it is fully shown
# The driver's mouth interior is used inside their inner lips eroded by this share of their lip gap
# (their lips never show), its colours carried out to the avatar's inner lips (no dark cavity ring
# between them), lit as the avatar: their skin's brightness matched by a gain within this range.
MOUTH_INSET = 0.12
MOUTH_GAIN_RANGE = (0.6, 1.6)
# A webcam's skin sits near 140 and a studio photo's near 200 (the shared drivers' 134-149, photos'
# 146-207), so the gain lifts the driver's teeth past 255: clipped flat, their texture gone, red
# clipped first (a yellow cast) -- a glow (80-100 % of the brightest third on d19's pairs). Levels are
# lifted as a photo's tone curve does instead: unchanged up to this share of the avatar's white,
# rolling off smoothly (same slope at the knee) towards that white, never past it.
MOUTH_SHOULDER = 0.75
WHITE_PERCENTILE = 99  # the avatar's white: this percentile of its face's brightest channel
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
# Cavity colours, BGR: dark red-brown at the lips fading to near-black at the back of the mouth.
CAVITY_EDGE_BGR = np.array([38, 36, 92], np.float32)
CAVITY_BACK_BGR = np.array([14, 12, 28], np.float32)
TEETH_BGR = np.array([170, 188, 200], np.float32)


def cheeks_bgr(image_bgr: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Median colour of small patches on the cheeks (CHEEKS): the face's skin under its light
    (also the teeth bench's reference for the interior's brightness)."""
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


@dataclass
class _MouthRig:
    open_ratio: float  # the avatar's own inner-lip gap over mouth width
    edge_bgr: np.ndarray  # cavity colour next to the lips (tinted by the avatar's lips)
    lip_bgr: np.ndarray  # the avatar's median lip colour
    skin_bgr: np.ndarray  # the avatar's cheeks' colour (the interior's light follows it)
    white: float  # the avatar face's white level (WHITE_PERCENTILE): the interior's ceiling
    hair: np.ndarray | None = None  # float32 [0, 1] moustache over the lips (avatar px), or None
    hair_bgr: np.ndarray | None = None  # the avatar's pixels under `hair`
    hair_origin: tuple[int, int] = (0, 0)  # avatar px (x, y) of `hair`'s first pixel


class MouthPainter:
    """The mouth's part of MeshAnimator (module docstring)."""

    def _build_mouth(self, avatar_bgr: np.ndarray, points: np.ndarray) -> None:
        outer = _polygon_mask(points[list(OUTER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        inner = _polygon_mask(points[list(INNER_LIPS)], (0, 0), avatar_bgr.shape[:2])
        lips = (outer - inner) > 0.5
        lip_bgr = np.median(avatar_bgr[lips], axis=0).astype(np.float32) if lips.any() else CAVITY_EDGE_BGR
        # The cavity next to the lips is a shadowed continuation of the lips' own hue.
        edge = 0.5 * CAVITY_EDGE_BGR + 0.5 * 0.35 * lip_bgr
        skin = cheeks_bgr(avatar_bgr, points)
        face = _polygon_mask(points[list(FACE_OVAL)], (0, 0), avatar_bgr.shape[:2]) > 0.5
        white = float(np.percentile(avatar_bgr[face].max(axis=1), WHITE_PERCENTILE)) if face.any() else 255.0
        hair, (hx, hy) = self._moustache(avatar_bgr, points, float(skin @ GREY_BGR))
        hair_bgr = None if hair is None else avatar_bgr[hy:hy + hair.shape[0], hx:hx + hair.shape[1]].astype(np.float32)
        self._mouth = _MouthRig(mouth_open_ratio(points), edge.astype(np.float32), lip_bgr, skin, white,
                                hair, hair_bgr, (hx, hy))

    def _mouth_box(self, target: MotionTarget) -> tuple[int, int, int, int]:
        """The grid box of the mouth at the target: its interior is painted up to 2 px beyond the
        inner lips, which may reach past the samples the moving mesh changes."""
        grid = self._grid
        at = (target.points[list(INNER_LIPS)] - (grid.x0, grid.y0)) / grid.step
        pad = 2.0 + 2.0 / grid.step
        c0, r0 = np.floor(at.min(axis=0) - pad).astype(int)
        c1, r1 = np.ceil(at.max(axis=0) + pad).astype(int)
        return c0, r0, c1, r1

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
        patch = cv2.LUT(crop[by0:by1, bx0:bx1], self._mouth_levels).astype(np.float32)
        # Between the eroded interior and the avatar's inner lips lies a band (the inset, and where
        # the two mouths' shapes differ) that the cavity's dark red would fill: a dark ring, the
        # interior looking cut into the photo. The interior's own colours are carried out over it
        # instead, as the driver's teeth and tongue do reach their lips: each pixel takes the colour
        # of the nearest pixel of the interior, lightly blurred. Not a wide mean of the interior:
        # teeth along the lips then reached them as a flat grey-mauve band, darker than the teeth
        # (d12's smiles). Done at the driver's resolution, before the mapping up: it is several
        # times fewer pixels than the avatar's mouth.
        core = inside > 0.5
        labels = cv2.distanceTransformWithLabels((~core).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)[1]
        nearest = np.zeros((int(labels.max()) + 1, 3), np.float32)
        nearest[labels[core]] = patch[core]
        carried = cv2.GaussianBlur(nearest[labels], (0, 0), max(0.5 * inset, 0.5))  # no radial streaks
        colour = carried + inside[..., None] * (patch - carried)
        cover = cv2.GaussianBlur(inside, (0, 0), reach)
        # Fully the driver's up to ~2.3 insets past the eroded edge (1.3 past their own lips: the
        # two mouths' shapes differ by about that), the cavity beyond; a narrower carry left a
        # dark rim, a wider one loses the faint shading Face Mesh reads the lips' edge by.
        share = np.minimum(np.maximum(inside, 8.0 * cover), 1.0)
        colour = cv2.warpAffine(np.clip(colour, 0.0, 255.0), to_avatar, size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        share = cv2.warpAffine(share, to_avatar, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return colour, share

    def _mouth_light(self, crop_bgr: np.ndarray, driver_points: np.ndarray) -> np.ndarray:
        """The driver's levels under the avatar's light, a (1, 256, 3) uint8 lookup table: the colour
        gain (`_colour_gain`), each channel rolled off towards the avatar's white (MOUTH_SHOULDER)."""
        lifted = np.arange(256, dtype=np.float32)[:, None] * self._colour_gain(crop_bgr, driver_points)
        white = self._mouth.white
        knee = MOUTH_SHOULDER * white
        rolled = white - (white - knee) * np.exp(-np.maximum(lifted - knee, 0.0) / max(white - knee, 1.0))
        levels = np.where(lifted > knee, rolled, lifted)
        return np.clip(np.round(levels), 0, 255).astype(np.uint8).reshape(1, 256, 3)

    def _colour_gain(self, crop_bgr: np.ndarray, driver_points: np.ndarray) -> np.ndarray:
        """Per-channel gain putting the driver's mouth interior under the avatar's light: their
        cheeks' brightness to the avatar's, and their cheeks' warmth a little towards the
        avatar's (MOUTH_WHITE_REACH). Not their lips' colour to the avatar's: that ratio is mostly
        the two people's lip and skin hue, and it turned white teeth orange on warm faces."""
        driver, avatar = cheeks_bgr(crop_bgr, driver_points), self._mouth.skin_bgr
        brightness = np.clip(float(avatar @ GREY_BGR) / max(float(driver @ GREY_BGR), 1.0), *MOUTH_GAIN_RANGE)
        warmth = np.log(avatar[2] / avatar[0]) - np.log(driver[2] / driver[0])
        half = 0.5 * float(np.clip(warmth, -2.0 * MOUTH_WHITE_REACH, 2.0 * MOUTH_WHITE_REACH))
        white = np.array([np.exp(-half), 1.0, np.exp(half)], np.float32)
        white /= float(white @ GREY_BGR)  # the balance moves hue only; brightness is the cheeks'
        return (brightness * white).astype(np.float32)

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
