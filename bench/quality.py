"""Quality of an animation engine on synthetic driving clips with known motion.

Input: an engine (MeshAnimator by default, any Animator works) and the clips of bench/clips.py.
Output: DIR/quality.json (each measure next to its goal and a pass flag, plus per-case details),
DIR/quality_sheet.png (driver | avatar | output rows at several time points) and
DIR/quality_hard_sheet.png (see below); the call picture at the camera's resolution
(bench/call_quality.py: detail, far pixels, seam, for both engines) adds the "call_picture" section
and DIR/call_sheet.png.

The engine is driven the way the live app drives it: avatar = a neutral face crop with its static-mode
landmarks; neutral = driving frame 0; then per frame DrivingFrame(crop_bgr=clip frame,
landmarks=tracking-mode Face Mesh landmarks of that frame, timestamp=index / fps, motion_scale=1).
What the output shows is re-measured with static-mode Face Mesh: tracking mode feeds each frame's face
region from the previous landmarks, which wobbles ~0.2 px even on identical frames; static mode gives
identical landmarks for identical frames, so the instrument adds no jitter of its own.

Measures:
  l1_self       self-reenactment (avatar = the clip's own neutral frame), mean |output - driver| on
                [0, 1] over the whole frame, averaged over the 'mixed' clip of each photo
  mouth_corr    Pearson correlation of driver vs output mouth-open ratio, cross-identity ('mouth' clips,
                both directions; the worse one counts)
  eye_corr      the same for the eye-open ratio ('blink' clips)
  pose_err_px   head roll / shift transfer, cross-identity: the output's head motion (similarity fitted
                to rigid landmarks) vs the scripted motion carried over to the avatar, mean px error at
                the rigid landmarks
  jitter_residual  output landmark jitter (mean frame-to-frame landmark motion) on a still head with
                sensor noise, filter on, as a share of the face width (goal ≤ 0.1 %: 0.15 px on a
                150-px face, far under what shimmers visibly). It replaced the goal on the ratio
                filter off / on (≥ 3; still in the details as jitter_ratio, its denominator floored at
                0.02 % of the face width), because that ratio divides two tiny numbers that Face Mesh
                sets more than the filter: how much of the sensor noise reaches the output with the
                filter off depends on Face Mesh's XNNPACK kernels (chosen per instruction set) and on
                the engine. The same code gave 6.8× on an Intel Xeon (model 207) and 2.45× on an
                Intel Xeon with AMX (off 0.082 px, on 0.033 px); later engine changes made the
                unfiltered output steadier and the ratio 1.83× (off 0.111 px, on 0.061 px) on that
                Xeon and on an AMD EPYC, while the residual stayed under 0.05 % of the face width here
  lag_frames    frames from the driver's to the output's half-way point on a sudden head shift, filter on
  bg_drift      mean |output - avatar| far from the face, head still, 8-bit levels
  feature_corr  per feature on the clip that moves it alone (per-eye winks, blink, brows, smile,
                purse, mouth), Pearson r of driver vs output, both measured by static-mode Face
                Mesh, cross-identity; the worst feature and pair counts. The instrument is Face Mesh
                too, whose kernels differ per CPU, but the worst of these 14 correlations (right
                wink) was 0.893 on both an Intel Xeon with AMX and an AMD EPYC with the same code,
                and earlier code gave 0.903 and 0.904 on two Intel Xeons: it follows the engine
  head_angle_err_deg  yaw (yaw clip, +-25 deg) and pitch (pitch clip, +-15 deg) of the output vs the
                driver, each measured from Face Mesh's 3-D rigid points relative to frame 0, cross-
                identity, mean |difference| of the worst clip and pair
  fold_share    the largest share of face pixels, on the yaw/pitch/lean clips, where the engine's
                output-to-avatar map is mirrored over a patch (engines that expose `last_map`)
Output also: DIR/quality_hard_sheet.png, the harder scripts at their extreme frames (driver | avatar |
output per cross-identity pair).

CLI: `python bench/quality.py --out DIR [--small] [--frames N]`.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/quality.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.engines.base import Animator  # noqa: E402
from avatarify.motion import FACE_OVAL, eye_open_ratios  # noqa: E402
from bench.clips import (HARD_SCRIPTS, eye_open_ratio, face_rig, make_clip, mouth_open_ratio,  # noqa: E402
                         track_landmarks)
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402
from bench.call_quality import print_verdicts, run_call_quality  # noqa: E402

log = logging.getLogger(__name__)

# Landmarks that move with the skull but not with expressions: forehead, nose bridge and tip, eye
# corners, cheekbones. Head motion is fitted to these only, so a mouth or blink does not read as pose.
RIGID_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 234, 454, 127, 356, 98, 327)
NUM_MESH_POINTS = 468
CROSS_PAIRS = (("grace_hopper", "astronaut"), ("astronaut", "grace_hopper"))  # (driver, avatar)
WARMUP_FRAMES = 5  # frames skipped before measuring jitter: the filter and tracker settle first
JITTER_GOAL = 0.1  # residual jitter, % of the face width: 0.15 px per frame on a 150-px face
JITTER_FLOOR = 2e-4  # the ratio's floor, share of the face width (~0.03 px): a near-still output cannot blow it up

EngineFactory = Callable[[int, bool], Animator]  # (size, landmark filter on) -> a fresh engine


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------
@dataclass
class Measure:
    value: float
    goal: float
    higher_is_better: bool
    what: str

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def as_dict(self) -> dict:
        return {"value": round(self.value, 4), "goal": f"{'>=' if self.higher_is_better else '<='} {self.goal}",
                "pass": self.passed, "what": self.what}


@dataclass
class Run:
    """One engine run over one clip: what went in, what came out, and landmarks of both."""

    label: str
    truth: dict
    driver_frames: list[np.ndarray]
    driver_landmarks: list[FaceLandmarks | None]
    avatar_bgr: np.ndarray
    avatar_landmarks: FaceLandmarks
    outputs: list[np.ndarray]
    output_landmarks: list[FaceLandmarks | None] = field(default_factory=list)
    animate_ms: float = 0.0
    fold_shares: list[float] = field(default_factory=list)  # per frame, see fold_share (NaN: no map)


# ---------------------------------------------------------------------------------------------------
# Geometry and statistics helpers
# ---------------------------------------------------------------------------------------------------
def fit_similarity(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift; no reflection) mapping src to dst, 2x3.

    Written as complex numbers: dst = a * src + b, with a = scale * e^(i * angle).
    """
    src = src_xy[:, 0] + 1j * src_xy[:, 1]
    dst = dst_xy[:, 0] + 1j * dst_xy[:, 1]
    src_c, dst_c = src - src.mean(), dst - dst.mean()
    a = np.sum(np.conj(src_c) * dst_c) / max(float(np.sum(np.abs(src_c) ** 2)), 1e-12)
    b = dst.mean() - a * src.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either series is constant (nothing to correlate)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def series(landmarks: Sequence[FaceLandmarks | None], measure: Callable[[FaceLandmarks], float]) -> np.ndarray:
    """A per-frame measure of landmarks; NaN where no face was found."""
    return np.array([measure(lm) if lm is not None else np.nan for lm in landmarks], dtype=np.float64)


