"""Synthetic driving clips with known motion, made from real public-domain face photos.

Input: a photo name ("astronaut" from scikit-image, "grace_hopper" from matplotlib) and a motion script.
Output: BGR uint8 frames (size x size) plus a ground-truth dict (per frame: head roll / shift / scale,
mouth opening, eye opening, gaze), optionally written as `<path>.mp4` + `<path>.json`.

How a frame is made: the photo's landmarks are detected once (Face Mesh, static mode); the photo is
cropped around the face the way a webcam tracker would (crop about 2x the face width); expressions are
drawn by this module's own local deformations, driven by the photo's landmarks (never by an engine, so
measuring an engine on these clips is not circular):
  - mouth: the lower lip and jaw are pushed down by a smooth displacement field (the drop falls from
    the chin to 0 at the jaw's ends, which hinge near the ears); the jaw slides over the neck, which
    stays still with the collar; the tear that opens between the lips is painted as a dark, shaded
    mouth cavity;
  - blink: the upper-lid skin is stretched down over the eye opening;
  - gaze: the iris disk is moved inside the eye opening, over an iris-free (inpainted) eye;
then head motion (roll, shift, scale about the face centre; for the yaw and pitch scripts a 3-D turn
first) moves the head and leaves the room and the torso still, as in front of a webcam (the camera
does not move when the user's head does): the head is a layer over the room. Its matte is this
module's own head model: 1 within HEAD_FULL face widths of the head outline (the face-mesh hull plus
the cranium above it, which Face Mesh does not cover) or of the hair (the person mask of MediaPipe's
selfie segmentation within HAIR_REACH of the outline), 0 beyond HEAD_STILL face widths, smoothstep
between, and nothing below the chin (neck and torso stay); the room behind it is the photo with the head inpainted (OpenCV's Navier-Stokes inpainting at
full resolution). The head layer moves rigidly, so the landmarks follow the similarity exactly. A 3-D
turn splats the head's points (depth: a thin-plate spline through Face Mesh's z of the photo, see
BACK_REACH) with a depth buffer, so the far side hides behind the near side. Expressions for the
harder scripts (per-eye winks, brow raises, smiles, purses) are smooth displacement fields of their
own. The engine's own mesh, ring and matte are not used, so measuring an engine on these clips is not
circular. Sensor noise is Gaussian pixel noise. Frame 0 of every script is the neutral (undeformed,
unmoved) face.

CLI: `python bench/clips.py --out DIR [--small]` writes every photo x script clip into DIR.

The openness measures the truth is expressed in are avatarify.motion's `mouth_open_ratio` and
`eye_open_ratio` (re-exported here for the benchmarks and tests).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/clips.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.datatypes import FaceLandmarks  # noqa: E402
from avatarify.motion import (CHIN, EYES, FACE_OVAL, MOUTH_CORNERS, NUM_MESH_POINTS, EyeIndices,  # noqa: E402
                              eye_open_ratio, mouth_open_ratio)
from bench.common import read_json, setup_cli_logging, write_json  # noqa: E402

log = logging.getLogger(__name__)

PHOTOS = ("astronaut", "grace_hopper")
# The harder scripts turn the head in 3-D and move one feature at a time (issue 12).
HARD_SCRIPTS = ("yaw", "pitch", "lean", "wink", "brows", "smile", "purse")
SCRIPTS = ("roll", "shift", "scale", "mouth", "blink", "gaze", "still_noise", "step", "mixed") + HARD_SCRIPTS

# ---------------------------------------------------------------------------------------------------
# Landmark indices (MediaPipe Face Mesh, refined: 468 mesh points + 10 iris points)
# ---------------------------------------------------------------------------------------------------
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LOWER_LIP_BOTTOM, CHIN = 17, 152

# The head model of the scripted head motion, in face widths (see the module docstring). Face Mesh
# stops at the upper forehead; the cranium (hair, a cap) reaches about SKULL_LIFT higher. Hair and ears
# within HEAD_FULL of that outline move with the head; beyond HEAD_STILL is room, which never moves;
# the head layer's matte fades out between.
SKULL_LIFT, HEAD_FULL, HEAD_STILL = 0.3, 0.1, 0.16
HAIR_REACH = 0.4  # face widths beyond the head outline that the person's hair may still count as head
# The 3-D head of the yaw/pitch scripts (this module's own model): depth over the face from Face Mesh's
# z of the photo, interpolated by a thin-plate spline; beyond the face it bends back over BACK_REACH
# face widths to the plane of the head's outline (the mean depth of the oval's leftmost and
# rightmost points); the head turns about the point PIVOT_BEHIND face widths behind the nose bridge.
BACK_REACH, PIVOT_BEHIND = 0.35, 0.55
BROWS = ((70, 63, 105, 66, 107), (336, 296, 334, 293, 300))  # upper brow edge, image left then right
NOSE_BRIDGE = 168


# ---------------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------------
def load_photo_bgr(photo: str) -> np.ndarray:
    """A public-domain face photo shipped inside an installed package (no download)."""
    if photo == "astronaut":
        import skimage.data

        return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    if photo == "grace_hopper":
        import matplotlib.cbook

        return cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    raise ValueError(f"unknown photo {photo!r}; choose one of {PHOTOS}")


@lru_cache(maxsize=None)
def photo_landmarks(photo: str) -> FaceLandmarks:
    """The photo's face landmarks (static-mode Face Mesh), detected once per process."""
    from avatarify.landmarks import FaceMeshDetector

    with FaceMeshDetector(static=True) as detector:
        landmarks = detector.detect(load_photo_bgr(photo))
    if landmarks is None:
        raise RuntimeError(f"no face found in the {photo} photo")
    return landmarks


