"""Live-app performance end to end: `python run_live.py` on a synthesized driving clip and real videos.

Runs the real command line (`--camera clip.mp4 --no-preview --no-virtual-cam --stats`) in a fresh
process, so startup includes the interpreter, imports and model loading, as a user sees it.
Writes into --out: the clip, `live_perf.json` (every run's stats, the medians, the goals and whether
each is met) and `contact_sheet.png` (driving frames above the animated avatar at the same moments).

With --camera FILE|DIR (repeatable; a folder means every video in it, read in place, never copied)
the mesh engine also runs on those real driving videos: the drivers take turns in every round, so
all share the machine's state alike. `drivers` in the JSON holds per driver (the synthesized clip
first) its frames, fps, latency p50/p95, stages_ms (medians over the runs) and the goals;
`live_perf.png` charts them, and the contact sheet gets two rows per driver.

    python bench/live_perf.py --out /tmp/live_bench [--engine mesh] [--cam-width 1280 --cam-height 720]
    python bench/live_perf.py --out /tmp/live_real --camera ../shared/real_drivers   # + real videos
    python bench/live_perf.py --out /tmp/live_crop --framing crop --size 256   # the old square output
    python bench/live_perf.py --out /tmp/live_fomm --engine fomm [--checkpoint CKPT] [--backends auto,torch,onnxruntime] [--device cuda]

With --engine fomm every backend of --backends runs the same clip (first one untimed warm-up run per
backend, which exports the ONNX graphs and, for auto, times the candidates once into the cache under
--out; then --repeats rounds in which the backends take turns); `backends` in the JSON holds each
one's medians, `auto_vs_best_explicit` the ratio of auto's fps to the best explicit backend's, and
`backends.png` charts them. Without --checkpoint, random weights in the official layout are used.
--device cuda without a CUDA GPU writes a JSON that says it was skipped and measures nothing.
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

# Goals for the embedded engine: issue 4 at the 256-px square output, issue 8 at the call's size.
GOALS = {
    ("crop", 256, 256): {"fps": (">=", 100.0), "latency_p95_ms": ("<=", 15.0), "peak_rss_mb": ("<=", 1200.0),
                         "startup_s": ("<=", 3.0)},
    ("call", 1280, 720): {"fps": (">=", 60.0), "latency_p95_ms": ("<=", 20.0), "peak_rss_mb": ("<=", 1200.0)},
    ("call", 1920, 1080): {"fps": (">=", 30.0)},
}
RECORDING_FPS_RATIO = 0.9  # issue 20: --output costs at most 10 % of the frame rate
SHEET_COLUMNS = 6
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
SYNTHESIZED = "synthesized"  # the driver name of the synthesized clip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the clip, JSON and picture")
    parser.add_argument("--engine", default="mesh", choices=("mesh", "fomm"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="FOMM checkpoint (--engine fomm)")
    parser.add_argument("--backends", default="auto,torch,onnxruntime",
                        help="FOMM backends to compare (comma list of run_live.py --backend values)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="FOMM --device")
    parser.add_argument("--framing", default="call", choices=("call", "crop"), help="as run_live.py --framing")
    parser.add_argument("--cam-width", type=int, default=1280, help="camera frame width (--framing call)")
    parser.add_argument("--cam-height", type=int, default=720, help="camera frame height (--framing call)")
    parser.add_argument("--size", type=int, default=256, choices=(256, 512), help="square side (--framing crop)")
    parser.add_argument("--frames", type=int, default=300, help="frames in the driving clip")
    parser.add_argument("--clip-size", type=int, default=480, help="clip frame height (a webcam's is 480)")
    parser.add_argument("--clip-width", type=int, default=640,
                        help="clip frame width (a webcam's is 640): the square clip widened with its own edges")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; medians are reported")
    parser.add_argument("--camera", type=Path, action="append", default=[],
                        help="real driving video, or a folder of them, run besides the synthesized clip "
                             "(repeatable; --engine mesh)")
    parser.add_argument("--camera-frames", type=int, default=None,
                        help="frames of each --camera video to run (default: all of them)")
    parser.add_argument("--paced-frames", type=int, default=300,
                        help="frames of each driver run once more at the file's own frame rate, as a webcam "
                             "delivers them (run_live.py --realtime), plain and with --output (0: not run)")
    args = parser.parse_args(argv)
    if args.camera and args.engine != "mesh":
        parser.error("--camera runs with --engine mesh; the FOMM comparison uses the synthesized clip")
    return args


def real_videos(paths: list[Path]) -> list[Path]:
    """The --camera videos: files as given, folders as their videos in name order; SystemExit with
    one line when one is missing or a folder holds none."""
    videos: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise SystemExit(f"no video ({', '.join(VIDEO_SUFFIXES)}) in {path}")
            videos += found
        elif path.is_file():
            videos.append(path)
        else:
            raise SystemExit(f"--camera {path}: no such file or folder")
    return videos


def driver_names(videos: list[Path]) -> list[str]:
    """One name per video (its stem; the parent folder too where stems repeat)."""
    stems = [v.stem for v in videos]
    return [f"{v.parent.name}_{v.stem}" if stems.count(v.stem) > 1 else v.stem for v in videos]


def clip_dims(args: argparse.Namespace) -> list[int]:
    """(width, height) of the driving clip's frames."""
    return [max(args.clip_width, args.clip_size), args.clip_size]


