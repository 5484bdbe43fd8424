"""Engine quality on real driving videos, by FOMM's reconstruction protocol.

Input: a folder of real talking-head videos (`--real DIR`, every *.mp4 in it; read in place, never
copied) and an engine (the mesh engine by default). Output in `--out DIR`: real_drivers.json (per
video and over all videos: reconstruction L1 and per-feature correlations next to their goals) and
real_drivers_sheet.png (per video: frame 0 and its hardest frames, driver | output | difference).

Protocol (FOMM's self-reconstruction): a square crop fixed on frame 0's face (the app's crop rule,
`square_face_box`, with `--margin`) is cut from every frame at `--size`; the avatar is frame 0's
crop with its static-mode landmarks, the neutral is frame 0, and the engine reconstructs every frame
from tracking-mode Face Mesh landmarks of that frame's crop, as the live app runs it. The driver's
measures come from those same tracking-mode landmarks; the output is re-measured with static-mode
Face Mesh (the instrument adds no jitter of its own).

Measures per video:
  l1            mean |output - driver| on [0, 1] over the crop, averaged over the frames
  eye_corr      Pearson r of driver vs output lid-gap ratio, per eye, mean of the eyes that move
  mouth_corr    the same for the mouth-open ratio
  roll_corr     the same for the head roll (similarity on rigid points vs frame 0), degrees
A feature counts only where the driver really moves it: its 2nd-98th percentile range over the video
is at least MOVES[feature]; a correlation of a feature that stays still measures tracker noise.
Over all videos: the median of each (counted) measure, and the worst L1.

CLI: `python bench/real_drivers.py --real /work/shared/real_drivers --out DIR [--max-frames N]`.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/real_drivers.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.engines.base import Animator  # noqa: E402
from avatarify.motion import eye_open_ratios, mouth_open_ratio  # noqa: E402
from avatarify.tracking import crop_square, square_face_box  # noqa: E402
from bench.clips import track_landmarks  # noqa: E402
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402
from bench.quality import RIGID_POINTS, fit_similarity, pearson  # noqa: E402

log = logging.getLogger(__name__)

# The least 2nd-98th percentile range over a video for a feature to count as moved by the driver.
MOVES = {"eye": 0.08, "mouth": 0.1, "roll": 4.0}
GOALS = {"eye_corr": (">=", 0.9), "roll_corr": (">=", 0.95), "mouth_corr": (">=", 0.95),
         "l1_median": ("<=", 0.03), "l1_worst": ("<=", 0.06)}

EngineFactory = Callable[[], Animator]


def mesh_engine() -> Animator:
    from avatarify.engines.mesh import MeshAnimator

    return MeshAnimator()


@dataclass
class VideoRun:
    name: str
    fps: float
    driver: list[np.ndarray]
    driver_landmarks: list[FaceLandmarks | None]
    outputs: list[np.ndarray]
    output_landmarks: list[FaceLandmarks | None]
    animate_ms: float


def read_video(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    """Every frame (through the app's one video reader) and the file's frame rate."""
    from avatarify.capture import iter_video_frames, open_video_file

    cap, info = open_video_file(path)
    cap.release()
    return [f.frame_bgr for f in iter_video_frames(path, max_frames, progress=False)], info.fps


def fixed_crops(frames: Sequence[np.ndarray], size: int, margin: float) -> list[np.ndarray]:
    """Every frame cut by the one square box found on frame 0's face (FOMM's protocol)."""
    first = track_landmarks([frames[0]], static=True)[0]
    if first is None:
        raise RuntimeError("no face on frame 0")
    box = square_face_box(first, margin)
    return [crop_square(frame, box, size)[0] for frame in frames]


def reconstruct(name: str, frames: Sequence[np.ndarray], fps: float, engine_factory: EngineFactory,
                size: int, margin: float) -> VideoRun:
    crops = fixed_crops(frames, size, margin)
    landmarks = track_landmarks(crops)
    avatar_landmarks = track_landmarks([crops[0]], static=True)[0]
    engine = engine_factory()
    engine.set_avatar(crops[0], avatar_landmarks)
    driving = [DrivingFrame(crop, lm, index / fps) for index, (crop, lm) in enumerate(zip(crops, landmarks))]
    engine.set_neutral(driving[0])
    start = time.perf_counter()
    outputs = [engine.animate(d) for d in driving]
    animate_ms = 1000.0 * (time.perf_counter() - start) / len(driving)
    return VideoRun(name, fps, crops, landmarks, outputs, track_landmarks(outputs, static=True), animate_ms)


# ---------------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------------
def roll_deg(landmarks: Sequence[FaceLandmarks | None]) -> np.ndarray:
    """Head roll of every frame relative to frame 0 (similarity on the rigid points), degrees."""
    rigid = list(RIGID_POINTS)
    reference = landmarks[0].points[rigid].astype(np.float64)
    out = []
    for lm in landmarks:
        if lm is None:
            out.append(np.nan)
            continue
        m = fit_similarity(reference, lm.points[rigid].astype(np.float64))
        out.append(math.degrees(math.atan2(m[1, 0], m[0, 0])))
    return np.array(out)


def feature_series(landmarks: Sequence[FaceLandmarks | None]) -> dict[str, np.ndarray]:
    """Per frame: each eye's lid-gap ratio, the mouth-open ratio and the head roll (NaN: no face)."""
    eyes = np.array([eye_open_ratios(lm.points) if lm is not None else (np.nan, np.nan) for lm in landmarks])
    mouth = np.array([mouth_open_ratio(lm.points) if lm is not None else np.nan for lm in landmarks])
    return {"eye_left": eyes[:, 0], "eye_right": eyes[:, 1], "mouth": mouth, "roll": roll_deg(landmarks)}