def _person_mask(image_bgr: np.ndarray) -> np.ndarray | None:
    """float32 person mask of a photo (MediaPipe selfie segmentation), or None if it cannot run."""
    try:
        import mediapipe as mp

        with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
            mask = segmenter.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)).segmentation_mask
    except Exception as exc:  # noqa: BLE001 - the clip then moves the head outline's band only
        log.warning("no person mask for the clip's photo (%s)", exc)
        return None
    return None if mask is None else np.asarray(mask, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Scripted motion
# ---------------------------------------------------------------------------------------------------
@dataclass
class ClipMotion:
    """Per-frame scripted values (arrays of length `frames`); frame 0 is always the neutral."""

    roll_deg: np.ndarray
    shift_xy: np.ndarray  # (frames, 2) px of the output frame
    scale: np.ndarray
    mouth_open: np.ndarray  # 0 = the photo's own mouth, 1 = lower lip down by `mouth_max_open_px`
    eye_open: np.ndarray  # 1 = the photo's own eyes, 0 = upper lid down on the lower lid
    gaze_xy: np.ndarray  # (frames, 2) iris offset as a fraction of the eye width
    noise_sigma: float  # Gaussian sensor noise, 8-bit levels
    step_frame: int | None = None  # first frame after the sudden shift ("step" script)
    yaw_deg: np.ndarray | None = None  # 3-D head turn (see `rotation_yaw_pitch`)
    pitch_deg: np.ndarray | None = None
    wink: np.ndarray | None = None  # (frames, 2) extra closure of the image-left / image-right eye
    brow: np.ndarray | None = None  # 0..1 of the full brow raise
    smile: np.ndarray | None = None  # 0..1 of the full smile (mouth corners up and out)
    purse: np.ndarray | None = None  # 0..1 of the full purse (mouth corners in)

    @classmethod
    def neutral(cls, frames: int) -> "ClipMotion":
        return cls(np.zeros(frames), np.zeros((frames, 2)), np.ones(frames), np.zeros(frames),
                   np.ones(frames), np.zeros((frames, 2)), 0.0, None, np.zeros(frames), np.zeros(frames),
                   np.zeros((frames, 2)), np.zeros(frames), np.zeros(frames), np.zeros(frames))

    def eye_open_lr(self, i: int) -> tuple[float, float]:
        """Openness of the image-left and image-right eye at frame i."""
        return (float(self.eye_open[i] * (1.0 - self.wink[i, 0])), float(self.eye_open[i] * (1.0 - self.wink[i, 1])))


def _blink_closure(frames: int, centres: Sequence[float]) -> np.ndarray:
    """Raised-cosine closing pulses (0 open .. 1 shut) at the given fractions of the clip."""
    t = np.arange(frames, dtype=np.float64)
    half_width = max(3.0, frames / 12.0)  # >= 3 frames each side, so a blink has in-between states
    closure = np.zeros(frames)
    for centre in centres:
        d = np.abs(t - centre * frames) / half_width
        closure = np.maximum(closure, np.where(d < 1.0, 0.5 * (1.0 + np.cos(np.pi * d)), 0.0))
    return closure


def script_motion(script: str, frames: int, size: int = 256) -> ClipMotion:
    """The scripted motion of one clip. Amplitudes in px scale with the frame size (given at 256)."""
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script!r}; choose one of {SCRIPTS}")
    if frames < 2:
        raise ValueError("a clip needs at least 2 frames")
    px = size / 256.0
    phase = 2.0 * np.pi * np.arange(frames) / frames  # one cycle per clip, 0 at frame 0
    m = ClipMotion.neutral(frames)
    if script in ("roll", "mixed"):
        m.roll_deg = (10.0 if script == "roll" else 6.0) * np.sin(phase)
    if script in ("shift", "mixed"):
        amp = 16.0 if script == "shift" else 10.0
        m.shift_xy = np.stack([amp * px * np.sin(phase), 0.5 * amp * px * np.sin(2 * phase)], axis=1)
    if script in ("scale", "mixed"):
        m.scale = 1.0 + (0.1 if script == "scale" else 0.05) * np.sin(phase)
    if script in ("mouth", "mixed"):
        m.mouth_open = 0.5 * (1.0 - np.cos((2 if script == "mouth" else 3) * phase))
    if script in ("blink", "mixed"):
        m.eye_open = 1.0 - _blink_closure(frames, (0.3, 0.75) if script == "blink" else (0.45,))
    if script in ("gaze", "mixed"):
        amp = 0.18 if script == "gaze" else 0.12
        m.gaze_xy = np.stack([amp * np.sin(phase), 0.2 * amp * np.sin(2 * phase)], axis=1)
    if script == "still_noise":
        m.noise_sigma = 4.0
    if script == "step":
        m.step_frame = frames // 3
        m.shift_xy[m.step_frame:, 0] = 12.0 * px
        m.noise_sigma = 1.0  # a real camera is never noise-free; the step must stand out of it
    if script == "mixed":
        m.noise_sigma = 1.0
    if script == "yaw":
        m.yaw_deg = 25.0 * np.sin(phase)
    if script == "pitch":
        m.pitch_deg = 15.0 * np.sin(phase)
    if script == "lean":
        m.scale = 1.0 + 0.15 * (1.0 - np.cos(phase))  # toward the camera to 1.3x and back
    if script == "wink":
        m.wink = np.stack([_blink_closure(frames, (0.3,)), _blink_closure(frames, (0.7,))], axis=1)
    twice = 0.5 * (1.0 - np.cos(2 * phase))  # two raises per clip
    if script == "brows":
        m.brow = twice
    if script == "smile":
        m.smile = twice
    if script == "purse":
        m.purse = twice
    return m


