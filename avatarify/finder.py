"""Face finder: find the user's face wherever they sit, lock onto that one person, and track them.

Input per frame: the camera frame (BGR uint8) and its media time (seconds). Output: the locked person's
`FaceLandmarks` in camera-frame pixels (Face Mesh's 478 points with depth; `confidence` is the share
of the mesh inside the frame), or None while no face is tracked.

Why not Face Mesh on the whole frame: its own (short-range) detector loses faces under ~120 px at
1280x720. So, as in other face-tracking tools:
  1. Search, while nothing is tracked: MediaPipe's full-range face detector on the whole frame and on
     square tiles (`search_windows`). The detector sees a 192x192 picture and needs a face ~16 px wide
     there; tiles of TILE_SIDE px bring a 48 px face to that size at any frame size. A few windows run
     per frame in turn (`windows_per_frame`), so searching never costs more than a few detector runs
     per frame; one full pass takes 1 frame at 640x480, 3 at 1280x720, 6 at 1920x1080.
  2. Lock: with nobody locked yet, the largest face of one full pass. After the person is lost, first
     a window around where they were (every frame, so a far face comes back at once) and only a face
     near their last place; once they have been gone `relock_after_s`, the largest face again.
     `request_next_face()` (hotkey n) runs a full pass at once and locks onto the next face to the
     right (wrapping round). Nothing else ever moves the lock to another face.
  3. Landmarks: Face Mesh (tracking mode) on a crop around the face (the face about half of it; a
     small face upscaled to a CROP_SIZE square, a large one cut out of the frame at its own
     resolution), mapped back to frame pixels. At a lock, the landmarks found on the detector's crop
     only place the tracking crop; Face Mesh finds the face afresh in that one, as it keeps its tracked
     region in the coordinates of the picture it saw last.
  4. Track: the next crop comes from these landmarks. It moves only when the face has moved or grown by
     a few percent, so a still head gives Face Mesh the same pixels (no jitter added by resampling).
     The track is dropped (back to 2, near the person) when Face Mesh finds no face in the crop, when
     its landmarks leave the crop, when the face is far too small or large for the crop, or when the
     landmarks jump away from where the person was (Face Mesh caught a neighbour).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import cv2
import numpy as np

from avatarify.datatypes import FaceLandmarks
from avatarify.landmarks import (NUM_MESH_POINTS, FaceBox, FaceDetector, FaceMeshDetector, Window,
                                 in_frame_fraction)
from avatarify.tracking import crop_square, square_face_box

log = logging.getLogger(__name__)

DETECTOR_INPUT = 192  # px: the full-range detector's square input
DETECTOR_MIN_FACE = 16  # px at that input: found in >= 95 % of dim, noisy frames from this width on
TILE_SIDE = 576  # px: a 48 px face reaches DETECTOR_MIN_FACE in a tile this large
CROP_SIZE = 256  # px: the landmark crop's smallest side: small faces are upscaled to it...
MAX_CROP_SIZE = 640  # ...large ones are cropped at their own resolution up to this side: shrinking
# with bilinear sampling would alias the sensor noise into the landmarks (jitter 0.75 px instead of
# 0.51 on a 240 px face with noise)
CROP_MARGIN = 0.5  # share of the face box side added on each side: the face is half the crop
LOCK_MARGIN = 0.7  # the same for a crop made from a detector box, which is tighter than the mesh
RECENTRE_SHARE = 0.04  # the crop follows when the wanted centre moved this share of the crop side...
RESCALE_SHARE = 0.08  # ...or its side changed by this share
MIN_IN_CROP = 0.7  # share of the mesh inside the crop below which the track counts as drifted
FACE_IN_CROP = (0.2, 0.9)  # face side / crop side outside this: too small or too large for the crop
MAX_JUMP = 0.6  # landmark centre moving more than this share of the face side in one frame: not the person
NEAR_PERSON = 1.5  # after a loss, faces within this many face sides of the last place are the person
LOCAL_WINDOW = 4.0  # the window searched around a lost person, in face sides (at least DETECTOR_INPUT)
SAME_FACE_IOU = 0.3  # detections of two windows overlapping this much are one face


def search_windows(width: int, height: int, tile: int = TILE_SIDE) -> list[Window]:
    """The detector's windows for a frame size: the whole frame, then overlapping square tiles.

    Tiles overlap by more than the largest face the whole-frame pass may miss, so every face is whole
    in at least one window where the detector sees it large enough.
    """
    windows: list[Window] = [(0, 0, width, height)]
    if max(width, height) <= tile:
        return windows
    side = min(tile, width, height)
    missed_by_whole = DETECTOR_MIN_FACE * max(width, height) / DETECTOR_INPUT
    overlap = min(1.3 * missed_by_whole, side / 2)

    def starts(length: int) -> list[int]:
        count = 1 if length <= side else math.ceil((length - overlap) / (side - overlap))
        return sorted({int(round(v)) for v in np.linspace(0, length - side, count)})

    windows += [(x, y, side, side) for y in starts(height) for x in starts(width)]
    return windows


def window_around(centre: np.ndarray, side: float, width: int, height: int) -> Window:
    """A square window of `side` centred on `centre`, shifted (and shrunk if need be) into the frame."""
    side = int(min(max(side, DETECTOR_INPUT), width, height))
    x = int(np.clip(round(centre[0] - side / 2), 0, width - side))
    y = int(np.clip(round(centre[1] - side / 2), 0, height - side))
    return x, y, side, side


def landmark_crop(frame_bgr: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The picture Face Mesh runs on, and the matrix mapping frame pixels into it. A face whose box is
    CROP_SIZE..MAX_CROP_SIZE px is cut out at its own resolution on whole pixels: a slice of the frame
    (the part of the box inside it; Face Mesh pads its own region), no resampling and no copy; a
    smaller face is upscaled to a CROP_SIZE square, a larger one shrunk to MAX_CROP_SIZE."""
    side = round(float(box[2]))
    height, width = frame_bgr.shape[:2]
    x0, y0 = max(round(float(box[0]) - side / 2), 0), max(round(float(box[1]) - side / 2), 0)
    x1, y1 = min(x0 + side, width), min(y0 + side, height)
    if not CROP_SIZE <= side <= MAX_CROP_SIZE or x1 - x0 < CROP_SIZE // 2 or y1 - y0 < CROP_SIZE // 2:
        return crop_square(frame_bgr, box, int(np.clip(side, CROP_SIZE, MAX_CROP_SIZE)))
    return frame_bgr[y0:y1, x0:x1], np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]], dtype=np.float32)


