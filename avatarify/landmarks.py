"""Face landmarks: MediaPipe Face Mesh (refined, 478 points with irises) behind one small interface.

Input: a BGR uint8 image. Output: `FaceLandmarks` (pixels of that image, a face box, a confidence)
or None when no face is found. Tracking mode (live stream) reuses the previous face region between
frames; static mode (avatar photos) detects from scratch on every call. In tracking mode a frame on
which the face is newly found is run again a few times (see `FaceMeshDetector.SETTLE_PASSES`), so the
first landmarks (the app's default neutral) come from the same face-region rule as all later ones.

`FaceDetector` is MediaPipe's full-range face detector (BlazeFace, 192x192 input, faces up to ~5 m away)
run on a window of a frame: input a BGR frame and an optional window, output `FaceBox`es in frame pixels.
It finds faces the mesh's own short-range detector misses; the face finder (finder.py) runs it on the
whole frame and on tiles, then Face Mesh on an upscaled crop around the face.

Optional second backend: the `face-alignment` package (FAN, 68 iBUG points), behind the same
interface. It is used only when the package is installed AND its weights are already in its cache
(torch hub's checkpoints folder): this module never starts a download. The mesh engine needs Face
Mesh's 478 points; the 68-point backend serves face boxes and the FOMM engine.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarify.datatypes import FaceLandmarks

# MediaPipe's C++ side logs through glog/absl; keep the user's terminal readable.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478
NUM_MESH_POINTS = 468  # the first 468 are the face mesh; 468..477 are the two irises


def in_frame_fraction(points: np.ndarray, width: int, height: int) -> float:
    """Share of mesh points inside the image: MediaPipe extrapolates points of a face that leaves
    the frame, so this says how much of what we return was actually seen."""
    mesh = points[:NUM_MESH_POINTS]
    inside = (mesh[:, 0] >= 0) & (mesh[:, 0] < width) & (mesh[:, 1] >= 0) & (mesh[:, 1] < height)
    return float(inside.mean())


# A NormalizedLandmark with x, y and z set serializes as 17 bytes: the list's field tag and length
# (0x0A 0x0F), then each float as tag + little-endian float32 (0x0D x, 0x15 y, 0x1D z) — protobuf's
# wire format. Reading the bytes at once costs 0.02 ms per face instead of 0.25 ms in a Python loop.
_LANDMARK_RECORD = np.dtype([("field", "u1"), ("size", "u1"), ("x_tag", "u1"), ("x", "<f4"),
                             ("y_tag", "u1"), ("y", "<f4"), ("z_tag", "u1"), ("z", "<f4")])
_LANDMARK_TAGS = (0x0A, 0x0F, 0x0D, 0x15, 0x1D)


def _largest_first(faces: list[FaceLandmarks]) -> None:
    """Sort faces in place by box area, largest first (one face: nothing to do, no box computed)."""
    if len(faces) > 1:
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def landmark_array(face) -> np.ndarray:
    """(N, 3) float32 x, y, z of a MediaPipe NormalizedLandmarkList, read from its serialized bytes
    when every landmark has exactly x, y and z; otherwise landmark by landmark."""
    raw = face.SerializeToString()
    count = len(face.landmark)
    if len(raw) == count * _LANDMARK_RECORD.itemsize:
        records = np.frombuffer(raw, dtype=_LANDMARK_RECORD)
        fields = (records["field"], records["size"], records["x_tag"], records["y_tag"], records["z_tag"])
        if all(np.all(values == tag) for values, tag in zip(fields, _LANDMARK_TAGS)):
            return np.stack([records["x"], records["y"], records["z"]], axis=1)
    return np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)


class FaceMeshDetector:
    """MediaPipe Face Mesh. `static=True` for photos, False for a video stream (tracking)."""

    # A newly found face is landmarked on the detector's box; every later frame on a region derived
    # from the previous landmarks, which lands the points ~0.8 px (mean) elsewhere on the same image.
    # Three more passes on the first frame reach the tracked state (within its own ~0.3 px wobble),
    # so a neutral calibrated on that frame matches the frames that follow.
    SETTLE_PASSES = 3

    def __init__(self, static: bool = False, max_faces: int = 1,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5) -> None:
        import mediapipe as mp  # imported here so modules that only need the types stay light

        self.static = static
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._tracking = False  # tracking mode: a face was found on the previous frame

    def detect_all(self, frame_bgr: np.ndarray, settle: bool = True) -> list[FaceLandmarks]:
        """Every face found (up to `max_faces`), largest first. `settle=False` skips the extra passes
        on a newly found face (for landmarks that only place a crop and are then found again)."""
        height, width = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False  # lets MediaPipe avoid a copy
        result = self._mesh.process(rgb)
        if settle and not self.static and not self._tracking and result.multi_face_landmarks:
            for _ in range(self.SETTLE_PASSES):
                result = self._mesh.process(rgb)
        self._tracking = not self.static and bool(result.multi_face_landmarks)
        faces = []
        for face in result.multi_face_landmarks or []:
            xyz = landmark_array(face)
            pts = xyz[:, :2] * np.float32([width, height])
            # Face Mesh's z is in the scale of x (normalised by the image width).
            faces.append(FaceLandmarks(pts, in_frame_fraction(pts, width, height), (width, height),
                                       xyz[:, 2] * np.float32(width)))
        _largest_first(faces)
        return faces

    def detect(self, frame_bgr: np.ndarray, settle: bool = True) -> FaceLandmarks | None:
        """The largest face, or None."""
        faces = self.detect_all(frame_bgr, settle)
        return faces[0] if faces else None

    def forget(self) -> None:
        """Drop the tracked face region (tracking mode): the next call detects afresh. The solution has
        no reset, but a frame without a face ends its track; a tiny blank one costs one detector run."""
        if not self.static:
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))
            self._tracking = False

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMeshDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Face detection: where faces are, before any landmark


@dataclass(frozen=True)
class FaceBox:
    """A detected face: its box (x0, y0, x1, y1) in frame pixels and the detector's score (0..1)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0])

    def iou(self, other: "FaceBox") -> float:
        """Intersection over union of the two boxes."""
        w = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        h = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = w * h
        union = (self.x1 - self.x0) * (self.y1 - self.y0) + (other.x1 - other.x0) * (other.y1 - other.y0) - inter
        return inter / union if union > 0 else 0.0


