"""Teeth and mouth interior on real drivers and real photos, as a call participant sees them.

Input: a folder of real driving videos (`--real DIR`, every *.mp4, read in place) and a folder of
real avatar photos (`--photos DIR`, every *.jpg, read in place) beside the astronaut and Grace
Hopper photos. Each photo is framed for a 1280x720 call (compose.frame_photo, as the app does, with
`--fill`: blur keeps the whole head, zoom fills the frame with a larger face) and
driven by the mesh engine from each video: a square crop fixed on frame 0's face (the app's crop
size and rule), tracking-mode Face Mesh landmarks, frame 0 as the neutral. Driver crops and outputs
are both re-measured with static-mode Face Mesh (one instrument for both).

Measures (`mouth_interior_measures`, per image): inside the inner-lip contour eroded by CORE_INSET
of the face height (the interior's core),
  bright_saturation  median HSV saturation of the core's brightest third: teeth are near-neutral
                     whites, so a colour cast pushed onto them shows here first
  ring_darkness      1 - mean grey of the band between the inner-lip contour and the core over the
                     core's: a dark ring just inside the lips (a hole cut into the photo) is > 0
  teeth_light        median grey of the same brightest third over the median grey of the face's
                     cheeks (mouth.cheeks_bgr): how bright the teeth (or the tongue, where it fills
                     the mouth) look against the skin around them
  teeth_clipped      share of the brightest third whose brightest channel reaches CLIPPED: teeth
                     lifted past the picture's white are a flat, textureless glow
  gap                inner-lip gap over the face height (the face height: the landmarks' box)
None when the gap is under OPEN_GAP: a closed mouth has no interior to judge.

Per pair (video x photo), over the frames where the driver's mouth is open and both are measured:
the median of each measure for the driver and for the output. Goals: output bright_saturation at
most the driver's + SATURATION_SLACK; output ring_darkness at most the driver's + RING_SLACK;
brightness: light_ratio (output teeth_light over the driver's) within LIGHT_RANGE (above it the teeth
glow, below it they are grey) and output teeth_clipped at most the driver's + CLIPPED_SLACK. The two
faces' skin tones differ, so teeth_light only compares like with like between faces of similar
skin; LIGHT_RANGE is wide for that reason, and the clipped share judges the glow without it.
Beside them, `mouth_ms`: the median CPU ms of the engine's mouth painting per open-mouth frame.

Output in `--out DIR`: teeth.json (per pair, and `--baseline FILE`'s figures beside them when given)
and teeth_sheet.png (per pair, the widest-open mouths: driver | avatar, zoomed, and a line of the
pair's figures under them, a missed goal in red).

CLI: `python bench/teeth.py --out DIR [--real DIR] [--photos DIR] [--fill blur|zoom] [--max-frames N]
[--stride N] [--baseline OLD/teeth.json]`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/teeth.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.config import FILLS  # noqa: E402
from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.engines.mesh.mouth import GREY_BGR, cheeks_bgr  # noqa: E402
from avatarify.motion import INNER_LIPS, MOUTH_INNER_BOTTOM, MOUTH_INNER_TOP, OUTER_LIPS  # noqa: E402
from bench.common import read_json, setup_cli_logging, write_json, write_png  # noqa: E402

log = logging.getLogger(__name__)

OPEN_GAP = 0.05  # inner-lip gap over face height from which the mouth counts as open
CORE_INSET = 0.02  # the interior's core: the inner-lip contour eroded by this share of the face height
SATURATION_SLACK = 0.08
RING_SLACK = 0.05
# Teeth within a quarter of the driver's brightness against the skin, either way: about what a
# viewer tells apart on a mouth at call size, and wide enough for two people's skin tones.
LIGHT_RANGE = (0.8, 1.25)
CLIPPED = 250  # a channel at or above this has lost the teeth's texture (8-bit white, JPEG's ringing)
CLIPPED_SLACK = 0.05
CAMERA = (1280, 720)
PACKAGED_PHOTOS = ("astronaut", "grace_hopper")


# ---------------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------------
def mouth_interior_measures(image_bgr: np.ndarray, landmarks: FaceLandmarks | np.ndarray) -> dict | None:
    """The mouth interior's measures (module docstring) of one image from its Face Mesh landmarks
    (FaceLandmarks or (478, 2) px); None when the mouth is not open."""
    points = np.asarray(getattr(landmarks, "points", landmarks), np.float64)
    face_height = float(np.ptp(points[:, 1]))
    if face_height <= 0.0:
        return None
    gap = float(np.linalg.norm(points[MOUTH_INNER_TOP] - points[MOUTH_INNER_BOTTOM])) / face_height
    if gap < OPEN_GAP:
        return None
    inner = np.zeros(image_bgr.shape[:2], np.uint8)
    cv2.fillPoly(inner, [np.round(points[list(INNER_LIPS)] * 16).astype(np.int32)], 1, shift=4)
    radius = max(int(round(CORE_INSET * face_height)), 1)
    core = cv2.erode(inner, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    band = (inner > 0) & (core == 0)
    core = core > 0
    if core.sum() < 9 or band.sum() < 9:
        return None
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    value, saturation = hsv[..., 2][core].astype(np.float32), hsv[..., 1][core].astype(np.float32) / 255.0
    bright = value >= np.percentile(value, 100.0 * 2.0 / 3.0)
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    core_grey = float(grey[core].mean())
    skin_grey = float(cheeks_bgr(image_bgr, points) @ GREY_BGR)
    return {"bright_saturation": float(np.median(saturation[bright])),
            "ring_darkness": 1.0 - float(grey[band].mean()) / max(core_grey, 1.0),
            "teeth_light": float(np.median(grey[core][bright])) / skin_grey,
            "teeth_clipped": float(np.mean(value[bright] >= CLIPPED)),
            "gap": gap}


def _median(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 4) if len(values) else None


def pair_summary(driver: Sequence[dict | None], output: Sequence[dict | None]) -> dict:
    """Medians over the frames where both the driver's and the output's mouth were measured open,
    and the goals (module docstring)."""
    both = [(d, o) for d, o in zip(driver, output) if d is not None and o is not None]
    result = {"open_frames": sum(d is not None for d in driver), "measured_frames": len(both)}
    for key in ("bright_saturation", "ring_darkness", "teeth_light", "teeth_clipped"):
        result[f"driver_{key}"] = _median([d[key] for d, _ in both])
        result[f"output_{key}"] = _median([o[key] for _, o in both])
    if both:
        result["saturation_met"] = (result["output_bright_saturation"]
                                    <= result["driver_bright_saturation"] + SATURATION_SLACK)
        result["ring_met"] = result["output_ring_darkness"] <= result["driver_ring_darkness"] + RING_SLACK
        result["light_ratio"] = round(result["output_teeth_light"] / result["driver_teeth_light"], 4)
        result["brightness_met"] = (LIGHT_RANGE[0] <= result["light_ratio"] <= LIGHT_RANGE[1]
                                    and result["output_teeth_clipped"]
                                    <= result["driver_teeth_clipped"] + CLIPPED_SLACK)
    return result


GOALS = ("saturation_met", "ring_met", "brightness_met")


def pair_line(key: str, pair: dict) -> list[tuple[str, bool]]:
    """The pair's figures as (text, met) pieces: the sheet's line under its row."""
    if not pair["measured_frames"]:
        return [(f"{key}: no open mouth measured on both", True)]
    saturation = pair["output_bright_saturation"] - pair["driver_bright_saturation"]
    ring = pair["output_ring_darkness"] - pair["driver_ring_darkness"]
    return [(f"{key}", True),
            (f"saturation {saturation:+.3f}", pair["saturation_met"]),
            (f"ring {ring:+.3f}", pair["ring_met"]),
            (f"light x{pair['light_ratio']:.2f} clipped {pair['output_teeth_clipped']:.2f}", pair["brightness_met"])]


# ---------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------
def load_photos(photos_dir: Path | None) -> dict[str, tuple[np.ndarray, FaceLandmarks]]:
    """Every photo with its static-mode landmarks: the packaged two, then the folder's *.jpg."""
    from avatarify.landmarks import FaceMeshDetector
    from bench.clips import load_photo_bgr

    images = {name: load_photo_bgr(name) for name in PACKAGED_PHOTOS}
    for path in sorted(photos_dir.glob("*.jpg")) if photos_dir is not None else []:
        images[path.stem] = cv2.imread(str(path))
    photos = {}
    with FaceMeshDetector(static=True) as detector:
        for name, image in images.items():
            landmarks = detector.detect(image)
            if landmarks is None:
                log.warning("no face in photo %s: skipped", name)
                continue
            photos[name] = (image, landmarks)
    return photos