def _share_inside(points: np.ndarray, box: np.ndarray) -> float:
    """Share of the mesh points inside the square box (cx, cy, side)."""
    mesh = points[:NUM_MESH_POINTS]
    half = box[2] / 2.0
    inside = (np.abs(mesh[:, 0] - box[0]) <= half) & (np.abs(mesh[:, 1] - box[1]) <= half)
    return float(inside.mean())


def merge_faces(faces: list[FaceBox]) -> list[FaceBox]:
    """One box per face when windows overlap: the best-scoring of boxes that overlap much."""
    kept: list[FaceBox] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(face.iou(other) < SAME_FACE_IOU for other in kept):
            kept.append(face)
    return kept


def _landmark_side(landmarks: FaceLandmarks) -> float:
    x0, y0, x1, y1 = landmarks.box
    return max(x1 - x0, y1 - y0)


def _landmark_centre(landmarks: FaceLandmarks) -> np.ndarray:
    x0, y0, x1, y1 = landmarks.box
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])


class FaceFinder:
    """Detect, lock, track: one person's landmarks per frame (see the module docstring)."""

    def __init__(self, windows_per_frame: int = 3, relock_after_s: float = 1.5) -> None:
        self.windows_per_frame = max(1, windows_per_frame)
        self.relock_after_s = relock_after_s
        self.detector = FaceDetector()
        self.mesh = FaceMeshDetector(static=False)
        self.message = ""  # what the last request_next_face did, for the HUD
        self.switched = False  # True for the frame on which the lock moved to another face
        self._frame_size: tuple[int, int] | None = None
        self._windows: list[Window] = []
        self.reset()

    # --- state --------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the person and the search (a new picture geometry, e.g. mirrored)."""
        self._person: FaceLandmarks | None = None  # the locked person's last landmarks (frame px)
        self._tracking = False
        self._lost_since: float | None = None
        self._crop_box: np.ndarray | None = None  # (cx, cy, side) of the landmark crop, frame px
        self._next_window = 0
        self._pass_faces: list[FaceBox] = []
        self._switch_requested = False

    @property
    def tracking(self) -> bool:
        """A face is locked and was tracked on the last frame."""
        return self._tracking

    def request_next_face(self) -> None:
        """Lock onto the next face to the right at the next frame (hotkey n)."""
        self._switch_requested = True

    def warm_up(self, image_bgr: np.ndarray) -> None:
        """Load both models (MediaPipe builds its graphs at the first call) and forget the result."""
        self.detector.detect(image_bgr)
        self.mesh.detect(image_bgr)
        self.mesh.forget()
        self.reset()

    # --- per frame ----------------------------------------------------------------------------------

    def find(self, frame_bgr: np.ndarray, media_time: float) -> FaceLandmarks | None:
        """The locked person's landmarks in this frame (frame pixels), or None."""
        height, width = frame_bgr.shape[:2]
        if self._frame_size != (width, height):
            self._frame_size = (width, height)
            self._windows = search_windows(width, height)
            self.reset()
        self.switched = False
        if self._switch_requested:
            self._switch_requested = False
            switched = self._switch(frame_bgr)
            if switched is not None:
                return switched
        if self._tracking:
            landmarks = self._track(frame_bgr)
            if landmarks is not None:
                return landmarks
            self._tracking = False
            self._lost_since = media_time
            log.debug("face lost; searching near its last place")
        return self._search(frame_bgr, media_time)

    def _track(self, frame_bgr: np.ndarray) -> FaceLandmarks | None:
        """This frame's landmarks in a crop made from the last ones, or None when the track broke."""
        wanted = square_face_box(self._person, CROP_MARGIN)  # the last face's centre, its side grown
        self._crop_box = self._follow(wanted)
        found = self._landmarks_in(frame_bgr, self._crop_box)
        if found is None:
            return None
        landmarks, in_crop = found
        cx, cy, side = square_face_box(landmarks, 0.0)
        jump = math.hypot(cx - wanted[0], cy - wanted[1])
        previous_side = wanted[2] / (1.0 + 2.0 * CROP_MARGIN)
        if in_crop < MIN_IN_CROP or not FACE_IN_CROP[0] <= side / self._crop_box[2] <= FACE_IN_CROP[1] \
                or jump > MAX_JUMP * previous_side:
            log.debug("track drifted (in crop %.2f, size %.2f, jump %.1f px)", in_crop, side / self._crop_box[2], jump)
            self.mesh.forget()
            return None
        self._person = landmarks
        return landmarks

    def _follow(self, wanted: np.ndarray) -> np.ndarray:
        """The crop box: unchanged unless the wanted one moved or resized by more than a few percent."""
        current = self._crop_box
        if current is None:
            return wanted
        shift = np.linalg.norm(wanted[:2] - current[:2]) / current[2]
        if shift > RECENTRE_SHARE or abs(math.log(wanted[2] / current[2])) > RESCALE_SHARE:
            return wanted
        return current

    def _landmarks_in(self, frame_bgr: np.ndarray, box: np.ndarray,
                      settle: bool = True) -> tuple[FaceLandmarks, float] | None:
        """Face Mesh on the crop of `box`: (landmarks in frame pixels, share of the mesh inside the crop)."""
        crop, matrix = landmark_crop(frame_bgr, box)
        found = self.mesh.detect(crop, settle)
        if found is None:
            return None
        height, width = frame_bgr.shape[:2]
        landmarks = found.transformed(cv2.invertAffineTransform(matrix), (width, height))
        landmarks = replace(landmarks, confidence=in_frame_fraction(landmarks.points, width, height))
        return landmarks, _share_inside(landmarks.points, box)

    def _lock(self, frame_bgr: np.ndarray, face: FaceBox) -> FaceLandmarks | None:
        """Lock onto a detected face: its landmarks, or None when Face Mesh finds no face there."""
        self.mesh.forget()  # its tracked region belongs to the previous crop
        box = np.array([*face.centre, face.side * (1.0 + 2.0 * LOCK_MARGIN)])
        found = self._landmarks_in(frame_bgr, box, settle=False)  # they only place the tracking crop
        if found is None:
            return None
        landmarks, _ = found
        cx, cy = _landmark_centre(landmarks)
        grow = 0.5 * face.side
        if not (face.x0 - grow <= cx <= face.x1 + grow and face.y0 - grow <= cy <= face.y1 + grow):
            self.mesh.forget()
            return None  # the mesh found another face in the crop, not this one
        self._crop_box = square_face_box(landmarks, CROP_MARGIN)
        landmarks = self._settle_in_crop(frame_bgr, landmarks)
        self._person, self._tracking, self._lost_since = landmarks, True, None
        self._pass_faces = []
        log.debug("face locked at %.0f,%.0f (%.0f px)", cx, cy, _landmark_side(landmarks))
        return landmarks

    def _settle_in_crop(self, frame_bgr: np.ndarray, landmarks: FaceLandmarks) -> FaceLandmarks:
        """The lock's landmarks found again in the tracking crop, so Face Mesh's tracked region belongs
        to the picture the next frame brings. It keeps that region in the coordinates of the picture it
        saw last; carried from the lock's crop (another side and place) into the tracking crop it is
        misplaced, and as each frame's region comes from the last landmarks the mesh stays shrunk for
        many frames: a 160 px face at 1920x1080 read its wide-open mouth as 0.44 for 0.56."""
        self.mesh.forget()
        found = self._landmarks_in(frame_bgr, self._crop_box)
        if found is None:
            return landmarks  # Face Mesh detects afresh in the crop on the next frame
        again, _ = found
        x0, y0, x1, y1 = landmarks.box
        cx, cy = _landmark_centre(again)
        if not (x0 <= cx <= x1 and y0 <= cy <= y1):
            self.mesh.forget()  # another face in the crop: start afresh next frame, on the person
            return landmarks
        return again

    # --- search -------------------------------------------------------------------------------------

    def _detect(self, frame_bgr: np.ndarray, windows: list[Window]) -> list[FaceBox]:
        return merge_faces([face for window in windows for face in self.detector.detect(frame_bgr, window)])

    def _next_windows(self) -> tuple[list[Window], bool]:
        """The scan's windows for this frame, and whether they complete a full pass."""
        taken, complete = [], False
        for _ in range(min(self.windows_per_frame, len(self._windows))):
            taken.append(self._windows[self._next_window])
            self._next_window = (self._next_window + 1) % len(self._windows)
            complete = complete or self._next_window == 0
        return taken, complete

    def _near_person(self, face: FaceBox) -> bool:
        side = _landmark_side(self._person)
        ratio = face.side / max(side, 1.0)
        distance = np.linalg.norm(face.centre - _landmark_centre(self._person))
        return distance <= NEAR_PERSON * side and 0.4 <= ratio <= 2.5

    def _search(self, frame_bgr: np.ndarray, media_time: float) -> FaceLandmarks | None:
        height, width = frame_bgr.shape[:2]
        windows, complete = self._next_windows()
        recently_lost = self._person is not None and self._lost_since is not None and \
            media_time - self._lost_since < self.relock_after_s
        if recently_lost:
            side = _landmark_side(self._person)
            windows.insert(0, window_around(_landmark_centre(self._person), LOCAL_WINDOW * side, width, height))
        faces = self._detect(frame_bgr, windows)
        if recently_lost:
            centre = _landmark_centre(self._person)
            for face in sorted((f for f in faces if self._near_person(f)),
                               key=lambda f: np.linalg.norm(f.centre - centre)):
                landmarks = self._lock(frame_bgr, face)
                if landmarks is not None:
                    return landmarks
            self._pass_faces = []
            return None
        self._pass_faces = merge_faces(self._pass_faces + faces)
        if not complete:
            return None
        candidates, self._pass_faces = sorted(self._pass_faces, key=lambda f: -f.side), []
        for face in candidates:  # the largest face that Face Mesh confirms
            landmarks = self._lock(frame_bgr, face)
            if landmarks is not None:
                return landmarks
        return None

    def _switch(self, frame_bgr: np.ndarray) -> FaceLandmarks | None:
        """Hotkey n: lock onto the next face to the right of the person (wrapping), found by a full pass."""
        faces = self._detect(frame_bgr, self._windows)
        if self._person is not None:
            person = self._person
            others = [f for f in faces if np.linalg.norm(f.centre - _landmark_centre(person))
                      > 0.5 * _landmark_side(person)]
            x = _landmark_centre(person)[0]
        else:
            others, x = faces, -math.inf
        if not others:
            self.message = "no other face in view"
            return None
        ordered = sorted(others, key=lambda f: f.centre[0])
        for face in [f for f in ordered if f.centre[0] > x] + [f for f in ordered if f.centre[0] <= x]:
            landmarks = self._lock(frame_bgr, face)
            if landmarks is not None:
                self.message = f"next face: {len(others) + (self._person is not None)} in view"
                self.switched = True
                return landmarks
        self.message = "the other faces in view could not be tracked"
        return None

    def close(self) -> None:
        self.detector.close()
        self.mesh.close()

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
