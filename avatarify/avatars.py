"""Avatar photos: find them, validate them, frame them for the call.

Input: files and folders of jpg/png/webp photos and an `AvatarFraming` (camera size, framing mode).
Output: `Avatar`s — the picture the call shows at rest (compose.frame_photo: the photo at full
resolution filling the camera frame around the one face; or, with framing "crop", the square face
crop of the driving crop's box rule), with the face's landmarks in that picture's pixels. A photo
that cannot be used (not an image, too small, no face, several faces) gives one message naming the
file; the others still load.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarify.compose import crop_photo, frame_photo
from avatarify.datatypes import FaceLandmarks
from avatarify.landmarks import FaceMeshDetector

log = logging.getLogger(__name__)

AVATAR_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MIN_IMAGE_SIDE = 64  # px: below this there is nothing for the engine to animate
MIN_FACE_SIDE = 40  # px: Face Mesh landmarks on a smaller face are too coarse to animate


class AvatarError(ValueError):
    """An avatar photo cannot be used (message is one clear sentence naming the file)."""


@dataclass(frozen=True)
class AvatarFraming:
    """How avatar photos are framed: "call" (camera-size picture) or "crop" (square face crop)."""

    mode: str = "call"
    fill: str = "blur"  # beside a narrow photo, for "call" (config.FILLS)
    width: int = 1280  # camera frame, for "call"
    height: int = 720
    crop_size: int = 256  # for "crop"
    margin: float = 0.3  # the face box rule's margin, for "crop" (and the engines' own crops)


@dataclass
class Avatar:
    name: str
    path: Path
    image_bgr: np.ndarray  # uint8, the picture the call shows at rest (camera size, or the crop)
    landmarks: FaceLandmarks  # in image_bgr pixels
    photo_size: tuple[int, int]  # (width, height) of the photo it was cut from
    filled_share: float = 0.0  # share of image_bgr filled beyond the photo's edge
    photo_box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of image_bgr that is the photo's


def find_avatar_files(paths: list[Path]) -> list[Path]:
    """Photos named directly, plus the photos inside named folders (sorted by name, not recursive).

    A missing path without an extension counts as an empty folder (like the default `avatars/` on
    first run); any other missing path is returned as is, so loading it reports it by name.
    """
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in AVATAR_EXTENSIONS and p.is_file())
        elif path.exists() or path.suffix:
            files.append(path)
    return files


def is_cut_off(data: bytes) -> bool:
    """True when a JPEG, PNG or WebP file ends before its image does (an interrupted copy or download).
    Decoders fill the missing part with grey instead of failing, so the structure is checked here:
    a JPEG's end-of-image marker must follow its last scan, a PNG must have its IEND chunk, a WebP
    must be as long as its RIFF header says."""
    if data[:3] == b"\xff\xd8\xff":
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-64:]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    return False


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image, or AvatarError. Decodes from bytes so non-ASCII paths work on every OS."""
    if not path.is_file():
        raise AvatarError(f"Avatar {path} does not exist; pass a jpg/png/webp photo or a folder with --avatar.")
    data = np.fromfile(str(path), dtype=np.uint8)
    if is_cut_off(data.tobytes()):
        raise AvatarError(f"Avatar {path} is cut off (the file ends before the image does); copy or save "
                          f"it again, or use another photo.")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise AvatarError(f"Avatar {path} is not a readable image; use a jpg, png or webp photo.")
    return image