def _moves(values: np.ndarray, feature: str) -> tuple[bool, float]:
    finite = values[np.isfinite(values)]
    spread = float(np.percentile(finite, 98) - np.percentile(finite, 2)) if finite.size else 0.0
    return spread >= MOVES[feature], spread


def _corr(driven: np.ndarray, shown: np.ndarray) -> float:
    ok = np.isfinite(driven) & np.isfinite(shown)
    return pearson(driven[ok], shown[ok])


def measure_video(run: VideoRun) -> dict:
    driven, shown = feature_series(run.driver_landmarks), feature_series(run.output_landmarks)
    l1 = np.array([np.abs(o.astype(np.float32) - d).mean() / 255.0 for o, d in zip(run.outputs, run.driver)])
    result = {"frames": len(run.outputs), "fps": run.fps, "l1": float(l1.mean()), "l1_p95_frame": float(np.percentile(l1, 95)),
              "animate_ms": round(run.animate_ms, 2),
              "output_faces_lost": int(sum(lm is None for lm in run.output_landmarks)), "features": {}}
    for key, feature in (("eye_left", "eye"), ("eye_right", "eye"), ("mouth", "mouth"), ("roll", "roll")):
        moves, spread = _moves(driven[key], feature)
        result["features"][key] = {"moves": moves, "driver_range": round(spread, 4),
                                   "corr": _corr(driven[key], shown[key])}
    eyes = [result["features"][k]["corr"] for k in ("eye_left", "eye_right") if result["features"][k]["moves"]]
    result["eye_corr"] = float(np.mean(eyes)) if eyes else None
    for key in ("mouth", "roll"):
        result[f"{key}_corr"] = result["features"][key]["corr"] if result["features"][key]["moves"] else None
    result["_l1_per_frame"] = l1
    return result


def summarise(per_video: dict[str, dict]) -> dict:
    def median_of(key: str) -> float | None:
        values = [v[key] for v in per_video.values() if v[key] is not None and math.isfinite(v[key])]
        return float(np.median(values)) if values else None

    values = {"eye_corr": median_of("eye_corr"), "roll_corr": median_of("roll_corr"),
              "mouth_corr": median_of("mouth_corr"), "l1_median": median_of("l1"),
              "l1_worst": max(v["l1"] for v in per_video.values())}
    summary = {}
    for key, value in values.items():
        op, goal = GOALS[key]
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        summary[key] = {"value": None if value is None else round(value, 4), "goal": f"{op} {goal}", "met": met,
                        "videos_counted": sum(1 for v in per_video.values()
                                              if key.startswith("l1") or v.get(key) is not None)}
    return summary


