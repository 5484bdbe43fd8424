"""FOMM speed: the official-style loop against the real-time split (torch and onnxruntime).

Usage: python bench/fomm_perf.py --out DIR [--device cpu|cuda] [--frames 20] [--checkpoint CKPT]
Writes DIR/fomm_perf.json (median ms per frame per path, speedup = official / fastest split) and
DIR/fomm_perf.png (bar chart). Without --checkpoint, random weights are saved in the official
layout first. Real photos: skimage's astronaut (avatar) and matplotlib's Grace Hopper (driver).
official_style = eager fp32, keypoint detector on source and driving + the full generator every
frame (as FOMM's demo does). On cuda the torch split is timed in fp32 and fp16 (autocast).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.runners import OnnxRuntimeRunner, TorchRunner  # noqa: E402
from export.onnx_export import cached_export, sample_photos  # noqa: E402
from models.fomm.checkpoint import load_fomm, save_random_checkpoint  # noqa: E402
from models.fomm.keypoints import normalize_kp  # noqa: E402

log = logging.getLogger("fomm_perf")


def median_ms(step: Callable[[], object], frames: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def official_style(kp_detector, generator, source: torch.Tensor, neutral: torch.Tensor,
                   driving: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One frame of FOMM's demo loop: both keypoint detections and the full generator."""
    with torch.no_grad():
        kp_neutral = kp_detector(neutral)

    def step() -> torch.Tensor:
        with torch.no_grad():
            kp_source = kp_detector(source)
            kp_driving = kp_detector(driving)
            norm = normalize_kp(kp_source, kp_driving, kp_neutral, adapt_movement_scale_on=True,
                                use_relative_movement=True, use_relative_jacobian=True)
            return generator(source, kp_driving=norm, kp_source=kp_source)["prediction"]

    return step


def runner_step(runner, source: np.ndarray, neutral: np.ndarray, driving: np.ndarray) -> Callable[[], np.ndarray]:
    runner.prepare_source(source)
    runner.set_neutral(neutral)
    return lambda: runner.animate(driving, 1.0)


def cuda_graph_step(kp_detector, generator, source: torch.Tensor, neutral: torch.Tensor, driving: torch.Tensor,
                    fp16: bool) -> Callable[[], np.ndarray]:
    """The per-frame graph replayed as one CUDA graph (launch overhead gone); image in/out via host."""
    from models.fomm.realtime import FusedFrameNet, KeypointNet, SourceNet, calibrate

    device = torch.device("cuda")
    frame_net = FusedFrameNet(kp_detector, generator).to(device)
    with torch.inference_mode():
        cached = SourceNet(kp_detector, generator).to(device)(source.to(device))
        cal = calibrate(cached[0], *KeypointNet(kp_detector)(neutral.to(device)), adapt_scale=True)
    static_in = driving.to(device).clone()
    tail = (*cached, cal.neutral_value, cal.neutral_jacobian_inv, cal.adapt_scale,
            torch.ones(1, device=device))
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                frame_net(static_in, *tail)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static_out = frame_net(static_in, *tail)
    host_in = driving.numpy()

    def step() -> np.ndarray:
        static_in.copy_(torch.from_numpy(host_in))
        graph.replay()
        return static_out.float().cpu().numpy()

    return step


def plot(results: dict[str, float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, [results[n] for n in names], color=["#999999"] + ["#2a7ab9"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("median ms / frame")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else save_random_checkpoint(
        Path(tempfile.gettempdir()) / "fomm_perf_random.pth.tar")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":  # TF32 would make fp32 numbers incomparable with the CPU ones
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)

    source_t, driving_t = sample_photos()
    neutral_t = source_t.flip(3)
    kp_detector, generator = load_fomm(checkpoint, device=device)
    timings: dict[str, float] = {}
    timings["official_style"] = median_ms(official_style(kp_detector, generator, source_t.to(device),
                                                         neutral_t.to(device), driving_t.to(device)),
                                          args.frames, args.warmup, sync)
    source, driving, neutral = (t.numpy() for t in (source_t, driving_t, neutral_t))
    timings["torch_split"] = median_ms(runner_step(TorchRunner(kp_detector, generator, device=args.device),
                                                   source, neutral, driving), args.frames, args.warmup, sync)
    if device.type == "cuda":
        timings["torch_split_fp16"] = median_ms(
            runner_step(TorchRunner(kp_detector, generator, device=args.device, fp16=True), source, neutral, driving),
            args.frames, args.warmup, sync)
        for fp16 in (False, True):
            key = "torch_split_cudagraph" + ("_fp16" if fp16 else "")
            timings[key] = median_ms(cuda_graph_step(kp_detector, generator, source_t, neutral_t, driving_t, fp16),
                                     args.frames, args.warmup, sync)
    providers: dict[str, list[str]] = {}
    if not args.no_ort:
        onnx_dir = cached_export(checkpoint, out / "onnx_cache" if args.keep_onnx else
                                 Path(tempfile.gettempdir()) / "fomm_perf_onnx", progress=False)
        for fused in (True, False):
            runner = OnnxRuntimeRunner(onnx_dir, device=args.device, threads=args.threads or 2, fused=fused)
            key = "ort_split_fused" if fused else "ort_split_unfused"
            timings[key] = median_ms(runner_step(runner, source, neutral, driving), args.frames, args.warmup, sync)
            providers[key] = runner.providers
        timings["ort_split"] = min(timings["ort_split_fused"], timings["ort_split_unfused"])

    splits = [v for k, v in timings.items() if k != "official_style"]
    result = {f"{k}_ms": round(v, 2) for k, v in timings.items()}
    result.update({
        "speedup": round(timings["official_style"] / min(splits), 2),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "frames": args.frames, "warmup": args.warmup, "torch": torch.__version__,
        "ort_providers": providers,
        "checkpoint": "random weights (official layout)" if not args.checkpoint else str(checkpoint),
    })
    (out / "fomm_perf.json").write_text(json.dumps(result, indent=2))
    plot({k: v for k, v in timings.items() if k != "ort_split"},
         f"FOMM per frame, {result['device']}: speedup {result['speedup']}×", out / "fomm_perf.png")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch/ORT intra-op threads (0 = default)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--no-ort", action="store_true", help="skip onnxruntime (e.g. no onnxruntime here)")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the exported graphs under OUT/onnx_cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