def _finite_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def half_way_frame(position: np.ndarray, step_frame: int) -> float:
    """Fractional frame at which `position` first gets half-way from its level before the step to
    its level at the end of the clip (linear interpolation between frames); NaN if it never does."""
    before = np.nanmedian(position[WARMUP_FRAMES:step_frame])
    after = np.nanmedian(position[-max(3, len(position) // 6):])
    progress = (position - before) / (after - before)
    for i in range(step_frame, len(position)):
        if progress[i] >= 0.5:
            previous = progress[i - 1]
            return float(i - 1 + (0.5 - previous) / (progress[i] - previous)) if progress[i] != previous else float(i)
    return float("nan")


def far_from_face_mask(landmarks: FaceLandmarks, size: int, margin_share: float = 0.3) -> np.ndarray:
    """Pixels farther than `margin_share` of the face width from the face outline (bool, size x size)."""
    mesh = landmarks.points[:NUM_MESH_POINTS]
    face = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(mesh).astype(np.int32)), 255)
    margin = max(1, int(round(margin_share * (mesh[:, 0].max() - mesh[:, 0].min()))))
    near = cv2.dilate(face, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    return near == 0


# ---------------------------------------------------------------------------------------------------
# Per-feature measures and the head's angles (issue 12), on Face Mesh landmarks
# ---------------------------------------------------------------------------------------------------
BROW_POINTS = ((105, 66), (334, 296))  # brow middles, image left and right
LID_MIDDLES = (159, 386)


def _face_axes(p: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The face's up direction (chin to forehead, unit), its height and width (px)."""
    up = p[10] - p[152]
    height = float(np.linalg.norm(up))
    return up / max(height, 1e-6), height, float(np.linalg.norm(p[454] - p[234]))


def brow_height(points: np.ndarray) -> float:
    """Brow middles above the upper lids, along the face's up axis, in face heights (both sides)."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    up, height, _ = _face_axes(p)
    lifts = [float((p[list(brow)].mean(axis=0) - p[lid]) @ up) for brow, lid in zip(BROW_POINTS, LID_MIDDLES)]
    return float(np.mean(lifts)) / max(height, 1e-6)


def mouth_corner_lift(points: np.ndarray) -> float:
    """Mouth corners (61/291) above the lips' centre (0/17 midpoint), along the face's up axis, in
    face heights: a smile raises it."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    up, height, _ = _face_axes(p)
    return float((0.5 * (p[61] + p[291]) - 0.5 * (p[0] + p[17])) @ up) / max(height, 1e-6)


def mouth_width(points: np.ndarray) -> float:
    """Mouth corner to corner (61/291) over the face width (234/454): a purse narrows it."""
    p = np.asarray(getattr(points, "points", points), dtype=np.float64)
    return float(np.linalg.norm(p[291] - p[61])) / max(_face_axes(p)[2], 1e-6)


def eye_ratio_left(points: np.ndarray) -> float:
    return eye_open_ratios(np.asarray(getattr(points, "points", points)))[0]


def eye_ratio_right(points: np.ndarray) -> float:
    return eye_open_ratios(np.asarray(getattr(points, "points", points)))[1]


# feature -> (script that moves it, measure, truth key that scripts it)
FEATURES = {
    "wink_left": ("wink", eye_ratio_left, None),
    "wink_right": ("wink", eye_ratio_right, None),
    "blink": ("blink", eye_open_ratio, "eye_open"),
    "brows": ("brows", brow_height, "brow"),
    "smile": ("smile", mouth_corner_lift, "smile"),
    "purse": ("purse", mouth_width, "purse"),
    "mouth": ("mouth", mouth_open_ratio, "mouth_open"),
}


def rotation_between(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation (Kabsch, with scale and shift left free) taking (N, 3) src onto dst."""
    x, y = src - src.mean(axis=0), dst - dst.mean(axis=0)
    u, _, vt = np.linalg.svd(y.T @ x)
    d = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt))) or 1.0])
    return u @ d @ vt


def yaw_pitch_deg(rotation: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) of R = Rz(roll)·Ry(yaw)·Rx(pitch) in camera axes (bench/clips.py's convention:
    yaw > 0 turns the nose toward image left, pitch > 0 tips it down)."""
    yaw = math.degrees(math.asin(float(np.clip(-rotation[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(rotation[2, 1], rotation[2, 2]))
    return yaw, pitch


def head_angles(landmarks: Sequence[FaceLandmarks | None]) -> np.ndarray:
    """(frames, 2) yaw and pitch of each frame's head relative to frame 0, degrees, from Face Mesh's
    3-D rigid points (x, y, z); NaN where no face was found."""
    rigid = list(RIGID_POINTS)

    def xyz(lm: FaceLandmarks) -> np.ndarray:
        return np.column_stack([lm.points[rigid], lm.depth[rigid]]).astype(np.float64)

    reference = xyz(landmarks[0])
    return np.array([yaw_pitch_deg(rotation_between(reference, xyz(lm))) if lm is not None else (np.nan, np.nan)
                     for lm in landmarks])


def fold_share(backward: np.ndarray | None, face_mask: np.ndarray, jump_px: float = 3.0) -> float:
    """Share of face pixels where the output-to-source map is folded: its Jacobian determinant is not
    positive (the picture is mirrored there) over a patch at least 3x3 px. Left out: the map's jumps
    and the one-pixel lines along them, where a near part hides a far one (right, not a fold)."""
    if backward is None:
        return 0.0
    m = backward.astype(np.float64)
    dx, dy = m[:-1, 1:] - m[:-1, :-1], m[1:, :-1] - m[:-1, :-1]
    det = dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0]
    smooth = (np.linalg.norm(dx, axis=2) < jump_px) & (np.linalg.norm(dy, axis=2) < jump_px)
    inside = face_mask[:-1, :-1] & smooth
    mirrored = cv2.erode(((det <= 0.0) & inside).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return float(mirrored[inside].mean()) if inside.any() else 0.0


def _frame_fold_share(engine: Animator) -> float:
    """fold_share of the engine's last frame inside its target face outline, for engines that expose
    their backward map (`last_map`, its top-left pixel `last_map_origin`, `last_target`)."""
    backward = getattr(engine, "last_map", None)
    target = getattr(engine, "last_target", None)
    if backward is None or target is None or getattr(engine, "last_map_origin", None) is None:
        return float("nan") if not hasattr(engine, "last_map") else 0.0
    face = np.zeros(backward.shape[:2], np.uint8)
    outline = target.points[list(FACE_OVAL)] - np.asarray(engine.last_map_origin, np.float32)
    cv2.fillPoly(face, [np.round(outline).astype(np.int32)], 1)
    return fold_share(backward, face.astype(bool))


# ---------------------------------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------------------------------
class QualityBench:
    """Runs an engine over the clips (each run at most once) and computes the measures from the runs."""

    def __init__(self, engine_factory: EngineFactory, size: int = 256, frames: int = 90,
                 fps: float = 30.0) -> None:
        self.engine_factory, self.size, self.frames, self.fps = engine_factory, size, frames, fps
        self._clips: dict[tuple[str, str], tuple[list[np.ndarray], dict, list[FaceLandmarks | None]]] = {}
        self._avatars: dict[str, tuple[np.ndarray, FaceLandmarks]] = {}
        self._runs: dict[tuple[str, str, str, bool], Run] = {}
        self._static: dict[tuple[str, str], list[FaceLandmarks | None]] = {}
        self.details: dict[str, dict] = {}

    # -- inputs ------------------------------------------------------------------------------------
    def clip(self, photo: str, script: str) -> tuple[list[np.ndarray], dict, list[FaceLandmarks | None]]:
        """Frames, truth and tracking-mode landmarks of a clip (the landmarks the engine is given)."""
        key = (photo, script)
        if key not in self._clips:
            frames, truth = make_clip(photo, script, self.frames, self.size, self.fps)
            self._clips[key] = (frames, truth, track_landmarks(frames))
        return self._clips[key]

    def avatar(self, photo: str) -> tuple[np.ndarray, FaceLandmarks]:
        """The avatar: the photo's neutral clip frame (no sensor noise) and its static-mode landmarks."""
        if photo not in self._avatars:
            avatar_bgr = face_rig(photo, self.size).neutral_frame()
            landmarks = track_landmarks([avatar_bgr], static=True)[0]
            if landmarks is None:
                raise RuntimeError(f"no face found on the {photo} avatar")
            self._avatars[photo] = (avatar_bgr, landmarks)
        return self._avatars[photo]

    def run(self, driver: str, script: str, avatar: str, smoothing: bool = True) -> Run:
        """Drive a fresh engine with one clip, as the live app would; outputs re-measured."""
        key = (driver, script, avatar, smoothing)
        if key in self._runs:
            return self._runs[key]
        frames, truth, landmarks = self.clip(driver, script)
        avatar_bgr, avatar_landmarks = self.avatar(avatar)
        engine = self.engine_factory(self.size, smoothing)
        engine.set_avatar(avatar_bgr, avatar_landmarks)
        driving = [DrivingFrame(frame, lm, index / self.fps, 1.0)
                   for index, (frame, lm) in enumerate(zip(frames, landmarks))]
        engine.set_neutral(driving[0])
        outputs, folds, busy_s = [], [], 0.0
        for d in driving:
            start = time.perf_counter()
            outputs.append(engine.animate(d))
            busy_s += time.perf_counter() - start
            folds.append(_frame_fold_share(engine))
        animate_ms = 1000.0 * busy_s / len(driving)
        label = f"{driver}/{script} -> {avatar}" + ("" if smoothing else " (filter off)")
        run = Run(label, truth, frames, landmarks, avatar_bgr, avatar_landmarks, outputs,
                  track_landmarks(outputs, static=True), animate_ms, folds)
        lost = sum(lm is None for lm in run.output_landmarks)
        if lost:
            log.warning("%s: no face found on %d of %d output frames", label, lost, len(outputs))
        log.info("ran %s: %.1f ms/frame", label, animate_ms)
        self._runs[key] = run
        return run

    # -- measures ----------------------------------------------------------------------------------
    def _self_l1(self, photo: str, script: str) -> dict[str, float]:
        """Self-reenactment L1 on [0, 1]: whole frame, and split near / far from the face (the clips
        move the head and keep the room still, by their own head model; far from the face the error
        shows how the engine's fade from head to room differs from it)."""
        run = self.run(photo, script, photo)
        far = far_from_face_mask(run.avatar_landmarks, self.size)
        diffs = [np.abs(o.astype(np.float32) - d).mean(axis=2) / 255.0 for o, d in zip(run.outputs, run.driver_frames)]
        return {"whole": float(np.mean([d.mean() for d in diffs])),
                "near_face": float(np.mean([d[~far].mean() for d in diffs])),
                "far_from_face": float(np.mean([d[far].mean() for d in diffs]))}

    def l1_self(self) -> Measure:
        cases = {f"{photo}/{script}": self._self_l1(photo, script)
                 for photo in ("astronaut", "grace_hopper") for script in ("mixed", "mouth", "blink", "roll", "shift")}
        self.details["l1_self"] = cases
        headline = [case["whole"] for name, case in cases.items() if name.endswith("/mixed")]
        return Measure(float(np.mean(headline)), 0.03, False,
                       "self-reenactment mean |output - driver| on [0,1], whole frame, 'mixed' clips")

    def _ratio_corr(self, script: str, ratio: Callable[[FaceLandmarks], float]) -> tuple[float, dict]:
        cases = {}
        for driver, avatar in CROSS_PAIRS:
            run = self.run(driver, script, avatar)
            driven, shown = _finite_pair(series(run.driver_landmarks, ratio), series(run.output_landmarks, ratio))
            cases[run.label] = {"corr": pearson(driven, shown),
                                # How much of the driver's change shows (1 = all of it): a high
                                # correlation with a small gain is a faithful but timid transfer.
                                "gain": float(np.polyfit(driven, shown, 1)[0]),
                                "driver_range": [float(driven.min()), float(driven.max())],
                                "output_range": [float(shown.min()), float(shown.max())]}
        return min(case["corr"] for case in cases.values()), cases

    def mouth_corr(self) -> Measure:
        value, self.details["mouth_corr"] = self._ratio_corr("mouth", mouth_open_ratio)
        return Measure(value, 0.9, True, "Pearson r, driver vs output mouth-open ratio, cross-identity (worst pair)")

    def eye_corr(self) -> Measure:
        value, self.details["eye_corr"] = self._ratio_corr("blink", eye_open_ratio)
        return Measure(value, 0.9, True, "Pearson r, driver vs output eye-open ratio, cross-identity (worst pair)")

    def _expected_avatar_motion(self, run: Run, frame_truth: dict) -> np.ndarray:
        """The scripted head motion carried over to the avatar: same roll and scale about the avatar's
        face centre, shift scaled by the ratio of face widths (the crop rule frames both faces by their
        landmark box, so a shift is the same share of the face in both)."""
        driver_mesh = np.asarray(run.truth["neutral_landmarks"])[:NUM_MESH_POINTS]
        mesh = run.avatar_landmarks.points[:NUM_MESH_POINTS].astype(np.float64)
        size_ratio = float(np.ptp(mesh[:, 0]) / np.ptp(driver_mesh[:, 0]))
        centre = 0.5 * (mesh.min(axis=0) + mesh.max(axis=0))
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), frame_truth["roll_deg"],
                                         frame_truth["scale"])
        matrix[:, 2] += size_ratio * np.asarray(frame_truth["shift_xy"])
        return matrix

    def pose_err_px(self) -> Measure:
        cases, errors = {}, []
        for script in ("roll", "shift"):
            for driver, avatar in CROSS_PAIRS:
                run = self.run(driver, script, avatar)
                reference = run.output_landmarks[0].points[list(RIGID_POINTS)].astype(np.float64)
                run_errors = []
                for frame_truth, lm in zip(run.truth["per_frame"], run.output_landmarks):
                    if lm is None:
                        continue
                    measured = fit_similarity(reference, lm.points[list(RIGID_POINTS)].astype(np.float64))
                    expected = self._expected_avatar_motion(run, frame_truth)
                    gap = apply_affine(measured, reference) - apply_affine(expected, reference)
                    run_errors.append(float(np.linalg.norm(gap, axis=1).mean()))
                cases[run.label] = {"mean_px": float(np.mean(run_errors)), "max_px": float(np.max(run_errors))}
                errors += run_errors
        self.details["pose_err_px"] = cases
        return Measure(float(np.mean(errors)), 2.0, False,
                       "head roll/shift transfer error at rigid landmarks, px at 256, cross-identity")

    @staticmethod
    def _jitter_px(landmarks: Sequence[FaceLandmarks | None]) -> float:
        """Mean frame-to-frame motion of the mesh points (after the warm-up): what the eye sees as
        shimmer, unlike slow drift, which a deviation-from-the-mean measure would also count."""
        points = np.stack([lm.points[:NUM_MESH_POINTS] for lm in landmarks[WARMUP_FRAMES:] if lm is not None])
        return float(np.linalg.norm(np.diff(points, axis=0), axis=2).mean())

    def jitter_residual(self) -> Measure:
        """What the viewer sees: the jitter left with the filter on, relative to the face, so the
        goal means the same at any size and on any CPU (see the module docstring)."""
        driver, avatar = CROSS_PAIRS[0]
        raw = self.run(driver, "still_noise", avatar, smoothing=False)
        smooth = self.run(driver, "still_noise", avatar, smoothing=True)
        off, on = self._jitter_px(raw.output_landmarks), self._jitter_px(smooth.output_landmarks)
        face_px = float(np.ptp(smooth.avatar_landmarks.points[:NUM_MESH_POINTS, 0]))
        floor = JITTER_FLOOR * face_px  # below it, a ratio measures Face Mesh's noise, not the filter
        self.details["jitter"] = {"driver_px": self._jitter_px(raw.driver_landmarks), "output_filter_off_px": off,
                                  "output_filter_on_px": on, "face_width_px": face_px,
                                  "jitter_ratio": off / max(on, floor), "jitter_ratio_floor_px": floor}
        return Measure(100.0 * on / face_px, JITTER_GOAL, False,
                       "output landmark jitter on a still noisy driver, filter on, % of the face width")

    def lag_frames(self) -> Measure:
        driver, avatar = CROSS_PAIRS[0]
        cases = {}
        for smoothing in (True, False):
            run = self.run(driver, "step", avatar, smoothing)
            step_frame = run.truth["step_frame"]

            def rigid_x(landmarks: Sequence[FaceLandmarks | None]) -> np.ndarray:
                return series(landmarks, lambda lm: float(lm.points[list(RIGID_POINTS), 0].mean()))

            driver_half = half_way_frame(rigid_x(run.driver_landmarks), step_frame)
            output_half = half_way_frame(rigid_x(run.output_landmarks), step_frame)
            cases["filter_on" if smoothing else "filter_off"] = {
                "driver_half_way_frame": driver_half, "output_half_way_frame": output_half,
                "lag_frames": output_half - driver_half}
        self.details["lag"] = cases
        return Measure(cases["filter_on"]["lag_frames"], 2.0, False,
                       "frames from driver to output half-way point on a sudden head shift, filter on")

    def bg_drift(self) -> Measure:
        cases = {}
        for script in ("still_noise", "mouth"):
            for driver, avatar in CROSS_PAIRS:
                run = self.run(driver, script, avatar)
                far = far_from_face_mask(run.avatar_landmarks, self.size)
                cases[run.label] = float(np.mean([np.abs(o.astype(np.float32) - run.avatar_bgr)[far].mean()
                                                  for o in run.outputs]))
        self.details["bg_drift"] = cases
        return Measure(max(cases.values()), 1.0, False,
                       "mean |output - avatar| far from the face, head still, 8-bit levels (worst case)")

    def measure_all(self) -> dict[str, Measure]:
        return {"l1_self": self.l1_self(), "mouth_corr": self.mouth_corr(), "eye_corr": self.eye_corr(),
                "pose_err_px": self.pose_err_px(), "jitter_residual": self.jitter_residual(),
                "lag_frames": self.lag_frames(), "bg_drift": self.bg_drift()}

    def animate_ms(self) -> dict[str, float]:
        return {run.label: round(run.animate_ms, 2) for run in self._runs.values()}

    # -- issue 12: features one at a time, 3-D head turns, folds -----------------------------------
    def driver_static(self, run: Run) -> list[FaceLandmarks | None]:
        """The driver's frames measured as the outputs are (static-mode Face Mesh): tracking mode,
        which the engine is given, alternates between two readings on some clips (±0.01 in the eye
        ratio every other frame), noise the instrument would add to the driver's side only."""
        key = ("static", run.label)
        if key not in self._static:
            self._static[key] = track_landmarks(run.driver_frames, static=True)
        return self._static[key]

    def feature_corr(self) -> Measure:
        """Per feature, Pearson r of driver vs output on the clip that moves it, both measured by
        static-mode Face Mesh, cross-identity (worst pair); the headline is the worst feature."""
        cases = {}
        for feature, (script, measure, truth_key) in FEATURES.items():
            pairs = {}
            for driver, avatar in CROSS_PAIRS:
                run = self.run(driver, script, avatar)
                driven, shown = _finite_pair(series(self.driver_static(run), measure),
                                             series(run.output_landmarks, measure))
                pairs[run.label] = {"corr": pearson(driven, shown),
                                    "gain": float(np.polyfit(driven, shown, 1)[0]),
                                    "driver_range": [float(driven.min()), float(driven.max())]}
            cases[feature] = {"corr": min(pair["corr"] for pair in pairs.values()), "pairs": pairs}
        self.details["feature_corr"] = cases
        return Measure(min(case["corr"] for case in cases.values()), 0.9, True,
                       "Pearson r, driver vs output, each feature on its own clip (winks per eye, blink, "
                       "brows, smile, purse, mouth), cross-identity, worst feature and pair")

    def head_angle_err_deg(self) -> Measure:
        """Yaw (on the yaw clip) and pitch (on the pitch clip) of the output vs the driver, both
        measured the same way (static Face Mesh, 3-D rigid points, relative to frame 0)."""
        cases, worst = {}, 0.0
        for script, axis in (("yaw", 0), ("pitch", 1)):
            for driver, avatar in CROSS_PAIRS:
                run = self.run(driver, script, avatar)
                truth = np.array([frame[f"{script}_deg"] for frame in run.truth["per_frame"]])
                driven = head_angles(self.driver_static(run))[:, axis]
                shown = head_angles(run.output_landmarks)[:, axis]
                ok = np.isfinite(driven) & np.isfinite(shown)
                error = float(np.abs(shown[ok] - driven[ok]).mean())
                cases[run.label] = {"mean_err_deg": error, "max_err_deg": float(np.abs(shown[ok] - driven[ok]).max()),
                                    "driver_vs_script_deg": float(np.abs(driven[ok] - truth[ok]).mean()),
                                    "output_vs_script_deg": float(np.abs(shown[ok] - truth[ok]).mean()),
                                    "driver_range_deg": [float(driven[ok].min()), float(driven[ok].max())],
                                    "output_range_deg": [float(shown[ok].min()), float(shown[ok].max())]}
                worst = max(worst, error)
        self.details["head_angle_err_deg"] = cases
        return Measure(worst, 3.0, False, "mean |output - driver| yaw (yaw clip) and pitch (pitch clip), degrees, "
                                          "cross-identity, worst clip and pair")

    def fold_share_max(self) -> Measure:
        """Folds in the face region on the clips that turn and lean the head (engines that expose
        their backward map; NaN otherwise)."""
        cases = {}
        for script in ("yaw", "pitch", "lean"):
            for driver, avatar in CROSS_PAIRS:
                run = self.run(driver, script, avatar)
                cases[run.label] = float(np.nanmax(run.fold_shares)) if np.isfinite(run.fold_shares).any() else float("nan")
        self.details["fold_share"] = cases
        return Measure(max(cases.values()), 0.001, False,
                       "largest share of face pixels where the output-to-avatar map is folded (mirrored), "
                       "yaw/pitch/lean clips, any frame")

    def measure_hard(self) -> dict[str, Measure]:
        return {"feature_corr": self.feature_corr(), "head_angle_err_deg": self.head_angle_err_deg(),
                "fold_share": self.fold_share_max()}


# ---------------------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------------------
def contact_sheet(runs: Sequence[Run], columns: int = 6, cell: int = 192, label_width: int = 230) -> np.ndarray:
    """Rows driver | avatar | output per run, columns at evenly spaced frames; labelled."""
    frames = len(runs[0].outputs)
    picks = np.linspace(0, frames - 1, columns).round().astype(int)
    header = np.full((28, label_width + columns * cell, 3), 255, np.uint8)
    for c, index in enumerate(picks):
        cv2.putText(header, f"frame {index}", (label_width + c * cell + 6, 20), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 1, cv2.LINE_AA)
    blocks = [header]
    for run in runs:
        for role, images in (("driver", run.driver_frames), ("avatar", [run.avatar_bgr] * frames),
                             ("output", run.outputs)):
            label = np.full((cell, label_width, 3), 255, np.uint8)
            driven_by, animated = run.label.split(" -> ")
            for line, text in enumerate((role, f"driver {driven_by}", f"avatar {animated}")):
                cv2.putText(label, text, (6, 24 + 20 * line),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.55 if line == 0 else 0.42, (0, 0, 0),
                            2 if line == 0 else 1, cv2.LINE_AA)
            row = [label] + [cv2.resize(images[i], (cell, cell), interpolation=cv2.INTER_AREA) for i in picks]
            blocks.append(np.hstack(row))
        blocks.append(np.full((6, blocks[0].shape[1], 3), 128, np.uint8))  # separates runs
    return np.vstack(blocks)


def _extreme_frame(truth: dict, script: str) -> int:
    """The frame where a hard script is furthest from the neutral (by its own truth)."""
    frames = truth["per_frame"]
    value = {"yaw": lambda f: abs(f["yaw_deg"]), "pitch": lambda f: abs(f["pitch_deg"]),
             "lean": lambda f: f["scale"], "wink": lambda f: 1.0 - min(f["eye_open_lr"]),
             "brows": lambda f: f["brow"], "smile": lambda f: f["smile"], "purse": lambda f: f["purse"]}[script]
    return int(np.argmax([value(f) for f in frames]))


def hardest_frames_sheet(bench: QualityBench, cell: int = 160) -> np.ndarray:
    """Per hard script and cross-identity pair, at the script's extreme frame (and, for the turns,
    the opposite extreme): driver | avatar | output, labelled."""
    rows = []
    for script in HARD_SCRIPTS:
        for driver, avatar in CROSS_PAIRS:
            run = bench.run(driver, script, avatar)
            picks = [_extreme_frame(run.truth, script)]
            if script in ("yaw", "pitch"):
                angle = [f[f"{script}_deg"] for f in run.truth["per_frame"]]
                picks = [int(np.argmax(angle)), int(np.argmin(angle))]
            cells = []
            for index in picks:
                for role, image in (("driver", run.driver_frames[index]), ("avatar", run.avatar_bgr),
                                    ("output", run.outputs[index])):
                    tile = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA)
                    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
                        cv2.putText(tile, f"{script} #{index} {role}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                                    colour, thickness, cv2.LINE_AA)
                    cells.append(tile)
            rows.append(np.hstack(cells))
    width = max(row.shape[1] for row in rows)
    return np.vstack([np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows])


# ---------------------------------------------------------------------------------------------------
# Engine and CLI
# ---------------------------------------------------------------------------------------------------
def mesh_engine(size: int, smoothing: bool) -> Animator:
    """A fresh MeshAnimator with its landmark One Euro filter on or off."""
    from avatarify.engines.mesh import MeshAnimator
    from avatarify.motion import MotionSettings

    return MeshAnimator(motion=MotionSettings(smoothing=smoothing))


def run_bench(out_dir: Path, engine_factory: EngineFactory = mesh_engine, frames: int = 90,
              size: int = 256, fps: float = 30.0, call_picture: bool = True) -> dict:
    """Measure, then write out_dir/quality.json and out_dir/quality_sheet.png; returns the JSON dict."""

    start = time.perf_counter()
    bench = QualityBench(engine_factory, size, frames, fps)
    measures = bench.measure_all()
    measures.update(bench.measure_hard())
    sheet_runs = [bench.run("grace_hopper", "mixed", "astronaut"), bench.run("astronaut", "mixed", "grace_hopper"),
                  bench.run("astronaut", "mixed", "astronaut")]
    engine = engine_factory(size, True)
    result = {
        "engine": engine.name,
        **engine.backend_info(),
        "size": size, "frames": frames, "fps": fps,
        **{key: measure.as_dict() for key, measure in measures.items()},
        "all_pass": all(measure.passed for measure in measures.values()),
        "details": bench.details,
        "animate_ms_per_frame": bench.animate_ms(),
    }
    if call_picture:
        result["call_picture"] = run_call_quality(out_dir, min(frames, 60))
        result["all_pass"] = result["all_pass"] and result["call_picture"]["all_pass"]
    result["bench_s"] = round(time.perf_counter() - start, 1)
    write_json(out_dir / "quality.json", result)
    write_png(out_dir / "quality_sheet.png", contact_sheet(sheet_runs))
    write_png(out_dir / "quality_hard_sheet.png", hardest_frames_sheet(bench))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure engine quality on synthetic driving clips.")
    parser.add_argument("--out", required=True, type=Path, help="folder for quality.json and quality_sheet.png")
    parser.add_argument("--small", action="store_true", help="short clips (36 frames) for a quick look")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 90, small 36)")
    parser.add_argument("--size", type=int, default=256, choices=(256, 512))
    parser.add_argument("--no-call-picture", action="store_true", help="skip the 1280x720 call-picture measures")
    args = parser.parse_args(argv)
    setup_cli_logging()
    result = run_bench(args.out, frames=args.frames or (36 if args.small else 90), size=args.size,
                       call_picture=not args.no_call_picture)
    for key, value in result.items():
        if isinstance(value, dict) and "goal" in value:
            print(f"{key:14s} {value['value']:>9.4f}  goal {value['goal']:<8s} {'PASS' if value['pass'] else 'FAIL'}")
    if "call_picture" in result:
        print_verdicts(result["call_picture"], prefix="call ")
    print(f"all pass: {result['all_pass']}   ({result['bench_s']} s)   {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