def framed_for_call(image_bgr: np.ndarray, landmarks: FaceLandmarks,
                    fill: str = "blur") -> tuple[np.ndarray, FaceLandmarks]:
    from avatarify.compose import frame_photo

    framed = frame_photo(image_bgr, landmarks, *CAMERA, fill=fill)
    return framed.image_bgr, framed.landmarks


def measured(images: Sequence[np.ndarray],
             indices: Sequence[int]) -> dict[int, tuple[dict | None, FaceLandmarks | None]]:
    """Static-mode Face Mesh and the mouth measures of the listed images."""
    from avatarify.landmarks import FaceMeshDetector

    out = {}
    with FaceMeshDetector(static=True) as detector:
        for i in indices:
            landmarks = detector.detect(images[i])
            out[i] = (None if landmarks is None else mouth_interior_measures(images[i], landmarks), landmarks)
    return out


def drive(avatar: tuple[np.ndarray, FaceLandmarks], driving: Sequence[DrivingFrame],
          keep: set[int]) -> tuple[dict[int, np.ndarray], float]:
    """The mesh engine's outputs at the `keep` frames (every frame is animated: the motion is
    smoothed over time) and the median ms its mouth painting took per `keep` frame, in this
    thread's CPU time: on a shared machine the wall clock measures the neighbours."""
    from avatarify.engines.mesh import MeshAnimator

    engine = MeshAnimator()
    engine.set_avatar(*avatar)
    engine.set_neutral(driving[0])
    paint, costs = engine._paint_mouth, {}

    def timed(*args, **kwargs):
        start = time.thread_time()
        paint(*args, **kwargs)
        costs[index] = costs.get(index, 0.0) + 1000.0 * (time.thread_time() - start)

    engine._paint_mouth = timed  # the bench's own stopwatch on the one stage it judges
    outputs = {}
    for index, frame in enumerate(driving):
        output = engine.animate(frame)
        if index in keep:
            outputs[index] = output
    painted = [costs.get(i, 0.0) for i in keep]
    return outputs, float(np.median(painted)) if painted else 0.0