def write_inputs(out: Path, frames: int, clip_size: int, clip_width: int) -> tuple[Path, Path]:
    """The driving clip (astronaut, mixed motion; clip_width x clip_size, the synthesized square clip
    widened with its own mirrored edges as a 4:3 webcam frame) and the avatar photo (Grace Hopper)."""
    clip_frames, truth = make_clip("astronaut", "mixed", frames=frames, size=clip_size)
    if clip_width > clip_size:
        left = (clip_width - clip_size) // 2
        right = clip_width - clip_size - left
        clip_frames = [cv2.copyMakeBorder(frame, 0, 0, left, right, cv2.BORDER_REFLECT_101) for frame in clip_frames]
        truth = {**truth, "widened": {"width": clip_width, "left_px": left,
                                      "note": "truth positions are the square clip's: add left_px to x"}}
    clip_path, _ = write_clip(out / "driving_astronaut_mixed", clip_frames, truth)
    avatar_path = out / "avatar_grace_hopper.png"
    write_png(avatar_path, load_photo_bgr("grace_hopper"))
    return clip_path, avatar_path


def run_app(args: argparse.Namespace, avatar: Path, clip: Path, stats: Path, output: Path | None = None,
            backend: str | None = None, max_frames: int | None = None,
            realtime: bool = False) -> tuple[dict, list[str]]:
    command = [sys.executable, str(REPO_ROOT / "run_live.py"), "--avatar", str(avatar), "--camera", str(clip),
               "--engine", args.engine, "--framing", args.framing, "--no-preview", "--no-virtual-cam",
               "--stats", str(stats)]
    if args.framing == "crop":
        command += ["--size", str(args.size), "--cam-width", str(args.size), "--cam-height", str(args.size)]
    else:
        command += ["--cam-width", str(args.cam_width), "--cam-height", str(args.cam_height)]
    if args.engine == "fomm":
        command += ["--checkpoint", str(args.checkpoint), "--backend", backend or "auto", "--device", args.device,
                    "--cache-dir", str(args.out / "cache")]
    if output is not None:
        command += ["--output", str(output)]
    if max_frames is not None:
        command += ["--max-frames", str(max_frames)]
    if realtime:
        command += ["--realtime"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run_live.py failed ({result.returncode}): {result.stderr.strip().splitlines()[-1]}")
    return read_json(stats), command


def headline(stats: dict) -> dict:
    return {"fps": stats["fps"], "latency_p95_ms": stats["latency_ms"]["p95"],
            "latency_p50_ms": stats["latency_ms"]["p50"], "peak_rss_mb": stats["peak_rss_mb"],
            "startup_s": stats["startup_s"]}


def median_stages(runs: list[dict]) -> dict:
    """stages_ms {stage: {p50, p95}}, each the median over the runs that have the stage; stages in
    the order the runs first name them (the app's order)."""
    names = dict.fromkeys(name for run in runs for name in run["stages_ms"])
    return {name: {key: round(float(np.median([run["stages_ms"][name][key] for run in runs
                                               if name in run["stages_ms"]])), 3) for key in ("p50", "p95")}
            for name in names}


def output_size(args: argparse.Namespace) -> tuple[int, int]:
    return (args.size, args.size) if args.framing == "crop" else (args.cam_width, args.cam_height)


def judge(medians: dict, goals: dict) -> dict:
    verdict = {}
    for key, (op, goal) in goals.items():
        value = medians[key]
        verdict[key] = {"value": value, "goal": f"{op} {goal:g}",
                        "met": value >= goal if op == ">=" else value <= goal}
    return verdict


def recording_cost(plain: list[dict], recorded: list[dict]) -> dict:
    """What --output costs one driver: the median frame rate with it over the median without (runs of
    the same rounds), against the goal of at most 10 % fewer frames; and whether every recording
    held all the frames of its run."""
    fps, fps_plain = float(np.median([s["fps"] for s in recorded])), float(np.median([s["fps"] for s in plain]))
    ratio = fps / fps_plain
    return {"fps": round(fps, 2), "fps_plain": round(fps_plain, 2), "fps_ratio": round(ratio, 3),
            "fps_ratio_runs": [round(r["fps"] / p["fps"], 3) for p, r in zip(plain, recorded)],
            "latency_p95_ms": float(np.median([s["latency_ms"]["p95"] for s in recorded])),
            "goal": f">= {RECORDING_FPS_RATIO:g}", "met": ratio >= RECORDING_FPS_RATIO,
            "frames_as_plain": all(r["frames"] == p["frames"] for p, r in zip(plain, recorded))}


def recording_at_camera_pace(plain: dict, recorded: dict) -> dict:
    """What --output costs when frames come at the camera's rate (--realtime), as from a webcam: the
    frame rate with it over without (the same goal), and what a call sees besides, the latency and
    the frames skipped because the app was busy."""
    ratio = recorded["fps"] / plain["fps"]
    return {"fps": recorded["fps"], "fps_plain": plain["fps"], "fps_ratio": round(ratio, 3),
            "latency_p50_ms": recorded["latency_ms"]["p50"], "latency_p50_ms_plain": plain["latency_ms"]["p50"],
            "latency_p95_ms": recorded["latency_ms"]["p95"], "latency_p95_ms_plain": plain["latency_ms"]["p95"],
            "dropped_frames": recorded["dropped_frames"], "dropped_frames_plain": plain["dropped_frames"],
            "frames": recorded["frames"], "goal": f">= {RECORDING_FPS_RATIO:g}", "met": ratio >= RECORDING_FPS_RATIO}


def video_info(path: Path):
    """Frame rate, count and size of a video (avatarify.capture.VideoInfo)."""
    from avatarify.capture import open_video_file

    cap, info = open_video_file(path)
    cap.release()
    return info


def frames_at(path: Path, picks: list[int]) -> dict[int, np.ndarray]:
    """The frames of a video at these indices, read in one pass (a long video is not kept)."""
    from avatarify.capture import iter_video_frames

    wanted, found = set(int(i) for i in picks), {}
    for captured in iter_video_frames(path, max_frames=max(wanted) + 1, progress=False):
        if captured.index in wanted:
            found[captured.index] = captured.frame_bgr
    return found


def contact_sheet(driving: Path, animated_path: Path, tile: int = 192, label: str | None = None) -> np.ndarray:
    """Driving frames (top row) over what the camera got (bottom row) at evenly spaced moments;
    the output row is as wide as its aspect needs."""
    counts = [video_info(path).frame_count for path in (driving, animated_path)]
    picks = np.linspace(0, min(counts) - 1, SHEET_COLUMNS).round().astype(int)
    driving, animated = frames_at(driving, picks), frames_at(animated_path, picks)
    picks = [i for i in picks if i in driving and i in animated]  # a frame count the container overstates
    out_h, out_w = animated[picks[0]].shape[:2]
    out_tile = (round(tile * out_w / out_h), tile)
    in_h, in_w = driving[picks[0]].shape[:2]
    in_width = min(round(tile * in_w / in_h), out_tile[0])  # the camera frame at its own aspect
    side = max(out_tile[0] - in_width, 0)  # each driving tile centred over its output tile
    top = np.hstack([cv2.copyMakeBorder(cv2.resize(driving[i], (in_width, tile), interpolation=cv2.INTER_AREA),
                                        0, 0, side // 2, side - side // 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                     for i in picks])
    bottom = np.hstack([cv2.resize(animated[i], out_tile, interpolation=cv2.INTER_AREA) for i in picks])
    sheet = np.vstack([top, bottom])
    for column, index in enumerate(picks):
        text = f"{label}: frame {index}" if label and column == 0 else f"frame {index}"
        cv2.putText(sheet, text, (column * (in_width + side) + side // 2 + 6, 18), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet


def stacked(sheets: list[np.ndarray]) -> np.ndarray:
    """Sheets one under the other, padded white to the widest."""
    width = max(sheet.shape[1] for sheet in sheets)
    return np.vstack([cv2.copyMakeBorder(sheet, 0, 4, 0, width - sheet.shape[1], cv2.BORDER_CONSTANT,
                                         value=(255, 255, 255)) for sheet in sheets])


def plot_drivers(drivers: dict, goals: dict | None, size: tuple[int, int], path: Path) -> None:
    """Per driver: fps, latency p50/p95 and the stages' p50 ms, with the goals as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(drivers)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(4 + 3.2 * len(names), 4.2))
    fps = [drivers[n]["medians"]["fps"] for n in names]
    bars = axes[0].bar(x, fps, color="#2a7ab9")
    axes[0].bar_label(bars, labels=[f"{v:.0f}" for v in fps], fontsize=8)
    axes[0].set_title("frames / s (median of runs)", fontsize=10)
    p50 = [drivers[n]["medians"]["latency_p50_ms"] for n in names]
    p95 = [drivers[n]["medians"]["latency_p95_ms"] for n in names]
    axes[1].bar(x - 0.2, p50, 0.4, label="p50", color="#7fb3d5")
    bars = axes[1].bar(x + 0.2, p95, 0.4, label="p95", color="#c23b22")
    axes[1].bar_label(bars, labels=[f"{v:.1f}" for v in p95], fontsize=8)
    axes[1].set_title("latency, ms (capture to sinks)", fontsize=10)
    for key, ax in (("fps", axes[0]), ("latency_p95_ms", axes[1])):
        if goals and key in goals:
            ax.axhline(goals[key][1], color="black", linestyle="--", linewidth=1,
                       label=f"goal {goals[key][0]} {goals[key][1]:g}")
        ax.legend(fontsize=7, loc="lower right")
    bottom = np.zeros(len(names))
    stages = [s for s in drivers[names[0]]["stages_ms"] if s != "sinks"]
    for stage, colour in zip(stages, plt.cm.tab10.colors):
        values = np.array([drivers[n]["stages_ms"].get(stage, {"p50": 0.0})["p50"] for n in names])
        axes[2].bar(x, values, bottom=bottom, label=stage, color=colour)
        bottom += values
    axes[2].set_title("stage p50, ms per frame", fontsize=10)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(x, [f"{n}\n{drivers[n]['clip_size'][0]}x{drivers[n]['clip_size'][1]}" for n in names], fontsize=8)
        ax.margins(y=0.2)
    fig.suptitle(f"mesh engine, {size[0]}x{size[1]} output: the synthesized clip and real driving videos",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gpu_missing() -> str | None:
    """Why --device cuda cannot run here, or None."""
    import torch

    if torch.cuda.is_available():
        return None
    return f"no CUDA GPU visible to torch {torch.__version__}: the GPU paths were not run, nothing was measured"


def plot_backends(backends: dict, ratio: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(backends)
    fps = [backends[n]["medians"]["fps"] for n in names]
    fig, ax = plt.subplots(figsize=(2 + 1.8 * len(names), 4))
    bars = ax.bar([f"{n}\n{backends[n]['providers'][0]}" for n in names], fps,
                  color=["#c23b22" if n == "auto" else "#2a7ab9" for n in names])
    ax.bar_label(bars, labels=[f"{f:.2f} fps\np95 {backends[n]['medians']['latency_p95_ms']:.0f} ms"
                               for n, f in zip(names, fps)], fontsize=8)
    ax.set_ylabel("frames / s, app end to end (median)")
    ax.set_title("FOMM backends" + (f": auto = {ratio:.3f} x best explicit" if ratio else ""), fontsize=10)
    ax.margins(y=0.25)
    plt.setp(ax.get_xticklabels(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_backends(args: argparse.Namespace, avatar: Path, clip: Path, started: float) -> dict:
    """--engine fomm: each backend warmed up once, then the backends take turns for --repeats rounds."""
    backends = [b for b in args.backends.split(",") if b]
    first_start = {}
    for backend in backends:  # the one-time work (export, auto's timing) happens here, not in the timed runs
        stats, _ = run_app(args, avatar, clip, args.out / f"stats_{backend}_warmup.json", backend=backend,
                           max_frames=3)
        first_start[backend] = stats["startup_s"]
        log.info("%s warm-up: startup %.1f s, runs %s", backend, stats["startup_s"], stats["providers"])
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    commands = {}
    for repeat in range(args.repeats):
        for backend in backends:
            stats, commands[backend] = run_app(args, avatar, clip, args.out / f"stats_{backend}_run{repeat + 1}.json",
                                               backend=backend)
            runs[backend].append(stats)
            log.info("%s run %d: %s", backend, repeat + 1, headline(stats))
    results = {}
    for backend in backends:
        medians = {key: float(np.median([headline(s)[key] for s in runs[backend]])) for key in headline(runs[backend][0])}
        first = runs[backend][0]
        results[backend] = {"medians": medians, "providers": first["providers"], "backend": first["backend"],
                            "candidate": first.get("candidate"), "choice": first.get("choice"),
                            "ms_per_frame_at_start": first.get("ms_per_frame"),
                            "stages_ms_run1": first["stages_ms"], "first_start_s": first_start[backend],
                            "command": " ".join(commands[backend]), "runs": runs[backend]}
    explicit = {b: r["medians"]["fps"] for b, r in results.items() if b != "auto"}
    ratio = None
    if "auto" in results and explicit:
        best = max(explicit, key=explicit.get)
        ratio = results["auto"]["medians"]["fps"] / explicit[best]
    if "auto" in results:
        animated = args.out / "animated.mp4"
        run_app(args, avatar, clip, args.out / "stats_with_output.json", output=animated, backend="auto")
        write_png(args.out / "contact_sheet.png", contact_sheet(clip, animated))
    plot_backends(results, ratio, args.out / "backends.png")
    return {"engine": "fomm", "framing": args.framing, "output_size": list(output_size(args)),
            "frames": args.frames, "clip_size": clip_dims(args),
            "repeats": args.repeats, "device": args.device,
            "checkpoint": str(args.checkpoint) if not args.random_checkpoint else "random weights (official layout)",
            "backends": results,
            "best_explicit": max(explicit, key=explicit.get) if explicit else None,
            "auto_vs_best_explicit": None if ratio is None else round(ratio, 4),
            "auto_within_5_percent": None if ratio is None else ratio >= 0.95,
            "timing": "each backend: one untimed warm-up run, then rounds in which the backends take turns; "
                      "medians over the rounds",
            "bench_seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.engine == "fomm" and args.device == "cuda" and (missing := gpu_missing()):
        write_json(args.out / "live_perf.json", {"engine": "fomm", "device": "cuda", "skipped": missing})
        print(f"skipped: {missing}")
        return 0
    videos = real_videos(args.camera)  # a wrong path fails before any slow step
    clip, avatar = write_inputs(args.out, args.frames, args.clip_size, args.clip_width)
    if args.engine == "fomm":
        args.random_checkpoint = args.checkpoint is None
        if args.random_checkpoint:
            from models.fomm.checkpoint import save_random_checkpoint

            args.checkpoint = save_random_checkpoint(args.out / "random_fomm.pth.tar")
        report = compare_backends(args, avatar, clip, started)
        write_json(args.out / "live_perf.json", report)
        for backend, result in report["backends"].items():
            medians = result["medians"]
            print(f"fomm --backend {backend} ({result['providers'][0]}): {medians['fps']:.2f} fps, latency p95 "
                  f"{medians['latency_p95_ms']:.0f} ms, startup {medians['startup_s']:.1f} s "
                  f"(first start {result['first_start_s']:.1f} s)")
        if report["auto_vs_best_explicit"] is not None:
            print(f"auto / best explicit ({report['best_explicit']}): {report['auto_vs_best_explicit']:.3f}")
        return 0

    # The drivers take turns in every round, so a busy moment of the machine spreads over all of them;
    # each driver's --output run follows its plain run, so the recording's cost is a ratio within rounds.
    drivers = {SYNTHESIZED: clip, **dict(zip(driver_names(videos), videos))}
    frame_limit = {name: None if name == SYNTHESIZED else args.camera_frames for name in drivers}
    animated = {name: args.out / ("animated.mp4" if name == SYNTHESIZED else f"animated_{name}.mp4") for name in drivers}
    runs: dict[str, list[dict]] = {name: [] for name in drivers}
    recorded: dict[str, list[dict]] = {name: [] for name in drivers}
    commands: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for name, path in drivers.items():
            prefix = "stats" if name == SYNTHESIZED else f"stats_{name}"
            stats, commands[name] = run_app(args, avatar, path, args.out / f"{prefix}_run{repeat + 1}.json",
                                            max_frames=frame_limit[name])
            runs[name].append(stats)
            with_output, _ = run_app(args, avatar, path, args.out / f"{prefix}_with_output_run{repeat + 1}.json",
                                     output=animated[name], max_frames=frame_limit[name])
            recorded[name].append(with_output)
            log.info("%s run %d: %s; with --output %.1f fps", name, repeat + 1, headline(stats), with_output["fps"])

    paced: dict[str, dict] = {}
    for name, path in drivers.items() if args.paced_frames > 0 else ():
        prefix = "stats" if name == SYNTHESIZED else f"stats_{name}"
        plain, _ = run_app(args, avatar, path, args.out / f"{prefix}_paced.json", max_frames=args.paced_frames,
                           realtime=True)
        with_output, _ = run_app(args, avatar, path, args.out / f"{prefix}_paced_with_output.json",
                                 output=args.out / f"paced_{name}.mp4", max_frames=args.paced_frames, realtime=True)
        paced[name] = recording_at_camera_pace(plain, with_output)
        log.info("%s at the camera's pace: %s", name, paced[name])

    width, height = output_size(args)
    goals = GOALS.get((args.framing, width, height)) if args.engine == "mesh" else None
    results, sheets = {}, []
    for name, path in drivers.items():
        medians = {key: float(np.median([headline(s)[key] for s in runs[name]])) for key in headline(runs[name][0])}
        sheets.append(contact_sheet(path, animated[name], label=name))
        info = video_info(path)
        results[name] = {"path": str(path), "frames": runs[name][0]["frames"], "clip_size": [info.width, info.height],
                         "clip_fps": round(info.fps, 3), "medians": medians,
                         "stages_ms": median_stages(runs[name]),
                         "goals": judge(medians, goals) if goals else None,
                         "recording": recording_cost(runs[name], recorded[name]),
                         "recording_at_camera_pace": paced.get(name),
                         "command": " ".join(commands[name]), "runs": runs[name]}
    write_png(args.out / "contact_sheet.png", stacked(sheets))
    plot_drivers(results, goals, (width, height), args.out / "live_perf.png")
    synthesized = results[SYNTHESIZED]
    report = {
        "engine": args.engine, "framing": args.framing, "output_size": [width, height], "frames": args.frames,
        "clip_size": clip_dims(args), "repeats": args.repeats, "command": synthesized["command"],
        "medians": synthesized["medians"], "goals": synthesized["goals"],
        "providers": runs[SYNTHESIZED][0]["providers"], "stages_ms_run1": runs[SYNTHESIZED][0]["stages_ms"],
        "runs": runs[SYNTHESIZED],
        "drivers": results,
        "goals_met_all_drivers": None if not goals else all(v["met"] for r in results.values()
                                                            for v in r["goals"].values()),
        "recording_met_all_drivers": all(r["recording"]["met"] for r in results.values()),
        "recording_at_camera_pace_met_all_drivers": all(p["met"] for p in paced.values()) if paced else None,
        "timing": "the drivers take turns in every round, each run plain then with --output; medians over the rounds",
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out / "live_perf.json", report)
    for name, result in results.items():
        medians = result["medians"]
        print(f"{args.engine} @ {width}x{height} ({args.framing}), {name} {result['clip_size'][0]}x"
              f"{result['clip_size'][1]}: {medians['fps']:.0f} fps, latency p50 {medians['latency_p50_ms']:.1f} / "
              f"p95 {medians['latency_p95_ms']:.1f} ms, peak RSS {medians['peak_rss_mb']:.0f} MB, "
              f"startup {medians['startup_s']:.2f} s; stages p50 "
              + ", ".join(f"{stage} {value['p50']:.1f}" for stage, value in result["stages_ms"].items()
                          if stage != "sinks") + " ms")
        for key, verdict in (result["goals"] or {}).items():
            print(f"  {key}: {verdict['value']:g} (goal {verdict['goal']}) {'met' if verdict['met'] else 'NOT met'}")
        rec = result["recording"]
        print(f"  with --output: {rec['fps']:.1f} fps, {rec['fps_ratio']:.3f}x of plain (goal {rec['goal']}) "
              f"{'met' if rec['met'] else 'NOT met'}")
        if (pace := result["recording_at_camera_pace"]) is not None:
            print(f"  at the camera's pace ({result['clip_fps']:g} fps): {pace['fps_plain']:.1f} -> {pace['fps']:.1f} fps "
                  f"with --output ({pace['fps_ratio']:.3f}x, {'met' if pace['met'] else 'NOT met'}), latency p95 "
                  f"{pace['latency_p95_ms_plain']:.1f} -> {pace['latency_p95_ms']:.1f} ms, skipped "
                  f"{pace['dropped_frames_plain']} -> {pace['dropped_frames']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
