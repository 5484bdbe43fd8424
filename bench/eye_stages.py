"""Diagnostics: where along the mesh engine's path a real driver's eye motion is lost.

Input: the real driving videos (`--real DIR`, read in place, never copied) and `real_drivers.py`'s
protocol (fixed crop from frame 0, avatar = neutral = frame 0). Per video and per eye, these series
of the lid-gap ratio (`eye_open_ratios`, the bench's measure):
  static    the driver's crops measured by static-mode Face Mesh
  tracking  the tracking-mode landmarks the engine receives (real_drivers.py's driver series: its
            eye_corr is tracking~output here)
  target    the engine's target landmarks (`MotionTarget.points`: after smoothing, deadbands,
            the eye-openness mapping), and `openness`, the engine's own per-eye openness value
  output    the engine's output re-measured by static-mode Face Mesh (what the bench compares)
and the Pearson r of each pair, over the frames where all are defined. Output in `--out DIR`:
eye_stages.json (pairs, 2nd-98th percentile ranges and the series), eye_stages.png (per video and
eye, the tracking, target and output series over the frames, each over its own first frame), and
the pairs on stdout. The landmarks of the driver are cached in `--cache DIR`
(outside the repository) so that reruns only re-run the engine.

CLI: `python bench/eye_stages.py --real /work/shared/real_drivers --out DIR [--max-frames N]`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.motion import eye_open_ratios  # noqa: E402
from bench.clips import track_landmarks  # noqa: E402
from bench.common import setup_cli_logging, write_json  # noqa: E402
from bench.quality import pearson  # noqa: E402
from bench.real_drivers import fixed_crops, read_video  # noqa: E402


def _ratios(landmarks: Sequence[FaceLandmarks | None]) -> np.ndarray:
    return np.array([eye_open_ratios(lm.points) if lm is not None else (np.nan, np.nan) for lm in landmarks])


def _pack(landmarks: Sequence[FaceLandmarks | None]) -> tuple[np.ndarray, np.ndarray]:
    points = np.full((len(landmarks), 478, 2), np.nan, np.float32)
    depth = np.full((len(landmarks), 478), np.nan, np.float32)
    for i, lm in enumerate(landmarks):
        if lm is not None:
            points[i] = lm.points
            if lm.depth is not None:
                depth[i] = lm.depth
    return points, depth


def _unpack(points: np.ndarray, depth: np.ndarray, size: tuple[int, int]) -> list[FaceLandmarks | None]:
    out = []
    for p, d in zip(points, depth):
        out.append(None if np.isnan(p).any() else FaceLandmarks(p, 1.0, size, None if np.isnan(d).any() else d))
    return out


def driver_landmarks(path: Path, cache: Path, size: int, margin: float, max_frames: int | None):
    frames, fps = read_video(path, max_frames)
    crops = fixed_crops(frames, size, margin)
    file = cache / f"{path.stem}_{size}_{len(crops)}.npz"
    if file.exists():
        data = np.load(file)
        tracked = _unpack(data["tp"], data["td"], (size, size))
        static = _unpack(data["sp"], data["sd"], (size, size))
    else:
        tracked, static = track_landmarks(crops), track_landmarks(crops, static=True)
        tp, td = _pack(tracked)
        sp, sd = _pack(static)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(file, tp=tp, td=td, sp=sp, sd=sd)
    return crops, fps, tracked, static


def run_video(path: Path, cache: Path, size: int, margin: float, max_frames: int | None) -> dict:
    from avatarify.engines.mesh import MeshAnimator

    crops, fps, tracked, static = driver_landmarks(path, cache, size, margin, max_frames)
    engine = MeshAnimator()
    seen: list[float] = []
    measure = engine.motion.eye_openness

    def recording(undone, eye):  # the engine's own openness value, recorded as it is computed
        value = measure(undone, eye)
        seen.append(value)
        return value

    engine.motion.eye_openness = recording
    engine.set_avatar(crops[0], static[0])
    driving = [DrivingFrame(c, lm, i / fps) for i, (c, lm) in enumerate(zip(crops, tracked))]
    engine.set_neutral(driving[0])
    outputs, targets, openness = [], [], []
    for d in driving:
        seen.clear()
        outputs.append(engine.animate(d))
        t = engine.last_target
        targets.append(FaceLandmarks(t.points, 1.0, d.landmarks.image_size) if d.landmarks is not None else None)
        openness.append(tuple(seen[-2:]) if len(seen) >= 2 else (np.nan, np.nan))
    measured = track_landmarks(outputs, static=True)
    series = {"static": _ratios(static), "tracking": _ratios(tracked), "target": _ratios(targets),
              "openness": np.array(openness, dtype=np.float64), "output": _ratios(measured)}
    result = {"frames": len(crops)}
    for e, side in enumerate(("left", "right")):
        s = {k: v[:, e] for k, v in series.items()}
        ok = np.all([np.isfinite(v) for v in s.values() if np.isfinite(v).any()], axis=0)
        pairs = {}
        names = [k for k in s if np.isfinite(s[k]).any()]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs[f"{a}~{b}"] = round(float(pearson(s[a][ok], s[b][ok])), 3)
        spread = {k: round(float(np.percentile(v[ok], 98) - np.percentile(v[ok], 2)), 4) for k, v in s.items()
                  if k in names}
        result[side] = {"corr": pairs, "range_2_98": spread}
    result["_series"] = {k: v.tolist() for k, v in series.items()}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Eye openness along the mesh engine's path, on real videos.")
    parser.add_argument("--real", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/eye_stages_cache"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--videos", nargs="*", default=None, help="stems to run (default all)")
    args = parser.parse_args(argv)
    setup_cli_logging()
    data = {}
    for path in sorted(args.real.glob("*.mp4")):
        if args.videos and path.stem not in args.videos:
            continue
        data[path.stem] = run_video(path, args.cache, args.size, args.margin, args.max_frames)
        for side in ("left", "right"):
            print(path.stem, side, data[path.stem][side]["range_2_98"])
            print("   ", data[path.stem][side]["corr"])
    write_json(args.out / "eye_stages.json", data)
    plot(data, args.out / "eye_stages.png")
    return 0


def plot(data: dict, path: Path) -> None:
    """Per video (rows) and eye (columns): the eye-opening series the engine gets, aims at and shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(data), 2, figsize=(12, 2.4 * len(data)), squeeze=False)
    for row, (video, result) in enumerate(data.items()):
        for column, side in enumerate(("left", "right")):
            ax = axes[row][column]
            for name in ("tracking", "target", "output"):
                series = np.asarray(result["_series"][name], dtype=np.float64)[:, column]
                first = series[np.isfinite(series)][0] if np.isfinite(series).any() else 1.0
                label = f"{name} (r with tracking {result[side]['corr'].get(f'tracking~{name}', 1.0):.2f})"
                ax.plot(series / first, linewidth=0.8, label=label if name != "tracking" else name)
            ax.set_title(f"{video}, {side} eye", fontsize=9)
            ax.set_ylabel("lid gap / frame 0", fontsize=8)
            ax.legend(fontsize=7, loc="lower left")
    axes[-1][0].set_xlabel("frame")
    axes[-1][1].set_xlabel("frame")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
