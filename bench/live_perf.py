"""Live-app performance end to end: `python run_live.py` on a synthesized driving clip.

Runs the real command line (`--camera clip.mp4 --no-preview --no-virtual-cam --stats`) in a fresh
process, so startup includes the interpreter, imports and model loading, as a user sees it.
Writes into --out: the clip, `live_perf.json` (every run's stats, the medians, the goals and whether
each is met) and `contact_sheet.png` (driving frames above the animated avatar at the same moments).

    python bench/live_perf.py --out /tmp/live_bench [--engine mesh] [--size 256] [--frames 300]
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/live_perf.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import REPO_ROOT, read_json, setup_cli_logging, write_json, write_png  # noqa: E402
from bench.clips import load_photo_bgr, make_clip, write_clip  # noqa: E402

log = logging.getLogger("live_perf")

# Goals of issue 4 for the embedded engine at 256 px.
GOALS = {"fps": (">=", 100.0), "latency_p95_ms": ("<=", 15.0), "peak_rss_mb": ("<=", 1200.0),
         "startup_s": ("<=", 3.0)}
SHEET_COLUMNS = 6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the clip, JSON and picture")
    parser.add_argument("--engine", default="mesh", choices=("mesh", "fomm"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="FOMM checkpoint (--engine fomm)")
    parser.add_argument("--backend", default="auto", help="FOMM backend, as run_live.py --backend")
    parser.add_argument("--size", type=int, default=256, choices=(256, 512))
    parser.add_argument("--frames", type=int, default=300, help="frames in the driving clip")
    parser.add_argument("--clip-size", type=int, default=480, help="clip frame side (a webcam is 480 high)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are reported")
    return parser.parse_args(argv)


def write_inputs(out: Path, frames: int, clip_size: int) -> tuple[Path, Path, np.ndarray]:
    """The driving clip (astronaut, mixed motion) and the avatar photo (Grace Hopper)."""
    clip_frames, truth = make_clip("astronaut", "mixed", frames=frames, size=clip_size)
    clip_path, _ = write_clip(out / "driving_astronaut_mixed", clip_frames, truth)
    avatar_path = out / "avatar_grace_hopper.png"
    write_png(avatar_path, load_photo_bgr("grace_hopper"))
    return clip_path, avatar_path, np.stack(clip_frames)


def run_app(args: argparse.Namespace, avatar: Path, clip: Path, stats: Path,
            output: Path | None = None) -> tuple[dict, list[str]]:
    command = [sys.executable, str(REPO_ROOT / "run_live.py"), "--avatar", str(avatar), "--camera", str(clip),
               "--engine", args.engine, "--size", str(args.size), "--no-preview", "--no-virtual-cam",
               "--stats", str(stats)]
    if args.checkpoint is not None:
        command += ["--checkpoint", str(args.checkpoint), "--backend", args.backend]
    if output is not None:
        command += ["--output", str(output)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run_live.py failed ({result.returncode}): {result.stderr.strip().splitlines()[-1]}")
    return read_json(stats), command


def headline(stats: dict) -> dict:
    return {"fps": stats["fps"], "latency_p95_ms": stats["latency_ms"]["p95"],
            "latency_p50_ms": stats["latency_ms"]["p50"], "peak_rss_mb": stats["peak_rss_mb"],
            "startup_s": stats["startup_s"]}


def judge(medians: dict) -> dict:
    verdict = {}
    for key, (op, goal) in GOALS.items():
        value = medians[key]
        verdict[key] = {"value": value, "goal": f"{op} {goal:g}",
                        "met": value >= goal if op == ">=" else value <= goal}
    return verdict


def contact_sheet(driving: np.ndarray, animated_path: Path, tile: int = 192) -> np.ndarray:
    """Driving frames (top row) over the animated avatar (bottom row) at evenly spaced moments."""
    from avatarify.capture import iter_video_frames

    animated = [f.frame_bgr for f in iter_video_frames(animated_path, progress=False)]
    picks = np.linspace(0, min(len(driving), len(animated)) - 1, SHEET_COLUMNS).round().astype(int)
    rows = []
    for frames in (driving, animated):
        rows.append(np.hstack([cv2.resize(frames[i], (tile, tile), interpolation=cv2.INTER_AREA) for i in picks]))
    sheet = np.vstack(rows)
    for column, index in enumerate(picks):
        cv2.putText(sheet, f"frame {index}", (column * tile + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    clip, avatar, driving = write_inputs(args.out, args.frames, args.clip_size)

    runs, command = [], []
    for repeat in range(args.repeats):
        stats, command = run_app(args, avatar, clip, args.out / f"stats_run{repeat + 1}.json")
        runs.append(stats)
        log.info("run %d: %s", repeat + 1, headline(stats))
    medians = {key: float(np.median([headline(s)[key] for s in runs])) for key in headline(runs[0])}

    animated = args.out / "animated.mp4"
    run_app(args, avatar, clip, args.out / "stats_with_output.json", output=animated)
    write_png(args.out / "contact_sheet.png", contact_sheet(driving, animated))

    report = {
        "engine": args.engine, "size": args.size, "frames": args.frames, "clip_size": args.clip_size,
        "repeats": args.repeats, "command": " ".join(command), "medians": medians,
        "goals": judge(medians) if args.engine == "mesh" and args.size == 256 else None,
        "providers": runs[0]["providers"], "stages_ms_run1": runs[0]["stages_ms"], "runs": runs,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out / "live_perf.json", report)
    print(f"{args.engine} @ {args.size}: {medians['fps']:.0f} fps, latency p95 {medians['latency_p95_ms']:.1f} ms, "
          f"peak RSS {medians['peak_rss_mb']:.0f} MB, startup {medians['startup_s']:.2f} s")
    for key, verdict in (report["goals"] or {}).items():
        print(f"  {key}: {verdict['value']:g} (goal {verdict['goal']}) {'met' if verdict['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
