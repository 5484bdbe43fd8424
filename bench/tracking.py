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
  mouth r          the whole app (finder, crop, calibration, mesh engine at the camera's size) driven by
                   a person talking in the room (bench/clips.py's mouth script, two opens every 1.2 s,
                   4.8 s, astronaut driving grace_hopper; scenes.clip_in_room) per frame size and face
                   width down to the finder's 48 px: Pearson r of the output's mouth-open ratio (static
                   Face Mesh on the output) against the clip's truth, from the first frame the face is
                   found on (goal >= 0.9 everywhere); "kept" is the same run with the first face
                   found kept as the neutral (neutral_settle_s = 0), the calibration the app had until
                   issue 19. Written to DIR/mouth.json and DIR/mouth.png (r against face width) and
                   DIR/mouth_frames.png (1920x1080, 110 px: the driver's face, the output kept, after)

    python bench/tracking.py --out bench_out/tracking [--small] [--scenes N]
    python bench/tracking.py --out bench_out/tracking_ms --timing-only   # detect ms alone (quick)
    python bench/tracking.py --out bench_out/tracking_mouth --mouth-only  # mouth r alone (~2 min)
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from avatarify.datatypes import FaceLandmarks  # noqa: E402
from avatarify.finder import FaceFinder, search_windows  # noqa: E402
from avatarify.landmarks import FaceMeshDetector  # noqa: E402
from avatarify.motion import mouth_open_ratio  # noqa: E402
from bench.clips import load_photo_bgr, make_clip, truth_series  # noqa: E402
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402
from bench.scenes import (CONDITIONS, PHOTOS, PlacedFace, clip_in_room, random_face_centre,  # noqa: E402
                          scene_frame)

log = logging.getLogger("tracking")

FRAME_SIZES = ((640, 480), (1280, 720), (1920, 1080))
WIDTHS = (24, 32, 40, 48, 56, 64, 80, 96, 128, 160)
SMALL_WIDTHS = (32, 40, 48, 64, 96)
FOUND_RATE = 0.95
GOALS = {"smallest_width_px": ("<=", 48), "track_p95_ms_1280x720": ("<=", 8.0), "crop_jumps": ("<=", 0)}
FPS = 30.0
# The talking driver of the mouth measure: the mouth script's clip (two opens per clip) made at 512 px
# (a 256 px face, only ever shrunk into the room), played MOUTH_REPEATS times; it opens from frame 0,
# so a 1080p search pass (6 frames) ends with the mouth more than half open.
MOUTH_DRIVER, MOUTH_AVATAR = "astronaut", "grace_hopper"
MOUTH_CLIP_FRAMES, MOUTH_CLIP_SIZE, MOUTH_REPEATS = 36, 512, 4
MOUTH_WIDTHS = (48, 64, 90, 110, 160)
MOUTH_GOAL = 0.9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tracking.json and tracking.png")
    parser.add_argument("--scenes", type=int, default=20, help="scenes per frame size, width and condition")
    parser.add_argument("--small", action="store_true", help="fewer widths and scenes, for a quick look")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the tracking ms (tracking_ms.json), e.g. to time again on a quiet machine")
    parser.add_argument("--mouth-only", action="store_true",
                        help="only the mouth r per frame size and face width (mouth.json, mouth.png)")
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


def talking_driver(width: int, height: int, face_width: float) -> tuple[list[np.ndarray], np.ndarray, PlacedFace]:
    """The talking person in a (width, height) room with a `face_width` px face: frames, the truth's
    mouth opening per frame (0 closed .. 1 wide), and where the neutral face sits."""
    clip, truth = make_clip(MOUTH_DRIVER, "mouth", frames=MOUTH_CLIP_FRAMES, size=MOUTH_CLIP_SIZE)
    centre = (width * 0.45, height * 0.42)
    frames, placed = clip_in_room(clip, truth, width, height, face_width, centre)
    return frames * MOUTH_REPEATS, np.tile(truth_series(truth, "mouth_open"), MOUTH_REPEATS), placed


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """r over the frames where both are known (NaN: the face was not found there)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def drive_app(avatar_path: Path, frames: list[np.ndarray], settle_s: float | None,
              measure: FaceMeshDetector, keep: tuple[int, ...] = ()) -> dict:
    """The whole live app (mesh engine, call framing at the frame's size) over `frames`: per frame the
    finder's and the output's mouth-open ratio (NaN where no face), the frames the neutral was set on,
    and the outputs of the frames in `keep`. `settle_s` None: the app's default."""
    from avatarify.app import LiveApp, avatar_framing, build_animator
    from avatarify.avatars import load_avatars
    from avatarify.config import Settings
    from avatarify.stats import Stats

    height, width = frames[0].shape[:2]
    knobs = {} if settle_s is None else {"neutral_settle_s": settle_s}
    settings = Settings(avatar=[avatar_path], engine="mesh", preview=False, virtual_cam=False,
                        cam_width=width, cam_height=height, **knobs)
    avatars = load_avatars([avatar_path], avatar_framing(settings))
    app = LiveApp(settings, build_animator(settings), avatars, source=None, sinks=[], preview=None, stats=Stats())
    driver, shown, neutral_frames, kept = [], [], [], {}
    try:
        for index, frame in enumerate(frames):
            neutral = app.neutral
            output = app.step(frame, index / FPS)
            if app.neutral is not neutral:
                neutral_frames.append(index)
            # The finder's own landmarks (frame px): tells a mouth the finder lost from one lost later.
            tracked = app.finder._person if app.finder.tracking else None
            driver.append(mouth_open_ratio(tracked.points) if tracked is not None else math.nan)
            seen = measure.detect(output) if app.neutral is not None else None
            shown.append(mouth_open_ratio(seen.points) if seen is not None else math.nan)
            if index in keep:
                kept[index] = output
    finally:
        app.close()
    return {"driver": np.array(driver), "output": np.array(shown), "neutral_frames": neutral_frames,
            "kept": kept}


def mouth_case(run: dict, truth_open: np.ndarray) -> dict:
    """One run's figures against the truth, from the first frame the face was found on."""
    found = np.flatnonzero(np.isfinite(run["driver"]))
    first = int(found[0]) if len(found) else len(truth_open)
    settled = run["neutral_frames"][-1] if run["neutral_frames"] else len(truth_open)
    output, truth = run["output"][first:], truth_open[first:]
    return {"found_frame": first, "neutral_frames": run["neutral_frames"],
            "neutral_truth_open": float(truth_open[settled]) if settled < len(truth_open) else None,
            "r": pearson(output, truth),
            "r_after_neutral": pearson(run["output"][settled:], truth_open[settled:]),
            "r_finder": pearson(run["driver"][first:], truth),
            "output_range": ([float(np.nanmin(output)), float(np.nanmax(output))]
                             if np.isfinite(output).any() else None),
            "output_found_share": float(np.isfinite(output).mean()) if len(output) else 0.0}


def mouth_follow(out: Path, widths: tuple[int, ...]) -> dict:
    """{size: {width: {"after": case, "kept": case}}} for the talking driver (see the docstring), and
    the frames of mouth_frames.png."""
    avatar_path = out / f"avatar_{MOUTH_AVATAR}.png"
    write_png(avatar_path, load_photo_bgr(MOUTH_AVATAR))
    result, sheet = {}, {}
    with FaceMeshDetector(static=True) as measure:
        for width, height in FRAME_SIZES:
            key = f"{width}x{height}"
            result[key] = {}
            for face_width in widths:
                frames, truth_open, placed = talking_driver(width, height, face_width)
                show = (width, face_width) == (1920, 110)
                keep = tuple(range(0, 60, 5)) if show else ()
                cases = {}
                for label, settle_s in (("after", None), ("kept", 0.0)):
                    run = drive_app(avatar_path, frames, settle_s, measure, keep)
                    cases[label] = mouth_case(run, truth_open)
                    if show:
                        sheet[label] = run["kept"]
                if show:
                    sheet["driver"] = {i: frames[i] for i in keep}
                    sheet["face"], sheet["truth"] = placed, truth_open
                result[key][face_width] = cases
                log.info("%s %3d px: mouth r %.3f (neutral kept %.3f), found at frame %d, neutral on %s", key,
                         face_width, cases["after"]["r"], cases["kept"]["r"], cases["after"]["found_frame"],
                         cases["after"]["neutral_frames"])
    return {"cases": result, "sheet": sheet}


def draw_mouth(cases: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.8), sharey=True)
    for axis, (size, by_width) in zip(np.atleast_1d(axes), cases.items()):
        widths = sorted(by_width)
        for label, style in (("after", {"marker": "o"}),
                             ("kept", {"marker": "x", "linestyle": "--", "color": "grey"})):
            axis.plot(widths, [by_width[w][label]["r"] for w in widths], label=label, **style)
        axis.plot(widths, [by_width[w]["after"]["r_after_neutral"] for w in widths], linestyle=":", marker=".",
                  label="after, from the neutral's last move")
        axis.axhline(MOUTH_GOAL, color="red", linewidth=0.8, linestyle=":")
        axis.set_title(size)
        axis.set_xlabel("face width (px)")
        axis.set_ylim(-0.2, 1.02)
    _save_panels(figure, axes, "mouth r, output vs truth",
                 "Mouth followed, whole app, talking driver (red: goal 0.9; kept: the first face stays neutral)", path)


def mouth_sheet(sheet: dict, tile: int = 150) -> np.ndarray:
    """Rows: the driver's face (from the camera frame), the output's face kept, after; columns:
    every fifth frame of the first 2 s, labelled with the frame and the truth's mouth opening."""
    x0, y0, x1, y1 = sheet["face"].box
    side = 2.2 * (x1 - x0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rows = []
    for label in ("driver", "kept", "after"):
        row = []
        for index, picture in sorted(sheet[label].items()):
            if label == "driver":
                box = (cx - side / 2, cy - side / 2, side)
            else:  # the avatar's face: the call framing's face box, the same for every frame
                box = sheet.setdefault("avatar_box", _face_square(picture))
            crop = _square(picture, box, tile)
            text = f"{label} {index}" + (f" m={sheet['truth'][index]:.2f}" if label == "driver" else "")
            cv2.putText(crop, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(crop)
        rows.append(np.hstack(row))
    return np.vstack(rows)


def _face_square(picture_bgr: np.ndarray) -> tuple[float, float, float]:
    """(x0, y0, side) of a square around the face of a picture (static Face Mesh), mouth and collar inside."""
    with FaceMeshDetector(static=True) as mesh:
        face = mesh.detect(picture_bgr)
    x0, y0, x1, y1 = face.box
    side = 1.6 * (x1 - x0)
    return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2.5, side


def _square(picture_bgr: np.ndarray, box: tuple[float, float, float], tile: int) -> np.ndarray:
    x0, y0, side = box
    matrix = np.float32([[tile / side, 0, -x0 * tile / side], [0, tile / side, -y0 * tile / side]])
    return cv2.warpAffine(picture_bgr, matrix, (tile, tile), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def judge_mouth(cases: dict) -> dict:
    worst = min(case["after"]["r"] for by_width in cases.values() for case in by_width.values())
    return {"mouth_r_min": {"value": worst, "goal": f">= {MOUTH_GOAL:g}", "met": bool(worst >= MOUTH_GOAL)}}


def run_mouth(out: Path, widths: tuple[int, ...]) -> dict:
    """The mouth measure alone: mouth.json, mouth.png, mouth_frames.png under `out`."""
    started = time.perf_counter()
    measured = mouth_follow(out, widths)
    cases = measured["cases"]
    report = {"frame_sizes": [f"{w}x{h}" for w, h in FRAME_SIZES], "widths_px": list(widths),
              "driver": {"photo": MOUTH_DRIVER, "script": "mouth", "clip_frames": MOUTH_CLIP_FRAMES,
                         "clip_size": MOUTH_CLIP_SIZE, "repeats": MOUTH_REPEATS, "fps": FPS},
              "avatar": MOUTH_AVATAR, "engine": "mesh", "framing": "call at the frame's size",
              "what": {"r": "Pearson r, output mouth-open ratio (static Face Mesh) vs the truth's mouth_open, "
                            "from the first frame the face is found on",
                       "r_after_neutral": "the same from the frame the neutral was last set on",
                       "r_finder": "the finder's own landmarks' ratio vs the truth, same frames",
                       "kept": "neutral_settle_s = 0: the first face found stays the neutral"},
              "cases": cases, "goals": judge_mouth(cases),
              "bench_seconds": round(time.perf_counter() - started, 1)}
    write_json(out / "mouth.json", report)
    draw_mouth(cases, out / "mouth.png")
    if {"driver", "kept", "after"} <= measured["sheet"].keys():
        write_png(out / "mouth_frames.png", mouth_sheet(measured["sheet"]))
    return report


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
    _save_panels(figure, axes, "detection rate", "Face found after one search pass (red: the 48 px goal, dotted: 95 %)",
                 path)


def _save_panels(figure, axes, ylabel: str, title: str, path: Path) -> None:
    """A row of per-camera-size panels: one y label, one legend, the title, written as PNG."""
    np.atleast_1d(axes)[0].set_ylabel(ylabel)
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower right")
    figure.suptitle(title)
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
    mouth_widths = SMALL_WIDTHS if args.small else MOUTH_WIDTHS
    if args.mouth_only:
        mouth = run_mouth(args.out, mouth_widths)
        print_verdicts(mouth["goals"])
        return 0
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
    mouth = run_mouth(args.out, mouth_widths)
    smallest = {size: {condition: smallest_found(by_width) for condition, by_width in by_condition.items()}
                for size, by_condition in rates.items()}
    report = {
        "frame_sizes": [f"{w}x{h}" for w, h in FRAME_SIZES], "widths_px": list(widths), "scenes": scenes,
        "found_rate": FOUND_RATE, "conditions": list(CONDITIONS),
        "search_frames": {f"{w}x{h}": math.ceil(len(search_windows(w, h)) / 3) for w, h in FRAME_SIZES},
        "smallest_width_px": smallest, "detection_rate": rates,
        "search_ms": search_ms, "tracking_ms": tracking, "crop_jumps": jumps,
        "goals": judge(smallest, tracking, jumps) | mouth["goals"],
        "mouth_r": {size: {w: case["after"]["r"] for w, case in by_width.items()}
                    for size, by_width in mouth["cases"].items()},
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out / "tracking.json", report)
    draw(rates, args.out / "tracking.png")
    for size, by_condition in smallest.items():
        print(f"{size}: smallest face found in >= 95 %: " +
              ", ".join(f"{c} {w if w is not None else '-'}" for c, w in by_condition.items()))
    print_verdicts(report["goals"])
    return 0


def print_verdicts(goals: dict) -> None:
    for key, verdict in goals.items():
        print(f"  {key}: {verdict['value']} (goal {verdict['goal']}) {'met' if verdict['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
