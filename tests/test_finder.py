"""The face finder on real photos laid into room scenes: far faces at common camera sizes, in dim and
noisy light; one person locked with two in view; the next-face switch; landmarks in frame pixels."""
from __future__ import annotations

import numpy as np
import pytest

from avatarify.finder import DETECTOR_INPUT, DETECTOR_MIN_FACE, TILE_SIDE, FaceFinder, search_windows
from avatarify.landmarks import FaceMeshDetector
from bench.scenes import room_background, scene_frame

FPS = 30.0


@pytest.fixture(scope="module")
def finder():
    with FaceFinder() as face_finder:
        yield face_finder


def find_within_a_pass(finder: FaceFinder, frame: np.ndarray, start: float = 0.0):
    """Landmarks after the frames one full search pass takes (the scene held still), or None."""
    finder.reset()
    passes = -(-len(search_windows(frame.shape[1], frame.shape[0])) // finder.windows_per_frame)
    for index in range(passes):
        landmarks = finder.find(frame, start + index / FPS)
        if landmarks is not None:
            return landmarks
    return None


def centre(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (1920, 1080)])
def test_windows_cover_the_frame_and_bring_a_48_px_face_to_the_detectors_size(size):
    width, height = size
    windows = search_windows(width, height)
    assert windows[0] == (0, 0, width, height)
    covered = np.zeros((height, width), bool)
    for x, y, w, h in windows:
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    smallest_tile = min(max(w, h) for _, _, w, h in windows)
    assert 48 * DETECTOR_INPUT / smallest_tile >= DETECTOR_MIN_FACE * 0.99
    assert smallest_tile <= TILE_SIDE


@pytest.mark.parametrize("size, condition, photo", [
    ((640, 480), "dark_noise", "astronaut"), ((1280, 720), "dark", "grace_hopper"),
    ((1280, 720), "noise", "astronaut"), ((1920, 1080), "dark_noise", "grace_hopper"),
    ((1920, 1080), "backlight", "astronaut")])
def test_a_48_px_face_is_found_at_every_camera_size_in_bad_light(finder, size, condition, photo):
    width, height = size
    where = (0.3 * width, 0.4 * height)
    frame, (truth,) = scene_frame(width, height, [(photo, 48, where)], condition, seed=3)
    landmarks = find_within_a_pass(finder, frame)
    assert landmarks is not None, f"no face found at {size} ({condition})"
    assert landmarks.image_size == size and landmarks.points.shape == (478, 2)
    assert np.linalg.norm(centre(landmarks.box) - truth.centre) < 0.2 * truth.width
    x0, _, x1, _ = landmarks.box
    assert 0.8 * truth.width < x1 - x0 < 1.25 * truth.width
    assert landmarks.confidence > 0.95  # share of the mesh inside the frame


def test_no_face_in_an_empty_room():
    with FaceFinder() as empty_finder:
        frame = room_background(1280, 720).copy()
        assert all(empty_finder.find(frame, i / FPS) is None for i in range(4))


def test_frame_pixels_and_depth_match_face_mesh_on_the_whole_frame(finder):
    # A large face, which Face Mesh finds on the whole frame too: the crop path must agree with it.
    frame, _ = scene_frame(640, 480, [("grace_hopper", 200, (320, 220))], "clean")
    with FaceMeshDetector(static=True) as mesh:
        direct = mesh.detect(frame)
    found = find_within_a_pass(finder, frame)
    width = direct.box[2] - direct.box[0]
    assert np.abs(found.points - direct.points).mean() < 0.02 * width
    # Depth is in frame pixels like x and y: the same spread as Face Mesh's own on the whole frame.
    assert np.std(found.depth) == pytest.approx(np.std(direct.depth), rel=0.15)


def two_people(shift: float = 0.0, hide_large: bool = False) -> tuple[np.ndarray, list]:
    """The astronaut (larger face) left, Grace Hopper right, in a 1280x720 room."""
    faces = [("grace_hopper", 70, (860 - shift, 330))]
    if not hide_large:
        faces.insert(0, ("astronaut", 110, (420 + shift, 300)))
    return scene_frame(1280, 720, faces, "clean")


