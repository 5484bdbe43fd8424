"""Artifacts of the call picture on real footage: tears, notches, zig-zag hair, stray pixels.

Input: real driving videos (`--real DIR`, every *.mp4; read in place, never copied) and avatar photos
(`--photos DIR`, every jpg/png, plus the astronaut and Grace Hopper); each pair runs through the real
command line (default engine and framing, `--output`). Output in `--out DIR`: artifacts.json (per
pair: the scores, their ratio to the baseline, the goals) and one artifacts_<driver>_<photo>.png per
pair (its six worst frames, each beside the same frame with the residual marked in red and the
scored band outlined).

Why this measure: every other bench compares features (eye, mouth, roll) or whole-crop L1; none
sees a horizontal cut through hair on the shoulders, a notch down a cheek, a rippled strand or a
dotted row at the frame's edge, which a call participant sees at once. A head and hair that move
smoothly are explained by a smooth flow; those faults are not.

Score of an output frame against frame 0 (the avatar at rest):
  - dense optical flow from the frame back to frame 0 (OpenCV DIS, medium preset), smoothed by a
    Gaussian of sigma SMOOTH_SIGMA face sizes, and frame 0 warped by that smooth flow;
  - the absolute grey-level residual against the frame after a 3x3 morphological opening (single
    pixels of coding noise go; a line of tear or a row of stray pixels a few px wide stays);
  - `share`: the share of residual pixels above RESIDUAL_LEVEL inside the band around the head: an
    ellipse with semi-axes BAND_AXES face sizes (wide, tall) centred on the face box raised by
    BAND_RAISE face sizes, less the face oval eroded by OVAL_ERODE face sizes (eyes, brows and mouth
    move for real). The semi-axes reach the hair, the shoulders' hair, the collar and the frame's
    top edge of a call framing;
  - `motion`: the mean length of the smooth flow in the band, in face sizes (a head that moves less
    is not a fix).
Face size: the larger side of the box of Face Mesh's landmarks on frame 0.
Every FRAME_STEP-th frame is scored. Per pair: median and p95 of `share` over the scored frames,
median `motion`, the worst frames.

Baseline and goals (issue 18): `--baseline FILE` (default bench/artifacts_baseline.json, the figures
of the code before the fixes, measured with this bench on the shared pairs) is copied into the output
and each pair is checked: p95 and median at most half the baseline's, motion at least 0.7x.

CLI: `python bench/artifacts.py --real ../shared/real_drivers --photos ../shared/real_photos --out DIR
[--max-frames N] [--pairs d12:s42,...] [--no-baseline]`.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python bench/artifacts.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.clips import load_photo_bgr  # noqa: E402
from bench.common import REPO_ROOT, read_json, setup_cli_logging, write_json, write_png  # noqa: E402

log = logging.getLogger(__name__)

SHARED = REPO_ROOT.parent / "shared"
BASELINE = REPO_ROOT / "bench" / "artifacts_baseline.json"
BUILTIN_PHOTOS = ("astronaut", "grace_hopper")
SMOOTH_SIGMA = 0.06  # face sizes
RESIDUAL_LEVEL = 24  # 8-bit grey levels
BAND_AXES = (1.1, 1.2)  # semi-axes of the band's ellipse (wide, tall), face sizes
BAND_RAISE = 0.1  # the ellipse's centre sits this far above the face box's centre, face sizes
OVAL_ERODE = 0.12  # the face oval is eroded by this, face sizes, before it is cut from the band
FRAME_STEP = 2
WORST_SHOWN = 6
FLOW_MARGIN = 0.25  # the flow is computed on the band's box plus this margin (face sizes)
GOAL_SHARE = 0.5  # p95 and median at most this share of the baseline's
GOAL_MOTION = 0.7  # motion at least this share of the baseline's


@dataclass
class PairScore:
    driver: str
    photo: str
    frames: int
    face_size: float
    shares: list[float] = field(default_factory=list)
    motions: list[float] = field(default_factory=list)
    frame_ids: list[int] = field(default_factory=list)
    fps: float = 0.0

    def summary(self) -> dict:
        shares = np.asarray(self.shares, np.float64)
        worst = np.argsort(-shares)[:WORST_SHOWN]
        return {"driver": self.driver, "photo": self.photo, "frames": self.frames,
                "scored": len(self.shares), "face_size_px": round(self.face_size, 1), "fps": round(self.fps, 1),
                "median": float(np.median(shares)) if shares.size else None,
                "p95": float(np.percentile(shares, 95)) if shares.size else None,
                "motion": float(np.median(self.motions)) if self.motions else None,
                "worst": [{"frame": self.frame_ids[i], "share": round(float(shares[i]), 4)} for i in worst]}


class BandScorer:
    """Scores frames of one output video against its frame 0 (module docstring)."""

    def __init__(self, frame0_bgr: np.ndarray) -> None:
        from avatarify.landmarks import FaceMeshDetector
        from avatarify.motion import FACE_OVAL, NUM_MESH_POINTS

        with FaceMeshDetector(static=True) as detector:
            face = detector.detect(frame0_bgr)
        if face is None:
            raise RuntimeError("no face in the output's frame 0")
        mesh = np.asarray(face.points, np.float64)[:NUM_MESH_POINTS]
        (x0, y0), (x1, y1) = mesh.min(axis=0), mesh.max(axis=0)
        size = float(max(x1 - x0, y1 - y0))
        self.face_size = size
        height, width = frame0_bgr.shape[:2]
        centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0 - BAND_RAISE * size)
        band = np.zeros((height, width), np.uint8)
        cv2.ellipse(band, (int(round(centre[0])), int(round(centre[1]))),
                    (int(round(BAND_AXES[0] * size)), int(round(BAND_AXES[1] * size))), 0, 0, 360, 1, -1)
        oval = np.zeros_like(band)
        cv2.fillPoly(oval, [np.round(mesh[list(FACE_OVAL)]).astype(np.int32)], 1)
        radius = max(int(round(OVAL_ERODE * size)), 1)
        oval = cv2.erode(oval, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
        band[oval > 0] = 0
        ys, xs = np.nonzero(band)
        margin = int(round(FLOW_MARGIN * size))
        self.box = (max(xs.min() - margin, 0), max(ys.min() - margin, 0),
                    min(xs.max() + margin + 1, width), min(ys.max() + margin + 1, height))
        bx0, by0, bx1, by1 = self.box
        self.band = band[by0:by1, bx0:bx1] > 0
        self.band_full = band
        self.frame0 = np.ascontiguousarray(cv2.cvtColor(frame0_bgr, cv2.COLOR_BGR2GRAY)[by0:by1, bx0:bx1])
        self.flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        gy, gx = np.mgrid[0:by1 - by0, 0:bx1 - bx0].astype(np.float32)
        self._grid = np.stack([gx, gy], axis=-1)

    def residual(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """(bool residual mask over the flow box, motion in face sizes) of one frame."""
        bx0, by0, bx1, by1 = self.box
        grey = np.ascontiguousarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[by0:by1, bx0:bx1])
        flow = self.flow.calc(grey, self.frame0, None)  # grey(x) ~ frame0(x + flow(x))
        flow = cv2.GaussianBlur(flow, (0, 0), SMOOTH_SIGMA * self.face_size)
        warped = cv2.remap(self.frame0, self._grid + flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residual = cv2.morphologyEx(cv2.absdiff(grey, warped), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        motion = float(np.linalg.norm(flow[self.band], axis=1).mean()) / self.face_size
        return residual > RESIDUAL_LEVEL, motion

    def share(self, residual: np.ndarray) -> float:
        return float(residual[self.band].mean())


def marked(frame_bgr: np.ndarray, residual: np.ndarray, scorer: BandScorer) -> np.ndarray:
    """The frame with the residual in the band painted red and the band's outline drawn."""
    out = frame_bgr.copy()
    bx0, by0, bx1, by1 = scorer.box
    region = out[by0:by1, bx0:bx1]
    hit = residual & scorer.band
    region[hit] = (0.3 * region[hit] + 0.7 * np.array([0, 0, 255])).astype(np.uint8)
    contours, _ = cv2.findContours(scorer.band_full.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 255, 255), 1)
    return out


