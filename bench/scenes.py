"""Camera frames of a room with real faces at chosen sizes: where people really sit in front of a webcam.

Input: a frame size (640x480, 1280x720, 1920x1080, ...), the public-domain photos of bench/clips.py, the
face width wanted (px), where the face goes, and a lighting condition. Output: BGR uint8 frames and the
true face box of every face placed, in frame pixels.

How a frame is made:
  - the room (`room_background`): a lit wall with a falloff from a lamp, a window, a bookshelf with
    books of random colours and sizes, a door frame, a desk edge at the bottom, a little plaster texture;
    seeded, drawn in relative coordinates so every frame size shows the same room;
  - a person (`place_face`): the photo scaled so its face (the Face Mesh landmark box of the photo,
    ear to ear) is `face_width` px wide, cut out as head and shoulders under a feathered mask and laid
    over the room at the asked face centre; a synthesized clip's frames go in the same way
    (`clip_in_room`: a person talking, blinking, moving with the clip's known truth);
  - a condition (`apply_condition`): `dark` (gamma 2.5 on the whole frame), `noise` (Gaussian sensor
    noise, sigma 20 levels), `backlight` (a bright window behind the person: the room is pushed towards
    white, the person darkened), `dark_noise` (both: a dim room and a noisy sensor), `clean` (none).
The face width is the one the issue counts in: the width of the landmark box, as the app measures it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from bench.clips import PHOTOS, load_photo_bgr, photo_landmarks

CONDITIONS = ("clean", "dark", "noise", "backlight", "dark_noise")
DARK_GAMMA = 2.5
NOISE_SIGMA = 20.0
# The person cut out of a photo, in face widths around the face box centre: head, hair, neck and the
# tops of the shoulders; the mask feathers over FEATHER of the smaller side.
CUTOUT_HALF_WIDTH, CUTOUT_ABOVE, CUTOUT_BELOW, FEATHER = 1.25, 1.2, 1.9, 0.18


@dataclass(frozen=True)
class PlacedFace:
    """A face laid into a frame: which photo and its true landmark box (x0, y0, x1, y1) in frame px."""

    photo: str
    box: tuple[float, float, float, float]

    @property
    def centre(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]


@lru_cache(maxsize=8)
def room_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A plausible room behind a webcam user (BGR uint8, read-only: copy before drawing on it)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Wall: warm off-white, lit by a lamp at the upper left, darker towards the corners.
    lamp = np.exp(-(((xs / width - 0.2) ** 2) + ((ys / height - 0.1) ** 2)) / 0.35)
    wall = np.float32([150, 170, 185]) * (0.55 + 0.45 * lamp[..., None])
    room = wall.astype(np.float32)
    # Window, right: a bright sky with a cross frame.
    _rect(room, 0.68, 0.08, 0.95, 0.55, (235, 225, 210))
    for x0, y0, x1, y1 in ((0.805, 0.08, 0.825, 0.55), (0.68, 0.305, 0.95, 0.325), (0.67, 0.07, 0.96, 0.09),
                           (0.67, 0.54, 0.96, 0.56), (0.67, 0.07, 0.68, 0.56), (0.95, 0.07, 0.96, 0.56)):
        _rect(room, x0, y0, x1, y1, (200, 205, 210))
    # Bookshelf, left: two boards with books of random colour, width and height.
    _rect(room, 0.03, 0.15, 0.33, 0.62, (45, 70, 95))
    for board_y in (0.38, 0.62):
        x = 0.04
        while x < 0.31:
            book_w = rng.uniform(0.008, 0.02)
            book_h = rng.uniform(0.12, 0.2)
            colour = rng.integers(30, 220, 3)
            _rect(room, x, board_y - book_h, min(x + book_w, 0.32), board_y, colour)
            x += book_w + rng.uniform(0.0, 0.004)
        _rect(room, 0.03, board_y, 0.33, board_y + 0.02, (60, 90, 120))
    # Door frame, centre right, and a picture on the wall.
    _rect(room, 0.52, 0.12, 0.6, 0.9, (110, 125, 140))
    _rect(room, 0.53, 0.14, 0.59, 0.9, (95, 110, 128))
    _rect(room, 0.38, 0.18, 0.47, 0.32, (70, 60, 50))
    _rect(room, 0.39, 0.195, 0.46, 0.305, (90, 150, 120))
    # Desk edge across the bottom.
    _rect(room, 0.0, 0.86, 1.0, 1.0, (60, 85, 115))
    _rect(room, 0.0, 0.86, 1.0, 0.875, (90, 120, 150))
    # Plaster texture: low-contrast blotches, the same at every frame size.
    blotches = cv2.resize(rng.normal(0, 6, (24, 32)).astype(np.float32), (width, height),
                          interpolation=cv2.INTER_CUBIC)
    room += blotches[..., None]
    room = cv2.GaussianBlur(room, (0, 0), max(width / 1280.0, 0.5))  # a lens, not a vector drawing
    image = np.clip(room + 0.5, 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


def _rect(image: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    """Fill a rectangle given in shares of the image size (float image)."""
    height, width = image.shape[:2]
    image[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = np.float32(colour)


def cutout_mask(shape: tuple[int, ...], box: tuple[float, float, float, float]) -> np.ndarray:
    """float32 0..1, feathered: the person around the face box (x0, y0, x1, y1) of a picture of
    `shape`: head, hair, neck and the tops of the shoulders (CUTOUT_* in face widths)."""
    x0, y0, x1, y1 = box
    face_w = x1 - x0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    height, width = shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Head: an ellipse around the face; shoulders: a wider, flatter one below it.
    head = ((xs - cx) / (0.85 * face_w)) ** 2 + ((ys - cy + 0.15 * face_w) / (1.05 * face_w)) ** 2
    shoulders = ((xs - cx) / (CUTOUT_HALF_WIDTH * face_w)) ** 2 + ((ys - cy - CUTOUT_BELOW * face_w) / (
        1.2 * face_w)) ** 2
    inside = ((head <= 1.0) | (shoulders <= 1.0)) & (ys <= cy + CUTOUT_BELOW * face_w) & (
        ys >= cy - CUTOUT_ABOVE * face_w)
    return cv2.GaussianBlur(inside.astype(np.float32), (0, 0), FEATHER * face_w / 2.0)


@lru_cache(maxsize=None)
def _person(photo: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The photo, the person's feathered mask (float32 0..1) and the face's landmark box in the photo."""
    image = load_photo_bgr(photo)
    box = photo_landmarks(photo).box
    return image, cutout_mask(image.shape, box), box


