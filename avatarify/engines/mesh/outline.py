"""The mesh engine's head outline and what fades around it: the ring around the head (grown over
the hair the person mask shows, kept clear of the call framing's fill), the fade rings whose share
of the head's motion falls as a smoothstep (shorter over the room), the ROI and its border (fixed
inside the photo, sliding along the picture's own edge), and the ring's share of the outline's motion.

Input: the avatar's landmarks and person mask (per avatar), the motion target (per frame), avatar px.
Output: mesh vertices, their shares of the ring's motion, and the ring's targets."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from avatarify.engines.mesh.geometry import _Grid, _box_around, _smoothstep
from avatarify.motion import CHIN, FACE_OVAL, FOREHEAD, MotionTarget, as_complex, as_points

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
# Hair within HAIR_REACH face sizes beyond the head outline moves with the head as one piece (the
# outline grows over it, plus HAIR_MARGIN of the reach), above NECK_START face heights below the chin.
HAIR_REACH = 0.35
HAIR_MARGIN = 0.3
NECK_START = 0.03
EDGE_ROOM = 0.2  # the ring keeps this share of the face size inside a photo edge beside the fill


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


class HeadOutline:
    """The head outline's part of MeshAnimator (module docstring)."""

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
        width, height = self._image_size  # the picture's own edges (not the photo's beside the fill)
        lo[[grid.x0 == 0, grid.y0 == 0]] = -np.inf
        hi[[grid.x0 + grid.width == width, grid.y0 + grid.height == height]] = np.inf
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
        lo, hi = self._fade_limits(grid)
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

    @staticmethod
    def _silhouette_vertices(points: np.ndarray, oval: np.ndarray, ring: np.ndarray) -> np.ndarray:
        """Per ring point, the face vertex its band starts from: the face's outermost point along
        the ray from the face's centre through that outline point (within half the angle to the
        neighbouring outline points, and short of the ring), the outline point where none lies
        farther out. In a three-quarter view Face Mesh's outline runs across the far eye and cheek:
        a band from it covered them, and a far-side triangle that flipped showed the band's room
        (black blobs) through the eye."""
        centre = points[oval].mean(axis=0)
        angle = np.angle((points[:, 0] - centre[0]) + 1j * (points[:, 1] - centre[1]))
        radius = np.hypot(points[:, 0] - centre[0], points[:, 1] - centre[1])
        ray = angle[oval]
        gap = np.abs(np.angle(np.exp(1j * (np.roll(ray, -1) - np.roll(ray, 1))))) / 4.0  # half of half the span
        reach = np.hypot(ring[:, 0] - centre[0], ring[:, 1] - centre[1])
        apart = np.abs(np.angle(np.exp(1j * (angle[None, :] - ray[:, None]))))  # (rays, points)
        within = (apart <= gap[:, None]) & (radius[None, :] * np.cos(apart) < 0.9 * reach[:, None])
        outward = np.where(within, radius[None, :] * np.cos(apart), -np.inf)
        best = outward.argmax(axis=1)
        farther = outward[np.arange(len(oval)), best] > radius[oval] + 0.5
        return np.where(farther, best, oval)

    @staticmethod
    def _fade_limits(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """The box fade points stay in, clear of the ROI border's points."""
        lo = np.array([grid.x0, grid.y0], np.float32) + 2.0
        hi = np.array([grid.x0 + grid.width, grid.y0 + grid.height], np.float32) - 3.0
        return lo, hi

    def _fade_order(self, ring: np.ndarray, fade: np.ndarray, fade_nearest: np.ndarray, ring_first: int,
                    first: int) -> None:
        """Per fade point (vertices from `first` on): the vertex just inside it on its ray (the
        ring point for the first fade ring), the ray, and how close to that vertex it may come
        (RING_SQUEEZE of their gap at rest); see `_kept_ahead`."""
        centre = ring.mean(axis=0)
        rays = fade - centre
        rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-6)
        inner = ring_first + fade_nearest  # the ring's vertex on the same ray
        level = np.zeros(len(fade), np.int64)
        last_on_ray: dict[int, int] = {}
        for index, ray in enumerate(fade_nearest):  # rings come in order, inner first
            if ray in last_on_ray:
                inner[index] = first + last_on_ray[ray]
                level[index] = level[last_on_ray[ray]] + 1
            last_on_ray[ray] = index
        self._fade_levels = [np.flatnonzero(level == k) for k in range(int(level.max(initial=-1)) + 1)]
        sources = np.concatenate([self._vertices_src[:first], fade])
        gap = ((fade - sources[inner]) * rays).sum(axis=1)
        self._fade_inner, self._fade_rays = inner, rays.astype(np.float32)
        self._fade_gap = (RING_SQUEEZE * np.maximum(gap, 0.0)).astype(np.float32)
        self._fade_first = first
        self._fade_box = self._fade_limits(self._grid)

    def _kept_ahead(self, vertices: np.ndarray) -> None:
        """Pushes each fade point out along its ray, in place, so that it stays ahead of the vertex
        inside it: a head moving toward the room (a lean to the side, ⅓ face and more) carried its
        ring past the still fade rings there (the room's fade is short), and those triangles
        folded into a saw-tooth edge beside the cheek and along the hair. Pushed, the room just
        beside the head is squeezed instead. Rings are pushed in order, inner first."""
        first, (lo, hi) = self._fade_first, self._fade_box
        for level in self._fade_levels:
            index = first + level
            ahead = ((vertices[index] - vertices[self._fade_inner[level]]) * self._fade_rays[level]).sum(axis=1)
            short = np.maximum(self._fade_gap[level] - ahead, 0.0)
            if short.any():
                vertices[index] = np.clip(vertices[index] + short[:, None] * self._fade_rays[level], lo, hi)

    def _edge_shares(self, border: np.ndarray, reach_px: float,
                     body: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per border point: the nearest ring point and the share of its motion the point takes,
        along the border only ((N, 2): x share, y share). The ROI border inside the image stays put
        (share 0): the background does not move. Where the ROI ends at the image's own edge (a head
        cut by the crop), the edge slides along itself with the head as the ring's motion fades
        over `reach_px`, as it does inside the ROI; pinning it would tear hair or a hat that the
        crop cuts. It never leaves its edge, so the mesh keeps covering the picture."""
        # Beyond the left/right, top/bottom edge. Only the picture's own edge slides: where the photo
        # ends beside the fill, a sliding edge would shear the photo's last rows against the still
        # fill beside them (a line).
        width, height = self._image_size
        off = (border < 0.0) | (border > (width - 1.0, height - 1.0))
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
