"""Compose the picture the call sees: the avatar photo framed for the camera, the animated face
pasted back into it.

Per avatar, once:
  - `frame_photo`: the photo cut to the camera's size and aspect (16:9 by default) around the face,
    placed as in a video call (face centred, head room above, shoulders below), resampled once from
    the photo's own pixels. Where the photo does not reach the frame's edge at that scale (a square
    or tight portrait in a 16:9 frame), `--fill` decides: `blur` (the default) puts the photo over a
    blurred, dimmed enlargement of itself, as phones and call apps show a portrait in a wide frame
    (stretched edge columns read as stripes); `zoom` reframes closer, the largest region of the
    frame's aspect that the photo holds, so the frame needs no fill (the face is bigger). `--framing
    call` is the default; `--framing crop` keeps the square face crop of earlier versions (FOMM's
    framing), at `--size`. `Framed.photo_box` says which part of the picture is the photo's own.
  - `PasteBack`: where the network's 256-px face crop sits in the framed picture, the inverse map
    from picture pixels back into the crop, and a soft mask around the head (the face outline
    widened over hair and skull, feathered), all precomputed.
Per frame, `PasteBack.paste` puts a network prediction back into the full-resolution picture under
that mask, the mask widened to where the head has moved, with the prediction's colour matched to
the photo across the seam. Outside the mask the photo's own pixels stay. Inside it, what the network
did not change keeps the photo's full-resolution detail: given the network's own picture of the
avatar at rest (`reference`), the output is the photo plus the predicted change where the change is
small, and the prediction itself where it is large; at the neutral pose that is the photo, exactly.

Inputs and outputs are BGR uint8 pictures and `FaceLandmarks` in their pixels. The camera-size
fitting of frames that are not the camera's size (passthrough, `--framing crop`) is `to_camera`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatarify.config import FILLS
from avatarify.datatypes import FaceLandmarks
from avatarify.motion import NUM_MESH_POINTS, Similarity, head_outline
from avatarify.tracking import crop_matrix, crop_square, square_face_box

# Where the face sits in a call frame: the face box (chin to upper forehead, Face Mesh's extent)
# covers this share of the frame height, its top this far down (the skull and hair fill the head
# room above it), centred left to right. A desk webcam at arm's length frames people about so.
FACE_HEIGHT_SHARE = 0.36
FACE_TOP_SHARE = 0.2
# To avoid filling, the face may grow up to this share of the frame height and move off centre
# within these bounds (face box centre across, face box top down), before any fill is used.
MAX_FACE_HEIGHT_SHARE = 0.5
FACE_CENTRE_RANGE = (0.38, 0.62)
FACE_TOP_RANGE = (0.12, 0.26)
ZOOM_STEPS = 8
# `--fill zoom` keeps the face box this share of the frame height clear of the frame's top and bottom.
ZOOM_FACE_MARGIN = 0.04
# The blur fill beyond the photo's edge: the photo itself enlarged to cover the frame, blurred with
# this sigma (share of the frame height) and dimmed to FILL_DIM of its brightness, so it reads as
# out-of-focus room behind the photo and the photo stays what the eye goes to; the photo ends
# softly over FILL_EDGE of the frame height on both sides of its edge, without a hard line.
FILL_BLUR = 0.04
FILL_DIM = 0.6
FILL_EDGE = 0.01


@dataclass
class Framed:
    """An avatar photo framed for the call: the picture, its landmarks, and how it was cut."""

    image_bgr: np.ndarray  # (height, width, 3) uint8
    landmarks: FaceLandmarks  # in image_bgr pixels
    matrix: np.ndarray  # 2x3: photo pixels -> image_bgr pixels
    filled_share: float  # share of the picture filled beyond the photo's edge (0: none)
    photo_box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of the photo's own pixels


# ---------------------------------------------------------------------------------------------
# Framing


def _face_extent(landmarks: FaceLandmarks) -> tuple[float, float, float]:
    """(centre x, top y, height) of the face mesh (irises excluded), photo pixels."""
    mesh = landmarks.points[:NUM_MESH_POINTS]
    x0, y0 = mesh.min(axis=0)
    x1, y1 = mesh.max(axis=0)
    return float(x0 + x1) / 2.0, float(y0), max(float(y1 - y0), 1.0)


def _clamp_into(start: float, length: float, limit: float, lo: float, hi: float) -> float:
    """`start` of a span of `length` moved into [0, limit] as far as the bounds [lo, hi] on `start`
    allow (a span longer than the limit is centred on it, within the bounds)."""
    wanted = (limit - length) / 2.0 if length > limit else min(max(start, 0.0), limit - length)
    return min(max(wanted, lo), hi)


def call_region(landmarks: FaceLandmarks, photo_size: tuple[int, int],
                frame_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The photo region (x0, y0, width, height), in photo pixels and of the frame's aspect, that
    frames the face as in a call: the least zoom and shift that keeps it inside the photo, else
    the one that leaves the least of the frame outside it."""
    photo_w, photo_h = photo_size
    frame_w, frame_h = frame_size
    centre_x, top_y, face_h = _face_extent(landmarks)
    best = None
    for share in np.linspace(FACE_HEIGHT_SHARE, MAX_FACE_HEIGHT_SHARE, ZOOM_STEPS):
        height = face_h / share
        width = height * frame_w / frame_h
        x0 = _clamp_into(centre_x - width / 2.0, width, photo_w,
                         centre_x - FACE_CENTRE_RANGE[1] * width, centre_x - FACE_CENTRE_RANGE[0] * width)
        y0 = _clamp_into(top_y - FACE_TOP_SHARE * height, height, photo_h,
                         top_y - FACE_TOP_RANGE[1] * height, top_y - FACE_TOP_RANGE[0] * height)
        inside_w = max(0.0, min(x0 + width, photo_w) - max(x0, 0.0))
        inside_h = max(0.0, min(y0 + height, photo_h) - max(y0, 0.0))
        outside = 1.0 - inside_w * inside_h / (width * height)
        if best is None or outside < best[0] - 1e-3:
            best = (outside, (x0, y0, width, height))
        if outside <= 1e-3:
            break
    return best[1]