def test_locks_onto_the_largest_face_and_never_jumps_to_the_other(finder):
    frame, (large, small) = two_people()
    first = find_within_a_pass(finder, frame)
    assert np.linalg.norm(centre(first.box) - large.centre) < 0.2 * large.width
    t = 1.0
    for step in range(12):  # the person moves a little; the other one stays in view
        frame, (large, small) = two_people(shift=4.0 * step)
        t += 1 / FPS
        landmarks = finder.find(frame, t)
        assert landmarks is not None and np.linalg.norm(centre(landmarks.box) - large.centre) < 0.25 * large.width
    hidden, _ = two_people(shift=44.0, hide_large=True)
    for _ in range(10):  # the person leaves for a third of a second: no jump to the other face
        t += 1 / FPS
        assert finder.find(hidden, t) is None
    back, (large, _) = two_people(shift=44.0)
    t += 1 / FPS
    landmarks = finder.find(back, t)  # found again at once, near their last place
    assert landmarks is not None and np.linalg.norm(centre(landmarks.box) - large.centre) < 0.25 * large.width


def test_next_face_switches_to_the_other_person_and_back(finder):
    frame, (large, small) = two_people()
    find_within_a_pass(finder, frame)
    finder.request_next_face()
    landmarks = finder.find(frame, 1.0)
    assert finder.switched and "2 in view" in finder.message
    assert np.linalg.norm(centre(landmarks.box) - small.centre) < 0.25 * small.width
    landmarks = finder.find(frame, 1.0 + 1 / FPS)  # and it stays there
    assert not finder.switched and np.linalg.norm(centre(landmarks.box) - small.centre) < 0.25 * small.width
    finder.request_next_face()  # wraps round to the left
    landmarks = finder.find(frame, 1.0 + 2 / FPS)
    assert np.linalg.norm(centre(landmarks.box) - large.centre) < 0.25 * large.width


def test_next_face_with_one_face_says_so_and_keeps_it(finder):
    frame, (only,) = scene_frame(640, 480, [("astronaut", 90, (300, 220))], "clean")
    find_within_a_pass(finder, frame)
    finder.request_next_face()
    landmarks = finder.find(frame, 1.0)
    assert finder.message == "no other face in view" and not finder.switched
    assert np.linalg.norm(centre(landmarks.box) - only.centre) < 0.25 * only.width


def test_a_lost_person_is_replaced_by_the_largest_face_only_after_relock_after_s(finder):
    frame, (large, small) = two_people()
    find_within_a_pass(finder, frame)
    hidden, (small,) = two_people(hide_large=True)
    t, found = 1.0, []
    for _ in range(int(2.5 * FPS)):
        t += 1 / FPS
        found.append(finder.find(hidden, t))
    first = next(i for i, lm in enumerate(found) if lm is not None)
    assert first / FPS >= finder.relock_after_s - 1 / FPS
    assert np.linalg.norm(centre(found[-1].box) - small.centre) < 0.25 * small.width


def test_a_face_locked_mid_word_reads_its_mouth_as_it_does_later(finder):
    """Locked with the mouth half open (the 6th frame of a 1080p pass), the tracked mesh must read the
    same pixels as it does a clip later: Face Mesh's tracked region must belong to the tracking crop,
    not to the lock's (a region carried across kept the mesh shrunk: wide open read 0.44 for 0.56)."""
    from avatarify.motion import mouth_open_ratio
    from bench.clips import make_clip
    from bench.scenes import clip_in_room

    clip, truth = make_clip("astronaut", "mouth", frames=36, size=512)  # wide open at frames 9 and 27
    frames, _ = clip_in_room(clip, truth, 1920, 1080, 160, (864, 454))
    finder.reset()
    ratios = {}
    for index, frame in enumerate(frames[:28]):
        landmarks = finder.find(frame, index / FPS)
        ratios[index] = None if landmarks is None else mouth_open_ratio(landmarks.points)
    assert ratios[4] is None and ratios[5] is not None  # the case: locked on the pass's last frame
    assert ratios[27] > 0.5
    assert abs(ratios[9] - ratios[27]) < 0.04