def mouth_zoom(image_bgr: np.ndarray, landmarks: FaceLandmarks | None, cell: int, label: str) -> np.ndarray:
    """The mouth, zoomed to a cell x cell square (grey when no face was found)."""
    if landmarks is None:
        tile = np.full((cell, cell, 3), 128, np.uint8)
    else:
        lips = landmarks.points[list(OUTER_LIPS)]
        centre = lips.mean(axis=0)
        half = 0.8 * float(np.ptp(lips[:, 0]))
        x0, y0 = (int(round(v)) for v in centre - half)
        side = max(int(round(2 * half)), 4)
        padded = cv2.copyMakeBorder(image_bgr, side, side, side, side, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        tile = cv2.resize(padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side], (cell, cell),
                          interpolation=cv2.INTER_CUBIC)
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, thickness, cv2.LINE_AA)
    return tile


def figures_strip(pieces: Sequence[tuple[str, bool]], width: int) -> np.ndarray:
    """One line of text pieces on a dark strip at least `width` px wide, a missed goal's piece in red."""
    widths = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)[0][0] + 16 for text, _ in pieces]
    strip = np.full((20, max(width, 4 + sum(widths)), 3), 32, np.uint8)
    x = 4
    for (text, met), step in zip(pieces, widths):
        cv2.putText(strip, text, (x, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (230, 230, 230) if met else (60, 60, 255), 1, cv2.LINE_AA)
        x += step
    return strip


def run_bench(real_dir: Path, photos_dir: Path | None, out_dir: Path, size: int = 256, margin: float = 0.5,
              max_frames: int | None = None, stride: int = 1, baseline: Path | None = None,
              fill: str = "blur", shown: int = 3, cell: int = 180) -> dict:
    # Imported here: bench/real_drivers.py imports this module for its measures.
    from bench.clips import track_landmarks
    from bench.real_drivers import fixed_crops, read_video

    start = time.perf_counter()
    videos = sorted(real_dir.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no *.mp4 videos in {real_dir}; pass the folder of real driving videos with --real")
    photos = {name: framed_for_call(*photo, fill) for name, photo in load_photos(photos_dir).items()}
    old = read_json(baseline)["pairs"] if baseline is not None else {}
    pairs, rows = {}, []
    for path in videos:
        frames, fps = read_video(path, max_frames)
        crops = fixed_crops(frames, size, margin)
        driving = [DrivingFrame(c, lm, i / fps) for i, (c, lm) in enumerate(zip(crops, track_landmarks(crops)))]
        drivers = measured(crops, range(0, len(crops), stride))
        opened = [i for i, (m, _) in drivers.items() if m is not None]
        widest = sorted(opened, key=lambda i: -drivers[i][0]["gap"])
        picks = []
        for i in widest:  # the widest-open mouths, at least a second apart
            if len(picks) < shown and all(abs(i - p) >= fps for p in picks):
                picks.append(i)
        for name, avatar in photos.items():
            outputs, mouth_ms = drive(avatar, driving, set(opened))
            shows = measured([outputs.get(i) for i in range(len(crops))], opened)
            key = f"{path.stem}/{name}"
            pairs[key] = {**pair_summary([drivers[i][0] for i in opened], [shows[i][0] for i in opened]),
                          "mouth_ms": round(mouth_ms, 3)}
            if key in old:
                pairs[key]["baseline"] = {k: v for k, v in old[key].items() if k != "baseline"}
            log.info("%s: %s", key, pairs[key])
            tiles = []
            for i in picks:
                tiles.append(mouth_zoom(crops[i], drivers[i][1], cell, f"{path.stem} #{i} driver"))
                tiles.append(mouth_zoom(outputs[i], shows[i][1], cell, name))
            if tiles:
                row = np.hstack(tiles)
                strip = figures_strip(pair_line(key, pairs[key]), row.shape[1])
                row = np.pad(row, ((0, 0), (0, strip.shape[1] - row.shape[1]), (0, 0)), constant_values=128)
                rows.append(np.vstack([row, strip]))
    data = {"camera": CAMERA, "fill": fill, "crop_size": size, "margin": margin, "stride": stride,
            "goals": {"bright_saturation": f"output <= driver + {SATURATION_SLACK}",
                      "ring_darkness": f"output <= driver + {RING_SLACK}",
                      "brightness": f"{LIGHT_RANGE[0]} <= light_ratio <= {LIGHT_RANGE[1]} and output "
                                    f"teeth_clipped <= driver + {CLIPPED_SLACK}"},
            "pairs": pairs, "bench_s": round(time.perf_counter() - start, 1)}
    data["all_met"] = all(p.get(goal, True) for p in pairs.values() for goal in GOALS)
    write_json(out_dir / "teeth.json", data)
    if rows:
        width = max(r.shape[1] for r in rows)
        write_png(out_dir / "teeth_sheet.png",
                  np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=128) for r in rows]))
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mouth interior (teeth colour and brightness, dark ring) on real drivers x photos.")
    parser.add_argument("--real", type=Path, default=Path("/work/shared/real_drivers"),
                        help="folder of real driving videos (*.mp4), read in place")
    parser.add_argument("--photos", type=Path, default=Path("/work/shared/real_photos"),
                        help="folder of real avatar photos (*.jpg), read in place, beside the packaged two")
    parser.add_argument("--out", required=True, type=Path, help="folder for teeth.json and teeth_sheet.png")
    parser.add_argument("--fill", choices=FILLS, default="blur",
                        help="how the photo fills the call frame (compose.frame_photo): zoom shows a larger face")
    parser.add_argument("--size", type=int, default=256, help="driving crop side in px (the app's default)")
    parser.add_argument("--margin", type=float, default=0.5, help="crop margin on each side, share of the face box")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per video (default: all)")
    parser.add_argument("--stride", type=int, default=1, help="measure every Nth frame (all are animated)")
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier teeth.json to report beside")
    args = parser.parse_args(argv)
    setup_cli_logging()
    if not args.real.is_dir():
        print(f"{args.real} is not a folder; pass the folder of real driving videos with --real.", file=sys.stderr)
        return 2
    photos = args.photos if args.photos.is_dir() else None
    data = run_bench(args.real, photos, args.out, args.size, args.margin, args.max_frames, args.stride, args.baseline,
                     args.fill)
    for key, pair in data["pairs"].items():
        before = pair.get("baseline", {})
        print(f"{key:22s} sat driver {pair['driver_bright_saturation']} output {pair['output_bright_saturation']}"
              f" (was {before.get('output_bright_saturation')})  ring driver {pair['driver_ring_darkness']}"
              f" output {pair['output_ring_darkness']} (was {before.get('output_ring_darkness')})"
              f"  light x{pair.get('light_ratio')} (was x{before.get('light_ratio')}) clipped driver"
              f" {pair['driver_teeth_clipped']} output {pair['output_teeth_clipped']}"
              f" (was {before.get('output_teeth_clipped')})"
              f"  mouth {pair['mouth_ms']} ms  frames {pair['measured_frames']}/{pair['open_frames']}")
    print(f"all met: {data['all_met']}  ({data['bench_s']} s)  {args.out / 'teeth.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
