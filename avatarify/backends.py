"""Which FOMM backend runs here, and why: the candidates, a short timing at start (cached), the
choice, and a warning when an NVIDIA GPU sits idle. Builds the FOMM engine for the app.

Input: the Settings (--backend, --device, --precision, --size, --cache-dir) and the checkpoint.
Output: a FommAnimator (wrapped in a PipelinedAnimator when it runs on a GPU) whose backend_info
says what runs, where, and why.

Candidates, in preference order:
  tensorrt              native TensorRT engines built from the ONNX export (fp16 unless --precision fp32)
  onnxruntime-tensorrt  onnxruntime's TensorRT provider
  onnxruntime-cuda      onnxruntime's CUDA provider; tensors stay on the GPU (IOBinding)
  torch-cuda            the fast net (models/fomm/fast.py), fp16 unless asked otherwise, one CUDA graph
  torch-cpu             the fast net: bf16 and fp32 where the CPU has native bf16 (AVX512_BF16 or AMX;
                        both timed, see _kinds_and_precisions), else fp32; --precision bf16 is refused
                        in one line where torch's bf16 convolutions cannot run at all (bf16_runs)
  onnxruntime-cpu       the exported graphs on onnxruntime's CPU provider
A candidate counts only when it really runs: an onnxruntime session must name its provider in
`get_providers()` once it is made (a build that lists CUDA falls back to the CPU silently when the
CUDA libraries are missing). Any GPU path beats any CPU path. Within the tier that runs, --backend
auto times each path for a few frames (interleaved, median) and takes the fastest; the timings are
cached in `backend_timings.json` beside the ONNX export, keyed by the hardware and the library
versions, so later starts skip the timing. An explicit --backend takes the first path of that
backend that runs, without timing. `choose_backend` is the pure decision over the candidates'
availability and timings; `Machine.detect` and `build_fomm_animator` are what touch the machine.

`python -m avatarify.backends` prints what this machine offers: a real onnxruntime session's
providers, torch's CUDA, the NVIDIA GPUs the driver sees, native bf16, and each candidate's status.
"""
from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "torch-cuda", "torch-cpu", "onnxruntime-cpu")
TIMINGS_FILE = "backend_timings.json"
# The fixes a warning names: the one command that brings a GPU path.
REQUIREMENTS_GPU_FIX = "pip uninstall -y onnxruntime && pip install -r requirements-gpu.txt"
ORT_CUDA_LIBRARIES_FIX = "pip install 'onnxruntime-gpu[cuda,cudnn]>=1.21,<1.24'"
_CUDA_WHEELS = ("nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12", "nvidia-cufft-cu12")
_PROVIDER_OF = {"onnxruntime-tensorrt": "TensorrtExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider",
                "onnxruntime-cpu": "CPUExecutionProvider"}


class BackendError(RuntimeError):
    """No FOMM backend can run with these flags on this machine; the message is one sentence."""


class CandidateFailed(RuntimeError):
    """A candidate did not really run when built; `fix` is the command that would make it run."""

    def __init__(self, why: str, fix: str = "") -> None:
        super().__init__(why)
        self.fix = fix


# ---------------------------------------------------------------------------------------------
# Candidates and the choice (pure)


@dataclass
class Candidate:
    """One way to run FOMM here: `kind` (see KINDS) at `precision`, whether it runs, and its time."""

    kind: str
    precision: str
    available: bool = True
    why: str = ""  # why it does not run
    fix: str = ""  # the command that would make it run
    ms: float | None = None  # median ms per frame from the start-up timing

    @property
    def backend(self) -> str:
        return self.kind.split("-")[0]

    @property
    def device(self) -> str:
        return "cpu" if self.kind.endswith("-cpu") else "cuda"

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.precision}"

    def rule_out(self, why: str, fix: str = "") -> "Candidate":
        self.available, self.why, self.fix = False, why, fix or self.fix
        return self


@dataclass
class Choice:
    candidate: Candidate
    reason: str


