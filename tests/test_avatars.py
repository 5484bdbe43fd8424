"""Avatars: validated one by one (a bad photo is named and skipped), cropped around the face."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from avatarify.avatars import AvatarError, AvatarFraming, load_avatars, write_demo_avatars

CROP = AvatarFraming(mode="crop")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, astronaut_bgr, grace_hopper_bgr):
    folder = tmp_path_factory.mktemp("avatars")
    cv2.imwrite(str(folder / "a_astronaut.webp"), astronaut_bgr)
    cv2.imwrite(str(folder / "b_hopper.jpg"), grace_hopper_bgr)
    cv2.imwrite(str(folder / "c_blank.png"), np.full((300, 300, 3), 180, np.uint8))
    cv2.imwrite(str(folder / "d_tiny.png"), cv2.resize(astronaut_bgr, (40, 40)))
    (folder / "e_broken.jpg").write_text("this is not a jpeg")
    (folder / "notes.txt").write_text("not a photo, not even looked at")
    return folder


def test_a_folder_loads_the_good_photos_and_names_each_bad_one(photo_folder, caplog):
    with caplog.at_level(logging.WARNING):
        avatars = load_avatars([photo_folder])
    assert [a.name for a in avatars] == ["a_astronaut", "b_hopper"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    assert any("c_blank.png" in w and "No face" in w for w in warnings)
    assert any("d_tiny.png" in w and "too small" in w for w in warnings)
    assert any("e_broken.jpg" in w and "not a readable image" in w for w in warnings)


@pytest.mark.parametrize("size", [256, 512])
def test_crop_framing_crops_around_the_face_at_its_size(photo_folder, size):
    avatar = load_avatars([photo_folder / "b_hopper.jpg"], AvatarFraming(mode="crop", crop_size=size))[0]
    assert avatar.image_bgr.shape == (size, size, 3) and avatar.image_bgr.dtype == np.uint8
    x0, y0, x1, y1 = avatar.landmarks.box
    assert avatar.landmarks.image_size == (size, size)
    assert max(x1 - x0, y1 - y0) == pytest.approx(size / 1.6, rel=0.02)  # 30 % margin each side
    assert abs((x0 + x1) / 2 - size / 2) < 2 and abs((y0 + y1) / 2 - size / 2) < 2


def test_a_photo_without_a_face_is_one_clear_error(photo_folder):
    with pytest.raises(AvatarError) as error:
        load_avatars([photo_folder / "c_blank.png"])
    assert "c_blank.png" in str(error.value) and "\n" not in str(error.value)


def test_a_photo_with_two_faces_is_refused(tmp_path, photo_folder):
    # Face crops side by side: Face Mesh's short-range detector misses faces that are small in the frame.
    astronaut, hopper = load_avatars([photo_folder], CROP)
    cv2.imwrite(str(tmp_path / "pair.png"), np.hstack([astronaut.image_bgr, hopper.image_bgr]))
    with pytest.raises(AvatarError, match="shows 2 faces"):
        load_avatars([tmp_path / "pair.png"])


def test_empty_or_missing_folder_says_how_to_get_avatars(tmp_path):
    with pytest.raises(AvatarError) as error:
        load_avatars([tmp_path])
    assert "--avatar" in str(error.value) and "--demo" in str(error.value)
    with pytest.raises(AvatarError, match="does not exist"):
        load_avatars([tmp_path / "nope.jpg"])


def test_demo_writes_two_usable_public_domain_photos(tmp_path):
    written = write_demo_avatars(tmp_path / "avatars")
    assert [p.name for p in written] == ["astronaut.png", "grace_hopper.jpg"]
    assert len(load_avatars([tmp_path / "avatars"])) == 2


def test_a_small_face_in_a_large_photo_is_found_and_framed(tmp_path):
    """A 2400x1600 photo of a room with a person whose face is 90 px wide: Face Mesh alone misses it
    on the whole photo; the full-range detector and tiles find it."""
    from avatarify.landmarks import FaceMeshDetector
    from bench.scenes import scene_frame

    photo, _ = scene_frame(2400, 1600, [("grace_hopper", 90, (900, 700))])
    with FaceMeshDetector(static=True) as mesh:
        assert mesh.detect(photo) is None
    cv2.imwrite(str(tmp_path / "room.jpg"), photo)
    (avatar,) = load_avatars([tmp_path / "room.jpg"])
    assert avatar.image_bgr.shape == (720, 1280, 3)
    x0, y0, x1, y1 = avatar.landmarks.box
    assert 500 < (x0 + x1) / 2 < 780 and x1 - x0 > 150  # centred, enlarged from 90 px