def covered_region(landmarks: FaceLandmarks, photo_size: tuple[int, int],
                   frame_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """`--fill zoom`: the largest photo region of the frame's aspect inside the photo, placed as
    close to the call placement of the face as the photo allows (the face may come out bigger)."""
    photo_w, photo_h = photo_size
    frame_w, frame_h = frame_size
    centre_x, top_y, face_h = _face_extent(landmarks)
    height = min(float(photo_h), photo_w * frame_h / frame_w)
    width = height * frame_w / frame_h
    x0 = min(max(centre_x - width / 2.0, 0.0), photo_w - width)
    # The face's top where a call has it, but never its chin below the frame: a close-up square
    # photo's 16:9 slice is shorter than its face, and placed by the top alone it cut the mouth at
    # the frame's bottom edge (s42, s7). A face taller than the frame with its margins is centred.
    margin = ZOOM_FACE_MARGIN * height
    if face_h + 2.0 * margin <= height:
        wanted = min(max(top_y - FACE_TOP_SHARE * height, top_y + face_h + margin - height), top_y - margin)
    else:
        wanted = top_y + face_h / 2.0 - height / 2.0
    y0 = min(max(wanted, 0.0), photo_h - height)
    return x0, y0, width, height


def _resample(photo_bgr: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The integer photo region (x0, y0, w, h) resized once to `size`: area averaging when
    shrinking, Lanczos when enlarging."""
    x0, y0, w, h = region
    photo_h, photo_w = photo_bgr.shape[:2]
    # The region may reach past the photo: its edge pixels extend there (blurred afterwards).
    pad = (max(0, -y0), max(0, y0 + h - photo_h), max(0, -x0), max(0, x0 + w - photo_w))
    source = photo_bgr
    if any(pad):
        source = cv2.copyMakeBorder(photo_bgr, *pad, cv2.BORDER_REPLICATE)
    cut = source[y0 + pad[0]:y0 + pad[0] + h, x0 + pad[2]:x0 + pad[2] + w]
    shrinking = w > size[0]
    return cv2.resize(cut, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def _photo_backdrop(photo_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The blur fill: the photo scaled to cover `size` (centre-cut), blurred and dimmed (FILL_*).
    A wide blur is smooth: it is computed at a quarter of the resolution (~1/16 of the cost)."""
    width, height = size
    small_size = (max(width // 4, 1), max(height // 4, 1))
    photo_h, photo_w = photo_bgr.shape[:2]
    scale = max(small_size[0] / photo_w, small_size[1] / photo_h)
    cover = cv2.resize(photo_bgr, (max(int(np.ceil(photo_w * scale)), small_size[0]),
                                   max(int(np.ceil(photo_h * scale)), small_size[1])), interpolation=cv2.INTER_AREA)
    x0, y0 = (cover.shape[1] - small_size[0]) // 2, (cover.shape[0] - small_size[1]) // 2
    small = cover[y0:y0 + small_size[1], x0:x0 + small_size[0]].astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(FILL_BLUR * height / 4.0, 1.0), borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small * FILL_DIM, size, interpolation=cv2.INTER_LINEAR)


def _over_backdrop(image_bgr: np.ndarray, inside: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """The framed photo over the backdrop beyond its edge (`inside` 0), the two blended across the
    edge (FILL_EDGE on each side) so the photo ends softly, without a line."""
    height = image_bgr.shape[0]
    outside_by = cv2.distanceTransform((inside == 0).astype(np.uint8), cv2.DIST_L2, 3)
    inside_by = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    reach = max(FILL_EDGE * height, 1.0)
    ramp = np.clip((outside_by - inside_by + reach) / (2.0 * reach), 0.0, 1.0)
    weight = (ramp * ramp * (3.0 - 2.0 * ramp))[..., None]  # smoothstep
    mixed = image_bgr.astype(np.float32) + weight * (backdrop - image_bgr)
    return (mixed + 0.5).astype(np.uint8)


def frame_photo(photo_bgr: np.ndarray, landmarks: FaceLandmarks, width: int, height: int,
                fill: str = "blur") -> Framed:
    """The photo framed for a (width, height) call frame around its face (module docstring)."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    photo_h, photo_w = photo_bgr.shape[:2]
    region_of = covered_region if fill == "zoom" else call_region
    x0, y0, w, h = region_of(landmarks, (photo_w, photo_h), (width, height))
    region = (int(round(x0)), int(round(y0)), max(int(round(w)), 1), max(int(round(h)), 1))
    image = _resample(photo_bgr, region, (width, height))
    sx, sy = width / region[2], height / region[3]
    # Pixel centres: photo pixel x maps to frame pixel (x - x0 + 0.5)·sx − 0.5, as cv2.resize does.
    matrix = np.array([[sx, 0.0, (0.5 - region[0]) * sx - 0.5],
                       [0.0, sy, (0.5 - region[1]) * sy - 0.5]], np.float32)
    inside = np.zeros((height, width), np.uint8)
    corners = np.array([[0, 0], [photo_w, photo_h]], np.float32) - 0.5
    (ix0, iy0), (ix1, iy1) = np.round(corners @ matrix[:, :2].T + matrix[:, 2]).astype(int)
    box = (min(max(ix0, 0), width), min(max(iy0, 0), height), min(max(ix1, 0), width), min(max(iy1, 0), height))
    inside[box[1]:box[3], box[0]:box[2]] = 1
    filled = 1.0 - float(inside.mean())
    if filled > 0.0:
        image = _over_backdrop(image, inside, _photo_backdrop(photo_bgr, (width, height)))
        # The photo's own pixels end where the blend into the backdrop begins (FILL_EDGE inside).
        inset = int(np.ceil(max(FILL_EDGE * height, 1.0)))
        box = (box[0] + inset * (box[0] > 0), box[1] + inset * (box[1] > 0),
               box[2] - inset * (box[2] < width), box[3] - inset * (box[3] < height))
    return Framed(image, landmarks.transformed(matrix, (width, height)), matrix, filled, box)


def crop_photo(photo_bgr: np.ndarray, landmarks: FaceLandmarks, size: int, margin: float) -> Framed:
    """`--framing crop`: the square face crop (FOMM's box rule), size x size."""
    image, matrix = crop_square(photo_bgr, square_face_box(landmarks, margin), size)
    return Framed(image, landmarks.transformed(matrix, (size, size)), matrix, 0.0, (0, 0, size, size))


def to_camera(frame_bgr: np.ndarray, width: int, height: int, pad: bool = False) -> np.ndarray:
    """A frame of another size made (width, height): scaled to cover it and centre-cut (no black
    bars), or with `pad` scaled to fit and padded with black (`--framing crop` keeps its look)."""
    frame_h, frame_w = frame_bgr.shape[:2]
    if (frame_w, frame_h) == (width, height):
        return frame_bgr
    scale = (min if pad else max)(width / frame_w, height / frame_h)
    new_w, new_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame_bgr, (new_w, new_h), interpolation=interpolation)
    if not pad:
        x, y = (new_w - width) // 2, (new_h - height) // 2
        return np.ascontiguousarray(resized[y:y + height, x:x + width])
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x, y = (width - new_w) // 2, (height - new_h) // 2
    canvas[y:y + new_h, x:x + new_w] = resized
    return canvas


# ---------------------------------------------------------------------------------------------
# Paste-back of a network's face crop

FEATHER = 0.08  # mask feather (Gaussian sigma) as a share of the face size
CROP_EDGE_FADE = 0.04  # the mask fades out over this share of the crop side before the crop's edge
COLOUR_DOWN = 4  # the colour-match field is computed at 1/COLOUR_DOWN resolution (it is smooth)
COLOUR_REACH = 0.35  # how far (share of the face size) the seam's colour difference reaches inward
COLOUR_LIMIT = 24.0  # at most this many 8-bit levels of colour correction
# Detail: where the prediction differs from the network's picture of the avatar at rest by less
# than this (8-bit levels, after a small blur), the photo keeps its own full-resolution pixels plus
# the predicted change; above it the prediction replaces them (moved features, an open mouth).
CHANGE_FULL = 24.0
CHANGE_BLUR = 1.5  # px of the network crop: single noisy pixels do not switch a spot to the prediction


class PasteBack:
    """Puts a network's square face crop back into the full-resolution picture (module docstring).

    `crop_bgr` is what the network should see of the avatar (its source image). `paste(prediction,
    head)` returns the picture with the prediction blended in; `head` is the driver's head motion
    relative to the neutral, in crop pixels (None: the mask stays where the avatar's head is).
    """

    def __init__(self, picture_bgr: np.ndarray, landmarks: FaceLandmarks, crop_size: int = 256,
                 margin: float = 0.3) -> None:
        self.picture_bgr = np.ascontiguousarray(picture_bgr, dtype=np.uint8)
        self.crop_size = crop_size
        height, width = picture_bgr.shape[:2]
        box = square_face_box(landmarks, margin)
        self.crop_matrix = crop_matrix(box, crop_size)  # picture px -> crop px
        self.crop_bgr, _ = crop_square(picture_bgr, box, crop_size)
        # The region the crop covers (clipped to the picture): nothing outside it can change.
        cx, cy, side = box
        x0, y0 = max(int(np.floor(cx - side / 2)), 0), max(int(np.floor(cy - side / 2)), 0)
        x1, y1 = min(int(np.ceil(cx + side / 2)) + 1, width), min(int(np.ceil(cy + side / 2)) + 1, height)
        self.roi = (slice(y0, y1), slice(x0, x1))
        self.origin = np.array([x0, y0], np.float32)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        m = self.crop_matrix
        map_x = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        map_y = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        # Fixed-point maps: cv2.remap runs about twice as fast on them as on float maps.
        self.maps = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
        face = landmarks.points[:NUM_MESH_POINTS]
        self.face_size = float(np.sqrt(np.prod(face.max(axis=0) - face.min(axis=0))))
        self.mask = self._head_mask(landmarks, side)
        self._picture_roi = self.picture_bgr[self.roi].astype(np.float32)
        self._seam = self._seam_weights()
        self.reference: np.ndarray | None = None  # float32 crop: the network's avatar at rest
        self.last_mask: np.ndarray | None = None  # the mask of the last paste (tests, bench)

    # -- per avatar ----------------------------------------------------------------------------
    def _head_mask(self, landmarks: FaceLandmarks, crop_side: float) -> np.ndarray:
        """float32 [0, 1] over the ROI: the head outline (face oval widened over hair and skull),
        feathered, faded out before the crop's edge (the prediction ends there)."""
        rows, cols = self.roi
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        outline = head_outline(landmarks.points) - self.origin
        mask = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        sigma = max(FEATHER * self.face_size, 1.0)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma)
        # Keep the inside fully opaque: the feather grows outward from the outline, not inward.
        soft = np.clip(soft * 2.0, 0.0, 1.0)
        ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
        m = self.crop_matrix
        cx = m[0, 0] * (xs + self.origin[0]) + m[0, 2]
        cy = m[1, 1] * (ys + self.origin[1]) + m[1, 2]
        edge = np.minimum(np.minimum(cx, self.crop_size - 1 - cx), np.minimum(cy, self.crop_size - 1 - cy))
        fade = np.clip(edge / max(CROP_EDGE_FADE * self.crop_size, 1.0), 0.0, 1.0)
        return (soft * fade).astype(np.float32)

    def _seam_weights(self) -> np.ndarray:
        """Where the colour of prediction and photo are compared: the outer half of the feather."""
        band = ((self.mask > 0.05) & (self.mask < 0.6)).astype(np.float32)
        return cv2.resize(band, self._small_size(), interpolation=cv2.INTER_AREA)

    def _small_size(self) -> tuple[int, int]:
        h, w = self.mask.shape
        return max(w // COLOUR_DOWN, 1), max(h // COLOUR_DOWN, 1)

    def set_reference(self, reference_bgr: np.ndarray) -> None:
        """The network's prediction for the avatar at rest (strength 0): what 'no change' looks
        like at the network's resolution and colour."""
        self.reference = np.asarray(reference_bgr, dtype=np.float32)

    # -- per frame -----------------------------------------------------------------------------
    def warped_prediction(self, prediction_bgr: np.ndarray) -> np.ndarray:
        """A (crop_size, crop_size) picture (prediction, or any per-pixel map) in the ROI's pixels."""
        return cv2.remap(prediction_bgr, self.maps[0], self.maps[1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    def _with_photo_detail(self, prediction_bgr: np.ndarray, matched: np.ndarray) -> np.ndarray:
        """Photo + predicted change where the change is small, the prediction where it is large."""
        change = prediction_bgr.astype(np.float32) - self.reference
        amount = cv2.GaussianBlur(np.abs(change).max(axis=2), (0, 0), CHANGE_BLUR)
        replace = self.warped_prediction(np.clip(amount / CHANGE_FULL, 0.0, 1.0))[..., None]
        kept = self._picture_roi + self.warped_prediction(change)
        return kept + replace * (matched - kept)

    def roi_motion(self, head: Similarity | None) -> np.ndarray | None:
        """The head motion as a 2x3 map of ROI pixels (the moved mask's warp), or None when the
        head has not moved."""
        if head is None or (abs(head.m - 1.0) < 1e-4 and abs(head.c) < 0.05):
            return None
        # Crop px -> ROI px: the inverse crop map, then minus the ROI origin.
        to_crop = Similarity(complex(self.crop_matrix[0, 0], 0.0),
                             complex(self.crop_matrix[0, 2], self.crop_matrix[1, 2]))
        origin = Similarity(1.0 + 0.0j, -complex(*self.origin))
        return origin.inverse().then(to_crop).then(head).then(to_crop.inverse()).then(origin).matrix()

    def moved_mask(self, head: Similarity | None) -> np.ndarray:
        """The avatar's head mask, widened to where the head now is (union with the mask moved by
        the head motion), so a turned or shifted head is never cut off by the seam."""
        motion = self.roi_motion(head)
        if motion is None:
            return self.mask
        h, w = self.mask.shape
        moved = cv2.warpAffine(self.mask, motion, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.maximum(self.mask, moved)

    def colour_matched(self, warped: np.ndarray) -> np.ndarray:
        """The warped prediction with a smooth colour correction that makes it meet the photo at
        the seam: the photo-minus-prediction difference along the seam, spread inward by a wide
        normalised blur and limited to ±COLOUR_LIMIT levels (float32)."""
        small = self._small_size()
        difference = cv2.resize(self._picture_roi - warped, small, interpolation=cv2.INTER_AREA)
        sigma = max(COLOUR_REACH * self.face_size / COLOUR_DOWN, 1.0)
        spread = cv2.GaussianBlur(difference * self._seam[..., None], (0, 0), sigma)
        weight = cv2.GaussianBlur(self._seam, (0, 0), sigma)[..., None]
        field = np.clip(spread / np.maximum(weight, 1e-3), -COLOUR_LIMIT, COLOUR_LIMIT)
        field *= np.clip(weight / 0.05, 0.0, 1.0)  # no seam in reach: no correction
        h, w = self.mask.shape
        return warped + cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)

    def paste(self, prediction_bgr: np.ndarray, head: Similarity | None = None) -> np.ndarray:
        """The picture with the prediction blended in under the (moved) head mask."""
        warped = self.warped_prediction(prediction_bgr).astype(np.float32)
        inside = self.colour_matched(warped)
        if self.reference is not None:
            inside = self._with_photo_detail(prediction_bgr, inside)
        mask = self.moved_mask(head)
        self.last_mask = mask
        roi = self._picture_roi
        blended = roi + mask[..., None] * (inside - roi)
        output = self.picture_bgr.copy()
        output[self.roi] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return output
