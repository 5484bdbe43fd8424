"""The embedded engine: the avatar photo's face mesh moved in 3-D and drawn back to front (no weights).

Input per avatar: the avatar picture at the resolution the call shows it (the framed photo, e.g.
1280x720, or a square face crop) and its 478 landmarks with Face Mesh's depth. Per calibration: the
driving neutral frame. Per frame: a `DrivingFrame`. Output: the animated avatar, BGR uint8, the
picture's size. Only the region around the head (ROI) is warped, so the cost follows the face's
size, not the picture's.

The package, one concern per module: `geometry` (the sampling grid, masks, the warp's Face Mesh
points), `outline` (the head's ring, the fade around it, the ROI border), `seams` (the exact map
where the face's edge hides the band), `eyes` (the iris fans and gaze), `mouth` (the interior and
its light); this module builds the mesh, rasterizes it back to front and remaps the photo.
`outline`, `eyes` and `mouth` are mixins of MeshAnimator: they share its per-avatar state.

Per avatar (`set_avatar`), everything that does not depend on the driver is precomputed:
  - the mesh: Delaunay over about half of the 468 face points (every feature contour, evenly spaced
    points between: `warp_points`), a ring around the head (the face oval pushed out and stretched
    up over the skull, then grown over the hair the person mask shows; it moves with the head's
    outline), fade rings outside it whose share of the head's motion falls as a smoothstep to a
    still ring half a face size out (a quarter of that over the room beside the head, where the
    person mask shows none), and points on the ROI's border (fixed inside the photo, sliding
    along the picture's own edge where it cuts the head). The face is Delaunay-triangulated; the
    band between the face's edge and the ring is a strip of quads, each outline point joined
    straight out to its own ring point (the face's edge: the outline, or the face point beyond it
    where Face Mesh's outline runs inside the face, as in a three-quarter view); the room is
    Delaunay again. A fade ring never falls behind the one inside it (a lean toward the room
    squeezes the room instead of folding it). Hair, cloth and collar so bend smoothly
    between the head's motion and the body's: an earlier head layer over an inpainted room plate
    cut them in a hard line (hair on the shoulders, a headscarf, a collar) and showed the plate's
    low resolution. Face vertices carry Face Mesh's depth; the ring lies in the plane of the
    head's outline. Each iris centre is a vertex too, and its eye opening a fan of triangles
    around it, so the lids close over the iris without folding the mesh. The warp samples only
    the photo's own pixels (`photo_box`: never the call framing's fill beside a narrow photo);
  - the mouth's colours and light, and the photo's moustache over the lips (if any).

Per frame (`animate`): motion.py gives the target landmarks, their depth and the head's 3-D pose.
The moved mesh is drawn on a reduced grid over the ROI (one sample per few pixels) back to front:
the room, the outline's band, then the face's triangles from far to near; a face triangle whose
orientation flipped shows its back and is not drawn, so a turned head hides its far side instead of
folding it (a flipped triangle of the room, the band or the face's outermost row is a squeeze, and
is drawn: left out, it opened a hole). Each grid sample takes its triangle's affine map (target →
source); the map is upsampled and applied by cv2.remap in bands, only over the pixels that can
change. Where the face's edge cuts across the band behind it (the far cheek of a turned head) the
map breaks, and the upsampling drew the edge as the grid's stair steps with a dark fringe; there
each pixel takes its own triangle's map (`seams`). Then, where the driver opens the mouth wider than the avatar: the mouth interior, the
driver's own teeth and tongue from the driving frame (inside their inner lips, eroded, so their lips
never show, its colours carried out to the avatar's lips), lit as the avatar's cheeks are
(brightness, and a little of their warmth: teeth stay white), over a shaded cavity, under the
avatar's moustache if it has one, faded in with the opening.

The eyes: blinks, winks and widening move the lids (with their lashes) in the warp, each eye
opening a fan around its iris vertex; then each opening is painted from the photo's own eye turned
to the driver's gaze (`eyes`): along the eye as far as the driver's iris moves in theirs (at most
IRIS_REACH) and across it (looking down at notes, up), as far as the moved lids leave the iris
inside the opening (GAZE_SHARE of the way between them). The eyeball moves whole with its iris, so
the iris keeps its size and shape and the white shows where the driver's does; the rows under the
lid margins move with the lids, and a closing lid squashes the eye between them, as the warp alone
did. An earlier version re-painted an inpainted eyeball and a re-sampled iris under the lids: it
differed from the photo even at rest (no dark rim under the lid, a softer iris), Face Mesh read
those lids less faithfully (real driving videos, driver vs output eye-opening r 0.84 / 0.80 / 0.86
with it, 0.89 / 0.87 / 0.90 warp-only; bench/eye_stages.py), and it cost ~1 ms per frame at 256 px.
The paint now samples only the photo's own eye and is the photo at rest.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy.spatial import Delaunay

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import REGIONS, Animator, AnimatorError
from avatarify.engines.mesh.geometry import _Grid, _inside, _moving, _union, warp_points
from avatarify.engines.mesh.eyes import FAN_BEHIND, EyeRig
from avatarify.engines.mesh.mouth import MouthPainter
from avatarify.engines.mesh.seams import edge_functions, put_seam_pixels, seam_pixels
from avatarify.engines.mesh.outline import (EDGE_ROOM, HAIR_REACH, NECK_START, ROI_MARGIN, ROOM_MASK_BLUR,
                                            HeadOutline, _person_mask)
from avatarify.motion import (EYES, FACE_OVAL, NUM_LANDMARKS, NUM_MESH_POINTS, MotionSettings, MotionTarget,
                              MotionTransfer, as_complex, as_points, head_outline)

log = logging.getLogger(__name__)

# A moved triangle whose doubled signed area (px²) falls below this, or flips sign, shows its back:
# it is not drawn (the far cheek of a turned head, a lid closed over the eye).
FLIP_AREA_PX2 = 1e-3
# The backward map is computed on a grid of one sample per this many pixels of face size (sqrt of
# the face box area), at least every 2nd pixel: ~70 samples across a face lands landmarks within
# 0.4 px at any resolution (a 256 crop gets a 2 px step, a 720p call frame 3, 1080p 4).
FACE_SIZE_PER_STEP = 90.0
# Full-resolution pixels per band of the remap (see MeshAnimator._warp_bands): the band's map (8
# bytes a pixel) stays in the cache from its upsampling to the remap; measured best at 720p (bands
# of ~80 px: 2.85 ms against 3.0 at 32 px and 4.4 for the whole box at once) and at a 256 crop (one band).
WARP_BAND_PIXELS = 65536
MIN_AVATAR_SIDE = 32
# Points across the band between the face's edge and the ring, as shares of the way out: they move
# that share of the way between the edge's and the ring's motion, so the band's map bends once
# more across its width (the cheek's own edge often lies in the band: Face Mesh's outline runs
# a little inside it).
BAND_STEPS = np.array([0.5])


def _band_points(edge: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The band's points between the face's edge and the ring (R, 2 each): BAND_STEPS rows of R,
    each that share of the way out."""
    return ((ring - edge)[None] * BAND_STEPS[:, None, None] + edge[None]).reshape(-1, 2)