def face_of(image_bgr: np.ndarray, path: Path, detector: FaceMeshDetector) -> FaceLandmarks:
    """The one face of an avatar photo, or AvatarError saying what is wrong with the photo."""
    height, width = image_bgr.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise AvatarError(f"Avatar {path} is too small ({width}x{height} px); use a photo at least "
                          f"{MIN_IMAGE_SIDE} px on each side.")
    faces = detector.detect_all(image_bgr) or faces_by_detector(image_bgr, detector)
    if not faces:
        raise AvatarError(f"No face found in avatar {path}; use a photo with one clearly visible, "
                          f"roughly frontal face.")
    if len(faces) > 1:
        raise AvatarError(f"Avatar {path} shows {len(faces)} faces; crop it to the one face to animate.")
    face = faces[0]
    x0, y0, x1, y1 = face.box
    if max(x1 - x0, y1 - y0) < MIN_FACE_SIDE:
        raise AvatarError(f"The face in avatar {path} is too small ({max(x1 - x0, y1 - y0):.0f} px); "
                          f"use a photo where the face is at least {MIN_FACE_SIDE} px wide.")
    return face


def faces_by_detector(image_bgr: np.ndarray, detector: FaceMeshDetector) -> list[FaceLandmarks]:
    """Faces Face Mesh misses on the whole photo because they are small in it (a person in a room,
    a large photo): the full-range detector over the photo and its tiles, then Face Mesh on a crop
    around each face found (as the live face finder does), largest first."""
    from avatarify.finder import LOCK_MARGIN, landmark_crop, merge_faces, search_windows
    from avatarify.landmarks import FaceDetector

    height, width = image_bgr.shape[:2]
    finder = FaceDetector()
    try:
        boxes = merge_faces([face for window in search_windows(width, height)
                             for face in finder.detect(image_bgr, window)])
    finally:
        finder.close()
    faces = []
    for box in boxes:
        crop, matrix = landmark_crop(image_bgr, np.array([*box.centre, box.side * (1.0 + 2.0 * LOCK_MARGIN)]))
        found = detector.detect(crop)
        if found is not None:
            inverse = cv2.invertAffineTransform(matrix)
            faces.append(found.transformed(inverse, (width, height)))
    return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def load_avatar(path: Path, framing: AvatarFraming, detector: FaceMeshDetector) -> Avatar:
    """One validated avatar framed for the call; AvatarError if the photo cannot be used."""
    path = Path(path)
    image = read_image(path)
    face = face_of(image, path, detector)
    if framing.mode == "crop":
        framed = crop_photo(image, face, framing.crop_size, framing.margin)
    else:
        framed = frame_photo(image, face, framing.width, framing.height, framing.fill)
    return Avatar(path.stem, path, framed.image_bgr, framed.landmarks, (image.shape[1], image.shape[0]),
                  framed.filled_share, framed.photo_box)


def load_avatars(paths: list[Path], framing: AvatarFraming = AvatarFraming()) -> list[Avatar]:
    """Every usable avatar under `paths`; unusable ones are reported one line each and skipped.

    Raises AvatarError when none is usable, with the fix for an empty or missing avatars folder.
    """
    files = find_avatar_files(paths)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        raise AvatarError(f"No avatar photos in {shown} (missing or empty folder); pass --avatar photo.jpg, "
                          f"drop jpg/png/webp photos there, or run once with --demo for two sample photos.")
    avatars, problems = [], []
    # max_faces=2 only to tell "one face" from "several faces".
    with FaceMeshDetector(static=True, max_faces=2) as detector:
        for path in files:
            try:
                avatars.append(load_avatar(path, framing, detector))
            except AvatarError as exc:
                problems.append(str(exc))
    if not avatars:
        if len(problems) == 1:
            raise AvatarError(problems[0])
        for problem in problems:
            log.warning("%s", problem)
        raise AvatarError(f"None of the {len(problems)} avatar photos can be used (reasons above).")
    for problem in problems:
        log.warning("skipped: %s", problem)
    return avatars


def write_demo_avatars(folder: Path) -> list[Path]:
    """Write two public-domain photos that ship with installed packages (NASA's astronaut portrait
    from scikit-image, Grace Hopper from matplotlib) into `folder`; existing files are kept."""
    import matplotlib.cbook
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = folder / "astronaut.png"
    if not astronaut.exists():
        cv2.imwrite(str(astronaut), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    hopper = folder / "grace_hopper.jpg"
    if not hopper.exists():
        shutil.copyfile(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), hopper)
    return [astronaut, hopper]