def place_face(frame_bgr: np.ndarray, photo: str, face_width: float, centre_xy) -> PlacedFace:
    """Lay the person of `photo` into `frame_bgr` (in place) with a face `face_width` px wide whose box
    centre lands on `centre_xy`; returns the face's true box in frame px."""
    image, mask, box = _person(photo)
    return PlacedFace(photo, place_person(frame_bgr, image, mask, box, face_width, centre_xy))


def place_person(frame_bgr: np.ndarray, image_bgr: np.ndarray, mask: np.ndarray,
                 box: tuple[float, float, float, float], face_width: float,
                 centre_xy) -> tuple[float, float, float, float]:
    """Lay the person of a picture (`image_bgr` under `mask`, its face box `box`) into `frame_bgr` (in
    place), scaled so the face is `face_width` px wide with its box centre on `centre_xy`; returns the
    face's box in frame px. A frame of a synthesized clip goes in as a photo does."""
    x0, y0, x1, y1 = box
    scale = face_width / (x1 - x0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    tx, ty = centre_xy[0] - scale * cx, centre_xy[1] - scale * cy
    matrix = np.float32([[scale, 0, tx], [0, scale, ty]])
    height, width = frame_bgr.shape[:2]
    # Only the rows and columns the person covers are warped: a 48 px face in a 1080p frame is cheap.
    span = np.array([[cx - 2 * (x1 - x0), cy - 2 * (x1 - x0)], [cx + 2 * (x1 - x0), cy + 3 * (x1 - x0)]])
    (px0, py0), (px1, py1) = span * scale + [tx, ty]
    px0, py0 = max(int(px0), 0), max(int(py0), 0)
    px1, py1 = min(int(np.ceil(px1)), width), min(int(np.ceil(py1)), height)
    if px1 > px0 and py1 > py0:
        local = matrix.copy()
        local[:, 2] -= [px0, py0]
        size = (px1 - px0, py1 - py0)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        person = cv2.warpAffine(image_bgr, local, size, flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
        region = frame_bgr[py0:py1, px0:px1].astype(np.float32)
        frame_bgr[py0:py1, px0:px1] = np.clip(region + alpha * (person - region) + 0.5, 0, 255).astype(np.uint8)
    return tuple(float(v) for v in (scale * x0 + tx, scale * y0 + ty, scale * x1 + tx, scale * y1 + ty))


def person_mask(frame_shape: tuple[int, ...], faces: list[PlacedFace]) -> np.ndarray:
    """float32 0..1: where the placed people are (for lighting that treats them apart from the room)."""
    height, width = frame_shape[:2]
    canvas = np.zeros((height, width), np.float32)
    for face in faces:
        _, mask, (x0, y0, x1, y1) = _person(face.photo)
        scale = face.width / (x1 - x0)
        fx, fy = face.box[0] - scale * x0, face.box[1] - scale * y0
        matrix = np.float32([[scale, 0, fx], [0, scale, fy]])
        canvas = np.maximum(canvas, cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                                   borderValue=0.0))
    return canvas


def apply_condition(frame_bgr: np.ndarray, condition: str, faces: list[PlacedFace],
                    rng: np.random.Generator) -> np.ndarray:
    """The frame under a lighting/sensor condition (see the module docstring); a new array."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    frame = frame_bgr.astype(np.float32)
    if condition == "backlight":
        person = person_mask(frame_bgr.shape, faces)[..., None]
        room = 255.0 - 0.35 * (255.0 - frame)  # blown-out window light behind the person
        subject = 0.4 * frame  # exposure set for the window: the face is in shadow
        frame = room + person * (subject - room)
    if condition in ("dark", "dark_noise"):
        frame = 255.0 * (np.clip(frame, 0, 255) / 255.0) ** DARK_GAMMA
    if condition in ("noise", "dark_noise"):
        frame = frame + rng.normal(0.0, NOISE_SIGMA, frame.shape).astype(np.float32)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def scene_frame(width: int, height: int, faces: list[tuple[str, float, tuple[float, float]]],
                condition: str = "clean", seed: int = 0) -> tuple[np.ndarray, list[PlacedFace]]:
    """A (height, width) frame of the room with each (photo, face width px, face centre xy) laid in,
    under `condition`; returns the frame and the placed faces (boxes in frame px)."""
    frame = room_background(width, height).copy()
    placed = [place_face(frame, photo, face_width, centre) for photo, face_width, centre in faces]
    return apply_condition(frame, condition, placed, np.random.default_rng(seed)), placed


def clip_in_room(clip_bgr, truth: dict, width: int, height: int, face_width: float,
                 centre_xy) -> tuple[list[np.ndarray], PlacedFace]:
    """A synthesized clip (bench/clips.py `make_clip`) as a person sitting in the room: every frame laid
    in like a photo, scaled so the neutral face is `face_width` px wide with its box centre on
    `centre_xy` (clean light). Returns the (height, width) frames and the neutral face's box there; what
    the clip's truth says about expressions holds unchanged (openness measures are ratios)."""
    neutral = np.asarray(truth["neutral_landmarks"], dtype=np.float64)
    box = (*neutral.min(axis=0), *neutral.max(axis=0))
    mask = cutout_mask(clip_bgr[0].shape, box)
    room = room_background(width, height)
    frames = []
    for picture in clip_bgr:
        frame = room.copy()
        placed = place_person(frame, picture, mask, box, face_width, centre_xy)
        frames.append(frame)
    return frames, PlacedFace(f"{truth['photo']}_{truth['script']}", placed)


def random_face_centre(width: int, height: int, face_width: float, rng: np.random.Generator) -> tuple[float, float]:
    """Where a user's face plausibly is: anywhere across the frame, in its upper two thirds, whole."""
    margin_x = min(1.6 * face_width, width / 2 - 1)
    top, bottom = min(1.4 * face_width, height / 3), max(2 * height / 3, min(1.4 * face_width, height / 3) + 1)
    return float(rng.uniform(margin_x, width - margin_x)), float(rng.uniform(top, bottom))


__all__ = ["CONDITIONS", "PHOTOS", "PlacedFace", "apply_condition", "clip_in_room", "cutout_mask", "place_face",
           "place_person", "random_face_centre", "room_background", "scene_frame"]
