"""Quality of the call picture: what a call participant sees at the camera's resolution.

Part of `bench/quality.py` (its JSON gains a "call_picture" section and it writes call_sheet.png),
runnable alone: `python bench/call_quality.py --out DIR [--frames N] [--checkpoint CKPT]`.

Input: a high-detail photo (a real photo enlarged 3x with fine grain added: detail the old 256-px
pipeline could not carry), framed for a 1280x720 call; a synthetic driving clip with strong head
motion and mouth (bench/clips.py). Engines: the mesh engine and the FOMM engine (its paste-back; with
random weights in the official layout unless --checkpoint is given, so its face is noise when it
moves: only the paste-back's own properties are measured on it).

Measures, per engine (goals of issue 8):
  detail_ratio   high-pass energy of the face region of the output at the neutral pose over that of
                 the photo mapped to the same scale (the framed picture)              >= 0.8
  psnr_neutral   PSNR of the output at the neutral pose against that picture (dB)       >= 30
  far_change     mean |output - picture| (8-bit levels) over pixels farther than one face width
                 from the face, worst frame                                              <= 1
  seam_ratio     gradient energy of the output along the seam over the picture's own there, on
                 the frame with the strongest motion: FOMM's paste-back mask border (its 0.5 level),
                 the mesh engine's warped-region edge (it pastes nothing back)            <= 1.2
and, for comparison, `old_detail_ratio`: the same face detail through the old path (256-px face
crop, scaled up and padded to the camera frame).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/call_quality.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.compose import crop_photo, frame_photo, to_camera  # noqa: E402
from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.engines.base import Animator  # noqa: E402
from avatarify.motion import NUM_MESH_POINTS  # noqa: E402
from bench.clips import load_photo_bgr, make_clip, track_landmarks  # noqa: E402
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402

log = logging.getLogger(__name__)

CAMERA = (1280, 720)
GOALS = {"detail_ratio": (">=", 0.8), "psnr_neutral": (">=", 30.0), "far_change": ("<=", 1.0),
         "seam_ratio": ("<=", 1.2)}
DRIVER = ("grace_hopper", "mixed")  # roll, shift, scale, mouth, blinks, gaze
DETAIL_SIGMA = 1.0  # px: the high-pass keeps what a Gaussian of this sigma removes


def high_detail_photo(photo: str = "astronaut", scale: int = 3, grain: float = 6.0, seed: int = 0) -> np.ndarray:
    """A real photo enlarged `scale` times with fine grain (sigma `grain` levels, ~1 px) added."""
    image = load_photo_bgr(photo)
    large = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LANCZOS4)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, large.shape[:2]).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.6)
    noise *= grain / max(float(noise.std()), 1e-6)
    return np.clip(large.astype(np.float32) + noise[..., None], 0, 255).astype(np.uint8)


def face_mask(landmarks: FaceLandmarks, shape: tuple[int, int]) -> np.ndarray:
    """The face mesh's hull (bool)."""
    mask = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(np.round(landmarks.points[:NUM_MESH_POINTS]).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def far_mask(landmarks: FaceLandmarks, shape: tuple[int, int]) -> np.ndarray:
    """Pixels farther than one face width from the face (bool)."""
    width = int(np.ptp(landmarks.points[:NUM_MESH_POINTS, 0]))
    near = cv2.dilate(face_mask(landmarks, shape).astype(np.uint8),
                      cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1)))
    return near == 0