class MeshAnimator(HeadOutline, EyeRig, MouthPainter, Animator):
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
        # The last grid offsets' exact map at its seams (seams.py): pixel rows, columns, offsets.
        self._seam_pixels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.last_map_origin: np.ndarray | None = None  # avatar px (x, y) of last_map's first pixel
        self.last_target: MotionTarget | None = None
        # The driver's mouth interior's levels under the avatar's light (a lookup table; until a neutral: as is).
        self._mouth_levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)

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
        # The iris centres are vertices too (the fans' centres); they come last of the face points.
        self._warp_points = np.concatenate([warp_points(mesh), [eye.iris_centre for eye in EYES]])
        faces = len(self._warp_points)
        inside = np.clip(points[self._warp_points].astype(np.float64), self._ring_box[:2],
                         self._ring_box[2:]).astype(np.float32)
        self._oval_vertex = np.searchsorted(self._warp_points[:-len(EYES)], list(FACE_OVAL))
        self._band_inner = self._silhouette_vertices(inside[:faces - len(EYES)], self._oval_vertex, self._ring_src)
        band = _band_points(inside[self._band_inner], self._ring_src)
        self._vertices_src = np.concatenate([inside, self._ring_src, band, border])
        self._num_moving = faces + len(ring) * (1 + len(BAND_STEPS))
        self._fade_order(ring, fade, fade_nearest, faces, self._num_moving)
        iris_vertices = list(range(faces - len(EYES), faces))
        triangles = np.concatenate([self._face_triangles(faces - len(EYES)),
                                    self._band_strip(faces, len(ring)), self._room_triangles(faces, len(ring))])
        triangles, self._gaze_eyes = self._eye_fans(triangles, iris_vertices)
        # Drawing layers, back to front: the room (triangles touching the still ring or the ROI
        # border), the head outline's band (hair, ears, neck), the face (sorted by depth per frame;
        # the eyes' fans count FAN_BEHIND face sizes deeper: the eyeballs lie behind the lids, and
        # where a fan's thin triangles meet a lid the lid's edge is drawn over them).
        outer = (triangles >= self._num_moving).any(axis=1)
        face = (triangles < faces).all(axis=1)
        self._tri = triangles
        self._tri_fan = np.isin(triangles, iris_vertices).any(axis=1)
        self._fan_behind = np.where(self._tri_fan, FAN_BEHIND * face_size, 0.0)
        self._tri_layer = np.where(outer, 0, np.where(face, 2, 1)).astype(np.int32)
        self._tri_sign = np.sign(self._signed_areas(self._vertices_src[triangles]))
        on_outline = np.isin(triangles, self._oval_vertex).any(axis=1)
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

    def _delaunay(self, vertices: np.ndarray) -> np.ndarray:
        """(T, 3) int32 Delaunay triangles over these vertices (indices into the mesh's)."""
        vertices = np.asarray(vertices, np.int32)
        return vertices[Delaunay(self._vertices_src[vertices].astype(np.float64)).simplices]

    def _face_triangles(self, count: int) -> np.ndarray:
        """Delaunay over the face's points, less those of three outline points outside the outline:
        where the outline bends in, they made a sliver that a turn flipped into a folded wedge of
        cheek (the band covers it). Other triangles outside the outline stay: in a three-quarter
        view Face Mesh's outline runs across the far eye and cheek, which must move with the face."""
        triangles = self._delaunay(np.arange(count))
        pocket = np.isin(triangles, self._band_inner).all(axis=1)
        pocket[pocket] = ~_inside(self._vertices_src[triangles[pocket]].mean(axis=1),
                                  self._vertices_src[self._band_inner])
        return triangles[~pocket]

    def _band_strip(self, faces: int, ring_size: int) -> np.ndarray:
        """The band between the face outline and the ring as a strip of quads, two triangles each:
        from each outline point straight out to its ring point (through the BAND_STEPS points),
        so the band's map follows the outline point by point. Delaunay tied outline and ring
        points across neighbours, in long thin triangles whose map kinked the cheek's edge."""
        rows = [self._band_inner] + [faces + ring_size * (1 + k) + np.arange(ring_size)
                                      for k in range(len(BAND_STEPS))] + [faces + np.arange(ring_size)]
        quads = []
        for inner, outer in zip(rows[:-1], rows[1:]):
            a, b = inner, np.roll(inner, -1)
            c, d = np.roll(outer, -1), outer
            quads += [np.stack([a, b, c], axis=1), np.stack([a, c, d], axis=1)]
        return np.concatenate(quads).astype(np.int32)

    def _room_triangles(self, faces: int, ring_size: int) -> np.ndarray:
        """Delaunay over the ring, the fade rings and the ROI border, less the triangles inside the
        ring (the band and the face cover it)."""
        outer = np.concatenate([faces + np.arange(ring_size), np.arange(self._num_moving, len(self._vertices_src))])
        triangles = self._delaunay(outer)
        return triangles[~_inside(self._vertices_src[triangles].mean(axis=1), self._ring_src)]

    @staticmethod
    def _signed_areas(corners: np.ndarray) -> np.ndarray:
        """Twice the signed area of triangles given as (T, 3, 2) corners (sign = orientation)."""
        e1 = corners[:, 1] - corners[:, 0]
        e2 = corners[:, 2] - corners[:, 0]
        return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]

    # ------------------------------------------------------------------------------------------
    # Per calibration
    def set_neutral(self, driving: DrivingFrame) -> None:
        if driving.landmarks is None:
            raise AnimatorError("No face in the driving frame; look at the camera and calibrate again.")
        self.motion.set_neutral(driving.landmarks.points, driving.landmarks.depth)
        # The driver's light and white balance, once per calibration, from their cheeks and picture.
        self._mouth_levels = self._mouth_light(driving.crop_bgr, np.asarray(driving.landmarks.points, np.float64))

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
        eyes = self._iris_targets(target.points)  # the fans' centres and the painted eyes share them
        offsets = self._grid_offsets(target, eyes)
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
        self._paint_eyes(output[self._box_slices(box)], self._box_origin(box), target.points, eyes)
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
            self._exact_at_seams(offset, (r0 + up, c0 + wide_left), (float(x0 - bx0), float(y0 - by0)))
            y, x = (top - up) * step, (left - wide_left) * step
            height, width = (bottom - top) * step, (right - left) * step
            cv2.remap(photo, offset[y:y + height, x:x + width], None, cv2.INTER_LINEAR | cv2.WARP_RELATIVE_MAP,
                      dst=output[y0:y0 + height, x0:x0 + width], borderMode=cv2.BORDER_REPLICATE)

    def _exact_at_seams(self, offset: np.ndarray, first: tuple[int, int], shift: tuple[float, float]) -> None:
        """Correct an upsampled window of the last grid offsets, whose first sample is grid (row,
        col) `first`, per pixel where the map breaks (seams.py); `shift`: what was added to it."""
        if self._seam_pixels is not None:
            put_seam_pixels(offset, self._seam_pixels, (first[0] * self.step, first[1] * self.step), shift)

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

    def _upsampled(self, offsets: np.ndarray, box: tuple[int, int, int, int], relative: bool = False) -> np.ndarray:
        """The full-resolution backward map over a box of grid samples, float32: avatar px, or with
        `relative` each pixel's source less its own position in the box (cv2.WARP_RELATIVE_MAP
        then samples the whole avatar: no pass adding the pixel grid, and a faster remap)."""
        c0, r0, c1, r1 = box
        step = self.step
        offset = np.ascontiguousarray(offsets[r0:r1, c0:c1])
        x0 = y0 = 0.0
        if relative:  # the box's origin (from the photo's corner) is a constant: added on the grid
            x0, y0 = (float(v) for v in self._box_origin(box) - self._bounds[:2])
            offset = cv2.add(offset, (x0, y0, 0.0, 0.0))  # numpy's broadcast add is ~15x slower here
        # Upsample the offset, not the positions: it is 0 at the fixed border, so the half-sample
        # the upsampling clamps at the box's edge costs nothing there.
        offset = cv2.resize(offset, ((c1 - c0) * step, (r1 - r0) * step), interpolation=cv2.INTER_LINEAR)
        self._exact_at_seams(offset, (r0, c0), (x0, y0))  # (0, 0) unless relative
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

    def _vertex_targets(self, target: MotionTarget, eyes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Where every mesh vertex goes and how deep it then lies: face points to the targets, ring
        points with the head outline (and with what of the face outline's expression the skin
        between cannot take up), border points nowhere (or sliding with the head on the image's
        own edge). `eyes`: this target's `_iris_targets`, when the caller has them already."""
        ring = as_points(target.head(as_complex(self._ring_src + self._ring_expression(target))))
        ring = np.where(self._ring_on_edge, self._ring_src, np.clip(ring, *self._ring_limits))
        vertices = self._vertices_src.copy()
        faces = len(self._warp_points)
        vertices[:faces - len(EYES)] = target.points[self._warp_points[:-len(EYES)]]
        for gaze, eye in zip(self._gaze_eyes, eyes if eyes is not None else self._iris_targets(target.points)):
            position = eye.lids.pixels(eye.iris)  # the painted iris's centre: the fan meets it there
            vertices[gaze.vertex] = (position.real, position.imag)
        vertices[faces:faces + len(ring)] = ring
        vertices[faces + len(ring):self._num_moving] = _band_points(vertices[self._band_inner], ring)
        ring_motion = ring - self._ring_src
        vertices[self._num_moving:] += self._edge_share * ring_motion[self._edge_nearest]
        self._kept_ahead(vertices)
        depth = self._vertex_depth + target.pose.shift[2]
        if target.depth is not None:
            depth[:faces] = target.depth[self._warp_points]
        return vertices, depth

    def backward_map(self, target: MotionTarget) -> np.ndarray | None:
        """(h, w, 2) float32 source position (avatar px) of every ROI pixel of the output, or None
        when no vertex moves (the output is the avatar)."""
        offsets = self._grid_offsets(target)
        if offsets is None:
            return None
        rows, cols = self._grid.shape
        return self._upsampled(offsets, (0, 0, cols, rows))

    def _grid_offsets(self, target: MotionTarget, eyes: list | None = None) -> np.ndarray | None:
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
        vertices, depth = self._vertex_targets(target, eyes)
        # Per column, not any() over the short last axis: 0.02 ms instead of 0.18 per frame.
        moved = (vertices[:, 0] != self._vertices_src[:, 0]) | (vertices[:, 1] != self._vertices_src[:, 1])
        drawn = moved[self._tri[:, 0]] | moved[self._tri[:, 1]] | moved[self._tri[:, 2]]
        self._seam_pixels = None
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
        far = depth[tri].mean(axis=1) + self._fan_behind[drawn][facing]
        order = np.lexsort((-far, layer))  # by layer, then far (large z) first
        tri, corners, layer = tri[order], corners[order], layer[order]
        sources = self._vertices_src[tri].astype(np.float64)
        ids = self._rasterized(corners, grid)
        self.last_triangles = np.where(ids < len(tri), ids, -1)
        # Per triangle the affine map less the identity; one more row (all 0) for samples no moved
        # triangle covers, which the rasterizer leaves at that index.
        affine = self._target_to_source(corners, sources).reshape(-1, 6)
        affine[:, [0, 4]] -= 1.0
        coefficients = np.zeros((len(tri) + 1, 6), np.float32)
        coefficients[:len(tri)] = affine
        self._seam_pixels = seam_pixels(ids, layer == 2, edge_functions(corners), coefficients, (grid.x0, grid.y0),
                                        self.step)
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