def runnable_pool(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates that run, of the best tier that has any: the GPU paths if one runs, else the CPU ones."""
    runnable = [c for c in candidates if c.available]
    tier = "cuda" if any(c.device == "cuda" for c in runnable) else "cpu"
    return [c for c in runnable if c.device == tier]


def choose_backend(candidates: list[Candidate]) -> Choice:
    """The pure decision: the fastest timed path of the best tier that runs; the preference order
    decides when the tier's paths were not all timed."""
    pool = runnable_pool(candidates)
    if not pool:
        raise BackendError(no_backend_message(candidates))
    tier = "GPU" if pool[0].device == "cuda" else "CPU"
    if len(pool) == 1:
        return Choice(pool[0], f"the only {tier} path that runs here")
    if all(c.ms is not None for c in pool):
        best = min(pool, key=lambda c: c.ms)  # min keeps the first of equals: the preferred one
        others = ", ".join(f"{c.label} {c.ms:.1f} ms" for c in pool if c is not best)
        return Choice(best, f"the fastest {tier} path here; also timed: {others}")
    return Choice(pool[0], f"the first {tier} path in preference order (not timed)")


def best_fix(candidates: list[Candidate]) -> str:
    """The fix to name first: onnxruntime's CUDA path needs the lightest install (no CUDA torch)."""
    preferred = sorted(candidates, key=lambda c: c.kind != "onnxruntime-cuda")
    return next((c.fix for c in preferred if c.fix), "")


def no_backend_message(candidates: list[Candidate]) -> str:
    """One sentence: why nothing runs (the reasons of paths not excluded by --device alone first)."""
    reasons = [c.why for c in candidates if not c.why.startswith("--device")] or [c.why for c in candidates]
    # A flag this machine cannot honour (e.g. bf16 on a CPU without AVX-512) is what to read first.
    reasons.sort(key=lambda why: not why.startswith("--precision"))
    unique = list(dict.fromkeys(r for r in reasons if r))
    fix = best_fix(candidates)
    return ("FOMM cannot run with these flags here: " + "; ".join(unique or ["no backend is installed"])
            + (f" (fix: {fix})" if fix else "") + ".")


# ---------------------------------------------------------------------------------------------
# What this machine offers


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The CPU's feature flags (Linux /proc/cpuinfo), or () where they cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return ()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return tuple(sorted(set(line.split(":", 1)[1].split())))
    return ()


def has_native_bf16(flags: tuple[str, ...] | list[str]) -> bool:
    """bf16 convolutions run natively (AVX512_BF16 dot products or AMX tiles); without them oneDNN
    emulates bf16 and it is slower than fp32."""
    return "avx512_bf16" in flags or "amx_bf16" in flags


# What torch's oneDNN bf16 convolution asks of the CPU before it runs at all (its own check raises
# "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq" otherwise):
# any one of these groups. Zen 2/3 EPYCs and most laptops before 2023 have none of them.
BF16_CPU_GROUPS = (("avx512bw", "avx512vl", "avx512dq"), ("avx_ne_convert",), ("bf16",))  # bf16: Arm's FEAT_BF16
BF16_NEEDS = "AVX-512 (BW, VL and DQ) or AVX-NE-CONVERT"


def bf16_runs(flags: tuple[str, ...] | list[str]) -> bool:
    """torch can run bf16 convolutions on a CPU with these flags (natively or emulated by oneDNN)."""
    if not flags:  # no /proc/cpuinfo (Windows, macOS): torch's own check
        return torch_bf16_supported()
    return any(all(flag in flags for flag in group) for group in BF16_CPU_GROUPS)


def torch_bf16_supported() -> bool:
    """torch's own answer: oneDNN's bf16 kernels run here. It also honours an instruction set held
    down (ONEDNN_MAX_CPU_ISA=AVX2, how a CPU without AVX-512 is tried on one that has it), which the
    CPU's flags do not show: there the flags said yes and the first convolution stopped with
    oneDNN's traceback."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


def bf16_runs_here() -> bool:
    """bf16_runs for this machine's CPU (through cpu_flags and torch_bf16_supported, which tests
    replace to fake a CPU)."""
    import torch

    return torch.backends.mkldnn.is_available() and bf16_runs(cpu_flags()) and torch_bf16_supported()


def bf16_refusal(cpu: str) -> str:
    """Why --precision bf16 cannot run on this CPU, and what to use instead (one sentence, no stop)."""
    return f"--precision bf16 needs a CPU with {BF16_NEEDS}, which this one ({cpu}) lacks; use --precision fp32"


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def driver_gpus(proc_dir: Path = Path("/proc/driver/nvidia/gpus"), smi: str = "nvidia-smi") -> list[str]:
    """NVIDIA GPUs the driver sees, whatever torch and onnxruntime can use: the kernel module's
    /proc entries (Linux), else `nvidia-smi -L` (any OS with the driver)."""
    names = []
    if proc_dir.is_dir():
        for info in sorted(proc_dir.glob("*/information")):
            match = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.MULTILINE)
            if match:
                names.append(match.group(1).strip())
    if not names and shutil.which(smi):
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        names = [re.sub(r"^GPU \d+:\s*|\s*\(UUID.*$", "", line).strip() for line in listing.splitlines()
                 if line.startswith("GPU ")]
    return names


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Machine:
    """What this machine offers the FOMM backends. `detect()` reads it; tests make their own."""

    torch_version: str
    torch_cuda: bool  # torch sees a CUDA GPU
    ort_package: str | None  # e.g. "onnxruntime-gpu 1.23.2"; None: onnxruntime does not import
    ort_providers: tuple[str, ...]  # what the onnxruntime build offers (not what a session gets)
    tensorrt: str | None  # the tensorrt package's version
    native_bf16: bool  # bf16 runs, and faster than emulated (see has_native_bf16)
    gpus: tuple[str, ...]  # NVIDIA GPUs seen by torch or by the driver
    cpu: str
    cpu_flags: tuple[str, ...] = ()
    threads: int = 1
    cuda_libraries: str = ""  # the pip CUDA/cuDNN wheels onnxruntime-gpu loads, with versions
    bf16_runs: bool = True  # torch's CPU bf16 convolutions run at all (see bf16_runs)

    @classmethod
    def detect(cls) -> "Machine":
        import torch

        torch_cuda = torch.cuda.is_available()
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch_cuda else []
        try:
            import onnxruntime as ort

            package = next((name for name in ("onnxruntime-gpu", "onnxruntime") if _version(name)), "onnxruntime")
            ort_package, ort_providers = f"{package} {ort.__version__}", tuple(ort.get_available_providers())
        except ImportError:
            ort_package, ort_providers = None, ()
        flags = cpu_flags()
        tensorrt = next((v for v in map(_version, ("tensorrt", "tensorrt-cu12", "tensorrt-cu13")) if v), None)
        if tensorrt is None and importlib.util.find_spec("tensorrt") is not None:
            tensorrt = "unknown version"
        wheels = ", ".join(f"{name} {_version(name)}" for name in _CUDA_WHEELS if _version(name))
        bf16_runs = bf16_runs_here()  # native bf16 that oneDNN will not run (an ISA held down) is none
        return cls(torch_version=torch.__version__, torch_cuda=torch_cuda, ort_package=ort_package,
                   ort_providers=ort_providers, tensorrt=tensorrt,
                   native_bf16=has_native_bf16(flags) and bf16_runs, bf16_runs=bf16_runs,
                   gpus=tuple(gpus or driver_gpus()), cpu=cpu_model(),
                   cpu_flags=tuple(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "asimd", "sve"))),
                   threads=torch.get_num_threads(), cuda_libraries=wheels)


def _precision_for(kind: str, asked: str, machine: Machine) -> tuple[str, str]:
    """(precision the candidate runs at, why it cannot honour `asked` or "")."""
    if kind.startswith("torch"):
        if asked == "auto":
            native = machine.native_bf16 and machine.bf16_runs
            return ("fp16" if kind == "torch-cuda" else "bf16" if native else "fp32"), ""
        if asked == "fp16" and kind == "torch-cpu":
            return asked, "--precision fp16 needs a CUDA GPU; on the CPU use fp32 or bf16"
        if asked == "bf16" and kind == "torch-cpu" and not machine.bf16_runs:
            return asked, bf16_refusal(machine.cpu)
        return asked, ""
    if asked == "bf16":
        return asked, "--precision bf16 runs only on the torch backend; use fp32 or fp16 with onnxruntime or TensorRT"
    tensorrt = kind.endswith("tensorrt")
    if asked == "auto":
        return ("fp16" if tensorrt else "fp32"), ""
    if asked == "fp16" and not tensorrt:
        return asked, ("--precision fp16 needs a CUDA GPU" if kind == "onnxruntime-cpu" else
                       "onnxruntime's CUDA provider runs the fp32 graphs; fp16 runs on TensorRT or torch")
    return asked, ""


def _availability(kind: str, machine: Machine) -> tuple[str, str]:
    """(why `kind` cannot run on this machine or "", the fix)."""
    ort = machine.ort_package
    if kind == "tensorrt":
        if machine.tensorrt is None:
            return "TensorRT is not installed", REQUIREMENTS_GPU_FIX
        if not machine.torch_cuda:
            return f"torch {machine.torch_version} sees no CUDA GPU (TensorRT's buffers are torch CUDA tensors)", ""
        return "", ""
    if kind == "torch-cuda":
        if machine.torch_cuda:
            return "", ""
        build = " (a CPU build of torch)" if "+cpu" in machine.torch_version else ""
        return f"torch {machine.torch_version} sees no CUDA GPU{build}", f"use --backend auto after: {REQUIREMENTS_GPU_FIX}"
    if kind == "torch-cpu":
        return "", ""
    if ort is None:
        return "onnxruntime is not installed", "pip install -r requirements.txt"
    provider = _PROVIDER_OF[kind]
    if provider not in machine.ort_providers:
        what = "CUDA" if kind == "onnxruntime-cuda" else "TensorRT"
        fix = REQUIREMENTS_GPU_FIX if "onnxruntime-gpu" not in ort else "pip install -r requirements-gpu.txt"
        return f"{ort} has no {what} provider", fix
    return "", ""


def _kinds_and_precisions(machine: Machine, backend: str, precision: str) -> list[tuple[str, str, str]]:
    """(kind, precision it runs at, why that precision cannot run or "") per candidate, in order.

    On a CPU with native bf16, `auto` precision gives torch two candidates, bf16 and fp32: with AMX
    bf16 was ~4x faster than fp32, with AVX512_BF16 alone 1.8x faster on one CPU (AMD EPYC) and 1.4x
    slower on another (Intel Xeon, model 207), so --backend auto times both. An explicit --backend
    torch (not timed) takes bf16 first only with AMX, else fp32 (exact)."""
    rows = []
    for kind in KINDS:
        if backend != "auto" and kind.split("-")[0] != backend:
            continue
        runs_at, problem = _precision_for(kind, precision, machine)
        rows.append((kind, runs_at, problem))
        if kind == "torch-cpu" and precision == "auto" and runs_at == "bf16":
            amx = "amx_bf16" in machine.cpu_flags
            rows.insert(len(rows) - (0 if backend == "auto" or amx else 1), (kind, "fp32", ""))
    return rows


def candidates_for(machine: Machine, backend: str = "auto", device: str = "auto",
                   precision: str = "auto") -> list[Candidate]:
    """The candidates of --backend (all for auto), in preference order, each ruled out or not."""
    result = []
    for kind, runs_at, precision_problem in _kinds_and_precisions(machine, backend, precision):
        candidate = Candidate(kind, runs_at)
        on_gpu = candidate.device == "cuda"
        if device == "cpu" and on_gpu:
            candidate.rule_out("--device cpu keeps FOMM off the GPU")
        elif device == "cuda" and not on_gpu:
            candidate.rule_out("--device cuda asks for a GPU path")
        elif precision_problem:
            candidate.rule_out(precision_problem)
        else:
            why, fix = _availability(kind, machine)
            if why:
                candidate.rule_out(why, fix)
        result.append(candidate)
    return result


def idle_gpu_warning(chosen: Candidate, candidates: list[Candidate], gpus: tuple[str, ...] | list[str],
                     device_flag: str = "auto") -> str | None:
    """One line when an NVIDIA GPU is seen but FOMM runs on the CPU (unless --device cpu asked for
    that): what runs, why no GPU path does, and the command that fixes it."""
    if chosen.device == "cuda" or not gpus or device_flag == "cpu":
        return None
    gpu_paths = [c for c in candidates if c.device == "cuda"]
    fix = best_fix(gpu_paths) or REQUIREMENTS_GPU_FIX
    reasons = "; ".join(f"{c.kind}: {c.why}" for c in gpu_paths if c.why) or "no GPU path was considered"
    return (f"The NVIDIA GPU ({gpus[0]}) sits idle: FOMM runs on the CPU ({chosen.label}) because no GPU "
            f"path runs here ({reasons}). Fix: {fix}")


# ---------------------------------------------------------------------------------------------
# Timing, and its cache beside the ONNX export


def time_frames(steps: dict[str, Callable[[], object]], warmup: int = 2, min_rounds: int = 5,
                max_rounds: int = 30, budget_s: float = 3.0,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median ms per call of each step. The steps take turns call by call, so load from other
    processes hits them alike; at least `min_rounds` rounds, more while within `budget_s`."""
    for step in steps.values():
        for _ in range(warmup):  # first calls pack weights, capture CUDA graphs, build engines
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    started, rounds = clock(), 0
    while rounds < min_rounds or (rounds < max_rounds and clock() - started < budget_s):
        for name, step in steps.items():
            begin = clock()
            step()
            times[name].append((clock() - begin) * 1000.0)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def timing_key(machine: Machine, size: int) -> dict:
    """What a timing depends on: the hardware, the library versions and the frame size."""
    return {"cpu": machine.cpu, "cpu_flags": list(machine.cpu_flags), "threads": machine.threads,
            "gpus": list(machine.gpus), "torch": machine.torch_version, "onnxruntime": machine.ort_package,
            "tensorrt": machine.tensorrt, "cuda_libraries": machine.cuda_libraries, "size": size}