def high_pass_energy(image_bgr: np.ndarray, mask: np.ndarray) -> float:
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), DETAIL_SIGMA)
    return float((detail[mask] ** 2).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def gradient_energy(image_bgr: np.ndarray, where: np.ndarray) -> float:
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    return float((gx[where] ** 2 + gy[where] ** 2).mean())


def mask_border(mask_roi: np.ndarray, roi: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """Picture pixels on the 0.5 level of a paste-back mask (bool, picture-sized)."""
    inside = (mask_roi >= 0.5).astype(np.uint8)
    edge = cv2.morphologyEx(inside, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    border = np.zeros(shape, bool)
    border[roi] = edge
    return border


def region_border(roi: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """The pixels on both sides of a rectangle's edges inside the picture (bool)."""
    inside = np.zeros(shape, np.uint8)
    inside[roi] = 1
    edge = cv2.morphologyEx(inside, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    edge[[0, -1], :] = False  # the picture's own edge is no seam
    edge[:, [0, -1]] = False
    return edge


def old_pipeline(photo_bgr: np.ndarray, landmarks: FaceLandmarks) -> np.ndarray:
    """What the call got before: the 256-px face crop, scaled and padded to the camera frame."""
    crop = crop_photo(photo_bgr, landmarks, 256, 0.3)
    return to_camera(crop.image_bgr, *CAMERA, pad=True)


def old_detail_ratio(photo_bgr: np.ndarray, landmarks: FaceLandmarks, old: np.ndarray) -> float:
    """detail_ratio of the old path: its face (the centre square of the padded frame) against the
    same face box cut from the photo straight at that scale."""
    side = CAMERA[1]
    reference = crop_photo(photo_bgr, landmarks, side, 0.3)
    left = (CAMERA[0] - side) // 2
    mask = face_mask(reference.landmarks, (side, side))
    return high_pass_energy(old[:, left:left + side], mask) / high_pass_energy(reference.image_bgr, mask)


def strongest_motion_frame(landmarks: Sequence[FaceLandmarks | None]) -> int:
    neutral = landmarks[0].points[:NUM_MESH_POINTS]
    motion = [np.linalg.norm(lm.points[:NUM_MESH_POINTS] - neutral, axis=1).mean() if lm is not None else -1.0
              for lm in landmarks]
    return int(np.argmax(motion))


def run_engine(engine: Animator, picture: np.ndarray, landmarks: FaceLandmarks, frames: list[np.ndarray],
               driving_landmarks: list[FaceLandmarks | None], fps: float = 30.0) -> tuple[list[np.ndarray], float]:
    engine.set_avatar(picture, landmarks)
    driving = [DrivingFrame(f, lm, i / fps) for i, (f, lm) in enumerate(zip(frames, driving_landmarks))]
    engine.set_neutral(driving[0])
    start = time.perf_counter()
    outputs = [engine.animate(d) for d in driving]
    return outputs, 1000.0 * (time.perf_counter() - start) / len(outputs)


def judge(values: dict) -> dict:
    verdict = {}
    for key, (op, goal) in GOALS.items():
        value = values[key]
        met = bool(np.isfinite(value) or value == float("inf")) and (value >= goal if op == ">=" else value <= goal)
        verdict[key] = {"value": round(float(value), 4) if np.isfinite(value) else str(value),
                        "goal": f"{op} {goal:g}", "pass": met}
    return verdict


def measure(engine: Animator, picture: np.ndarray, landmarks: FaceLandmarks, frames: list[np.ndarray],
            driving_landmarks: list[FaceLandmarks | None]) -> tuple[dict, list[np.ndarray]]:
    """The four measures for one engine (module docstring) and its outputs."""
    outputs, ms = run_engine(engine, picture, landmarks, frames, driving_landmarks)
    shape = picture.shape[:2]
    face = face_mask(landmarks, shape)
    far = far_mask(landmarks, shape)
    strongest = strongest_motion_frame(driving_landmarks)
    paste = getattr(engine, "paste_back", None)
    if paste is not None:  # FOMM: its own mask of that frame (widened to where the head moved)
        engine.animate(DrivingFrame(frames[strongest], driving_landmarks[strongest], len(frames) / 30.0))
        border = mask_border(paste.last_mask, paste.roi, shape)
    else:  # mesh: the warped region meets the untouched photo at its ROI's edge
        border = region_border(engine.roi, shape)
    values = {
        "detail_ratio": high_pass_energy(outputs[0], face) / high_pass_energy(picture, face),
        "psnr_neutral": psnr(outputs[0][face], picture[face]),
        "far_change": max(float(np.abs(o.astype(np.float32) - picture)[far].mean()) for o in outputs),
        "seam_ratio": gradient_energy(outputs[strongest], border) / gradient_energy(picture, border),
    }
    return {**judge(values), "strongest_frame": strongest, "animate_ms": round(ms, 2),
            "far_share_of_frame": round(float(far.mean()), 3)}, outputs


def fomm_engine(checkpoint: Path | None, margin: float = 0.3) -> tuple[Animator, str]:
    """The FOMM engine on the torch runner (fast fp32 net), with the given or random weights."""
    from avatarify.engines.fomm import FommAnimator
    from avatarify.runners import TorchRunner
    from models.fomm.checkpoint import load_fomm, save_random_checkpoint

    weights = "checkpoint"
    if checkpoint is None:
        checkpoint = Path(tempfile.mkdtemp()) / "random.pth.tar"
        save_random_checkpoint(checkpoint, seed=0)
        weights = "random weights (official layout)"
    return FommAnimator(TorchRunner(*load_fomm(checkpoint), optimized=True), margin), weights


def sheet(picture: np.ndarray, old: np.ndarray, outputs: dict[str, list[np.ndarray]], strongest: int,
          landmarks: FaceLandmarks, width: int = 640) -> np.ndarray:
    """Row 1: old output | new output (mesh, neutral). Row 2: face detail, old | new (1:1 pixels).
    Row 3: mesh and FOMM at the strongest motion."""
    def small(image: np.ndarray, text: str) -> np.ndarray:
        tile = cv2.resize(image, (width, width * image.shape[0] // image.shape[1]), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(tile, text, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 1, cv2.LINE_AA)
        return tile

    x0, y0, x1, y1 = (int(v) for v in (*landmarks.points.min(axis=0), *landmarks.points.max(axis=0)))
    cx, cy, half = (x0 + x1) // 2, (y0 + y1) // 2, width // 2
    zoom = (slice(max(cy - 180, 0), cy + 180), slice(max(cx - half, 0), cx + half))
    rows = [np.hstack([small(old, "before: 256 crop, padded"), small(outputs["mesh"][0], "now: the photo, full resolution")]),
            np.hstack([small(old[zoom], "before, 1:1 pixels"), small(outputs["mesh"][0][zoom], "now, 1:1 pixels")])]
    moving = [small(frames[strongest], f"{name}, strongest motion") for name, frames in outputs.items()]
    rows.append(np.hstack(moving[:2]))
    return np.vstack(rows)


def run_call_quality(out_dir: Path, frames: int = 60, checkpoint: Path | None = None) -> dict:
    """Measure both engines; write call_quality.json and call_sheet.png into out_dir."""
    from avatarify.engines.mesh import MeshAnimator
    from avatarify.landmarks import FaceMeshDetector

    start = time.perf_counter()
    photo = high_detail_photo()
    with FaceMeshDetector(static=True) as detector:
        photo_face = detector.detect(photo)
    framed = frame_photo(photo, photo_face, *CAMERA)
    clip, _ = make_clip(*DRIVER, frames=frames, size=256)
    driving_landmarks = track_landmarks(clip)
    old = old_pipeline(photo, photo_face)
    old_detail = old_detail_ratio(photo, photo_face, old)

    fomm, weights = fomm_engine(checkpoint)
    results, outputs = {}, {}
    for name, engine in (("mesh", MeshAnimator()), ("fomm", fomm)):
        results[name], outputs[name] = measure(engine, framed.image_bgr, framed.landmarks, clip,
                                               driving_landmarks)
        log.info("%s: %s", name, {k: v["value"] for k, v in results[name].items() if isinstance(v, dict)})
    strongest = results["mesh"]["strongest_frame"]
    report = {
        "camera": list(CAMERA), "photo": "astronaut x3 + grain", "photo_size": list(photo.shape[1::-1]),
        "driver": "/".join(DRIVER), "frames": frames, "fomm_weights": weights,
        "old_detail_ratio": round(old_detail, 4), "engines": results,
        "all_pass": all(m["pass"] for r in results.values() for m in r.values() if isinstance(m, dict)),
        "bench_s": round(time.perf_counter() - start, 1),
    }
    write_json(out_dir / "call_quality.json", report)
    write_png(out_dir / "call_sheet.png", sheet(framed.image_bgr, old, outputs, strongest, framed.landmarks))
    return report


def print_verdicts(report: dict, prefix: str = "") -> None:
    """One line per engine and measure: value, goal, PASS/FAIL."""
    for name, result in report["engines"].items():
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"{prefix}{name:5s} {key:13s} {value['value']!s:>9}  goal {value['goal']:<7s} "
                      f"{'PASS' if value['pass'] else 'FAIL'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--checkpoint", type=Path, default=None, help="FOMM checkpoint (default: random weights)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    report = run_call_quality(args.out, args.frames, args.checkpoint)
    print_verdicts(report)
    print(f"old pipeline detail ratio {report['old_detail_ratio']}; all pass: {report['all_pass']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