def photo_files(photos_dir: Path | None, scratch: Path) -> dict[str, Path]:
    """Name -> file of every avatar photo: the built-in two (written to `scratch`) and the folder's."""
    files = {}
    for name in BUILTIN_PHOTOS:
        path = scratch / f"{name}.png"
        cv2.imwrite(str(path), load_photo_bgr(name))
        files[name] = path
    if photos_dir is not None and photos_dir.is_dir():
        for path in sorted(photos_dir.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
                files[path.stem] = path
    return files


def run_pair(driver: Path, photo: Path, work: Path, max_frames: int | None) -> tuple[Path, dict]:
    """The real command line on one pair: the output video and the run's stats."""
    video, stats = work / f"{driver.stem}_{photo.stem}.mp4", work / f"{driver.stem}_{photo.stem}.json"
    command = [sys.executable, str(REPO_ROOT / "run_live.py"), "--avatar", str(photo), "--camera", str(driver),
               "--no-preview", "--no-virtual-cam", "--output", str(video), "--stats", str(stats)]
    if max_frames:
        command += ["--max-frames", str(max_frames)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"run_live failed on {driver.name} x {photo.name}: {done.stderr.strip()[-400:]}")
    return video, read_json(stats)


@dataclass
class ScoredFrame:
    """One scored frame kept for the sheet: its index, share, picture and residual mask."""

    index: int
    share: float
    frame_bgr: np.ndarray
    residual: np.ndarray


def score_video(video: Path, driver: str, photo: str) -> tuple[PairScore, list[ScoredFrame], BandScorer]:
    """Scores of every FRAME_STEP-th frame, and the WORST_SHOWN worst frames with their residual."""
    capture = cv2.VideoCapture(str(video))
    ok, frame0 = capture.read()
    if not ok:
        raise RuntimeError(f"{video} holds no frame")
    scorer = BandScorer(frame0)
    score = PairScore(driver, photo, 1, scorer.face_size)
    worst: list[ScoredFrame] = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        index += 1
        if index % FRAME_STEP:
            continue
        residual, motion = scorer.residual(frame)
        share = scorer.share(residual)
        score.shares.append(share)
        score.motions.append(motion)
        score.frame_ids.append(index)
        # Only the worst frames are shown: keep the frames of the top scores, drop the rest.
        worst.append(ScoredFrame(index, share, frame, residual))
        if len(worst) > 4 * WORST_SHOWN:
            worst = sorted(worst, key=lambda kept: -kept.share)[:WORST_SHOWN]
    capture.release()
    score.frames = index + 1
    return score, sorted(worst, key=lambda kept: -kept.share)[:WORST_SHOWN], scorer


def worst_sheet(score: PairScore, worst: list[ScoredFrame], scorer: BandScorer) -> np.ndarray:
    """Rows of (frame | residual marked), the worst frames first, each row scaled to 1280 px wide."""
    rows = []
    for kept in worst:
        pair = np.hstack([kept.frame_bgr, marked(kept.frame_bgr, kept.residual, scorer)])
        pair = cv2.resize(pair, (1280, int(round(pair.shape[0] * 1280 / pair.shape[1]))), interpolation=cv2.INTER_AREA)
        cv2.putText(pair, f"{score.driver} x {score.photo}  frame {kept.index}  share {kept.share:.4f}", (8, 22),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 1, cv2.LINE_AA)
        rows.append(pair)
    return np.vstack(rows) if rows else np.zeros((8, 8, 3), np.uint8)


def judged(pair: dict, baseline: dict | None) -> dict:
    """The pair's ratios to its baseline and whether each goal holds (None: no baseline)."""
    if baseline is None:
        return {}
    out = {}
    for key in ("median", "p95"):
        base = baseline.get(key)
        out[f"{key}_ratio"] = None if not base else round(pair[key] / base, 3)
        out[f"{key}_ok"] = None if base is None else bool(pair[key] <= GOAL_SHARE * base + 1e-4)
    base = baseline.get("motion")
    out["motion_ratio"] = None if not base else round(pair["motion"] / base, 3)
    out["motion_ok"] = None if not base else bool(pair["motion"] >= GOAL_MOTION * base)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=SHARED / "real_drivers", help="folder of driving videos (*.mp4)")
    parser.add_argument("--photos", type=Path, default=SHARED / "real_photos", help="folder of avatar photos")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-frames", type=int, default=None, help="frames per driver (default: all)")
    parser.add_argument("--pairs", default=None, help="only these driver:photo pairs, comma-separated")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="artifacts.json of the code before the fixes")
    parser.add_argument("--no-baseline", action="store_true", help="report no ratios (to measure a new baseline)")
    parser.add_argument("--keep-videos", action="store_true", help="keep each pair's output video in --out")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging(args.verbose)
    drivers = sorted(args.real.glob("*.mp4")) if args.real.is_dir() else []
    if not drivers:
        print(f"no driving videos (*.mp4) in {args.real}; pass --real DIR", file=sys.stderr)
        return 2
    baseline = None
    if not args.no_baseline and args.baseline.is_file():
        baseline = {(p["driver"], p["photo"]): p for p in read_json(args.baseline)["pairs"]}
    wanted = None if not args.pairs else {tuple(p.split(":")) for p in args.pairs.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = []
    with tempfile.TemporaryDirectory() as scratch:
        photos = photo_files(args.photos, Path(scratch))
        for driver in drivers:
            for name, photo in photos.items():
                if wanted is not None and (driver.stem, name) not in wanted:
                    continue
                started = time.perf_counter()
                work = args.out if args.keep_videos else Path(scratch)
                video, stats = run_pair(driver, photo, work, args.max_frames)
                score, worst, scorer = score_video(video, driver.stem, name)
                score.fps = float(stats.get("fps", 0.0))
                summary = score.summary()
                summary.update(judged(summary, None if baseline is None else baseline.get((driver.stem, name))))
                pairs.append(summary)
                write_png(args.out / f"artifacts_{driver.stem}_{name}.png", worst_sheet(score, worst, scorer))
                log.info("%s x %s: median %.4f p95 %.4f motion %.4f (%.0f s)", driver.stem, name, summary["median"],
                         summary["p95"], summary["motion"], time.perf_counter() - started)
    goals = [v for p in pairs for k, v in p.items() if k.endswith("_ok") and v is not None]
    result = {"bench": "artifacts", "frame_step": FRAME_STEP, "residual_level": RESIDUAL_LEVEL,
              "band_axes": BAND_AXES, "smooth_sigma": SMOOTH_SIGMA, "max_frames": args.max_frames,
              "pairs": pairs, "baseline": None if baseline is None else list(baseline.values()),
              "goals_met": None if not goals else all(goals)}
    write_json(args.out / "artifacts.json", result)
    for pair in pairs:
        verdict = "" if "p95_ok" not in pair else (
            f"  x{pair['median_ratio']} x{pair['p95_ratio']} motion x{pair['motion_ratio']}"
            f" {'ok' if pair['p95_ok'] and pair['median_ok'] and pair['motion_ok'] else 'MISS'}")
        print(f"{pair['driver']:>5} x {pair['photo']:<13} median {pair['median']:.4f}  p95 {pair['p95']:.4f}  "
              f"motion {pair['motion']:.4f}  fps {pair['fps']:.0f}{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