def _key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_timings(path: Path, key: dict) -> dict[str, float]:
    """{candidate label: ms} measured earlier under this key; {} when none (or the file is unreadable)."""
    try:
        entries = json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return {}
    entry = entries.get(_key_id(key), {})
    return {label: float(ms) for label, ms in entry.get("ms", {}).items()}


def write_timings(path: Path, key: dict, timings: dict[str, float]) -> None:
    """Merge `timings` into the entry for `key`; written whole to a temporary file, then renamed,
    so a crash or a second app starting at the same time never leaves half a file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    entries = data.setdefault("entries", {})
    entry = entries.setdefault(_key_id(key), {"key": key, "ms": {}})
    entry["ms"].update({label: round(ms, 3) for label, ms in timings.items()})
    entry["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".backend_timings-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=1)
        os.replace(temporary, path)
    except OSError as exc:  # a read-only cache: time again next start
        log.warning("Cannot cache the backend timings in %s (%s).", path, exc.strerror)


# ---------------------------------------------------------------------------------------------
# Building candidates and the engine


@dataclass
class Built:
    """A runner and the frame I/O that feeds it (None: FommAnimator's host path)."""

    runner: object
    frame_io: object | None = None


@dataclass
class _Builder:
    """Builds candidates; loads the checkpoint and exports the ONNX graphs once, when first needed."""

    checkpoint: Path
    cache_dir: Path
    _networks: tuple | None = field(default=None, repr=False)
    _onnx_dir: Path | None = None

    def networks(self) -> tuple:
        if self._networks is None:
            from models.fomm.checkpoint import load_fomm

            self._networks = load_fomm(self.checkpoint)
        return self._networks

    def onnx_dir(self) -> Path:
        if self._onnx_dir is None:
            from export.onnx_export import cached_export

            self._onnx_dir = cached_export(self.checkpoint, self.cache_dir / "fomm")
        return self._onnx_dir

    def build(self, candidate: Candidate) -> Built:
        """The candidate's runner and frame I/O, or CandidateFailed when it does not really run."""
        from export.onnx_export import ExportError
        from export.tensorrt_build import TensorRTUnavailable
        from avatarify.runners import RunnerError

        try:
            return self._build(candidate)
        except (ExportError, MemoryError):
            raise
        except (RunnerError, TensorRTUnavailable, RuntimeError, OSError, ImportError) as exc:
            raise CandidateFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def _build(self, candidate: Candidate) -> Built:
        from avatarify.device_io import OrtDeviceIO, TorchDeviceIO
        from avatarify.runners import OnnxRuntimeRunner, TensorRTRunner, TorchRunner

        on_gpu = candidate.device == "cuda"
        if candidate.backend == "torch":
            runner = TorchRunner(*self.networks(), device=candidate.device, precision=candidate.precision,
                                 optimized=True)
            return Built(runner, TorchDeviceIO(runner) if on_gpu else None)
        if candidate.backend == "tensorrt":
            from export.tensorrt_build import build_engines

            graphs = {name: self.onnx_dir() / f"{name}.onnx" for name in ("fomm_keypoints", "fomm_source", "fomm_frame")}
            return Built(TensorRTRunner(build_engines(graphs, self.onnx_dir(), fp16=candidate.precision == "fp16")))
        if candidate.kind == "onnxruntime-tensorrt" and importlib.util.find_spec("tensorrt") is not None:
            import tensorrt  # noqa: F401 — loads TensorRT's libraries from its wheel for the provider
        only = candidate.kind.split("-")[1]
        runner = OnnxRuntimeRunner(self.onnx_dir(), device=candidate.device, fp16=candidate.precision == "fp16",
                                   only=only)
        expected = _PROVIDER_OF[candidate.kind]
        if not runner.providers or runner.providers[0] != expected:
            raise CandidateFailed(f"the onnxruntime session runs on {', '.join(runner.providers)}, not {expected} "
                                  f"(its CUDA 12 / cuDNN 9 libraries did not load)", ORT_CUDA_LIBRARIES_FIX)
        return Built(runner, OrtDeviceIO(runner, "cuda") if on_gpu else None)


def sample_frames(crop_size: int) -> tuple:
    """The start-up timing's real photos (those of the export's parity check): the astronaut as the
    avatar picture with its Face Mesh landmarks, Grace Hopper as a driving crop of `crop_size`."""
    import cv2

    from avatarify.engines.base import Animator
    from export.onnx_export import sample_photos

    avatar, driving = ((t[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255 + 0.5).astype(np.uint8)
                       for t in sample_photos())
    crop = cv2.resize(driving, (crop_size, crop_size), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(avatar), Animator.detect_avatar_face(avatar), crop


def timing_step(built: Built, margin: float, frames: tuple) -> Callable[[], object]:
    """One frame of the candidate through the whole FOMM engine (conversions, network, paste-back)."""
    from avatarify.datatypes import DrivingFrame
    from avatarify.engines.fomm import FommAnimator

    avatar, landmarks, crop = frames
    animator = FommAnimator(built.runner, margin, frame_io=built.frame_io)
    animator.set_avatar(avatar, landmarks)
    animator.set_neutral(DrivingFrame(np.ascontiguousarray(crop[:, ::-1]), None, 0.0, 1.0))
    driving = DrivingFrame(crop_bgr=crop, landmarks=None, timestamp=0.0, motion_scale=1.0)
    return lambda: animator.animate(driving)


def select_backend(candidates: list[Candidate], build: Callable[[Candidate], Built],
                   time_steps: Callable[[dict[str, Built]], dict[str, float]] | None,
                   cached: dict[str, float] | None = None,
                   store: Callable[[dict[str, float]], None] | None = None) -> tuple[Choice, Built, bool]:
    """Build, time (when `time_steps` is given) and choose until the chosen path really runs.

    Candidates that fail to build are ruled out (the choice then falls to the next, or to the CPU
    tier); `cached` timings are used instead of timing again, and new ones go to `store`. Returns
    the choice, its built runner and whether any timing was taken now."""
    for candidate in candidates:
        if candidate.available and cached and candidate.label in cached:
            candidate.ms = cached[candidate.label]
    built: dict[str, Built] = {}
    timed_now = False

    def try_build(candidate: Candidate) -> bool:
        if candidate.label in built:
            return True
        try:
            built[candidate.label] = build(candidate)
            return True
        except CandidateFailed as exc:
            log.info("%s does not run here: %s", candidate.label, exc)
            candidate.rule_out(str(exc), exc.fix)
            return False

    while True:
        pool = runnable_pool(candidates)
        untimed = [c for c in pool if c.ms is None] if time_steps is not None else []
        if untimed:
            if not all([try_build(c) for c in untimed]):
                continue  # the pool changed: look again (it may now be the CPU tier)
            timings = time_steps({c.label: built[c.label] for c in untimed})
            for candidate in untimed:
                candidate.ms = timings[candidate.label]
            timed_now = True
            if store is not None:
                store(timings)
        choice = choose_backend(candidates)
        if try_build(choice.candidate):
            break
    chosen = built.pop(choice.candidate.label)
    built.clear()  # the paths not taken: free their memory before the app starts
    gc.collect()
    return choice, chosen, timed_now


def build_fomm_animator(settings, checkpoint: Path):
    """The FOMM engine for the app: chosen, built, logged (one line), warned about an idle GPU, and
    pipelined when it runs on a GPU. Raises AnimatorError with one sentence for user errors."""
    from avatarify.config import crop_size
    from avatarify.engines.base import AnimatorError
    from avatarify.engines.fomm import FommAnimator
    from avatarify.engines.pipelined import PipelinedAnimator
    from export.onnx_export import ExportError
    from models.fomm.checkpoint import CheckpointError

    if not checkpoint.is_file():
        raise AnimatorError(f"Checkpoint file {checkpoint} does not exist; download vox-adv-cpk.pth.tar "
                            f"(README: Using the FOMM checkpoint) or fix --checkpoint.")
    machine = Machine.detect()
    candidates = candidates_for(machine, settings.backend, settings.device, settings.precision)
    if not any(c.available for c in candidates):
        raise AnimatorError(no_backend_message(candidates))
    builder = _Builder(checkpoint, settings.cache_dir)
    auto = settings.backend == "auto"
    try:
        timings_path, cached, store = None, None, None
        if auto and any(c.available and c.backend != "torch" for c in candidates):
            timings_path = builder.onnx_dir() / TIMINGS_FILE
            key = timing_key(machine, crop_size(settings))
            cached = read_timings(timings_path, key)
            store = lambda timings: write_timings(timings_path, key, timings)  # noqa: E731
        time_steps = None
        if auto:
            def time_steps(built: dict[str, Built]) -> dict[str, float]:
                log.info("Timing %s for a few frames to pick the fastest (once; cached)…", ", ".join(built))
                frames = sample_frames(crop_size(settings))
                return time_frames({label: timing_step(b, settings.crop_margin, frames)
                                    for label, b in built.items()})
        choice, built, timed_now = select_backend(candidates, builder.build, time_steps, cached, store)
    except (CheckpointError, ExportError, BackendError) as exc:
        raise AnimatorError(str(exc)) from None
    chosen = choice.candidate
    speed = f"{chosen.ms:.1f} ms per frame" if chosen.ms is not None else "not timed"
    origin = "" if chosen.ms is None or timed_now else f"; timings cached in {timings_path}"
    log.info("FOMM runs on %s (%s): %s%s", chosen.label, speed,
             choice.reason if auto else f"asked for with --backend {settings.backend}", origin)
    animator = FommAnimator(built.runner, settings.crop_margin, frame_io=built.frame_io, weights=str(checkpoint))
    animator.details = {"device": chosen.device, "candidate": chosen.label, "frame_io": getattr(
        built.frame_io, "where", "host"), "choice": choice.reason if auto else "--backend " + settings.backend,
        "ms_per_frame": None if chosen.ms is None else round(chosen.ms, 2)}
    warning = idle_gpu_warning(chosen, candidates, machine.gpus, settings.device)
    if warning:
        log.warning("%s", warning)
        animator.details["note"] = f"GPU idle: {machine.gpus[0]}"
    return PipelinedAnimator(animator) if chosen.device == "cuda" else animator


# ---------------------------------------------------------------------------------------------
# python -m avatarify.backends: what this machine offers


def check_session_providers() -> list[str]:
    """The providers a real onnxruntime session gets here (a small graph, every GPU provider asked for)."""
    import torch

    import onnxruntime as ort

    from avatarify.device_io import FromNetwork, onnx_model_bytes
    from avatarify.runners import onnxruntime_providers, preload_cuda_libraries

    preload_cuda_libraries()
    model = onnx_model_bytes(FromNetwork(), torch.zeros(1, 3, 256, 256), "prediction", "frame_bgr")
    return ort.InferenceSession(model, providers=onnxruntime_providers("auto")).get_providers()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    machine = Machine.detect()
    print(f"onnxruntime: {machine.ort_package or 'not installed'}")
    if machine.ort_package:
        print(f"  a real session's providers: {check_session_providers()}")
    print(f"torch {machine.torch_version}: CUDA {'yes' if machine.torch_cuda else 'no'}")
    print(f"NVIDIA GPUs seen: {', '.join(machine.gpus) or 'none'}")
    bf16 = "native" if machine.native_bf16 else "emulated (slower than fp32)" if machine.bf16_runs else "cannot run"
    print(f"CPU: {machine.cpu}; bf16: {bf16}; tensorrt: "
          f"{machine.tensorrt or 'not installed'}; pip CUDA libraries: {machine.cuda_libraries or 'none'}")
    print("--backend auto considers:")
    for candidate in candidates_for(machine):
        print(f"  {candidate.label:28s} {'can run' if candidate.available else 'no: ' + candidate.why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
