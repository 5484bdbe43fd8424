"""Speed (and warp accuracy) of the mesh engine, end to end as the live app runs it per frame.

Input: nothing but the flags; the driving clip is synthesized by bench/clips.py ('mixed' script:
roll, shift, scale, mouth, blink, gaze at once, light sensor noise) and the avatar is the other photo's
neutral crop. Per frame and size (256, 512): Face Mesh landmarks in tracking mode on the driving
crop → motion transfer (3-D head pose) → mesh warp (+ mouth interior, eyes), each stage timed.
Output in DIR: mesh_perf.json (fps_256, fps_512: median end-to-end fps after warm-up; per-stage
median/p95 ms; landing error of the warp; identity error), mesh_perf_strip.png (driver | output at
several frames, both sizes), mesh_perf_features.png (zoomed faces: mouth, blink, gaze, cross-identity)
and mesh_perf_stages.png (stage-time bars).

Goals, and why a CPU can miss the fps ones: fps_256 ≥ 100 and fps_512 ≥ 50 are the product's goals on
the CPUs the README names, but about half of a 256-px frame is Face Mesh, whose XNNPACK kernels are
picked per instruction set (AVX-512, AVX2, …) and per core, so the same code ran 173 fps on one AMD
EPYC, 102 on an Intel Xeon (model 207) and 83 on another AMD EPYC. So the fps goals are stated for the
README's reference CPU (the Intel Xeon model 207 VM), and the JSON says on which CPU it ran (`cpu`)
and splits the frame: `engine_share_256` is the engine's own stages (motion + warp) over the Face
Mesh stage, two timings of the same run, so a miss can be read as Face Mesh's (share well under 1:
the engine is not what is slow) or the engine's. It is reported, not a goal: under load from other
jobs Face Mesh's threads suffer more than the engine's single thread, which moves the share too
(1.0 on a quiet VM, 0.56 on a busy one).

CLI: `python bench/mesh_perf.py --out DIR [--frames N]`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/mesh_perf.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.backends import cpu_model  # noqa: E402
from avatarify.datatypes import DrivingFrame, FaceLandmarks  # noqa: E402
from avatarify.engines.mesh import MeshAnimator  # noqa: E402
from avatarify.landmarks import FaceMeshDetector  # noqa: E402
from avatarify.motion import MotionTarget, Similarity, as_complex, as_points  # noqa: E402
from bench.clips import face_rig, make_clip, track_landmarks, truth_series  # noqa: E402
from bench.common import setup_cli_logging, write_json, write_png  # noqa: E402

log = logging.getLogger(__name__)

SIZES = (256, 512)
STAGES = ("landmarks", "motion", "warp")
DRIVER, AVATAR = "grace_hopper", "astronaut"


# ---------------------------------------------------------------------------------------------------
# Inputs shared with the tests
# ---------------------------------------------------------------------------------------------------
def avatar_of(photo: str, size: int) -> tuple[np.ndarray, FaceLandmarks]:
    """An avatar crop (the photo's neutral clip frame, no noise) and its static-mode landmarks."""
    avatar_bgr = face_rig(photo, size).neutral_frame()
    landmarks = track_landmarks([avatar_bgr], static=True)[0]
    if landmarks is None:
        raise RuntimeError(f"no face found on the {photo} avatar")
    return avatar_bgr, landmarks


def driving_frames(frames: Sequence[np.ndarray], landmarks: Sequence[FaceLandmarks | None],
                   fps: float = 30.0) -> list[DrivingFrame]:
    """DrivingFrames as the live app hands them over (timestamps at the clip's frame rate)."""
    return [DrivingFrame(frame, lm, index / fps) for index, (frame, lm) in enumerate(zip(frames, landmarks))]


def synthetic_target(points: np.ndarray, size: int) -> MotionTarget:
    """A known target for the warp: the avatar's landmarks under a smooth expression field (±2.5 px
    at 256, shorter waves than real faces make) and a head turn of 6°, scale 1.04 and a shift."""
    k = size / 256.0
    p = points.astype(np.float64)
    expression = np.stack([2.5 * k * np.sin(p[:, 1] / (9 * k)), 2.5 * k * np.cos(p[:, 0] / (11 * k))], axis=1)
    centre = complex(*p.mean(axis=0))
    m = complex(1.04 * np.exp(1j * np.radians(6.0)))
    head = Similarity(m, centre + complex(5 * k, -3 * k) - m * centre)
    return MotionTarget(as_points(head(as_complex(p + expression))), head, expression.astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
@dataclass
class SizeResult:
    size: int
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "total")})
    outputs: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict:
        stats = {stage: {"p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}
                 for stage, ms in self.stage_ms.items()}
        return {"fps": 1000.0 / stats["total"]["p50"], "fps_mean": 1000.0 / float(np.mean(self.stage_ms["total"])),
                "stages_ms": stats, "timed_frames": len(self.stage_ms["total"])}


def engine_share(summary: dict) -> float:
    """The engine's median ms (motion + warp) over Face Mesh's: a ratio of two timings on the same
    CPU in the same run, so the CPU's speed and its XNNPACK kernels cancel out."""
    stages = summary["stages_ms"]
    return (stages["motion"]["p50"] + stages["warp"]["p50"]) / stages["landmarks"]["p50"]


def time_size(size: int, frames: int, warmup: int, passes: int) -> SizeResult:
    """Run the per-frame pipeline over the clip `passes` times; the first `warmup` frames are untimed."""
    clip, _ = make_clip(DRIVER, "mixed", frames, size)
    avatar_bgr, avatar_landmarks = avatar_of(AVATAR, size)
    engine = MeshAnimator()
    engine.set_avatar(avatar_bgr, avatar_landmarks)
    result = SizeResult(size, frames=clip)
    clock = time.perf_counter
    with FaceMeshDetector(static=False) as detector:
        neutral = detector.detect(clip[0])
        engine.set_neutral(DrivingFrame(clip[0], neutral, 0.0))
        count = 0
        for repeat in range(passes):
            for index, frame in enumerate(clip):
                timestamp = (repeat * frames + index + 1) / 30.0
                t0 = clock()
                landmarks = detector.detect(frame)
                t1 = clock()
                target = engine.motion.target(landmarks.points, timestamp, engine.strength, engine.region,
                                              driving_depth=landmarks.depth)
                t2 = clock()
                output = engine.render(target, DrivingFrame(frame, landmarks, timestamp))
                t3 = clock()
                count += 1
                if repeat == 0:
                    result.outputs.append(output)
                if count <= warmup:
                    continue
                for stage, ms in zip((*STAGES, "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    result.stage_ms[stage].append(1000.0 * ms)
    return result


def accuracy(size: int) -> dict:
    """Warp landing error on a synthetic target and the identity error, on both photos."""
    out = {}
    for photo in (AVATAR, DRIVER):
        avatar_bgr, landmarks = avatar_of(photo, size)
        engine = MeshAnimator()
        engine.set_avatar(avatar_bgr, landmarks)
        error = engine.landing_error(synthetic_target(landmarks.points, size))
        engine.set_neutral(DrivingFrame(avatar_bgr, landmarks, 0.0))
        still = engine.animate(DrivingFrame(avatar_bgr, landmarks, 0.033))
        out[photo] = {"landing_px_median": float(np.nanmedian(error)), "landing_px_max": float(np.nanmax(error)),
                      "identity_mean_abs_255": float(np.abs(still.astype(np.float32) - avatar_bgr).mean())}
    return out


# ---------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------
def _label(image: np.ndarray, text: str) -> np.ndarray:
    image = image.copy()
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thickness, cv2.LINE_AA)
    return image


def strip(result: SizeResult, columns: int = 6, cell: int = 192) -> np.ndarray:
    """Driver row over output row at evenly spaced frames."""
    picks = np.linspace(0, len(result.outputs) - 1, columns).round().astype(int)
    rows = []
    for role, images in (("driver", result.frames), (f"mesh {result.size}", result.outputs)):
        rows.append(np.hstack([_label(cv2.resize(images[i], (cell, cell), interpolation=cv2.INTER_AREA),
                                      f"{role} #{i}") for i in picks]))
    return np.vstack(rows)


def feature_sheet(size: int = 256, frames: int = 36, zoom: int = 2) -> np.ndarray:
    """Per expression script and direction: neutral, most-expressed frame, its driver, zoomed on the
    face, so mouth cavity, blink and gaze can be checked by eye."""
    rows = []
    for script, key, extreme in (("mouth", "mouth_open", np.argmax), ("blink", "eye_open", np.argmin),
                                 ("gaze", "gaze_x", np.argmin), ("gaze", "gaze_x", np.argmax)):
        for driver, avatar in ((DRIVER, AVATAR), (AVATAR, DRIVER)):
            clip, truth = make_clip(driver, script, frames, size)
            values = (np.array([f["gaze_xy"][0] for f in truth["per_frame"]]) if key == "gaze_x"
                      else truth_series(truth, key))
            pick = int(extreme(values))
            avatar_bgr, avatar_landmarks = avatar_of(avatar, size)
            engine = MeshAnimator()
            engine.set_avatar(avatar_bgr, avatar_landmarks)
            driving = driving_frames(clip, track_landmarks(clip))
            engine.set_neutral(driving[0])
            outputs = [engine.animate(d) for d in driving]
            x0, y0, x1, y1 = avatar_landmarks.box
            half = int(0.45 * (x1 - x0))
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            face = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
            cells = [cv2.resize(image[face], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
                     for image in (outputs[0], outputs[pick])]
            side = cells[0].shape[0]
            cells.append(cv2.resize(clip[pick], (side, side), interpolation=cv2.INTER_AREA))
            texts = (f"{avatar} neutral", f"{script} #{pick}", f"driver {driver}")
            rows.append(np.hstack([_label(cv2.resize(c, (side, side)), t) for c, t in zip(cells, texts)]))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def stage_chart(summaries: dict[int, dict], path: Path) -> Path:
    """Stacked bars of per-stage median ms at each size (matplotlib, written as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    bottom = np.zeros(len(summaries))
    labels = [str(size) for size in summaries]
    for stage in STAGES:
        values = np.array([summaries[size]["stages_ms"][stage]["p50"] for size in summaries])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    for i, size in enumerate(summaries):
        ax.text(i, bottom[i], f"{summaries[size]['fps']:.0f} fps", ha="center", va="bottom")
    ax.set_ylabel("median ms per frame")
    ax.set_xlabel("engine size")
    ax.set_title("mesh engine, end to end (landmarks + motion + warp)")
    ax.set_ylim(0, bottom.max() * 1.25)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def run_bench(out_dir: Path, frames: int = 120, warmup: int = 15, passes: int = 2) -> dict:
    start = time.perf_counter()
    results = {size: time_size(size, frames, warmup, passes) for size in SIZES}
    summaries = {size: result.summary() for size, result in results.items()}
    data = {
        "engine": "mesh",
        **MeshAnimator().backend_info(),
        "driver": DRIVER, "avatar": AVATAR, "clip": "mixed", "frames": frames, "passes": passes,
        "warmup_frames": warmup,
        **{f"fps_{size}": round(summary["fps"], 1) for size, summary in summaries.items()},
        "per_size": summaries,
        "cpu": cpu_model(),
        **{f"engine_share_{size}": round(engine_share(summary), 3) for size, summary in summaries.items()},
        "goals": {"fps_256": ">= 100 (on the README's reference CPU)", "fps_512": ">= 50 (on the README's reference CPU)"},
        "accuracy": {str(size): accuracy(size) for size in SIZES},
        "bench_s": None,
    }
    write_png(out_dir / "mesh_perf_strip.png", np.vstack([strip(results[256]), strip(results[512])]))
    write_png(out_dir / "mesh_perf_features.png", feature_sheet())
    stage_chart(summaries, out_dir / "mesh_perf_stages.png")
    data["bench_s"] = round(time.perf_counter() - start, 1)
    write_json(out_dir / "mesh_perf.json", data)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the mesh engine end to end at 256 and 512.")
    parser.add_argument("--out", required=True, type=Path, help="folder for mesh_perf.json and the PNGs")
    parser.add_argument("--frames", type=int, default=120, help="frames of the synthetic driving clip")
    parser.add_argument("--warmup", type=int, default=15, help="untimed frames at the start")
    parser.add_argument("--passes", type=int, default=2, help="times the clip is played")
    args = parser.parse_args(argv)
    setup_cli_logging()
    data = run_bench(args.out, args.frames, args.warmup, args.passes)
    for size in SIZES:
        stages = data["per_size"][size]["stages_ms"]
        parts = "  ".join(f"{stage} {stages[stage]['p50']:.2f}" for stage in STAGES)
        print(f"fps_{size} {data[f'fps_{size}']:7.1f}   median ms: {parts}  total {stages['total']['p50']:.2f}  "
              f"engine/Face Mesh {data[f'engine_share_{size}']:.2f}")
    print(f"CPU: {data['cpu']}")
    print(f"({data['bench_s']} s)  {args.out / 'mesh_perf.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