def rotation_yaw_pitch(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """3x3 rotation in camera axes (x right, y down, z away from the camera), pitch applied first:
    Ry(yaw)·Rx(pitch). yaw > 0 turns the nose toward image left, pitch > 0 tips it down."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)], [0.0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0.0, math.sin(y)], [0.0, 1.0, 0.0], [-math.sin(y), 0.0, math.cos(y)]])
    return ry @ rx


def head_matrix(roll_deg: float, shift_xy: Sequence[float], scale: float,
                centre_xy: Sequence[float]) -> np.ndarray:
    """2x3 similarity: rotate by roll_deg (counter-clockwise on screen) and scale about centre_xy, then
    shift. Maps neutral-frame pixels to this frame's pixels."""
    m = cv2.getRotationMatrix2D((float(centre_xy[0]), float(centre_xy[1])), float(roll_deg), float(scale))
    m[:, 2] += np.asarray(shift_xy, dtype=np.float64)
    return m


# ---------------------------------------------------------------------------------------------------
# The face rig: the cropped photo plus what the deformations need, all in canvas pixels
# ---------------------------------------------------------------------------------------------------
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _curve_y(curve_xy: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """y of a polyline at columns xs; flat beyond its ends (np.interp holds the end values)."""
    order = np.argsort(curve_xy[:, 0])
    return np.interp(xs, curve_xy[order, 0], curve_xy[order, 1])


@dataclass
class _MouthRig:
    seam_y: np.ndarray  # (C,) where the lips part, per canvas column
    lip_profile: np.ndarray  # (C,) share of the opening per column: 1 mid-mouth, 0 at/after corners
    jaw_profile: np.ndarray  # (C,) share of the jaw drop per column: 1 at the chin, 0 at the jaw's ends
    jaw_y: np.ndarray  # (C,) the jaw outline (lower face oval); the neck below it does not move
    lower_lip_y: float  # below here the displacement blends from lip to jaw profile ...
    chin_y: float  # ... reaching the jaw profile at the chin
    max_open_px: float
    width: float


@dataclass
class _EyeRig:
    cols: slice  # canvas columns between the corners
    upper_y: np.ndarray  # upper lid margin per column in `cols`
    opening: np.ndarray  # lower minus upper lid per column in `cols` (>= 0)
    lid_skin_px: float  # height of upper-lid skin stretched down when the eye closes
    width: float
    roi: tuple[slice, slice]  # canvas box that holds the eye with room for the iris to move
    iris_centre: np.ndarray
    iris_radius: float
    opening_mask: np.ndarray  # float32 soft mask of the eye opening, in `roi`
    iris_free_roi: np.ndarray  # float32 eye with the iris painted out, in `roi`


class FaceRig:
    """One photo cropped around its face on a canvas larger than the frame (room for head motion),
    with precomputed geometry for the mouth, lids and irises. Renders frames for given values."""

    def __init__(self, photo: str, size: int = 256, crop_factor: float = 2.0) -> None:
        self.photo, self.size = photo, size
        self.pad = size // 4
        self.canvas_size = size + 2 * self.pad
        landmarks = photo_landmarks(photo)
        self.canvas_bgr, self.points = self._crop_to_canvas(load_photo_bgr(photo), landmarks, crop_factor)
        scale = float(np.ptp(self.points[:NUM_MESH_POINTS, 0]) / np.ptp(landmarks.points[:NUM_MESH_POINTS, 0]))
        self.depth = None if landmarks.depth is None else landmarks.depth.astype(np.float64) * scale
        self._depth_map: np.ndarray | None = None
        self.centre_xy = (size / 2.0, size / 2.0)
        grid_y, grid_x = np.mgrid[0:self.canvas_size, 0:self.canvas_size].astype(np.float32)
        self._grid_x, self._grid_y = grid_x, grid_y
        self.head_weight = self._head_weight()
        hole = (self.head_weight > 0.0).astype(np.uint8) * 255
        self.room_bgr = cv2.inpaint(self.canvas_bgr, hole, 5.0, cv2.INPAINT_NS)  # the room behind the head
        frame_y, frame_x = np.mgrid[0:size, 0:size].astype(np.float32)
        self._frame_grid = np.stack([frame_x, frame_y], axis=-1)
        self.mouth = self._mouth_rig()
        self.eyes = [self._eye_rig(eye) for eye in EYES]

    # -- setup ---------------------------------------------------------------------------------------
    def _crop_to_canvas(self, photo_bgr: np.ndarray, landmarks: FaceLandmarks,
                        crop_factor: float) -> tuple[np.ndarray, np.ndarray]:
        mesh = landmarks.points[:NUM_MESH_POINTS].astype(np.float64)
        x0, y0 = mesh.min(axis=0)
        x1, y1 = mesh.max(axis=0)
        k = self.size / (crop_factor * (x1 - x0))
        # Resize first (area filter when shrinking) so the crop is not aliased, then place by translation.
        resized = cv2.resize(photo_bgr, None, fx=k, fy=k,
                             interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
        kx, ky = resized.shape[1] / photo_bgr.shape[1], resized.shape[0] / photo_bgr.shape[0]
        half = self.canvas_size / 2.0
        tx, ty = half - 0.5 * (x0 + x1) * kx, half - 0.5 * (y0 + y1) * ky
        m = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty]])
        canvas = cv2.warpAffine(resized, m, (self.canvas_size, self.canvas_size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        points = landmarks.points.astype(np.float64) * [kx, ky] + [tx, ty]
        return canvas, points

    def _mouth_rig(self) -> _MouthRig:
        p, xs = self.points, np.arange(self.canvas_size, dtype=np.float64)
        left, right = p[MOUTH_CORNERS[0]], p[MOUTH_CORNERS[1]]
        centre_x, half_width = 0.5 * (left[0] + right[0]), 0.5 * abs(right[0] - left[0])
        seam = 0.5 * (_curve_y(p[list(UPPER_INNER_LIP)], xs) + _curve_y(p[list(LOWER_INNER_LIP)], xs))
        u = (xs - centre_x) / half_width
        width = float(np.linalg.norm(right - left))
        return _MouthRig(
            seam_y=seam,
            lip_profile=np.clip(1.0 - u * u, 0.0, 1.0),  # lens-shaped opening, closed at the corners
            jaw_profile=self._jaw_profile(xs),
            jaw_y=_curve_y(self._jaw_outline(), xs),
            lower_lip_y=float(p[LOWER_LIP_BOTTOM, 1]),
            chin_y=float(p[CHIN, 1]),
            max_open_px=0.45 * width,
            width=width,
        )

    def _jaw_outline(self) -> np.ndarray:
        """The face oval below the mouth corners: the jaw's lower edge, ear to ear, canvas px."""
        oval = self.points[list(FACE_OVAL)]
        return oval[oval[:, 1] > self.points[list(MOUTH_CORNERS), 1].max()]

    def _jaw_profile(self, xs: np.ndarray) -> np.ndarray:
        """Share of the chin's drop per column: the jaw hinges near the ears, so the drop falls
        smoothly from the chin to 0 at each end of the jaw outline (and stays 0 beside the face)."""
        jaw = self._jaw_outline()
        chin_x = self.points[CHIN, 0]
        reach = np.where(xs < chin_x, chin_x - jaw[:, 0].min(), jaw[:, 0].max() - chin_x)
        u = np.abs(xs - chin_x) / np.maximum(reach, 1.0)
        return 1.0 - _smoothstep(u * u)  # flat under the chin (a rigid bone), steeper near the hinge

    def _eye_rig(self, eye: EyeIndices) -> _EyeRig:
        p = self.points
        corner_a, corner_b = p[eye.corners[0]], p[eye.corners[1]]
        x0, x1 = sorted((corner_a[0], corner_b[0]))
        cols = slice(int(math.ceil(x0)), int(math.floor(x1)) + 1)
        xs = np.arange(cols.start, cols.stop, dtype=np.float64)
        upper = _curve_y(p[list(eye.upper_lid)], xs)
        opening = np.maximum(_curve_y(p[list(eye.lower_lid)], xs) - upper, 0.0)
        width = float(np.linalg.norm(corner_b - corner_a))
        iris_centre = p[eye.iris_centre]
        iris_radius = float(np.mean(np.linalg.norm(p[list(eye.iris_ring)] - iris_centre, axis=1)))
        margin = int(math.ceil(0.5 * width))
        ey0 = int(max(0, upper.min() - margin))
        ey1 = int(min(self.canvas_size, upper.max() + opening.max() + margin))
        roi = (slice(ey0, ey1), slice(max(0, cols.start - margin), min(self.canvas_size, cols.stop + margin)))
        opening_mask = self._polygon_mask(np.concatenate([p[list(eye.upper_lid)], p[list(eye.lower_lid)][::-1]]),
                                          roi)
        iris_free = self._paint_out_iris(roi, iris_centre, iris_radius, opening_mask)
        return _EyeRig(cols, upper, opening, float(1.2 * opening.max() + 2.0), width, roi, iris_centre,
                       iris_radius, opening_mask, iris_free)

    def _head_weight(self) -> np.ndarray:
        """float32 canvas field, the head layer's matte (module docstring): the head outline grown by
        HEAD_FULL, plus the person's hair within HAIR_REACH of it above the mouth (MediaPipe's person
        mask of the photo), feathered out to HEAD_STILL; nothing below the chin (neck, torso stay)."""
        mesh = self.points[:NUM_MESH_POINTS]
        width = float(np.ptp(mesh[:, 0]))
        oval = self.points[list(FACE_OVAL)]
        skull = oval[oval[:, 1] < np.median(oval[:, 1])] - [0.0, SKULL_LIFT * width]
        hull = cv2.convexHull(np.round(np.concatenate([mesh, skull])).astype(np.int32))
        room = np.full((self.canvas_size, self.canvas_size), 255, np.uint8)
        cv2.fillConvexPoly(room, hull, 0)
        distance = cv2.distanceTransform(room, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        person = _person_mask(self.canvas_bgr)
        if person is not None:  # hair reaching farther counts as head: as far as the person does
            above_mouth = np.arange(self.canvas_size)[:, None] < self.points[list(MOUTH_CORNERS), 1].max()
            hair = (person > 0.5) & (distance <= HAIR_REACH * width) & above_mouth
            inside = cv2.distanceTransform((~hair).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            distance = np.minimum(distance, np.where(hair, 0.0, inside + HEAD_FULL * width))
        band = (distance - HEAD_FULL * width) / ((HEAD_STILL - HEAD_FULL) * width)
        rows = np.arange(self.canvas_size, dtype=np.float32)[:, None]
        below_chin = (rows - self.points[CHIN, 1]) / (0.1 * width)
        return ((1.0 - _smoothstep(band)) * (1.0 - _smoothstep(below_chin))).astype(np.float32)

    def _polygon_mask(self, polygon_xy: np.ndarray, roi: tuple[slice, slice]) -> np.ndarray:
        """Soft (anti-aliased) float32 mask of a polygon, in the coordinates of `roi`."""
        h, w = roi[0].stop - roi[0].start, roi[1].stop - roi[1].start
        shift = 4  # sub-pixel vertices: fillPoly takes fixed-point coordinates with this many bits
        pts = np.round((polygon_xy - [roi[1].start, roi[0].start]) * (1 << shift)).astype(np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=shift)
        return mask.astype(np.float32) / 255.0

    def _disk_mask(self, centre_xy: np.ndarray, radius: float, roi: tuple[slice, slice]) -> np.ndarray:
        """Disk with a 1 px soft edge, float32 in `roi` coordinates."""
        ys = np.arange(roi[0].start, roi[0].stop, dtype=np.float32)[:, None]
        xs = np.arange(roi[1].start, roi[1].stop, dtype=np.float32)[None, :]
        dist = np.sqrt((xs - centre_xy[0]) ** 2 + (ys - centre_xy[1]) ** 2)
        return np.clip(radius + 0.5 - dist, 0.0, 1.0)

    def _paint_out_iris(self, roi: tuple[slice, slice], centre: np.ndarray, radius: float,
                        opening_mask: np.ndarray) -> np.ndarray:
        """The eye with the visible iris inpainted from the sclera and lids around it, so a moved iris
        leaves no ghost behind."""
        hole = (self._disk_mask(centre, 1.25 * radius, roi) > 0) & (opening_mask > 0)
        patch = np.ascontiguousarray(self.canvas_bgr[roi])
        return cv2.inpaint(patch, hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA).astype(np.float32)

    # -- per frame ---------------------------------------------------------------------------------
    def _apply_gaze(self, canvas: np.ndarray, gaze_xy: Sequence[float]) -> np.ndarray:
        out = canvas.copy()
        for eye in self.eyes:
            offset = np.asarray(gaze_xy, dtype=np.float64) * eye.width
            source = self.canvas_bgr[eye.roi].astype(np.float32)
            move = np.array([[1.0, 0.0, offset[0]], [0.0, 1.0, offset[1]]])
            h, w = source.shape[:2]
            moved = cv2.warpAffine(source, move, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            moved_opening = cv2.warpAffine(eye.opening_mask, move, (w, h), flags=cv2.INTER_LINEAR)
            # The moved iris shows only where it lands inside the opening, and only the part of it that
            # was itself visible (not the lid that covered its top in the photo).
            alpha = (self._disk_mask(eye.iris_centre + offset, eye.iris_radius, eye.roi)
                     * eye.opening_mask * moved_opening)[..., None]
            out[eye.roi] = np.clip(eye.iris_free_roi * (1 - alpha) + moved * alpha + 0.5, 0, 255).astype(np.uint8)
        return out

    def _blink_rows(self, map_y: np.ndarray, eye_open: Sequence[float]) -> None:
        """Stretch the upper-lid skin down: rows [upper - skin, upper] go to [upper - skin, new lid],
        per eye (image left, image right)."""
        for eye, openness in zip(self.eyes, eye_open):
            closure = 1.0 - float(np.clip(openness, 0.0, 1.0))
            if closure <= 0.0:
                continue
            skin = eye.lid_skin_px
            top = eye.upper_y - skin
            new_lid = eye.upper_y + closure * eye.opening
            r0, r1 = int(math.floor(top.min())), int(math.ceil(new_lid.max())) + 1
            rows = np.arange(r0, r1, dtype=np.float64)[:, None]
            src = top + (rows - top) * skin / (skin + closure * eye.opening)
            covered = (rows >= top) & (rows <= new_lid)
            block = map_y[r0:r1, eye.cols]
            block[:] = np.where(covered, src, block)

    def _mouth_displacement(self, ys: np.ndarray, amount_px: float) -> np.ndarray:
        """Downward displacement of lower-face points at rows ys (broadcast against columns)."""
        m = self.mouth
        to_jaw = _smoothstep((ys - m.lower_lip_y) / max(m.chin_y - m.lower_lip_y, 1.0))
        return amount_px * (m.lip_profile * (1.0 - to_jaw) + m.jaw_profile * to_jaw)

    def _mouth_rows(self, map_y: np.ndarray, amount_px: float) -> None:
        """Push the lower lip and jaw down; the lips' tear samples the seam (the cavity covers it).
        Below the jaw's new outline the unmoved neck shows (see _neck_cover)."""
        m = self.mouth
        r0, rows = self._rows_below_seam()
        # Invert y -> y + D(y) per column. The jaw drops at least as much as the lip above it, so D
        # only stretches downward (0 <= dD/dy <~ 1): the damped step below shrinks the error by
        # |1 - 0.6 (1 + dD/dy)| <= 0.4 each time (the plain x = y - D(x) stalls as dD/dy nears 1).
        src = rows - self._mouth_displacement(rows, amount_px)
        for _ in range(30):
            step = 0.6 * (rows - src - self._mouth_displacement(src, amount_px))
            src = src + step
            if np.abs(step).max() < 0.005:
                break
        src = np.maximum(src, m.seam_y)
        block = map_y[r0:]
        block[:] = np.where(rows >= m.seam_y, src, block)

    def _rows_below_seam(self) -> tuple[int, np.ndarray]:
        """The first canvas row the mouth can move, and the rows from there as a (R, 1) float64 column."""
        r0 = int(math.floor(self.mouth.seam_y.min()))
        return r0, np.arange(r0, self.canvas_size, dtype=np.float64)[:, None]

    def _neck_cover(self, amount_px: float) -> tuple[int, np.ndarray]:
        """Where the unmoved neck shows below the dropped jaw: (first canvas row, float32 coverage
        per row and column from there, anti-aliased along the jaw's new outline)."""
        m = self.mouth
        r0, rows = self._rows_below_seam()
        jaw_reach = m.jaw_y + self._mouth_displacement(m.jaw_y, amount_px)
        return r0, np.clip(rows - jaw_reach + 0.5, 0.0, 1.0).astype(np.float32)[..., None]

    def _paint_cavity(self, canvas: np.ndarray, amount_px: float) -> np.ndarray:
        """Dark, shaded mouth interior in the tear between the lips (darkest in its middle)."""
        m = self.mouth
        tear = amount_px * m.lip_profile
        cols = np.nonzero(tear > 0.05)[0]
        if cols.size == 0:
            return canvas
        c0, c1 = cols[0], cols[-1] + 1
        seam, tear = m.seam_y[c0:c1], tear[c0:c1]
        r0, r1 = int(math.floor(seam.min())), int(math.ceil((seam + tear).max())) + 2
        rows = np.arange(r0, r1, dtype=np.float64)[:, None]
        alpha = (np.clip(rows - seam + 0.5, 0, 1) * np.clip(seam + tear - rows + 0.5, 0, 1)
                 * np.clip(tear, 0, 1))[..., None]
        depth = np.clip((rows - seam) / np.maximum(tear, 1.0), 0, 1)[..., None]
        shade = 0.45 + 0.55 * (2.0 * depth - 1.0) ** 2
        colour = np.array([38.0, 30.0, 70.0]) * shade  # dark red-brown, BGR
        out = canvas.copy()
        block = out[r0:r1, c0:c1].astype(np.float64)
        out[r0:r1, c0:c1] = np.clip(block * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
        return out

    def render_canvas(self, mouth_open: float = 0.0, eye_open: float | Sequence[float] = 1.0,
                      gaze_xy: Sequence[float] = (0.0, 0.0), brow: float = 0.0, smile: float = 0.0,
                      purse: float = 0.0) -> np.ndarray:
        """The face with the given expression, head unmoved, on the full canvas. `eye_open` is one
        value for both eyes or (image left, image right)."""
        canvas = self.canvas_bgr
        if np.any(np.asarray(gaze_xy) != 0):
            canvas = self._apply_gaze(canvas, gaze_xy)
        amount_px = float(np.clip(mouth_open, 0.0, 1.0)) * self.mouth.max_open_px
        eyes = np.broadcast_to(np.asarray(eye_open, dtype=np.float64), (2,))
        if eyes.min() >= 1.0 and amount_px <= 0.0 and brow <= 0.0 and smile <= 0.0 and purse <= 0.0:
            return canvas
        map_x, map_y = self._grid_x.copy(), self._grid_y.copy()
        if brow > 0.0:
            map_y += self._brow_lift(brow)
        if eyes.min() < 1.0:
            self._blink_rows(map_y, eyes)
        if amount_px > 0.0:
            self._mouth_rows(map_y, amount_px)
        if smile > 0.0 or purse > 0.0:
            dx, dy = self._corner_pull(smile, purse)
            map_x -= dx
            map_y -= dy
        moved = cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if amount_px <= 0.0:
            return moved
        r0, neck = self._neck_cover(amount_px)
        blend = moved[r0:] + neck * (canvas[r0:].astype(np.float32) - moved[r0:])
        moved[r0:] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
        return self._paint_cavity(moved, amount_px)

    def _face_height(self) -> float:
        return float(np.linalg.norm(self.points[10] - self.points[CHIN]))

    def _brow_lift(self, amount: float) -> np.ndarray:
        """(canvas) float32 upward pull of the backward map for a brow raise: the brows and the
        forehead above them move up by up to 0.06 face heights, fading to nothing at the upper
        forehead and at the upper lid margin (the eye itself does not open)."""
        lift = 0.06 * self._face_height() * float(np.clip(amount, 0.0, 1.0))
        xs = np.arange(self.canvas_size, dtype=np.float64)
        ys = np.arange(self.canvas_size, dtype=np.float64)[:, None]
        field = np.zeros((self.canvas_size, self.canvas_size))
        width = float(np.ptp(self.points[:NUM_MESH_POINTS, 0]))
        top = self.points[10, 1] - 0.05 * self._face_height()
        for brow, eye in zip(BROWS, self.eyes):
            brow_xy = self.points[list(brow)]
            brow_y = _curve_y(brow_xy, xs)[None, :]
            lid_y = np.interp(xs, xs[eye.cols], eye.upper_y)[None, :]
            lo, hi = brow_xy[:, 0].min(), brow_xy[:, 0].max()
            reach = 0.12 * width
            across = 1.0 - _smoothstep(np.maximum(np.maximum(lo - xs, xs - hi), 0.0) / reach)[None, :]
            rise = _smoothstep((ys - top) / np.maximum(brow_y - top, 1.0))  # forehead top -> brow
            fall = 1.0 - _smoothstep((ys - brow_y) / np.maximum(lid_y - brow_y, 1.0))  # brow -> lid
            field = np.maximum(field, across * np.where(ys <= brow_y, rise, fall))
        return (lift * field).astype(np.float32)

    def _corner_pull(self, smile: float, purse: float) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy) canvas float32: where a smile (corners up and out) and a purse (corners in)
        move the skin, a smooth bump around each mouth corner (the backward map subtracts it)."""
        m = self.mouth
        centre = 0.5 * (self.points[MOUTH_CORNERS[0]] + self.points[MOUTH_CORNERS[1]])
        sigma = 0.3 * m.width
        dx = np.zeros((self.canvas_size, self.canvas_size), np.float64)
        dy = np.zeros_like(dx)
        for corner in (self.points[61], self.points[291]):
            outward = np.sign(corner[0] - centre[0])
            move = (m.width * (0.10 * smile - 0.12 * purse) * outward, -0.08 * m.width * smile)
            weight = np.exp(-((self._grid_x - corner[0]) ** 2 + (self._grid_y - corner[1]) ** 2) / (2 * sigma ** 2))
            dx += move[0] * weight
            dy += move[1] * weight
        return dx.astype(np.float32), dy.astype(np.float32)

    def head_map(self, head: np.ndarray) -> np.ndarray:
        """(size, size, 2) float32: the canvas position each frame pixel of the head layer shows when
        the head moves by `head` (2x3, neutral-frame px -> frame px)."""
        inverse = cv2.invertAffineTransform(np.asarray(head, dtype=np.float64)).astype(np.float32)
        came_from = self._frame_grid @ inverse[:, :2].T + inverse[:, 2]  # neutral px
        return came_from + self.pad

    def _over_room(self, head_bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The head layer (frame-sized, with its matte) over the still room."""
        room = self.room_bgr[self.pad:self.pad + self.size, self.pad:self.pad + self.size].astype(np.float32)
        frame = room + alpha[..., None] * (head_bgr.astype(np.float32) - room)
        return np.clip(frame + 0.5, 0, 255).astype(np.uint8)

    def render_frame(self, mouth_open: float, eye_open: float | Sequence[float], gaze_xy: Sequence[float],
                     head: np.ndarray, brow: float = 0.0, smile: float = 0.0, purse: float = 0.0,
                     yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
        """One noise-free size x size frame: the expression, then the head moved by `head` (and,
        for a 3-D turn, by yaw and pitch first)."""
        canvas = self.render_canvas(mouth_open, eye_open, gaze_xy, brow, smile, purse)
        if yaw_deg or pitch_deg:
            return self._render_turned(canvas, head, yaw_deg, pitch_deg)
        if np.allclose(head, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]):
            return canvas[self.pad:self.pad + self.size, self.pad:self.pad + self.size].copy()
        source = self.head_map(head)
        head_bgr = cv2.remap(canvas, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        alpha = cv2.remap(self.head_weight, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return self._over_room(head_bgr, alpha)

    # -- the 3-D head ---------------------------------------------------------------------------------
    def depth_map(self) -> np.ndarray:
        """(canvas) float32 depth of the head's surface (px, larger = farther; module constants)."""
        if self._depth_map is not None:
            return self._depth_map
        from scipy.interpolate import RBFInterpolator

        if self.depth is None:
            raise RuntimeError("the photo's landmarks have no depth; 3-D clips need Face Mesh's z")
        mesh, z = self.points[:NUM_MESH_POINTS], self.depth[:NUM_MESH_POINTS]
        spline = RBFInterpolator(mesh, z, kernel="thin_plate_spline", smoothing=1.0)
        step = 4
        coarse = np.arange(0, self.canvas_size + step, step, dtype=np.float64)
        gx, gy = np.meshgrid(coarse, coarse)
        surface = spline(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gx.shape).astype(np.float32)
        surface = cv2.resize(surface, (len(coarse) * step, len(coarse) * step),
                             interpolation=cv2.INTER_CUBIC)[:self.canvas_size, :self.canvas_size]
        oval = self.points[list(FACE_OVAL)]
        sides = np.argsort(oval[:, 0])[[0, 1, -2, -1]]
        back = float(self.depth[list(np.asarray(FACE_OVAL)[sides])].mean())
        outside = np.full((self.canvas_size, self.canvas_size), 255, np.uint8)
        cv2.fillConvexPoly(outside, cv2.convexHull(np.round(mesh).astype(np.int32)), 0)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        width = float(np.ptp(mesh[:, 0]))
        bend = _smoothstep(distance / (BACK_REACH * width))
        # The spline extrapolates its slope beyond the face; no point lies behind the outline's plane.
        surface = np.clip(surface, float(z.min()), back)
        self._depth_map = (surface + bend * (back - surface)).astype(np.float32)
        return self._depth_map

    def pivot(self) -> np.ndarray:
        """The point the head turns about, canvas px and depth."""
        width = float(np.ptp(self.points[:NUM_MESH_POINTS, 0]))
        return np.array([self.centre_xy[0] + self.pad, self.centre_xy[1] + self.pad,
                         self.depth[NOSE_BRIDGE] + PIVOT_BEHIND * width])

    def _render_turned(self, canvas: np.ndarray, head: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
        """The head layer turned in 3-D, then moved by `head`, over the still room. Forward splatting
        with a depth buffer: every canvas point of the head layer (2x2 per pixel) goes where its 3-D
        point lands; the nearest point wins each frame pixel, so the far side of a turned head hides
        behind the near side."""
        rows, cols = np.nonzero(self.head_weight > 0.0)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sub = (np.arange(2) + 0.5) / 2.0 - 0.5
        ys = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
        xs = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
        gx, gy = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        w = cv2.remap(self.head_weight, gx, gy, cv2.INTER_LINEAR).ravel().astype(np.float64)
        z = cv2.remap(self.depth_map(), gx, gy, cv2.INTER_LINEAR).ravel().astype(np.float64)
        p = np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float64)
        on_head = w > 0.0
        p, w, z = p[on_head], w[on_head], z[on_head]
        pivot = self.pivot()
        turned = np.column_stack([p - pivot[:2], z - pivot[2]]) @ rotation_yaw_pitch(yaw_deg, pitch_deg).T
        neutral_px = turned[:, :2] + pivot[:2] - self.pad  # neutral-frame px after the turn
        target = neutral_px @ np.asarray(head)[:, :2].T + np.asarray(head)[:, 2]
        px = np.round(target).astype(np.int64)
        keep = (px[:, 0] >= 0) & (px[:, 0] < self.size) & (px[:, 1] >= 0) & (px[:, 1] < self.size)
        key = px[keep, 1] * self.size + px[keep, 0]
        order = np.lexsort((turned[keep, 2], key))
        first = np.unique(key[order], return_index=True)[1]
        winner, pixel = order[first], key[order][first]
        source = np.zeros((self.size * self.size, 2), np.float32)
        alpha = np.zeros(self.size * self.size, np.float32)
        hit = np.zeros(self.size * self.size, np.float32)
        # The winner's source, shifted by how far its landing spot is from the pixel centre.
        landed = target[keep][winner]
        centre = np.column_stack([pixel % self.size, pixel // self.size])
        source[pixel] = p[keep][winner] + (centre - landed)
        alpha[pixel] = w[keep][winner]
        hit[pixel] = 1.0
        shape = (self.size, self.size)
        source, alpha = self._filled(source.reshape(*shape, 2), alpha.reshape(shape), hit.reshape(shape))
        head_bgr = cv2.remap(canvas, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        return self._over_room(head_bgr, alpha)

    @staticmethod
    def _filled(source: np.ndarray, alpha: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels no point landed on, amid ones that were, take the mean of those neighbours."""
        count = cv2.boxFilter(hit, -1, (3, 3), normalize=False)
        holes = (hit == 0) & (count >= 3)
        total = cv2.boxFilter(source * hit[..., None], -1, (3, 3), normalize=False)
        matte = cv2.boxFilter(alpha * hit, -1, (3, 3), normalize=False)
        source[holes] = total[holes] / count[holes][:, None]
        alpha[holes] = matte[holes] / count[holes]
        return source, alpha

    def neutral_frame(self) -> np.ndarray:
        """Frame 0 of every script without sensor noise: the face as cropped, nothing moved."""
        still = head_matrix(0.0, (0.0, 0.0), 1.0, self.centre_xy)
        return self.render_frame(0.0, 1.0, (0.0, 0.0), still)

    @property
    def neutral_points(self) -> np.ndarray:
        """The photo's landmarks in neutral-frame pixels (frame 0, before any motion)."""
        return self.points - [self.pad, self.pad]


@lru_cache(maxsize=8)
def face_rig(photo: str, size: int = 256) -> FaceRig:
    """A cached rig per (photo, size): building one costs a landmark pass and two inpaints."""
    return FaceRig(photo, size)


# ---------------------------------------------------------------------------------------------------
# Clips and their truth
# ---------------------------------------------------------------------------------------------------
@dataclass
class FrameTruth:
    index: int
    time_s: float
    roll_deg: float
    shift_xy: tuple[float, float]
    scale: float
    mouth_open: float
    eye_open: float
    gaze_xy: tuple[float, float]
    head_matrix: list[list[float]]  # 2x3, neutral-frame px -> this frame's px
    expected_mouth_ratio: float
    expected_eye_ratio: float
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    eye_open_lr: tuple[float, float] = (1.0, 1.0)
    brow: float = 0.0
    smile: float = 0.0
    purse: float = 0.0


TRUTH_MEANING = {
    "roll_deg": "head rotation about centre_xy, degrees, counter-clockwise on screen",
    "shift_xy": "head translation in px of the frame, applied after roll and scale",
    "scale": "head scale about centre_xy (1 = as in frame 0)",
    "head_matrix": "2x3 similarity from roll/scale/shift: rigid landmarks of this frame = "
                   "head_matrix @ [neutral_landmarks, 1]; it moves the head only (see head_region)",
    "head_region": "the head layer's matte, in face widths from the head outline (face-mesh hull plus the "
                   "cranium, skull_lift face widths above the oval's upper half) or from the person mask's hair "
                   "within hair_reach of it: 1 within full, 0 beyond still, smoothstep between, faded out over "
                   "0.1 face widths below the chin; the layer moves with head_matrix (and yaw/pitch) over the "
                   "room (the photo with the head inpainted), which does not move",
    "mouth_open": "0 = the photo's own mouth, 1 = lower inner lip (point 14) moved down by "
                  "mouth_max_open_px (neutral-frame px) relative to the upper lip",
    "eye_open": "1 = the photo's own eyes, 0 = upper lid (159/386) lowered onto the lower lid (145/374)",
    "gaze_xy": "iris (468-477) offset inside the eye, as a fraction of that eye's width",
    "expected_mouth_ratio": "mouth_open_ratio the scripted lips should re-measure "
                            "(neutral ratio + mouth_open * mouth_max_open_px / mouth width)",
    "expected_eye_ratio": "eye_open_ratio the scripted lids should re-measure (neutral ratio * eye_open)",
    "noise_sigma": "std of Gaussian sensor noise added to every pixel and channel, 8-bit levels",
    "step_frame": "first frame after the sudden head shift (script 'step'), else null",
    "yaw_deg": "3-D head turn before head_matrix, degrees about the vertical axis through the head's pivot; "
               "> 0 turns the nose toward image left (rotation_yaw_pitch: Ry(yaw)·Rx(pitch), x right, y down, "
               "z away from the camera)",
    "pitch_deg": "3-D head turn about the horizontal axis, degrees; > 0 tips the nose down",
    "eye_open_lr": "openness of the image-left and image-right eye (eye_open times 1 - wink), as eye_open",
    "brow": "0..1 of a brow raise: brows and forehead up by 0.06 face heights (10 to 152) at 1",
    "smile": "0..1 of a smile: mouth corners (61/291) out by 0.10 and up by 0.08 mouth widths at 1",
    "purse": "0..1 of a purse: mouth corners in by 0.12 mouth widths each at 1",
}


def _frame_truths(rig: FaceRig, motion: ClipMotion, fps: float) -> list[FrameTruth]:
    neutral_mouth = mouth_open_ratio(rig.points)
    neutral_eye = eye_open_ratio(rig.points)
    truths = []
    for i in range(len(motion.roll_deg)):
        head = head_matrix(motion.roll_deg[i], motion.shift_xy[i], motion.scale[i], rig.centre_xy)
        truths.append(FrameTruth(
            index=i,
            time_s=i / fps,
            roll_deg=float(motion.roll_deg[i]),
            shift_xy=(float(motion.shift_xy[i, 0]), float(motion.shift_xy[i, 1])),
            scale=float(motion.scale[i]),
            mouth_open=float(motion.mouth_open[i]),
            eye_open=float(motion.eye_open[i]),
            gaze_xy=(float(motion.gaze_xy[i, 0]), float(motion.gaze_xy[i, 1])),
            head_matrix=np.round(head, 6).tolist(),
            expected_mouth_ratio=neutral_mouth + float(motion.mouth_open[i]) * rig.mouth.max_open_px / rig.mouth.width,
            expected_eye_ratio=neutral_eye * float(motion.eye_open[i]),
            yaw_deg=float(motion.yaw_deg[i]),
            pitch_deg=float(motion.pitch_deg[i]),
            eye_open_lr=motion.eye_open_lr(i),
            brow=float(motion.brow[i]),
            smile=float(motion.smile[i]),
            purse=float(motion.purse[i]),
        ))
    return truths


def make_clip(photo: str = "astronaut", script: str = "mixed", frames: int = 48, size: int = 256,
              fps: float = 30.0, seed: int = 0) -> tuple[list[np.ndarray], dict]:
    """Synthesize a driving clip: (frames as BGR uint8 size x size, ground-truth dict).

    The truth dict holds the clip settings, `neutral_landmarks` (478x2, px of frame 0), the neutral
    ratios, `mouth_max_open_px`, `head_region`, `centre_xy`, `step_frame`, `noise_sigma`, `meaning` (what each value
    means in landmark space) and `per_frame` (one FrameTruth as a dict per frame).
    """
    if photo not in PHOTOS:
        raise ValueError(f"unknown photo {photo!r}; choose one of {PHOTOS}")
    rig = face_rig(photo, size)
    motion = script_motion(script, frames, size)
    truths = _frame_truths(rig, motion, fps)
    rng = np.random.default_rng(seed)
    clip = []
    for truth in truths:
        frame = rig.render_frame(truth.mouth_open, truth.eye_open_lr, truth.gaze_xy, np.asarray(truth.head_matrix),
                                 truth.brow, truth.smile, truth.purse, truth.yaw_deg, truth.pitch_deg)
        if motion.noise_sigma > 0:
            noisy = frame.astype(np.float32) + rng.normal(0.0, motion.noise_sigma, frame.shape).astype(np.float32)
            frame = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        clip.append(frame)
    truth = {
        "photo": photo, "script": script, "frames": frames, "size": size, "fps": fps, "seed": seed,
        "noise_sigma": motion.noise_sigma, "step_frame": motion.step_frame,
        "centre_xy": list(rig.centre_xy),
        "mouth_max_open_px": rig.mouth.max_open_px,
        "head_region": {"skull_lift": SKULL_LIFT, "full": HEAD_FULL, "still": HEAD_STILL, "hair_reach": HAIR_REACH},
        "neutral": {"mouth_ratio": mouth_open_ratio(rig.points), "eye_ratio": eye_open_ratio(rig.points)},
        "neutral_landmarks": np.round(rig.neutral_points, 3).tolist(),
        "meaning": TRUTH_MEANING,
        "per_frame": [asdict(t) for t in truths],
    }
    return clip, truth


def truth_series(truth: dict, key: str) -> np.ndarray:
    """One per-frame truth value as an array, e.g. truth_series(truth, "mouth_open")."""
    return np.array([frame[key] for frame in truth["per_frame"]], dtype=np.float64)


def _clip_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".mp4", ".json") else path
    return stem.with_name(stem.name + ".mp4"), stem.with_name(stem.name + ".json")


def write_clip(path: str | Path, frames: Sequence[np.ndarray], truth: dict,
               fps: float | None = None) -> tuple[Path, Path]:
    """Write `path`.mp4 (mp4v, readable by cv2) and `path`.json (the truth). Returns both paths."""
    video_path, json_path = _clip_paths(path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    fps = float(fps or truth.get("fps", 30.0))
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write mp4v video to {video_path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    write_json(json_path, truth)
    return video_path, json_path


def read_clip(path: str | Path) -> tuple[list[np.ndarray], dict]:
    """Frames (through the app's one video reader) and truth of a clip written by `write_clip`."""
    from avatarify.capture import iter_video_frames

    video_path, json_path = _clip_paths(path)
    frames = [captured.frame_bgr for captured in iter_video_frames(video_path, progress=False)]
    return frames, read_json(json_path)


def track_landmarks(frames: Sequence[np.ndarray], static: bool = False) -> list[FaceLandmarks | None]:
    """Face Mesh landmarks of every frame, in tracking mode by default (as the live app runs it)."""
    from avatarify.landmarks import FaceMeshDetector

    with FaceMeshDetector(static=static) as detector:
        return [detector.detect(frame) for frame in frames]


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write synthetic driving clips (mp4 + truth JSON).")
    parser.add_argument("--out", required=True, type=Path, help="folder for <photo>_<script>.mp4/.json")
    parser.add_argument("--small", action="store_true", help="short clips (36 frames) for quick checks")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 150, small 36)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    args = parser.parse_args(argv)
    setup_cli_logging()
    frames = args.frames or (36 if args.small else 150)
    for photo in args.photos:
        for script in args.scripts:
            start = time.perf_counter()
            clip, truth = make_clip(photo, script, frames, args.size, args.fps)
            video_path, _ = write_clip(args.out / f"{photo}_{script}", clip, truth, args.fps)
            print(f"{video_path}  {frames} frames  {time.perf_counter() - start:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
