"""Face landmarks on real photos, and the optional face-alignment backend's clear refusal."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest

from avatarify import landmarks as landmarks_module
from avatarify.landmarks import (NUM_LANDMARKS, FaceMeshDetector, LandmarkBackendError, create_detector,
                                 face_alignment_problem, landmark_array)
from avatarify.motion import EYES, FACE_OVAL, INNER_LIPS
from tests.conftest import load_astronaut_bgr, load_grace_hopper_bgr


@pytest.fixture(scope="module")
def photo_faces():
    photos = {"astronaut": load_astronaut_bgr(), "grace_hopper": load_grace_hopper_bgr()}
    with FaceMeshDetector(static=True) as detector:
        return {name: (image, detector.detect(image)) for name, image in photos.items()}


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_face_mesh_finds_the_face_with_all_points(photo_faces, photo):
    image, face = photo_faces[photo]
    assert face is not None
    height, width = image.shape[:2]
    assert face.points.shape == (NUM_LANDMARKS, 2) and face.points.dtype == np.float32
    assert face.image_size == (width, height)
    assert face.confidence > 0.95  # the whole face is inside both photos
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert (x1 - x0) > 0.15 * width  # a portrait, not a speck


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_landmarks_sit_where_a_face_has_them(photo_faces, photo):
    _, face = photo_faces[photo]
    p = face.points
    eyes_y = np.mean([p[list(eye.upper_lid)][:, 1].mean() for eye in EYES])
    mouth_y = p[list(INNER_LIPS)][:, 1].mean()
    assert p[10, 1] < eyes_y < p[1, 1] < mouth_y < p[152, 1]  # forehead, eyes, nose tip, mouth, chin
    left_eye, right_eye = (p[list(eye.upper_lid)][:, 0].mean() for eye in EYES)
    assert left_eye < p[1, 0] < right_eye  # the nose between the eyes
    oval = p[list(FACE_OVAL)].reshape(-1, 1, 2)
    assert all(cv2.pointPolygonTest(oval, tuple(map(float, p[i])), False) >= 0 for i in (1, 13, 159, 386))


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_irises_are_inside_their_eyes(photo_faces, photo):
    _, face = photo_faces[photo]
    for eye in EYES:
        opening = face.points[list(eye.opening)].reshape(-1, 1, 2)
        centre = tuple(map(float, face.points[eye.iris_centre]))
        assert cv2.pointPolygonTest(opening, centre, False) >= 0
        ring = face.points[list(eye.iris_ring)]
        radius = np.linalg.norm(ring - face.points[eye.iris_centre], axis=1)
        eye_width = np.linalg.norm(face.points[eye.corners[0]] - face.points[eye.corners[1]])
        assert 0.1 * eye_width < radius.mean() < 0.4 * eye_width


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
def test_tracking_gives_a_new_face_the_landmarks_of_the_frames_that_follow(photo_faces, photo):
    """Without settling, the first tracked frame (the app's default neutral) sits ~1 px (mean) away
    from the landmarks every later frame of the same image gets; settled, well under half a pixel."""
    image, _ = photo_faces[photo]
    with FaceMeshDetector() as detector:
        found = [detector.detect(image).points[:468] for _ in range(6)]
        lost = detector.detect(np.full_like(image, 127))
        again = detector.detect(image).points[:468]
    later = np.mean(found[2:], axis=0)
    assert lost is None
    assert np.linalg.norm(found[0] - later, axis=1).mean() < 0.5
    assert np.linalg.norm(again - later, axis=1).mean() < 0.5  # and again after the face was lost


def test_landmarks_read_from_bytes_equal_those_read_one_by_one():
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        face = mesh.process(cv2.cvtColor(load_astronaut_bgr(), cv2.COLOR_BGR2RGB)).multi_face_landmarks[0]

    def one_by_one():
        return np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)

    assert np.array_equal(landmark_array(face), one_by_one())
    face.landmark[5].visibility = 0.5  # a landmark with another field set: read one by one
    assert np.array_equal(landmark_array(face), one_by_one())
    face.landmark[5].ClearField("visibility")
    face.landmark[7].ClearField("z")  # a landmark without z: 0, as protobuf reads it
    assert np.array_equal(landmark_array(face), one_by_one()) and landmark_array(face)[7, 2] == 0.0


def test_no_face_gives_none():
    with FaceMeshDetector(static=True) as detector:
        assert detector.detect(np.full((240, 320, 3), 127, np.uint8)) is None


def test_face_alignment_not_installed_gives_one_clear_sentence():
    problem = face_alignment_problem()
    assert problem is not None and "not installed" in problem and "\n" not in problem
    with pytest.raises(LandmarkBackendError, match="not installed"):
        create_detector("face_alignment")


def test_face_alignment_without_cached_weights_never_downloads(monkeypatch, tmp_path):
    """Installed but no weights in the torch hub cache: refuse, naming the folder, no download."""
    monkeypatch.setattr(landmarks_module.importlib.util, "find_spec",
                        lambda name: types.SimpleNamespace(name=name))
    monkeypatch.setattr(landmarks_module, "_hub_checkpoints_dir", lambda: tmp_path)
    problem = face_alignment_problem()
    assert problem is not None and str(tmp_path) in problem and "never downloads" in problem
    (tmp_path / "2DFAN4-cd938726ad.zip").write_bytes(b"")
    (tmp_path / "s3fd-619a316812.pth").write_bytes(b"")
    assert face_alignment_problem() is None


def test_unknown_backend_is_refused():
    with pytest.raises(LandmarkBackendError, match="Unknown landmark backend"):
        create_detector("dlib")
