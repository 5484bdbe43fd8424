"""Compose: framing real photos for the call (wide, tall, small, high-resolution) and pasting a
network's face crop back into the full-resolution picture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatarify.compose import (FACE_CENTRE_RANGE, FACE_TOP_RANGE, MAX_FACE_HEIGHT_SHARE, PasteBack,
                               call_region, frame_photo)
from avatarify.landmarks import FaceMeshDetector
from avatarify.motion import NUM_MESH_POINTS, Similarity

CAMERA = (1280, 720)


@pytest.fixture(scope="module")
def detector():
    with FaceMeshDetector(static=True) as mesh:
        yield mesh


def _framed(detector, photo_bgr, size=CAMERA):
    face = detector.detect(photo_bgr)
    assert face is not None
    return face, frame_photo(photo_bgr, face, *size)


def _face_box(landmarks):
    mesh = landmarks.points[:NUM_MESH_POINTS]
    return (*mesh.min(axis=0), *mesh.max(axis=0))


def _assert_placed_as_in_a_call(framed, size=CAMERA):
    width, height = size
    x0, y0, x1, y1 = _face_box(framed.landmarks)
    assert framed.image_bgr.shape == (height, width, 3) and framed.image_bgr.dtype == np.uint8
    assert FACE_CENTRE_RANGE[0] - 0.01 <= (x0 + x1) / 2 / width <= FACE_CENTRE_RANGE[1] + 0.01
    assert FACE_TOP_RANGE[0] - 0.01 <= y0 / height <= FACE_TOP_RANGE[1] + 0.01
    assert (y1 - y0) / height <= MAX_FACE_HEIGHT_SHARE + 0.01


def test_a_wide_photo_fills_the_frame_from_its_own_pixels(detector, astronaut_bgr):
    wide = cv2.resize(astronaut_bgr, (1536, 1536), interpolation=cv2.INTER_CUBIC)[:1024]  # 3:2
    face, framed = _framed(detector, wide)
    assert framed.filled_share == 0.0
    _assert_placed_as_in_a_call(framed)
    # One resample from the photo's own pixels: the frame is the region shrunk by area averaging.
    x0, y0, w, h = (int(round(v)) for v in call_region(face, (1536, 1024), CAMERA))
    expected = cv2.resize(wide[y0:y0 + h, x0:x0 + w], CAMERA, interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(expected, framed.image_bgr)


def test_landmarks_follow_the_framing(detector, grace_hopper_bgr):
    _, framed = _framed(detector, grace_hopper_bgr)
    again = detector.detect(framed.image_bgr)
    error = np.linalg.norm(again.points[:NUM_MESH_POINTS] - framed.landmarks.points[:NUM_MESH_POINTS], axis=1)
    face_width = np.ptp(framed.landmarks.points[:, 0])
    assert np.median(error) < 0.02 * face_width
    assert framed.landmarks.depth is not None


def test_a_tall_tight_portrait_is_filled_from_the_photo_not_black(detector, grace_hopper_bgr):
    tight = grace_hopper_bgr[60:380, 90:420]  # head and collar only
    _, framed = _framed(detector, tight)
    assert 0.3 < framed.filled_share < 0.9
    _assert_placed_as_in_a_call(framed)
    image = framed.image_bgr.astype(np.float32)
    # No black bars: every column and row of the frame carries the photo's colours.
    assert image.mean(axis=(0, 2)).min() > 15 and image.mean(axis=(1, 2)).min() > 15
    # The left fill continues the photo's left edge (its colours, blurred).
    left_edge_colour = tight[:, 0].reshape(-1, 3).mean(axis=0)
    fill_colour = image[:, :40].reshape(-1, 3).mean(axis=0)
    assert np.abs(fill_colour - left_edge_colour).max() < 40
    # ... and is soft: far less fine detail than the photo itself.
    detail = np.abs(cv2.Laplacian(framed.image_bgr, cv2.CV_32F))
    assert detail[:, :100].mean() < 0.3 * detail[200:500, 500:780].mean()


def test_a_small_photo_is_enlarged_to_the_frame(detector, astronaut_bgr):
    small = cv2.resize(astronaut_bgr, (160, 160), interpolation=cv2.INTER_AREA)
    _, framed = _framed(detector, small)
    _assert_placed_as_in_a_call(framed)
    assert framed.matrix[0, 0] > 3.0  # enlarged about 4x, once
    assert framed.image_bgr.std() > 20


def test_other_camera_sizes_frame_the_same_way(detector, grace_hopper_bgr):
    for size in ((1920, 1080), (640, 480)):
        _, framed = _framed(detector, grace_hopper_bgr, size)
        _assert_placed_as_in_a_call(framed, size)


# --- paste-back ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def framed_hopper(detector, grace_hopper_bgr):
    return _framed(detector, grace_hopper_bgr)[1]


def test_paste_back_of_the_reference_is_the_photo_exactly(framed_hopper):
    paste = PasteBack(framed_hopper.image_bgr, framed_hopper.landmarks)
    reference = cv2.GaussianBlur(paste.crop_bgr, (0, 0), 1.2)  # a network sees less detail
    paste.set_reference(reference)
    np.testing.assert_array_equal(paste.paste(reference), framed_hopper.image_bgr)


def test_paste_back_without_reference_only_resamples(framed_hopper):
    paste = PasteBack(framed_hopper.image_bgr, framed_hopper.landmarks)
    out = paste.paste(paste.crop_bgr)
    error = np.abs(out.astype(np.float32) - framed_hopper.image_bgr)
    assert error.mean() < 1.5
    outside = np.ones(error.shape[:2], bool)
    outside[paste.roi] = False
    assert error[outside].max() == 0  # nothing beyond the crop changes


def test_paste_back_mask_covers_the_face_and_leaves_the_room(framed_hopper):
    paste = PasteBack(framed_hopper.image_bgr, framed_hopper.landmarks)
    points = framed_hopper.landmarks.points[:NUM_MESH_POINTS] - paste.origin
    inside = paste.mask[points[:, 1].astype(int), points[:, 0].astype(int)]
    assert inside.min() > 0.99  # every face point fully from the prediction
    # At the crop's left and right edges (inside the picture) the prediction ends: the mask is 0.
    assert paste.roi[1].start > 0 and paste.roi[1].stop < CAMERA[0]
    assert paste.mask[:, 0].max() < 0.02 and paste.mask[:, -1].max() < 0.02
    assert 0.1 < paste.mask.mean() < 0.7  # the head, not the whole crop


def test_paste_back_mask_follows_the_head(framed_hopper):
    paste = PasteBack(framed_hopper.image_bgr, framed_hopper.landmarks)
    shift = Similarity(1.0 + 0.0j, 30.0 + 0.0j)  # 30 network px to the right
    moved = paste.moved_mask(shift)
    assert moved.sum() > paste.mask.sum() * 1.05
    # Where the face moved to, the mask now reaches: right of the face's right side.
    face = framed_hopper.landmarks.points[:NUM_MESH_POINTS] - paste.origin
    right = int(face[:, 0].max()) + int(25 / paste.crop_matrix[0, 0])
    row = int(face[:, 1].mean())
    assert moved[row, right] > 0.9 and paste.mask[row, right] < moved[row, right]


def test_colour_is_matched_across_the_seam(framed_hopper):
    """A prediction that changes everything and is 40 levels too bright meets the photo at the seam."""
    paste = PasteBack(framed_hopper.image_bgr, framed_hopper.landmarks)
    paste.set_reference(np.zeros_like(paste.crop_bgr))  # everything counts as changed
    bright = np.clip(paste.crop_bgr.astype(int) + 40, 0, 255).astype(np.uint8)
    out = paste.paste(bright).astype(np.float32)
    seam = (paste.mask > 0.3) & (paste.mask < 0.7)
    picture = framed_hopper.image_bgr[paste.roi].astype(np.float32)
    offset = np.abs((out[paste.roi] - picture)[seam].mean(axis=0))
    assert offset.max() < 12  # of the 40 levels, the colour match took most away at the seam


def test_the_fill_beside_a_square_photo_is_not_stripes(detector, grace_hopper_bgr):
    """A square photo in a 16:9 frame: the side panels are a blurred, dimmed enlargement of the photo
    (as call apps show a portrait), not its edge columns stretched outward, which read as vertical
    stripes: there, colours change along the columns and never across them."""
    _, framed = _framed(detector, grace_hopper_bgr[40:420, 60:440])  # a tight square portrait
    x0, y0, x1, y1 = framed.photo_box
    assert x0 > 100 and x1 < CAMERA[0] - 100  # fill on both sides
    grey = cv2.cvtColor(framed.image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    panel = grey[:, : x0 - 20]
    across, along = np.abs(np.diff(panel, axis=1)).mean(), np.abs(np.diff(panel, axis=0)).mean()
    assert along < 3.0 * across, (along, across)
    # Dimmer than the photo, so the photo stays what the eye goes to.
    assert panel.mean() < 0.8 * grey[y0:y1, x0:x1].mean()


def test_zoom_fill_reframes_a_square_photo_to_fill_the_frame(detector, astronaut_bgr):
    face = detector.detect(astronaut_bgr)
    framed = frame_photo(astronaut_bgr, face, *CAMERA, fill="zoom")
    assert framed.filled_share == 0.0 and framed.photo_box == (0, 0, *CAMERA)
    x0, y0, x1, y1 = _face_box(framed.landmarks)
    assert 0 <= x0 and x1 <= CAMERA[0] and 0 <= y0 and y1 <= CAMERA[1]  # the whole face in the frame


def test_zoom_fill_keeps_a_close_up_faces_mouth_and_chin_in_the_frame(detector, astronaut_bgr):
    """A close-up square photo (the face ~0.45 of its height, as a selfie): its 16:9 slice is
    shorter than the face with the call's head room, so the face is placed by its chin instead of
    its top (placed by the top, the chin and mouth fell below the frame's bottom edge)."""
    face = detector.detect(astronaut_bgr)
    x0, y0, x1, y1 = (int(v) for v in _face_box(face))
    side = int((y1 - y0) / 0.45)
    top, left = max(y0 - side // 8, 0), max((x0 + x1) // 2 - side // 2, 0)
    close_up = astronaut_bgr[top:top + side, left:left + side]
    face = detector.detect(close_up)
    assert face is not None
    framed = frame_photo(close_up, face, *CAMERA, fill="zoom")
    assert framed.filled_share == 0.0
    fx0, fy0, fx1, fy1 = _face_box(framed.landmarks)
    assert fy1 <= CAMERA[1] - 0.02 * CAMERA[1]  # the chin above the bottom edge, with a margin
    assert fy0 >= 0.0
