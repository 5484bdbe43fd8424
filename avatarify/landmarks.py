"""Face landmarks: MediaPipe Face Mesh (refined, 478 points with irises) behind one small interface.

Input: a BGR uint8 image. Output: `FaceLandmarks` (pixels of that image, a face box, a confidence)
or None when no face is found. Tracking mode (live stream) reuses the previous face region between
frames; static mode (avatar photos) detects from scratch on every call. In tracking mode a frame on
which the face is newly found is run again a few times (see `FaceMeshDetector.SETTLE_PASSES`), so the
first landmarks (the app's default neutral) come from the same face-region rule as all later ones.

Optional second backend: the `face-alignment` package (FAN, 68 iBUG points), behind the same
interface. It is used only when the package is installed AND its weights are already in its cache
(torch hub's checkpoints folder): this module never starts a download. The mesh engine needs Face
Mesh's 478 points; the 68-point backend serves face boxes and the FOMM engine.
"""
from __future__ import annotations

import importlib.util
import logging
import os
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


def _in_frame_fraction(points: np.ndarray, width: int, height: int) -> float:
    """Share of mesh points inside the image: MediaPipe extrapolates points of a face that leaves
    the frame, so this says how much of what we return was actually seen."""
    mesh = points[:NUM_MESH_POINTS]
    inside = (mesh[:, 0] >= 0) & (mesh[:, 0] < width) & (mesh[:, 1] >= 0) & (mesh[:, 1] < height)
    return float(inside.mean())


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

    def detect_all(self, frame_bgr: np.ndarray) -> list[FaceLandmarks]:
        """Every face found (up to `max_faces`), largest first."""
        height, width = frame_bgr.shape[:2]
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False  # lets MediaPipe avoid a copy
        result = self._mesh.process(rgb)
        if not self.static and not self._tracking and result.multi_face_landmarks:
            for _ in range(self.SETTLE_PASSES):
                result = self._mesh.process(rgb)
        self._tracking = not self.static and bool(result.multi_face_landmarks)
        faces = []
        for face in result.multi_face_landmarks or []:
            xyz = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            pts = xyz[:, :2] * np.float32([width, height])
            # Face Mesh's z is in the scale of x (normalised by the image width).
            faces.append(FaceLandmarks(pts, _in_frame_fraction(pts, width, height), (width, height),
                                       xyz[:, 2] * np.float32(width)))
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return faces

    def detect(self, frame_bgr: np.ndarray) -> FaceLandmarks | None:
        """The largest face, or None."""
        faces = self.detect_all(frame_bgr)
        return faces[0] if faces else None

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMeshDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
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
