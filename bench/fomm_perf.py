"""FOMM speed: the official-style loop against the real-time split paths (torch and onnxruntime).

Usage: python bench/fomm_perf.py --out DIR [--device cpu|cuda] [--frames 20] [--checkpoint CKPT] [--compile]
Writes DIR/fomm_perf.json and DIR/fomm_perf.png (bar chart). Without --checkpoint, random weights
are saved in the official layout first. Real photos: skimage's astronaut (avatar) and matplotlib's
Grace Hopper (driver); strength 1, relative motion with adapt scale, as FOMM's demo with --relative.

Paths (each with its precision and its error against the official fp32 prediction in the JSON):
- official_style: eager fp32; keypoint detector on source and driving + the full generator each frame;
- torch_split: the exact split (fp32, ≤1e-5 from official); torch_split_optimized: the rewritten
  layers of models.fomm.fast in fp32; torch_split_bf16 (cpu) / _fp16 (cuda): the same in reduced
  precision with the keypoint detector in fp32 (`_kpfp16`: in fp16 too); on cuda `_cudagraph` paths
  replay one CUDA graph (their GPU-only replay time is in `cuda_graph_replay_ms`), and --compile
  adds torch.compile (inductor) variants;
- ort_split: onnxruntime over the exported graphs (fastest of fused / unfused keypoint detector);
- on cuda, the app's GPU paths with their frame I/O (uint8 crop in, uint8 picture out, conversions
  on the GPU): torch_device_io_fp16_cudagraph, ort_cuda_iobinding, ort_tensorrt_iobinding (when the
  build has TensorRT); without CUDA they are skipped and `gpu_paths_skipped` says why; a path this
  CPU cannot run (bf16 without AVX-512 BW/VL/DQ or AVX-NE-CONVERT, e.g. an AMD EPYC Zen 3) is left
  out and `paths_skipped` names it with the reason (printed too);
- batched throughput (`batched`): FommRunner.animate_batch over B frames of B avatars in one pass
  for the fastest torch path of the device (bf16 on a CPU with native bf16, fp16 + CUDA graph on a
  GPU), B = --batches (1, 8, 32): frames/s and how many 30-fps users that serves.
Timing: every path is warmed up, then the paths take turns frame by frame (interleaved rounds), so
load from other processes hits them alike; the JSON holds per-path medians. `speedup` is
official_style / fastest split at any precision, `speedup_fp32` the same over fp32 paths only.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatarify.backends import bf16_refusal, bf16_runs_here, cpu_flags, cpu_model, has_native_bf16  # noqa: E402
from avatarify.runners import CudaGraphed, OnnxRuntimeRunner, TorchRunner  # noqa: E402
from bench.common import write_json  # noqa: E402
from export.onnx_export import cached_export, sample_photos  # noqa: E402
from models.fomm.checkpoint import load_fomm, save_random_checkpoint  # noqa: E402
from models.fomm.keypoints import normalize_kp  # noqa: E402

log = logging.getLogger("fomm_perf")


@dataclass
class BenchPath:
    """One way of producing a frame: `step()` returns the prediction (1, 3, 256, 256)."""

    name: str
    precision: str
    step: Callable[[], object]
    runner: object | None = None


def as_numpy(prediction: object) -> np.ndarray:
    return prediction.float().cpu().numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)


def interleaved_medians(paths: list[BenchPath], frames: int, warmup: int, sync: Callable[[], None]) -> dict:
    """Median ms per frame of each path; paths alternate frame by frame so noise hits all alike."""
    for path in paths:
        for _ in range(warmup):
            path.step()
    sync()
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    for _ in range(frames):
        for path in paths:
            start = time.perf_counter()
            path.step()
            sync()
            times[path.name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


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


def runner_path(name: str, precision: str, runner, photos: tuple[np.ndarray, ...]) -> BenchPath:
    source, neutral, driving = photos
    runner.prepare_source(source)
    runner.set_neutral(neutral)
    return BenchPath(name, precision, lambda: runner.animate(driving, 1.0), runner)


def torch_paths(kp_detector, generator, device: str, photos: tuple[np.ndarray, ...],
                compile_fp16: bool, skipped: dict[str, str]) -> list[BenchPath]:
    """The torch paths that run on this device; those that cannot run go to `skipped` with why."""
    if device == "cpu":
        variants = [("torch_split", "fp32", {}), ("torch_split_optimized", "fp32", {"optimized": True})]
        if bf16_runs_here():
            variants.append(("torch_split_bf16", "bf16", {"precision": "bf16"}))
        else:  # oneDNN's bf16 convolution would stop the whole run in its first call
            skipped["torch_split_bf16"] = bf16_refusal(cpu_model())
            log.info("torch_split_bf16 skipped: %s", skipped["torch_split_bf16"])
    else:
        variants = [("torch_split", "fp32", {"cuda_graph": False}),
                    ("torch_split_cudagraph", "fp32", {}),
                    ("torch_split_optimized_cudagraph", "fp32", {"optimized": True}),
                    ("torch_split_fp16", "fp16", {"precision": "fp16", "cuda_graph": False}),
                    ("torch_split_fp16_cudagraph", "fp16", {"precision": "fp16"}),
                    ("torch_split_bf16_cudagraph", "bf16", {"precision": "bf16"}),
                    ("torch_split_fp16_kpfp16_cudagraph", "fp16", {"precision": "fp16", "keypoint_precision": "fp16"})]
        if compile_fp16:
            variants += [("torch_split_fp16_compiled_cudagraph", "fp16", {"precision": "fp16", "torch_compile": True}),
                         ("torch_split_fp16_kpfp16_compiled_cudagraph", "fp16",
                          {"precision": "fp16", "keypoint_precision": "fp16", "torch_compile": True})]
    return [runner_path(name, precision, TorchRunner(kp_detector, generator, device=device, **options), photos)
            for name, precision, options in variants]


def ort_paths(onnx_dir: Path, args: argparse.Namespace, photos: tuple[np.ndarray, ...]) -> list[BenchPath]:
    return [runner_path("ort_split_fused" if fused else "ort_split_unfused", "fp32",
                        OnnxRuntimeRunner(onnx_dir, device=args.device, threads=args.threads or 2, fused=fused),
                        photos) for fused in (True, False)]


def gpu_paths(kp_detector, generator, onnx_dir: Path | None, photos: tuple[np.ndarray, ...]) -> list[BenchPath]:
    """The app's GPU paths end to end on the network: uint8 crop up, conversions on the GPU, uint8
    prediction down (the paste-back is not included: it is the same work on every path)."""
    from avatarify.device_io import OrtDeviceIO, TorchDeviceIO
    from avatarify.engines.fomm import bgr_to_network

    source, neutral, driving = photos
    crop_bgr = np.ascontiguousarray((driving[0].transpose(1, 2, 0)[:, :, ::-1] * 255 + 0.5).astype(np.uint8))

    def path(name: str, precision: str, runner, frame_io) -> BenchPath:
        runner.prepare_source(source)
        runner.set_neutral(neutral)
        return BenchPath(name, precision, lambda: bgr_to_network(frame_io.predict_bgr(crop_bgr, 1.0)), runner)

    runner = TorchRunner(kp_detector, generator, device="cuda", precision="fp16")
    paths = [path("torch_device_io_fp16_cudagraph", "fp16", runner, TorchDeviceIO(runner))]
    if onnx_dir is not None:
        import onnxruntime as ort

        for only, name, precision in (("cuda", "ort_cuda_iobinding", "fp32"),
                                      ("tensorrt", "ort_tensorrt_iobinding", "fp16")):
            wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[only]
            if wanted not in ort.get_available_providers():
                log.info("%s skipped: this onnxruntime has no %s", name, wanted)
                continue
            ort_runner = OnnxRuntimeRunner(onnx_dir, device="cuda", fp16=precision == "fp16", only=only)
            if ort_runner.providers[0] != wanted:
                log.warning("%s skipped: the session runs on %s", name, ort_runner.providers)
                continue
            paths.append(path(name, precision, ort_runner, OrtDeviceIO(ort_runner, "cuda")))
    return paths


def faster_cpu_precision(result: dict) -> str:
    """The precision of the faster torch fast-net path this run measured on the CPU: bf16 is not
    faster everywhere native bf16 exists (1.4x slower than fp32 on an Intel Xeon without AMX)."""
    bf16 = result.get("torch_split_bf16_ms")
    if bf16 is None or not has_native_bf16(cpu_flags()):
        return "fp32"
    return "bf16" if bf16 < result["torch_split_optimized_ms"] else "fp32"


def batched_throughput(runner, photos: tuple[np.ndarray, ...], batches: list[int], sync: Callable[[], None],
                       repeats: int) -> dict:
    """frames/s of animate_batch at each batch size: B frames of B avatars (two photos alternating,
    each with its own neutral and strength) in one network pass; median of `repeats` calls."""
    source, neutral, driving = photos
    states = [(runner.source_state(image), None) for image in (source, driving)]
    states = [(state, runner.calibration_state(state, neutral)) for state, _ in states]
    result = {}
    for batch in batches:
        frames = np.concatenate([driving if i % 2 else neutral for i in range(batch)])
        chosen = [states[i % 2] for i in range(batch)]
        strengths = [1.0 - 0.1 * (i % 3) for i in range(batch)]
        runner.animate_batch(frames, chosen, strengths)  # warm-up (and a CUDA graph per batch size)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner.animate_batch(frames, chosen, strengths)
            sync()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        result[str(batch)] = {"ms_per_call": round(seconds * 1e3, 2), "frames_per_s": round(batch / seconds, 2),
                              "users_at_30fps": round(batch / seconds / 30.0, 2)}
        log.info("batch %d: %.1f frames/s", batch, batch / seconds)
    return result


def graph_replay_ms(runner, frames: int) -> float | None:
    """GPU time of one replay of a runner's CUDA graph (CUDA events; no host copies)."""
    call = getattr(runner, "frame_call", None)
    if not isinstance(call, CudaGraphed) or not call.captured:
        return None
    times = []
    for _ in range(frames):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result["paths"]
    names = list(paths)
    colors = {"fp32": "#2a7ab9", "bf16": "#d9822b", "fp16": "#c23b22"}
    batched = result.get("batched")
    width = max(7, 1.3 * len(names))
    fig, axes = plt.subplots(1, 2 if batched else 1, figsize=(width + (4 if batched else 0), 4),
                             gridspec_kw={"width_ratios": [width, 4]} if batched else None, squeeze=False)
    ax = axes[0][0]
    bars = ax.bar(names, [paths[n]["ms"] for n in names],
                  color=["#999999" if n == "official_style" else colors[paths[n]["precision"]] for n in names])
    ax.bar_label(bars, labels=[f"{paths[n]['ms']:.1f}\n{paths[n]['precision']}" for n in names], fontsize=8)
    ax.set_ylabel("median ms / frame")
    ax.set_title(f"FOMM per frame, {result['device']}: speedup {result['speedup']}× "
                 f"(fp32 only: {result['speedup_fp32']}×)", fontsize=10)
    ax.margins(y=0.2)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    if batched:
        sizes = list(batched["frames_per_s"])
        rates = [batched["frames_per_s"][b]["frames_per_s"] for b in sizes]
        side = axes[0][1]
        bars = side.bar([f"batch {b}" for b in sizes], rates, color=colors[batched["precision"]])
        side.bar_label(bars, labels=[f"{r:.1f}/s\n{r / 30:.2f} users" for r in rates], fontsize=8)
        side.set_ylabel("frames / s (animate_batch)")
        side.set_title(f"batched, {batched['path']}", fontsize=10)
        side.margins(y=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(paths: list[BenchPath], medians: dict, official: np.ndarray) -> dict:
    """Per-path entries, the legacy `<name>_ms` keys and the speedups."""
    entries = {}
    for path in paths:
        diff = np.abs(as_numpy(path.step()) - official)
        entries[path.name] = {"ms": round(medians[path.name], 2), "precision": path.precision,
                              "max_abs_err_vs_official": float(f"{diff.max():.3g}"),
                              "mean_abs_err_vs_official": float(f"{diff.mean():.3g}")}
        if path.runner is not None:
            entries[path.name]["providers"] = list(path.runner.providers)
    splits = {n: e for n, e in entries.items() if n != "official_style"}
    fastest = min(splits, key=lambda n: splits[n]["ms"])
    fastest_fp32 = min((n for n in splits if splits[n]["precision"] == "fp32"), key=lambda n: splits[n]["ms"])
    result = {f"{n}_ms": e["ms"] for n, e in entries.items()}
    ort = [e["ms"] for n, e in entries.items() if n.startswith("ort_split")]
    if ort:
        result["ort_split_ms"] = min(ort)
    official_ms = entries["official_style"]["ms"]
    result.update({"speedup": round(official_ms / splits[fastest]["ms"], 2), "fastest": fastest,
                   "speedup_fp32": round(official_ms / splits[fastest_fp32]["ms"], 2),
                   "fastest_fp32": fastest_fp32, "paths": entries})
    return result


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
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)

    source_t, driving_t = sample_photos()
    neutral_t = source_t.flip(3)
    photos = tuple(t.numpy() for t in (source_t, neutral_t, driving_t))
    kp_detector, generator = load_fomm(checkpoint, device=device)
    official = BenchPath("official_style", "fp32", official_style(
        kp_detector, generator, source_t.to(device), neutral_t.to(device), driving_t.to(device)))
    skipped: dict[str, str] = {}
    paths = [official, *torch_paths(kp_detector, generator, args.device, photos, args.compile, skipped)]
    onnx_dir = None
    if not args.no_ort:
        onnx_dir = cached_export(checkpoint, out / "onnx_cache" if args.keep_onnx else
                                 Path(tempfile.gettempdir()) / "fomm_perf_onnx", progress=False)
        paths.extend(ort_paths(onnx_dir, args, photos))
    gpu_skipped = None
    if device.type == "cuda":
        paths.extend(gpu_paths(kp_detector, generator, onnx_dir, photos))
    else:
        gpu_skipped = (f"no CUDA GPU visible to torch {torch.__version__}: the GPU paths (torch device I/O, "
                       f"onnxruntime CUDA / TensorRT with IOBinding) were not run; run with --device cuda on a GPU")
        log.info("%s", gpu_skipped)
    medians = interleaved_medians(paths, args.frames, args.warmup, sync)

    result = summarize(paths, medians, as_numpy(official.step()))
    if gpu_skipped:
        result["gpu_paths_skipped"] = gpu_skipped
    if skipped:
        result["paths_skipped"] = skipped
    if args.batches:
        batch_precision = "fp16" if device.type == "cuda" else faster_cpu_precision(result)
        batch_runner = TorchRunner(kp_detector, generator, device=args.device, precision=batch_precision,
                                   optimized=True)
        result["batched"] = {"path": batch_runner.providers[0], "precision": batch_precision,
                             "frames_per_s": batched_throughput(batch_runner, photos, args.batches, sync,
                                                                args.batch_repeats)}
    if device.type == "cuda":
        replay = {p.name: graph_replay_ms(p.runner, 50) for p in paths if p.runner is not None}
        result["cuda_graph_replay_ms"] = {n: round(ms, 3) for n, ms in replay.items() if ms is not None}
    result.update({
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "frames": args.frames, "warmup": args.warmup, "torch": torch.__version__,
        "timing": "interleaved rounds (paths take turns frame by frame), median per path; host image in → "
                  "host prediction out" + ("; TF32 off" if device.type == "cuda" else ""),
        "checkpoint": "random weights (official layout)" if not args.checkpoint else str(checkpoint),
    })
    write_json(out / "fomm_perf.json", result)
    plot(result, out / "fomm_perf.png")
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
    parser.add_argument("--compile", action="store_true", help="cuda: also time the fp16 path through torch.compile")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuda: let cuDNN time its conv algorithms")
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",") if b], default=[1, 8, 32],
                        help="batch sizes for the batched-throughput figure (comma list; empty: skip)")
    parser.add_argument("--batch-repeats", type=int, default=3, help="timed calls per batch size")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(0, f"skipped: --device cuda needs a CUDA GPU and a CUDA build of torch (torch "
                       f"{torch.__version__} sees none); nothing was measured.\n")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "paths"}, indent=2))
    for name, why in result.get("paths_skipped", {}).items():
        print(f"skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