# ---------------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------------
def _labelled(image: np.ndarray, text: str, cell: int) -> np.ndarray:
    image = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA)
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, thickness, cv2.LINE_AA)
    return image


def video_sheet(run: VideoRun, l1: np.ndarray, columns: int = 6, cell: int = 200) -> np.ndarray:
    """Frame 0 and the frames of highest L1 (at least a second apart): driver, output, difference."""
    picks = [0]
    for index in np.argsort(-l1):
        if len(picks) >= columns:
            break
        if all(abs(int(index) - p) >= run.fps for p in picks):
            picks.append(int(index))
    picks.sort()
    rows = []
    for role in ("driver", "output", "diff x3"):
        cells = []
        for i in picks:
            if role == "driver":
                image, text = run.driver[i], f"{run.name} #{i}"
            elif role == "output":
                image, text = run.outputs[i], f"output L1 {l1[i]:.3f}"
            else:
                diff = np.abs(run.outputs[i].astype(np.int16) - run.driver[i]).astype(np.uint8)
                image, text = cv2.convertScaleAbs(diff, alpha=3.0), "|out - driver| x3"
            cells.append(_labelled(image, text, cell))
        rows.append(np.hstack(cells))
    return np.vstack(rows)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def run_bench(real_dir: Path, out_dir: Path, engine_factory: EngineFactory = mesh_engine, size: int = 256,
              margin: float = 0.5, max_frames: int | None = None) -> dict:
    start = time.perf_counter()
    videos = sorted(real_dir.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no *.mp4 videos in {real_dir}; pass the folder of real driving videos with --real")
    per_video, sheets = {}, []
    for path in videos:
        frames, fps = read_video(path, max_frames)
        run = reconstruct(path.stem, frames, fps, engine_factory, size, margin)
        result = measure_video(run)
        l1 = result.pop("_l1_per_frame")
        per_video[path.stem] = result
        sheets.append(video_sheet(run, l1))
        log.info("%s: %d frames, L1 %.4f, eye %s, mouth %s, roll %s", path.stem, result["frames"], result["l1"],
                 result["eye_corr"], result["mouth_corr"], result["roll_corr"])
    engine = engine_factory()
    data = {"engine": engine.name, **engine.backend_info(), "size": size, "margin": margin,
            "protocol": "fixed square crop from frame 0's face, avatar = frame 0, neutral = frame 0, every frame "
                        "reconstructed; outputs re-measured with static-mode Face Mesh",
            "moves_threshold": MOVES, "summary": summarise(per_video), "videos": per_video,
            "bench_s": round(time.perf_counter() - start, 1)}
    data["all_met"] = all(v["met"] for v in data["summary"].values())
    write_json(out_dir / "real_drivers.json", data)
    width = max(s.shape[1] for s in sheets)
    write_png(out_dir / "real_drivers_sheet.png",
              np.vstack([np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0)), constant_values=128) for s in sheets]))
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reconstruct real driving videos (FOMM's protocol) and measure.")
    parser.add_argument("--real", required=True, type=Path, help="folder of real driving videos (*.mp4), read in place")
    parser.add_argument("--out", required=True, type=Path, help="folder for real_drivers.json and the sheet")
    parser.add_argument("--size", type=int, default=256, help="crop side in px (FOMM: 256)")
    parser.add_argument("--margin", type=float, default=0.5, help="crop margin on each side, share of the face box")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per video (default: all)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    if not args.real.is_dir():
        print(f"{args.real} is not a folder; pass the folder of real driving videos with --real.", file=sys.stderr)
        return 2
    data = run_bench(args.real, args.out, size=args.size, margin=args.margin, max_frames=args.max_frames)
    for key, value in data["summary"].items():
        print(f"{key:11s} {value['value']}  goal {value['goal']}  {'met' if value['met'] else 'NOT met'}"
              f"  ({value['videos_counted']} videos)")
    print(f"({data['bench_s']} s)  {args.out / 'real_drivers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
