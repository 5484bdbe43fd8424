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
  brow_r        the same for each brow's height over its upper lid (`brow_heights`, face heights)
  vgaze_r       the same for each iris's height above its eye's corner line (`iris_heights`, eye widths)
  *_amp         (brow, eye, mouth) the least-squares slope of the output's change on the driver's:
                1 = the avatar moves the feature as far as the driver, < 1 damped
  teeth         the saturation of the brightest third of the mouth interior (bench/teeth.py, where
                that module exists) on driver and output, over frames where both show it open
A feature counts only where the driver really moves it: its spread between the percentiles of
MOVES[feature] over the video is at least that entry's threshold; a correlation of a feature that
stays still measures tracker noise. Over all videos: the median of each (counted) measure, the
worst video's, and the worst L1.

With `--photos DIR` the same drivers also drive real avatar photos (every *.jpg/*.png in DIR, read
in place, beside the astronaut and Grace Hopper photos): the photo's face cropped as the driver's
(square box, `--margin`, `--size`), its static-mode landmarks, the neutral frame 0 of the video.
There is no ground truth for L1; every other measure is taken as above, under "photos".

Pictures: real_drivers_sheet.png (per video: frame 0 and its hardest frames, driver | output |
difference) and real_drivers_expressions_<video>.png (per avatar a row, per moment a pair driver |
avatar: the widest-open mouths, the brows' biggest raise and lowering, the highest and lowest gaze).

CLI: `python bench/real_drivers.py --real /work/shared/real_drivers --out DIR [--photos DIR] [--max-frames N]`.
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
from avatarify.motion import brow_heights, eye_open_ratios, iris_heights, mouth_open_ratio  # noqa: E402
from avatarify.tracking import crop_square, square_face_box  # noqa: E402
from bench.clips import PHOTOS, load_photo_bgr, track_landmarks  # noqa: E402
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402
from bench.quality import RIGID_POINTS, fit_similarity, pearson  # noqa: E402

log = logging.getLogger(__name__)

# The least spread over a video for a feature to count as moved by the driver, between these
# percentiles. Brows and gaze are measured between the 5th and 95th: their tracker noise is a
# larger share of their motion, and a few frames of a blink (the iris sinks with the lid) must not
# make a still gaze count.
MOVES = {"eye": (0.08, (2, 98)), "mouth": (0.1, (2, 98)), "roll": (4.0, (2, 98)),
         "brow": (0.015, (5, 95)), "vgaze": (0.08, (5, 95))}
# Goals on the median video (the first block) and on the worst one (the second).
GOALS = {"eye_corr": (">=", 0.9), "roll_corr": (">=", 0.95), "mouth_corr": (">=", 0.95),
         "l1_median": ("<=", 0.03), "l1_worst": ("<=", 0.06),
         "brow_r_worst": (">=", 0.85), "brow_amp_worst": (">=", 0.75), "eye_amp_worst": (">=", 0.75),
         "vgaze_r_worst": (">=", 0.9)}
# Per-video measures summarised (median and worst video) beside the goals.
REPORTED = ("eye_corr", "mouth_corr", "roll_corr", "brow_r", "vgaze_r", "brow_amp", "eye_amp", "mouth_amp")
# Each series the bench measures and the feature whose MOVES threshold it takes.
FEATURES = {"eye_left": "eye", "eye_right": "eye", "mouth": "mouth", "roll": "roll",
            "brow_left": "brow", "brow_right": "brow", "vgaze_left": "vgaze", "vgaze_right": "vgaze"}

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


def face_crop(image_bgr: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The square crop of the picture's face (the app's crop rule), or RuntimeError without one."""
    first = track_landmarks([image_bgr], static=True)[0]
    if first is None:
        raise RuntimeError("no face found")
    return crop_square(image_bgr, square_face_box(first, margin), size)[0]


def fixed_crops(frames: Sequence[np.ndarray], size: int, margin: float) -> list[np.ndarray]:
    """Every frame cut by the one square box found on frame 0's face (FOMM's protocol)."""
    first = track_landmarks([frames[0]], static=True)[0]
    if first is None:
        raise RuntimeError("no face on frame 0")
    box = square_face_box(first, margin)
    return [crop_square(frame, box, size)[0] for frame in frames]


def drive(name: str, avatar_bgr: np.ndarray, crops: Sequence[np.ndarray], landmarks: Sequence[FaceLandmarks | None],
          fps: float, engine_factory: EngineFactory) -> VideoRun:
    """The avatar (with its static-mode landmarks) driven by every crop, frame 0 the neutral; the
    outputs re-measured by static-mode Face Mesh."""
    avatar_landmarks = track_landmarks([avatar_bgr], static=True)[0]
    engine = engine_factory()
    engine.set_avatar(avatar_bgr, avatar_landmarks)
    driving = [DrivingFrame(crop, lm, index / fps) for index, (crop, lm) in enumerate(zip(crops, landmarks))]
    engine.set_neutral(driving[0])
    start = time.perf_counter()
    outputs = [engine.animate(d) for d in driving]
    animate_ms = 1000.0 * (time.perf_counter() - start) / len(driving)
    return VideoRun(name, fps, list(crops), list(landmarks), outputs, track_landmarks(outputs, static=True), animate_ms)


def reconstruct(name: str, frames: Sequence[np.ndarray], fps: float, engine_factory: EngineFactory,
                size: int, margin: float) -> VideoRun:
    crops = fixed_crops(frames, size, margin)
    return drive(name, crops[0], crops, track_landmarks(crops), fps, engine_factory)


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


def _per_side(landmarks: Sequence[FaceLandmarks | None], measure: Callable) -> np.ndarray:
    return np.array([measure(lm.points) if lm is not None else (np.nan, np.nan) for lm in landmarks])


def feature_series(landmarks: Sequence[FaceLandmarks | None]) -> dict[str, np.ndarray]:
    """Per frame: each eye's lid-gap ratio, the mouth-open ratio, the head roll, each brow's height
    and each iris's height (NaN: no face)."""
    eyes, brows, irises = (_per_side(landmarks, m) for m in (eye_open_ratios, brow_heights, iris_heights))
    mouth = np.array([mouth_open_ratio(lm.points) if lm is not None else np.nan for lm in landmarks])
    return {"eye_left": eyes[:, 0], "eye_right": eyes[:, 1], "mouth": mouth, "roll": roll_deg(landmarks),
            "brow_left": brows[:, 0], "brow_right": brows[:, 1], "vgaze_left": irises[:, 0],
            "vgaze_right": irises[:, 1]}


def _moves(values: np.ndarray, feature: str) -> tuple[bool, float]:
    threshold, (lo, hi) = MOVES[feature]
    finite = values[np.isfinite(values)]
    spread = float(np.percentile(finite, hi) - np.percentile(finite, lo)) if finite.size else 0.0
    return spread >= threshold, spread


def _both(driven: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(driven) & np.isfinite(shown)
    return driven[ok], shown[ok]


def _corr(driven: np.ndarray, shown: np.ndarray) -> float:
    return pearson(*_both(driven, shown))


def amplitude(driven: np.ndarray, shown: np.ndarray) -> float:
    """Least-squares slope of the output's change on the driver's (NaN where the driver is still):
    how far the avatar moves a feature per unit the driver moves it."""
    d, o = _both(driven, shown)
    if d.size < 3 or d.std() < 1e-9:
        return float("nan")
    d = d - d.mean()
    return float((d * (o - o.mean())).sum() / (d * d).sum())


def _mean_of_moving(features: dict, keys: Sequence[str], value: str) -> float | None:
    values = [features[k][value] for k in keys if features[k]["moves"] and math.isfinite(features[k][value])]
    return float(np.mean(values)) if values else None


def feature_measures(driver_landmarks: Sequence[FaceLandmarks | None],
                     output_landmarks: Sequence[FaceLandmarks | None]) -> dict:
    """Per feature whether the driver moves it, its spread, r and amplitude; per video the means of
    the moving sides (eyes, brows, irises) and of the mouth and roll."""
    driven, shown = feature_series(driver_landmarks), feature_series(output_landmarks)
    features = {}
    for key, feature in FEATURES.items():
        moves, spread = _moves(driven[key], feature)
        features[key] = {"moves": moves, "driver_range": round(spread, 4), "corr": _corr(driven[key], shown[key]),
                         "amp": amplitude(driven[key], shown[key])}
    result = {"features": features,
              "eye_corr": _mean_of_moving(features, ("eye_left", "eye_right"), "corr"),
              "eye_amp": _mean_of_moving(features, ("eye_left", "eye_right"), "amp"),
              "brow_r": _mean_of_moving(features, ("brow_left", "brow_right"), "corr"),
              "brow_amp": _mean_of_moving(features, ("brow_left", "brow_right"), "amp"),
              "vgaze_r": _mean_of_moving(features, ("vgaze_left", "vgaze_right"), "corr")}
    for key in ("mouth", "roll"):
        result[f"{key}_corr"] = _mean_of_moving(features, (key,), "corr")
    result["mouth_amp"] = _mean_of_moving(features, ("mouth",), "amp")
    return result


def _teeth_measure() -> Callable | None:
    """bench/teeth.py's measure of the mouth interior, where that module exists (another branch
    brings it); None: the teeth are reported as not measured."""
    try:
        from bench.teeth import mouth_interior_measures
    except ImportError:
        return None
    return mouth_interior_measures


def teeth_saturation(run: VideoRun) -> dict:
    """The saturation of the brightest third of the mouth interior (the teeth, where they show), on
    driver and output over the frames where both mouths are open enough to measure: an avatar whose
    teeth are the driver's own, colour-matched, keeps their saturation; a tinted or grey fill does not."""
    measure = _teeth_measure()
    if measure is None:
        return {"measured": False, "why": "not measured (bench/teeth.py is not on this branch)"}
    driver, output = [], []
    for crop, lm, image, out_lm in zip(run.driver, run.driver_landmarks, run.outputs, run.output_landmarks):
        if lm is None or out_lm is None:
            continue
        seen = measure(crop, lm.points)
        if seen is None:
            continue
        shown = measure(image, out_lm.points)
        if shown is None:
            continue
        driver.append(seen["bright_saturation"])
        output.append(shown["bright_saturation"])
    if not driver:
        return {"measured": False, "why": "no frame shows both mouths open"}
    driver_median, output_median = float(np.median(driver)), float(np.median(output))
    return {"measured": True, "frames": len(driver), "driver_median": round(driver_median, 4),
            "output_median": round(output_median, 4), "output_minus_driver": round(output_median - driver_median, 4)}


def measure_video(run: VideoRun, with_l1: bool = True) -> dict:
    result = {"frames": len(run.outputs), "fps": run.fps, "animate_ms": round(run.animate_ms, 2),
              "output_faces_lost": int(sum(lm is None for lm in run.output_landmarks))}
    if with_l1:
        l1 = np.array([np.abs(o.astype(np.float32) - d).mean() / 255.0 for o, d in zip(run.outputs, run.driver)])
        result.update({"l1": float(l1.mean()), "l1_p95_frame": float(np.percentile(l1, 95)), "_l1_per_frame": l1})
    result.update(feature_measures(run.driver_landmarks, run.output_landmarks))
    result["teeth"] = teeth_saturation(run)
    return result


def _verdict(key: str, value: float | None) -> dict:
    op, goal = GOALS[key]
    met = value is not None and (value >= goal if op == ">=" else value <= goal)
    return {"value": None if value is None else round(value, 4), "goal": f"{op} {goal}", "met": met}


def summarise(per_video: dict[str, dict]) -> dict:
    """Per measure the median video and the worst one, next to their goals (where there is one)."""
    summary = {}
    for key in REPORTED:
        values = [v[key] for v in per_video.values() if v.get(key) is not None and math.isfinite(v[key])]
        for name, value in ((key if key in GOALS else f"{key}_median", np.median(values) if values else None),
                            (f"{key}_worst", min(values) if values else None)):
            entry = _verdict(name, value) if name in GOALS else {
                "value": None if value is None else round(float(value), 4), "goal": None, "met": None}
            summary[name] = {**entry, "videos_counted": len(values)}
    if all("l1" in v for v in per_video.values()):
        l1 = [v["l1"] for v in per_video.values()]
        for name, value in (("l1_median", float(np.median(l1))), ("l1_worst", max(l1))):
            summary[name] = {**_verdict(name, value), "videos_counted": len(l1)}
    return summary


# ---------------------------------------------------------------------------------------------------
# Pictures
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


def expression_moments(landmarks: Sequence[FaceLandmarks | None], fps: float) -> list[tuple[str, int]]:
    """The driver's frames worth looking at (label, frame): the two widest-open mouths (a second
    apart), the brows' biggest raise and lowering and the highest and lowest gaze (both sides'
    mean). Brow and gaze moments skip frames with half-shut eyes: a lid closing raises the brow over
    it, and Face Mesh's iris sinks with it."""
    series = feature_series(landmarks)
    brow = (series["brow_left"] + series["brow_right"]) / 2.0
    gaze = (series["vgaze_left"] + series["vgaze_right"]) / 2.0
    eyes = (series["eye_left"] + series["eye_right"]) / 2.0
    open_eyes = eyes >= 0.75 * np.nanmedian(eyes)
    mouth = np.nan_to_num(series["mouth"], nan=-1.0)
    picks: list[tuple[str, int]] = []
    for index in np.argsort(-mouth):
        if len(picks) == 2:
            break
        if all(abs(int(index) - p) >= fps for _, p in picks):
            picks.append(("mouth", int(index)))
    for label, values in (("brows up", brow), ("brows down", -brow), ("gaze up", gaze), ("gaze down", -gaze)):
        values = np.where(open_eyes, values, np.nan)
        if np.isfinite(values).any():
            picks.append((label, int(np.nanargmax(values))))
    return picks


def expression_sheet(runs: Sequence[VideoRun], avatar_names: Sequence[str], cell: int = 180) -> np.ndarray:
    """Per avatar a row; per moment of the driver (`expression_moments`) the driver beside the avatar."""
    moments = expression_moments(runs[0].driver_landmarks, runs[0].fps)
    rows = []
    for run, name in zip(runs, avatar_names):
        cells = []
        for label, i in moments:
            cells.append(_labelled(run.driver[i], f"{run.name} #{i} {label}", cell))
            cells.append(_labelled(run.outputs[i], name, cell))
            cells.append(np.full((cell, 4, 3), 255, np.uint8))
        rows.append(np.hstack(cells))
    return np.vstack([np.pad(row, ((0, 4), (0, 0), (0, 0)), constant_values=255) for row in rows])


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def avatar_photos(photos_dir: Path | None) -> dict[str, np.ndarray]:
    """The avatar photos of the photo protocol: the two the tests use, then every *.jpg / *.png in
    `photos_dir` (read in place). None: no photo protocol."""
    if photos_dir is None:
        return {}
    photos = {name: load_photo_bgr(name) for name in PHOTOS}
    for path in sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        image = cv2.imread(str(path))
        if image is None:
            log.warning("%s: not a picture OpenCV can read; skipped", path)
            continue
        photos[path.stem] = image
    return photos


def run_bench(real_dir: Path, out_dir: Path, engine_factory: EngineFactory = mesh_engine, size: int = 256,
              margin: float = 0.5, max_frames: int | None = None, photos_dir: Path | None = None) -> dict:
    start = time.perf_counter()
    videos = sorted(real_dir.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no *.mp4 videos in {real_dir}; pass the folder of real driving videos with --real")
    photos = {}
    for name, image in avatar_photos(photos_dir).items():
        try:
            photos[name] = face_crop(image, size, margin)
        except RuntimeError:
            log.warning("photo %s: no face found; skipped", name)
    per_video, per_pair, sheets = {}, {}, []
    for path in videos:
        frames, fps = read_video(path, max_frames)
        crops = fixed_crops(frames, size, margin)
        landmarks = track_landmarks(crops)
        run = drive(path.stem, crops[0], crops, landmarks, fps, engine_factory)
        result = measure_video(run)
        l1 = result.pop("_l1_per_frame")
        per_video[path.stem] = result
        sheets.append(video_sheet(run, l1))
        log.info("%s: %d frames, L1 %.4f, eye %s, mouth %s, roll %s, brow %s (amp %s), vgaze %s", path.stem,
                 result["frames"], result["l1"], result["eye_corr"], result["mouth_corr"], result["roll_corr"],
                 result["brow_r"], result["brow_amp"], result["vgaze_r"])
        runs, names = [run], ["self"]
        for name, photo in photos.items():
            photo_run = drive(path.stem, photo, crops, landmarks, fps, engine_factory)
            per_pair[f"{path.stem}/{name}"] = measure_video(photo_run, with_l1=False)
            runs.append(photo_run)
            names.append(name)
        write_png(out_dir / f"real_drivers_expressions_{path.stem}.png", expression_sheet(runs, names))
    engine = engine_factory()
    data = {"engine": engine.name, **engine.backend_info(), "size": size, "margin": margin,
            "protocol": "fixed square crop from frame 0's face, avatar = frame 0, neutral = frame 0, every frame "
                        "reconstructed; outputs re-measured with static-mode Face Mesh",
            "moves_threshold": MOVES, "summary": summarise(per_video), "videos": per_video}
    if per_pair:
        data["photos"] = {"protocol": "each photo's face cropped as the driver's, driven by every video from its "
                                      "frame 0; outputs re-measured with static-mode Face Mesh; no L1",
                          "summary": summarise(per_pair), "pairs": per_pair}
    data["bench_s"] = round(time.perf_counter() - start, 1)
    data["all_met"] = all(v["met"] for v in data["summary"].values() if v["met"] is not None)
    write_json(out_dir / "real_drivers.json", data)
    width = max(s.shape[1] for s in sheets)
    write_png(out_dir / "real_drivers_sheet.png",
              np.vstack([np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0)), constant_values=128) for s in sheets]))
    return data


def _print_summary(title: str, summary: dict) -> None:
    print(title)
    for key, value in summary.items():
        verdict = "" if value["goal"] is None else f"  goal {value['goal']}  {'met' if value['met'] else 'NOT met'}"
        print(f"  {key:16s} {value['value']}{verdict}  ({value['videos_counted']} counted)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reconstruct real driving videos (FOMM's protocol) and measure.")
    parser.add_argument("--real", required=True, type=Path, help="folder of real driving videos (*.mp4), read in place")
    parser.add_argument("--out", required=True, type=Path, help="folder for real_drivers.json and the sheets")
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of real avatar photos (*.jpg, *.png), read in place: each is driven by every video too")
    parser.add_argument("--size", type=int, default=256, help="crop side in px (FOMM: 256)")
    parser.add_argument("--margin", type=float, default=0.5, help="crop margin on each side, share of the face box")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per video (default: all)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    for flag, folder in (("--real", args.real), ("--photos", args.photos)):
        if folder is not None and not folder.is_dir():
            print(f"{folder} is not a folder; pass a folder with {flag}.", file=sys.stderr)
            return 2
    data = run_bench(args.real, args.out, size=args.size, margin=args.margin, max_frames=args.max_frames,
                     photos_dir=args.photos)
    _print_summary("self-reconstruction (goals on the median and the worst video)", data["summary"])
    if "photos" in data:
        _print_summary("photos driven by the videos (video x photo)", data["photos"]["summary"])
    print(f"({data['bench_s']} s)  {args.out / 'real_drivers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