# A window of a frame the detector looks at: (x0, y0, width, height) in frame pixels.
Window = tuple[int, int, int, int]


class FaceDetector:
    """MediaPipe's full-range face detector on a window of a frame (the whole frame by default).

    The detector letterboxes its input to 192x192 and needs a face about 16 px wide there (measured:
    >= 95 % found from 16 px in dim, noisy frames), so one pass over a 1920x1080 frame finds faces from
    ~160 px; the finder's tiles bring smaller faces to that size.
    """

    INPUT_SIDE = 192  # px: the model's square input

    def __init__(self, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                                   min_detection_confidence=min_confidence)

    def detect(self, frame_bgr: np.ndarray, window: Window | None = None) -> list[FaceBox]:
        """Faces in `window` of the frame (boxes in frame pixels), best score first."""
        x0, y0, width, height = window or (0, 0, frame_bgr.shape[1], frame_bgr.shape[0])
        region = frame_bgr[y0:y0 + height, x0:x0 + width]
        shrink = self.INPUT_SIDE / max(width, height)
        if shrink < 1.0:
            # The detector would sample the window down to its input without averaging, keeping the
            # sensor noise at full strength; area averaging first is cheaper and finds noisy faces.
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(region, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        found = self._detector.process(rgb).detections or []
        boxes = []
        for detection in found:
            box = detection.location_data.relative_bounding_box
            left, top = x0 + box.xmin * width, y0 + box.ymin * height
            boxes.append(FaceBox(float(left), float(top), float(left + box.width * width),
                                 float(top + box.height * height), float(detection.score[0])))
        return sorted(boxes, key=lambda b: -b.score)

    def close(self) -> None:
        self._detector.close()


# ---------------------------------------------------------------------------------------------
# Optional backend: face-alignment (FAN), only with weights already on disk

BACKENDS = ("mediapipe", "face_alignment")
FAN_NUM_LANDMARKS = 68


class LandmarkBackendError(RuntimeError):
    """A landmark backend cannot be used (message is one clear sentence with the fix)."""


def _hub_checkpoints_dir() -> Path:
    """Where face-alignment (through torch.hub) keeps downloaded weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _face_alignment_weight_names() -> tuple[str, str]:
    """File names the installed face-alignment version loads: (2-D FAN landmark net, S3FD face
    detector), read from the package's own URL tables (their names changed between versions);
    name prefixes when the tables are not where this version of the adapter expects them."""
    fan, sfd = "2DFAN4", "s3fd"
    try:
        from face_alignment import api

        tables = getattr(api, "models_urls", {})
        urls = tables.get(max(tables), {}) if tables else getattr(api, "default_model_urls", {})
        fan = urls.get("2DFAN-4", fan).rsplit("/", 1)[-1]
    except Exception:  # noqa: BLE001 - any layout change falls back to the prefix
        log.debug("face-alignment URL table not found; matching weights by name prefix")
    try:
        from face_alignment.detection.sfd import sfd_detector

        sfd = getattr(sfd_detector, "models_urls", {}).get("s3fd", sfd).rsplit("/", 1)[-1]
    except Exception:  # noqa: BLE001
        log.debug("face-alignment S3FD URL not found; matching weights by name prefix")
    return fan, sfd


def face_alignment_problem() -> str | None:
    """Why the face-alignment backend cannot run here (one sentence), or None when it can."""
    if importlib.util.find_spec("face_alignment") is None:
        return ("The face-alignment landmark backend is not installed; use the default MediaPipe "
                "backend, or `pip install face-alignment` and put its weights in the torch hub cache.")
    folder = _hub_checkpoints_dir()
    present = [p.name for p in folder.glob("*")] if folder.is_dir() else []
    missing = [name for name in _face_alignment_weight_names()
               if not any(file == name or file.startswith(name) for file in present)]
    if missing:
        return (f"The face-alignment weights ({', '.join(missing)}) are not in {folder}; this app never "
                f"downloads them: copy them there, or use the default MediaPipe backend.")
    return None


class FaceAlignmentDetector:
    """face-alignment's 2-D FAN (68 points) with the FaceMeshDetector interface. Detection runs
    from scratch on every frame (FAN has no tracking mode); `static` is kept for the interface."""

    def __init__(self, static: bool = False, max_faces: int = 1, device: str = "cpu") -> None:
        problem = face_alignment_problem()
        if problem:
            raise LandmarkBackendError(problem)
        import face_alignment

        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or getattr(face_alignment.LandmarksType, "_2D")
        self.static = static
        self.max_faces = max_faces
        self._fan = face_alignment.FaceAlignment(kind, device=device, flip_input=False)

    def detect_all(self, frame_bgr: np.ndarray) -> list[FaceLandmarks]:
        """Every face found (up to `max_faces`), largest first; 68 points each."""
        height, width = frame_bgr.shape[:2]
        found = self._fan.get_landmarks_from_image(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)) or []
        faces = []
        for points in found:
            pts = np.asarray(points, dtype=np.float32)[:, :2]
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
            faces.append(FaceLandmarks(pts, float(inside.mean()), (width, height)))
        _largest_first(faces)
        return faces[:self.max_faces]

    def detect(self, frame_bgr: np.ndarray) -> FaceLandmarks | None:
        faces = self.detect_all(frame_bgr)
        return faces[0] if faces else None

    def close(self) -> None:
        self._fan = None

    def __enter__(self) -> "FaceAlignmentDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def create_detector(backend: str = "mediapipe", static: bool = False,
                    max_faces: int = 1) -> FaceMeshDetector | FaceAlignmentDetector:
    """The landmark detector of `backend`; LandmarkBackendError (one sentence) if it cannot run."""
    if backend == "mediapipe":
        return FaceMeshDetector(static=static, max_faces=max_faces)
    if backend == "face_alignment":
        return FaceAlignmentDetector(static=static, max_faces=max_faces)
    raise LandmarkBackendError(f"Unknown landmark backend {backend!r}; use one of {', '.join(BACKENDS)}.")
