"""Synthetic driving clips (bench/clips.py): files read back, truth is consistent, and MediaPipe sees
the scripted motion (face on every frame, mouth opening, blinks, head motion)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from avatarify.motion import eye_open_ratios
from bench.clips import (PHOTOS, SCRIPTS, eye_open_ratio, face_rig, head_matrix, make_clip, mouth_open_ratio,
                         read_clip, script_motion, track_landmarks, truth_series, write_clip)

SMALL = 36  # frames: two mouth cycles / two blinks with in-between states, still quick


@pytest.fixture(scope="module")
def mixed_clip():
    return make_clip("astronaut", "mixed", frames=24, size=256, fps=30.0, seed=0)


def test_written_clip_reads_back_with_count_size_and_truth(mixed_clip, tmp_path):
    frames, truth = mixed_clip
    video_path, json_path = write_clip(tmp_path / "astronaut_mixed", frames, truth, fps=30.0)
    assert video_path.suffix == ".mp4" and json_path.suffix == ".json"

    cap = cv2.VideoCapture(str(video_path))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame)
    cap.release()
    assert len(decoded) == 24
    assert all(frame.shape == (256, 256, 3) for frame in decoded)
    # mp4v is lossy; the decoded clip must still be the same picture.
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(decoded, frames)]) < 6.0

    frames_back, truth_back = read_clip(tmp_path / "astronaut_mixed")
    assert len(frames_back) == 24
    assert truth_back == json.loads(json.dumps(truth))


def test_truth_describes_every_frame_and_starts_neutral(mixed_clip):
    frames, truth = mixed_clip
    assert truth["frames"] == len(truth["per_frame"]) == len(frames) == 24
    assert np.asarray(truth["neutral_landmarks"]).shape == (478, 2)
    first = truth["per_frame"][0]
    assert first["roll_deg"] == 0 and first["shift_xy"] == (0, 0) and first["scale"] == 1
    assert first["mouth_open"] == 0 and first["eye_open"] == 1 and first["gaze_xy"] == (0, 0)
    for frame in truth["per_frame"]:
        expected = head_matrix(frame["roll_deg"], frame["shift_xy"], frame["scale"], truth["centre_xy"])
        # The truth stores the matrix rounded to 6 decimals (≤ 5e-7 off); the rest is float64 algebra.
        np.testing.assert_allclose(frame["head_matrix"], expected, atol=1e-5)
        assert frame["time_s"] == pytest.approx(frame["index"] / 30.0)
        assert 0 <= frame["mouth_open"] <= 1 and 0 <= frame["eye_open"] <= 1
    assert truth_series(truth, "mouth_open").max() > 0.9
    assert truth_series(truth, "eye_open").min() < 0.1


def test_every_script_and_photo_is_deterministic_and_sized():
    for photo in PHOTOS:
        for script in SCRIPTS:
            frames, truth = make_clip(photo, script, frames=4, size=256, seed=3)
            again, _ = make_clip(photo, script, frames=4, size=256, seed=3)
            assert len(frames) == 4 and frames[0].shape == (256, 256, 3) and frames[0].dtype == np.uint8
            assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    step_frames, step_truth = make_clip("astronaut", "step", frames=12)
    shift_x = truth_series(step_truth, "shift_xy")[:, 0]
    assert step_truth["step_frame"] == 4
    assert np.all(shift_x[:4] == 0) and np.all(shift_x[4:] == shift_x[4]) and shift_x[4] > 0


def test_unknown_photo_or_script_is_refused():
    with pytest.raises(ValueError):
        make_clip("mona_lisa", "mouth", frames=4)
    with pytest.raises(ValueError):
        make_clip("astronaut", "moonwalk", frames=4)


def test_openness_ratios_on_hand_made_points():
    points = np.zeros((478, 2), np.float32)
    points[78], points[308] = (0, 0), (40, 0)  # mouth 40 px wide ...
    points[13], points[14] = (20, -2), (20, 8)  # ... lips 10 px apart
    for top, bottom, a, b in ((159, 145, 33, 133), (386, 374, 362, 263)):
        points[a], points[b] = (0, 50), (20, 50)  # eyes 20 px wide, lids 6 px apart
        points[top], points[bottom] = (10, 47), (10, 53)
    assert mouth_open_ratio(points) == pytest.approx(0.25)
    assert eye_open_ratio(points) == pytest.approx(0.3)


@pytest.mark.parametrize("photo", PHOTOS)
def test_mediapipe_finds_a_face_on_every_frame_of_every_script(photo):
    for script in ("mixed", "still_noise", "step"):
        frames, _ = make_clip(photo, script, frames=SMALL)
        landmarks = track_landmarks(frames)
        assert all(lm is not None for lm in landmarks), f"{photo}/{script}: face lost"


@pytest.mark.parametrize("photo", PHOTOS)
def test_scripted_mouth_opening_is_redetected(photo):
    frames, truth = make_clip(photo, "mouth", frames=SMALL)
    measured = [mouth_open_ratio(lm) for lm in track_landmarks(frames)]
    assert np.corrcoef(measured, truth_series(truth, "mouth_open"))[0, 1] >= 0.95
    assert max(measured) - min(measured) > 0.3  # a wide opening, not a twitch


@pytest.mark.parametrize("photo", PHOTOS)
def test_scripted_blinks_are_redetected(photo):
    frames, truth = make_clip(photo, "blink", frames=SMALL)
    measured = np.array([eye_open_ratio(lm) for lm in track_landmarks(frames)])
    assert np.corrcoef(measured, truth_series(truth, "eye_open"))[0, 1] >= 0.9
    assert measured.min() < 0.6 * measured[0]  # lids come well down


@pytest.mark.parametrize("script", ["roll", "scale", "step"])
def test_scripted_head_motion_is_what_landmarks_show(script):
    frames, truth = make_clip("grace_hopper", script, frames=SMALL)
    landmarks = track_landmarks(frames)
    first = landmarks[0].points[:468]
    for frame, lm in zip(truth["per_frame"], landmarks):
        matrix = np.asarray(frame["head_matrix"])
        expected = first @ matrix[:, :2].T + matrix[:, 2]
        error_px = np.linalg.norm(lm.points[:468] - expected, axis=1).mean()
        assert error_px < 2.0, f"frame {frame['index']}: landmarks {error_px:.2f}px off the script"


@pytest.mark.parametrize("photo", PHOTOS)
def test_head_motion_moves_the_head_and_leaves_the_room_still(photo):
    """As in front of a webcam: the head rolls, shifts and scales; the room does not. The room: where
    the clip's head model gives no weight, both before the move and wherever the head moved to."""
    rig = face_rig(photo, 256)
    weight = rig.head_weight[rig.pad:rig.pad + 256, rig.pad:rig.pad + 256]
    for script in ("roll", "shift", "scale"):
        frames, truth = make_clip(photo, script, frames=12)
        assert truth["noise_sigma"] == 0
        for frame, frame_truth in zip(frames[1:], truth["per_frame"][1:]):
            head = np.asarray(frame_truth["head_matrix"])
            canvas_to_frame = np.hstack([head[:, :2], head[:, 2:] - head[:, :2] @ [[rig.pad], [rig.pad]]])
            moved_weight = cv2.warpAffine(rig.head_weight, canvas_to_frame, (256, 256))
            room = cv2.erode(((weight == 0) & (moved_weight == 0)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            assert room.mean() > 0.03  # the bottom corners and the sides of the room
            np.testing.assert_array_equal(frame[room], frames[0][room])
        assert np.abs(frames[3].astype(int) - frames[0]).mean() > 3.0  # while the head did move


@pytest.mark.parametrize("photo", PHOTOS)
def test_the_head_moves_as_one_layer_over_the_still_room(photo):
    """Where the moved head's matte is full, the frame is the photo moved by the similarity; where
    it is empty, the still room (the photo with the head inpainted)."""
    rig = face_rig(photo, 256)
    motion = script_motion("shift", 24)
    head = head_matrix(motion.roll_deg[6], motion.shift_xy[6], motion.scale[6], rig.centre_xy)
    frame = rig.render_frame(0.0, 1.0, (0.0, 0.0), head).astype(np.float32)
    source = rig.head_map(head)
    moved = cv2.remap(rig.canvas_bgr, source[..., 0], source[..., 1], cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.remap(rig.head_weight, source[..., 0], source[..., 1], cv2.INTER_LINEAR)
    room = rig.room_bgr[rig.pad:rig.pad + 256, rig.pad:rig.pad + 256].astype(np.float32)
    assert (alpha > 0.999).mean() > 0.2 and (alpha < 0.001).mean() > 0.1
    assert np.abs(frame - moved)[alpha > 0.999].max() <= 1.0
    assert np.abs(frame - room)[alpha < 0.001].max() <= 1.0


@pytest.mark.parametrize("photo", PHOTOS)
def test_an_opening_jaw_slides_over_a_still_neck_and_collar(photo):
    frames, truth = make_clip(photo, "mouth", frames=12)
    rig = face_rig(photo, 256)
    below_jaw = int(np.ceil(rig.mouth.chin_y + rig.mouth.max_open_px)) + 2 - rig.pad
    assert below_jaw < 256 - 20  # there is neck or collar to check
    for frame in frames[1:]:
        np.testing.assert_array_equal(frame[below_jaw:], frames[0][below_jaw:])
    widest = int(np.argmax(truth_series(truth, "mouth_open")))
    assert np.abs(frames[widest].astype(int) - frames[0]).mean() > 2.0  # while the jaw did drop


# ---------------------------------------------------------------------------------------------------
# The harder scripts (issue 12)

def test_a_3d_turn_is_what_face_mesh_sees():
    """The yaw and pitch scripts turn the head as scripted: Face Mesh's own 3-D reading of each
    frame follows the script (static mode, relative to frame 0)."""
    from bench.quality import head_angles

    for script, axis, amplitude in (("yaw", 0, 25.0), ("pitch", 1, 15.0)):
        frames, truth = make_clip("grace_hopper", script, frames=8)
        measured = head_angles(track_landmarks(frames, static=True))[:, axis]
        scripted = truth_series(truth, f"{script}_deg")
        assert np.abs(scripted).max() == pytest.approx(amplitude * np.sin(np.pi / 2), abs=0.5)
        assert np.corrcoef(measured, scripted)[0, 1] > 0.97
        assert np.abs(measured - scripted).mean() < 5.0


def test_a_3d_turn_hides_the_far_side_and_keeps_the_room():
    """At 25 degrees of yaw the near half of the face widens and the far half narrows (the depth
    buffer hides what turns away); the room far from the head does not move."""
    frames, truth = make_clip("astronaut", "yaw", frames=8)
    turn = int(np.argmax(truth_series(truth, "yaw_deg")))  # nose toward image left
    first, turned = (lm.points for lm in track_landmarks([frames[0], frames[turn]], static=True))
    nose = 1

    def halves(points):
        return points[nose, 0] - points[234, 0], points[454, 0] - points[nose, 0]

    left0, right0 = halves(first)
    left, right = halves(turned)
    assert left < 0.85 * left0 and right > 1.05 * right0
    rig = face_rig("astronaut", 256)
    room = rig.head_weight[rig.pad:rig.pad + 256, rig.pad:rig.pad + 256] == 0
    room = cv2.erode(room.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert room.mean() > 0.1
    np.testing.assert_array_equal(frames[turn][room], frames[0][room])


def test_winks_close_one_eye_at_a_time():
    frames, truth = make_clip("grace_hopper", "wink", frames=24)
    eyes = np.array([eye_open_ratios(lm.points) for lm in track_landmarks(frames, static=True)])
    scripted = np.array([frame["eye_open_lr"] for frame in truth["per_frame"]])
    for eye in (0, 1):
        shut = int(np.argmin(scripted[:, eye]))
        assert eyes[shut, eye] < 0.7 * eyes[0, eye]  # this eye closes ...
        assert eyes[shut, 1 - eye] > 0.9 * eyes[0, 1 - eye]  # ... the other stays open


@pytest.mark.parametrize("script, key, measure, sign", [("brows", "brow", "brow_height", 1),
                                                        ("smile", "smile", "mouth_corner_lift", 1),
                                                        ("purse", "purse", "mouth_width", -1)])
def test_brows_smiles_and_purses_move_their_feature(script, key, measure, sign):
    from bench import quality

    frames, truth = make_clip("astronaut", script, frames=12)
    extreme = int(np.argmax(truth_series(truth, key)))
    first, most = track_landmarks([frames[0], frames[extreme]], static=True)
    change = getattr(quality, measure)(most.points) - getattr(quality, measure)(first.points)
    assert sign * change > 0.01
