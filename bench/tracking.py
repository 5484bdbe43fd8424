"""Face finding where people really sit: detection rate against face width, light and noise, per camera size.

Frames are rooms with a real face (bench/scenes.py: the public-domain photos, scaled so the face is a
given width, laid over a drawn room) at 640x480, 1280x720 and 1920x1080.

Measures, written to DIR/tracking.json (with the goals) and drawn in DIR/tracking.png (detection rate
against face width, one panel per frame size, one line per condition):
  detection rate   per frame size, face width and condition (clean, dark = gamma 2.5, noise = sigma 20,
                   backlight, dark_noise): the share of scenes (random place, both photos) in which the
                   app's FaceFinder, starting with nothing tracked, has the right face after one search
                   pass (the frames a pass takes: 1 at 640x480, 3 at 1280x720, 6 at 1920x1080); right =
                   landmark box centre within 25 % of the true face width, width within 0.7-1.4x
  smallest width   per frame size and condition: the smallest face width from which on every width
                   measured is found in >= 95 % of scenes (goal: 48 px or less)
  before           the same rate for the previous detector (Face Mesh alone on the whole frame, tracking
                   mode, the scene held for 3 frames), clean light only
  detect ms        p50/p95 of FaceFinder.find per frame: while searching (nothing tracked), and while
                   tracking a moving face (150 frames; goal p95 <= 8 ms at 1280x720), with Face Mesh on
                   the whole frame as the reference
  crop jumps       two people in view (the larger locked at the start), both moving, the locked one
                   hidden for 10 frames: frames on which the tracked face is the other person (goal 0),
                   and whether hotkey n's switch lands on the other person

    python bench/tracking.py --out bench_out/tracking [--small] [--scenes N]
    python bench/tracking.py --out bench_out/tracking_ms --timing-only   # detect ms alone (quick)
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/tracking.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from avatarify.datatypes import FaceLandmarks  # noqa: E402
from avatarify.finder import FaceFinder, search_windows  # noqa: E402
from avatarify.landmarks import FaceMeshDetector  # noqa: E402
from bench.common import setup_cli_logging, write_json  # noqa: E402
from bench.scenes import CONDITIONS, PHOTOS, PlacedFace, random_face_centre, scene_frame  # noqa: E402

log = logging.getLogger("tracking")

FRAME_SIZES = ((640, 480), (1280, 720), (1920, 1080))
WIDTHS = (24, 32, 40, 48, 56, 64, 80, 96, 128, 160)
SMALL_WIDTHS = (32, 40, 48, 64, 96)
FOUND_RATE = 0.95
GOALS = {"smallest_width_px": ("<=", 48), "track_p95_ms_1280x720": ("<=", 8.0), "crop_jumps": ("<=", 0)}
FPS = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tracking.json and tracking.png")
    parser.add_argument("--scenes", type=int, default=20, help="scenes per frame size, width and condition")
    parser.add_argument("--small", action="store_true", help="fewer widths and scenes, for a quick look")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the tracking ms (tracking_ms.json), e.g. to time again on a quiet machine")
    return parser.parse_args(argv)


def centre_of(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])


def is_the_face(landmarks: FaceLandmarks | None, face: PlacedFace) -> bool:
    if landmarks is None:
        return False
    width = landmarks.box[2] - landmarks.box[0]
    return bool(np.linalg.norm(centre_of(landmarks.box) - face.centre) < 0.25 * face.width
                and 0.7 * face.width < width < 1.4 * face.width)


def search_frames(finder: FaceFinder, width: int, height: int) -> int:
    return math.ceil(len(search_windows(width, height)) / finder.windows_per_frame)


def find_from_scratch(finder: FaceFinder, frame: np.ndarray, frames: int, timings: list[float]) -> FaceLandmarks | None:
    finder.reset()
    for index in range(frames):
        start = time.perf_counter()
        landmarks = finder.find(frame, index / FPS)
        timings.append((time.perf_counter() - start) * 1000.0)
        if landmarks is not None:
            return landmarks
    return None


def mesh_alone(mesh: FaceMeshDetector, frame: np.ndarray) -> FaceLandmarks | None:
    """The previous detector: Face Mesh on the whole frame, tracking mode, three frames of the scene."""
    mesh.forget()
    landmarks = None
    for _ in range(3):
        landmarks = mesh.detect(frame)
    return landmarks


def detection_rates(finder: FaceFinder, mesh: FaceMeshDetector, widths: tuple[int, ...], scenes: int) -> tuple[dict, dict]:
    """{size: {condition: {width: rate}}} for the finder (plus "before" for Face Mesh alone, clean), and
    the search-frame timings per size."""
    rates: dict = {}
    search_ms: dict = {}
    for width, height in FRAME_SIZES:
        key = f"{width}x{height}"
        rates[key], timings = {}, []
        frames = search_frames(finder, width, height)
        for condition in (*CONDITIONS, "before"):
            rates[key][condition] = {}
            for face_width in widths:
                rng = np.random.default_rng(face_width * 1000 + width)
                hits = 0
                for scene in range(scenes):
                    centre = random_face_centre(width, height, face_width, rng)
                    frame, (face,) = scene_frame(width, height, [(PHOTOS[scene % 2], face_width, centre)],
                                                 "clean" if condition == "before" else condition, seed=scene)
                    if condition == "before":
                        hits += is_the_face(mesh_alone(mesh, frame), face)
                    else:
                        hits += is_the_face(find_from_scratch(finder, frame, frames, timings), face)
                rates[key][condition][face_width] = hits / scenes
                log.info("%s %-10s %3d px: %.2f", key, condition, face_width, hits / scenes)
        search_ms[key] = percentiles(timings)
    return rates, search_ms


def smallest_found(rate_by_width: dict) -> int | None:
    """The smallest width from which on every measured width is found in >= FOUND_RATE of scenes."""
    smallest = None
    for face_width in sorted(rate_by_width, reverse=True):
        if rate_by_width[face_width] < FOUND_RATE:
            break
        smallest = face_width
    return smallest


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"p50": None, "p95": None, "frames": 0}
    p50, p95 = np.percentile(values_ms, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "frames": len(values_ms)}


def moving_face(width: int, height: int, face_width: float, frames: int):
    """A face moving on a slow loop (half a face width, a little scale change), clean light."""
    for index in range(frames):
        phase = 2 * math.pi * index / 90.0
        centre = (width * 0.45 + 0.5 * face_width * math.sin(phase), height * 0.42 + 0.3 * face_width * math.cos(phase))
        size = face_width * (1.0 + 0.05 * math.sin(2 * phase))
        yield scene_frame(width, height, [(PHOTOS[0], size, centre)], "clean")


def tracking_ms(finder: FaceFinder, mesh: FaceMeshDetector, frames: int) -> dict:
    """Per frame size: FaceFinder.find p50/p95 while tracking a moving face (64 and 160 px), the share
    of frames tracked, and Face Mesh alone on the whole frame (160 px face) for reference."""
    result = {}
    for width, height in FRAME_SIZES:
        key = f"{width}x{height}"
        result[key] = {}
        for face_width in (64, 160):
            finder.reset()
            timings, tracked = [], 0
            for index, (frame, (face,)) in enumerate(moving_face(width, height, face_width, frames)):
                start = time.perf_counter()
                landmarks = finder.find(frame, index / FPS)
                elapsed = (time.perf_counter() - start) * 1000.0
                if index >= 10:  # the search and lock of the first frames are not tracking
                    timings.append(elapsed)
                    tracked += is_the_face(landmarks, face)
            result[key][f"finder_{face_width}px"] = percentiles(timings) | {"tracked": tracked / len(timings)}
        mesh.forget()
        timings = []
        for index, (frame, _) in enumerate(moving_face(width, height, 160, frames)):
            start = time.perf_counter()
            mesh.detect(frame)
            if index >= 10:
                timings.append((time.perf_counter() - start) * 1000.0)
        result[key]["mesh_whole_frame_160px"] = percentiles(timings)
        log.info("%s tracking: %s", key, result[key])
    return result


def crop_jumps(finder: FaceFinder, frames: int = 120) -> dict:
    """Two people in a 1280x720 room, the larger locked at the start; both move towards each other and
    back, and the locked one is hidden for frames 50-59. A jump is a frame whose tracked face is the
    other person. Then hotkey n: the lock must move to the other person."""
    finder.reset()
    jumps, tracked = 0, 0
    for index in range(frames):
        drift = 120.0 * math.sin(math.pi * index / frames)  # they come within ~1.5 face widths
        people = [("grace_hopper", 70, (900 - drift, 340))]
        hidden = 50 <= index < 60
        if not hidden:
            people.insert(0, ("astronaut", 100, (380 + drift, 300)))
        frame, placed = scene_frame(1280, 720, people, "clean", seed=index)
        landmarks = finder.find(frame, index / FPS)
        if landmarks is None:
            continue
        other = placed[-1]
        if is_the_face(landmarks, other) or (hidden and landmarks is not None):
            jumps += 1
        elif not hidden and is_the_face(landmarks, placed[0]):
            tracked += 1
    frame, (large, small) = scene_frame(1280, 720, [("astronaut", 100, (380, 300)), ("grace_hopper", 70, (900, 340))])
    finder.request_next_face()
    switched = finder.find(frame, frames / FPS)
    return {"frames": frames, "hidden_frames": 10, "jumps": jumps, "tracked_frames": tracked,
            "next_face_lands_on_the_other": is_the_face(switched, small)}


def draw(rates: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), sharey=True)
    for axis, (size, by_condition) in zip(np.atleast_1d(axes), rates.items()):
        for condition, by_width in by_condition.items():
            widths = sorted(by_width)
            style = dict(linestyle="--", color="grey") if condition == "before" else {}
            label = "before (Face Mesh alone, clean)" if condition == "before" else condition
            axis.plot(widths, [by_width[w] for w in widths], marker="o", label=label, **style)
        axis.axhline(FOUND_RATE, color="black", linewidth=0.8, linestyle=":")
        axis.axvline(48, color="red", linewidth=0.8, linestyle=":")
        axis.set_title(size)
        axis.set_xlabel("face width (px)")
        axis.set_xscale("log")
        axis.minorticks_off()
        axis.set_xticks(widths, [str(w) for w in widths])
    np.atleast_1d(axes)[0].set_ylabel("detection rate")
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower right")
    figure.suptitle("Face found after one search pass (red: the 48 px goal, dotted: 95 %)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    log.info("wrote %s", path)


def judge_timing(tracking: dict) -> dict:
    op, goal = GOALS["track_p95_ms_1280x720"]
    value = tracking["1280x720"]["finder_160px"]["p95"]
    return {"track_p95_ms_1280x720": {"value": value, "goal": f"{op} {goal:g}", "met": value <= goal}}


def judge(smallest: dict, tracking: dict, jumps: dict) -> dict:
    worst = [w for by_condition in smallest.values() for c, w in by_condition.items() if c != "before"]
    values = {"smallest_width_px": math.inf if None in worst else max(worst),
              "track_p95_ms_1280x720": tracking["1280x720"]["finder_160px"]["p95"],
              "crop_jumps": jumps["jumps"]}
    return {key: {"value": values[key], "goal": f"{op} {goal:g}",
                  "met": values[key] <= goal if op == "<=" else values[key] >= goal}
            for key, (op, goal) in GOALS.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    started = time.perf_counter()
    widths = SMALL_WIDTHS if args.small else WIDTHS
    scenes = min(args.scenes, 6) if args.small else args.scenes
    with FaceFinder() as finder, FaceMeshDetector(static=False) as mesh:
        finder.warm_up(scene_frame(640, 480, [(PHOTOS[0], 160, (320, 220))])[0])
        if args.timing_only:
            timing = tracking_ms(finder, mesh, 150)
            write_json(args.out / "tracking_ms.json", {"tracking_ms": timing,
                                                       "goal": judge_timing(timing)})
            return 0
        rates, search_ms = detection_rates(finder, mesh, widths, scenes)
        tracking = tracking_ms(finder, mesh, 60 if args.small else 150)
        jumps = crop_jumps(finder)
    smallest = {size: {condition: smallest_found(by_width) for condition, by_width in by_condition.items()}
                for size, by_condition in rates.items()}
    report = {
        "frame_sizes": [f"{w}x{h}" for w, h in FRAME_SIZES], "widths_px": list(widths), "scenes": scenes,
        "found_rate": FOUND_RATE, "conditions": list(CONDITIONS),
        "search_frames": {f"{w}x{h}": math.ceil(len(search_windows(w, h)) / 3) for w, h in FRAME_SIZES},
        "smallest_width_px": smallest, "detection_rate": rates,
        "search_ms": search_ms, "tracking_ms": tracking, "crop_jumps": jumps,
        "goals": judge(smallest, tracking, jumps),
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out / "tracking.json", report)
    draw(rates, args.out / "tracking.png")
    for size, by_condition in smallest.items():
        print(f"{size}: smallest face found in >= 95 %: " +
              ", ".join(f"{c} {w if w is not None else '-'}" for c, w in by_condition.items()))
    for key, verdict in report["goals"].items():
        print(f"  {key}: {verdict['value']} (goal {verdict['goal']}) {'met' if verdict['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
