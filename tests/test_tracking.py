"""Tracking: the square crop rule, its smoothing, manual zoom/offset, face-lost easing, pose matching."""
from __future__ import annotations

import numpy as np
import pytest

from avatarify.datatypes import FaceLandmarks
from avatarify.tracking import (CropTracker, DrivingTracker, OneEuroFilter, crop_square, normalized_landmarks,
                                pose_distance, square_face_box)

FPS = 30.0


def face_points(cx: float = 320, cy: float = 240, width: float = 100, height: float = 130,
                seed: int = 0) -> np.ndarray:
    """478 points spread over an ellipse: enough of a 'face' for box and crop geometry."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, 478)
    radius = np.sqrt(rng.uniform(0, 1, 478))
    points = np.stack([cx + width / 2 * radius * np.cos(angle), cy + height / 2 * radius * np.sin(angle)], 1)
    points[:4] = [[cx - width / 2, cy], [cx + width / 2, cy], [cx, cy - height / 2], [cx, cy + height / 2]]
    return points.astype(np.float32)


def face(cx=320.0, cy=240.0, confidence=1.0, **kwargs) -> FaceLandmarks:
    return FaceLandmarks(face_points(cx, cy, **kwargs), confidence, (640, 480))


def test_square_box_is_the_longer_side_plus_margin_each_side():
    cx, cy, side = square_face_box(face(width=100, height=130), margin=0.3)
    assert (cx, cy) == pytest.approx((320, 240), abs=0.5)
    assert side == pytest.approx(130 * 1.6, rel=1e-3)


def test_crop_maps_the_box_onto_the_crop_and_pads_outside_the_frame():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = 200  # left half bright
    box = np.array([620.0, 240.0, 200.0])  # hangs 120 px over the right edge
    crop, matrix = crop_square(frame, box, 256)
    assert crop.shape == (256, 256, 3)
    corners = np.array([[520.0, 140.0, 1.0], [720.0, 340.0, 1.0]]) @ matrix.T
    np.testing.assert_allclose(corners, [[0, 0], [256, 256]], atol=1e-3)
    assert crop.min() == 0 and crop.max() == 0  # repeated border of the dark half, no black void


def test_box_smoothing_removes_jitter_but_follows_real_motion():
    tracker = CropTracker(margin=0.3)
    rng = np.random.default_rng(1)
    centres = []
    for index in range(60):  # two seconds of a still head with 3 px landmark noise
        jitter = rng.normal(0, 3, 2)
        centres.append(tracker.update(face(320 + jitter[0], 240 + jitter[1]), index / FPS)[:2])
    assert np.std(np.array(centres[30:]), axis=0).max() < 1.0
    for index in range(60, 120):  # the head moves 80 px right and stays
        box = tracker.update(face(400, 240), index / FPS)
    assert box[0] == pytest.approx(400, abs=2)


def test_manual_zoom_and_offset_apply_on_top_of_the_automatic_box():
    tracker = CropTracker(margin=0.3)
    cx, cy, side = tracker.update(face(), 0.0)
    tracker.zoom = 2.0
    tracker.offset = np.array([0.25, -0.5])
    assert tracker.box() == pytest.approx([cx + 0.25 * side / 2, cy - 0.5 * side / 2, side / 2])


def test_driving_frame_has_crop_landmarks_and_full_motion_while_the_face_is_seen():
    tracker = DrivingTracker(size=256)
    frame = np.full((480, 640, 3), 128, np.uint8)
    driving = tracker.update(frame, face(), 0.0)
    assert driving.crop_bgr.shape == (256, 256, 3)
    assert driving.motion_scale == 1.0 and tracker.face_found
    x0, y0, x1, y1 = driving.landmarks.box
    assert 0 < x0 < x1 < 256 and 0 < y0 < y1 < 256
    assert max(x1 - x0, y1 - y0) == pytest.approx(256 / 1.6, rel=0.01)  # margin 0.3 each side


def test_face_lost_holds_the_pose_and_eases_to_neutral_then_resumes():
    tracker = DrivingTracker(size=256, ease_s=1.0)
    frame = np.zeros((480, 640, 3), np.uint8)
    assert tracker.update(frame, None, 0.0) is None  # nothing to hold before the first face
    seen = tracker.update(frame, face(), 0.1)
    scales = []
    for t in (0.2, 0.45, 0.7, 0.95, 1.2, 2.0):
        held = tracker.update(frame, None, t)
        assert held.crop_bgr is seen.crop_bgr and held.timestamp == t
        np.testing.assert_array_equal(held.landmarks.points, seen.landmarks.points)
        scales.append(held.motion_scale)
    assert not tracker.face_found
    assert scales[0] == 1.0 and scales[-2:] == [0.0, 0.0]
    assert all(a > b for a, b in zip(scales[:4], scales[1:5]))
    back = tracker.update(frame, face(), 2.1)
    assert back.motion_scale == 1.0 and tracker.face_found


def test_a_face_mostly_outside_the_frame_counts_as_lost():
    tracker = DrivingTracker(size=256, min_visible=0.6)
    frame = np.zeros((480, 640, 3), np.uint8)
    tracker.update(frame, face(), 0.0)
    tracker.update(frame, face(confidence=0.3), 0.1)
    assert not tracker.face_found
    assert tracker.update(frame, face(confidence=0.3), 0.6).motion_scale < 1.0


def test_pose_distance_ignores_position_and_size_but_sees_pose():
    points = face_points()
    moved_and_scaled = FaceLandmarks(points * 1.7 + np.float32([55, -30]), 1.0, (640, 480))
    # float32 points of ~500 px, normalised: a few eps32 (1.2e-7) of a unit-scale distance, far under 1e-5.
    assert pose_distance(face(), moved_and_scaled) == pytest.approx(0.0, abs=1e-5)
    angle = np.deg2rad(15)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    rolled = FaceLandmarks((points - 320) @ rotation.T + 320, 1.0, (640, 480))
    assert pose_distance(face(), rolled) > 0.1
    normalized = normalized_landmarks(points)
    assert np.sqrt((normalized ** 2).sum(axis=1).mean()) == pytest.approx(1.0)


def test_one_euro_filter_smooths_noise_and_keeps_a_ramp():
    noisy_filter = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    rng = np.random.default_rng(0)
    out = [noisy_filter(np.array([rng.normal()]), i / FPS)[0] for i in range(90)]
    assert np.std(out[30:]) < 0.5
    ramp_filter = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    ramp = [ramp_filter(np.array([10.0 * i / FPS]), i / FPS)[0] for i in range(90)]
    assert ramp[-1] == pytest.approx(10.0 * 89 / FPS, abs=0.5)
