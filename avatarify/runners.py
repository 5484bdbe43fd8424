"""Runners: the FOMM real-time split behind one call signature, on torch, onnxruntime or TensorRT.

All runners take and return numpy float32 RGB NCHW images (1, 3, 256, 256) in [0, 1]:
- `prepare_source(source)`  once per avatar: caches keypoints, encoder features and dense-motion parts;
- `set_neutral(neutral)`    once per calibration: neutral keypoints, inverse Jacobians, adapt scale;
- `animate(driving, s)`     per frame: the prediction with motion strength s (1 = as driven, 0 = source).
`providers` lists what actually runs (for onnxruntime: `session.get_providers()` of the live session).
"""
from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from models.fomm.fast import PRECISIONS
from models.fomm.realtime import (FRAME_INPUTS, FRAME_OUTPUTS, FUSED_FRAME_INPUTS, KEYPOINT_OUTPUTS,
                                  SOURCE_OUTPUTS, FusedFrameNet, KeypointNet, SourceNet, calibrate,
                                  fast_frame_net)

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class RunnerError(RuntimeError):
    """A runner cannot start or was used out of order; the message is one sentence."""


class FommRunner(ABC):
    """Holds the per-avatar and per-calibration state; subclasses run the three graphs."""

    name = "base"

    def __init__(self, adapt_scale: bool = True) -> None:
        self.adapt_scale = adapt_scale
        self.providers: list[str] = []
        self._source: Arrays | None = None
        self._calibration: Arrays | None = None

    @abstractmethod
    def _keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image → (value (1, 10, 2), jacobian (1, 10, 2, 2))."""

    @abstractmethod
    def _source_outputs(self, image: np.ndarray) -> Arrays:
        """source image → {name: array} for SOURCE_OUTPUTS."""

    @abstractmethod
    def _frame(self, feeds: Arrays) -> np.ndarray:
        """FUSED_FRAME_INPUTS feeds → prediction (1, 3, 256, 256)."""

    def prepare_source(self, source: np.ndarray) -> None:
        self._source = self.source_state(source)
        self._calibration = None

    def set_neutral(self, neutral: np.ndarray) -> None:
        if self._source is None:
            raise RunnerError("set_neutral needs an avatar first; call prepare_source.")
        self._calibration = self.calibration_state(self._source, neutral)

    def animate(self, driving: np.ndarray, strength: float = 1.0) -> np.ndarray:
        self.cached_state()  # raises before any work when the avatar or the neutral is missing
        return self.animate_batch(driving, [(self._source, self._calibration)], [strength])

    def cached_state(self) -> Arrays:
        """The avatar's and the calibration's cached arrays by frame-graph input name (the same
        array objects every frame until the avatar or the neutral changes: device copies key on them)."""
        if self._source is None or self._calibration is None:
            raise RunnerError("animate needs an avatar and a neutral pose; call prepare_source and set_neutral.")
        return {**self._source, **self._calibration}

    # -- the same work for several avatars at once (a server's sessions) ----------------------------
    def source_state(self, source: np.ndarray) -> Arrays:
        """Everything per avatar that the frame graph needs (SOURCE_OUTPUTS), for (1, 3, 256, 256)."""
        return self._source_outputs(np.ascontiguousarray(source, dtype=np.float32))

    def calibration_state(self, source_state: Arrays, neutral: np.ndarray) -> Arrays:
        """Per calibration: the neutral's keypoints, inverse Jacobians and the adapt scale."""
        value, jacobian = self._keypoints(np.ascontiguousarray(neutral, dtype=np.float32))
        cal = calibrate(torch.from_numpy(source_state["source_value"]), torch.from_numpy(value),
                        torch.from_numpy(jacobian), adapt_scale=self.adapt_scale)
        return {"neutral_value": cal.neutral_value.numpy(),
                "neutral_jacobian_inv": cal.neutral_jacobian_inv.numpy(),
                "adapt_scale": cal.adapt_scale.numpy()}

    def animate_batch(self, driving: np.ndarray, states: list[tuple[Arrays, Arrays]],
                      strengths: list[float]) -> np.ndarray:
        """One network pass for B frames of B avatars: driving (B, 3, 256, 256), per frame its
        (source_state, calibration_state) and strength → predictions (B, 3, 256, 256)."""
        if not (len(driving) == len(states) == len(strengths)):
            raise RunnerError(f"animate_batch got {len(driving)} frames, {len(states)} states and "
                              f"{len(strengths)} strengths; give one of each per frame.")
        if len(states) == 1:  # the live app's case: hand the cached arrays over as they are
            source, calibration = states[0]
        else:
            source = {k: np.concatenate([s[k] for s, _ in states]) for k in SOURCE_OUTPUTS}
            calibration = {k: np.concatenate([c[k] for _, c in states]) for k in states[0][1]}
        feeds = {"driving_image": np.ascontiguousarray(driving, dtype=np.float32), **source, **calibration,
                 "strength": np.asarray(strengths, dtype=np.float32).reshape(-1)}
        return self._frame(feeds)


class CudaGraphed:
    """Calls a module as one replayed CUDA graph: at batch 1 the per-frame net is ~200 small kernels,
    and their launch gaps cost more GPU time than the arithmetic. Inputs are copied into static
    buffers (skipped for the tensor object already copied last call: the cached avatar and
    calibration tensors do not change between frames); the returned tensor is overwritten by the
    next call. If `fallback` is given and the module fails while warming up (e.g. torch.compile
    without a working Triton), the fallback module is captured instead."""

    def __init__(self, module: torch.nn.Module, fallback: torch.nn.Module | None = None) -> None:
        self.module, self.fallback = module, fallback
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: list[torch.Tensor] = []
        self._last: list[torch.Tensor | None] = []
        self._output: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def replay(self) -> None:
        """Run the captured graph on the current static inputs (timing without host copies)."""
        self._graph.replay()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._graph is None or any(a.shape != b.shape for a, b in zip(self._inputs, inputs)):
            self._capture(inputs)
        for i, tensor in enumerate(inputs):
            if self._last[i] is not tensor:
                self._inputs[i].copy_(tensor, non_blocking=True)
                self._last[i] = tensor
        self._graph.replay()
        return self._output

    def _warm_up(self) -> None:
        side = torch.cuda.Stream()  # warm-up (compilation, cuDNN choices, allocations) off the capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.module(*self._inputs)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self._inputs = [t.clone() for t in inputs]
        self._last = list(inputs)
        try:
            self._warm_up()
        except Exception as exc:  # noqa: BLE001 — any compiler failure: fall back, say why once
            if self.fallback is None:
                raise
            log.warning("torch.compile failed (%s); running the uncompiled graph.", str(exc).splitlines()[0])
            self.module, self.fallback = self.fallback, None
            self._warm_up()
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._output = self.module(*self._inputs)


class TorchRunner(FommRunner):
    """Torch on cpu or cuda.

    precision "fp32" with optimized=False is the exact split (≤1e-5 from the official forward);
    optimized=True runs the rewritten layers of models.fomm.fast (mean 5e-6, max 6e-4 from it); "bf16" (cpu or
    cuda) and "fp16" (cuda) are always optimized. The keypoint detector stays fp32 unless
    keypoint_precision says otherwise (faster, but keypoint errors dominate the prediction error).
    On cuda the per-frame net is replayed as one CUDA graph unless cuda_graph=False, and
    torch_compile=True puts it through torch.compile first (tens of seconds at the first frame).
    """

    name = "torch"

    def __init__(self, kp_detector: torch.nn.Module, generator: torch.nn.Module, device: str = "cpu",
                 precision: str = "fp32", optimized: bool = False, cuda_graph: bool = True,
                 torch_compile: bool = False, keypoint_precision: str = "fp32", adapt_scale: bool = True) -> None:
        super().__init__(adapt_scale)
        self.device = torch.device(device)
        for value in (precision, keypoint_precision):
            self._check_precision(value)
        self.precision = precision
        self.optimized = optimized or precision != "fp32" or keypoint_precision != "fp32"
        kp_detector, generator = kp_detector.to(self.device).eval(), generator.to(self.device).eval()
        self.keypoint_net = KeypointNet(kp_detector)
        self.source_net = SourceNet(kp_detector, generator).to(self.device)
        self.frame_net = (fast_frame_net(kp_detector, generator, precision, keypoint_precision) if self.optimized
                          else FusedFrameNet(kp_detector, generator).to(self.device))
        graphed = cuda_graph and self.device.type == "cuda"
        compiled = torch_compile and graphed  # compiled without the graph, launch gaps would remain
        self.frame_call = self._frame_callable(graphed, compiled)  # a CudaGraphed when graphed
        self.providers = [self._label(keypoint_precision) + ("-compiled" if compiled else "")
                          + ("-cudagraph" if graphed else "")]
        self._on_device: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        self._strength: tuple[float, torch.Tensor] | None = None

    def _check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise RunnerError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
        if precision == "fp16" and self.device.type != "cuda":
            raise RunnerError("fp16 needs a CUDA device; on cpu use precision fp32 (or bf16 where the CPU runs it).")
        if precision == "bf16" and self.device.type == "cpu":
            from avatarify import backends  # through the module: tests fake the CPU's flags there

            if not backends.bf16_runs_here():  # else oneDNN stops in the first convolution, a traceback
                raise RunnerError(backends.bf16_refusal(backends.cpu_model()) + ".")

    def _frame_callable(self, graphed: bool, compiled: bool):
        if not graphed:
            return self.frame_net
        if compiled:
            return CudaGraphed(torch.compile(self.frame_net), fallback=self.frame_net)
        return CudaGraphed(self.frame_net)

    def _label(self, keypoint_precision: str) -> str:
        """'torch-cpu' alone is the exact path; anything else says how it differs."""
        label = f"torch-{self.device.type}"
        if self.optimized:
            label += "-optimized" if self.precision == "fp32" else f"-{self.precision}"
        return label + (f"-kp{keypoint_precision}" if keypoint_precision != "fp32" else "")

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """Device copy; the cached avatar/neutral arrays are uploaded once, not every frame."""
        hit = self._on_device.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        tensor = torch.from_numpy(array).to(self.device)
        cached = [*(self._source or {}).values(), *(self._calibration or {}).values()]
        if any(array is c for c in cached):
            if len(self._on_device) > 2 * len(cached):  # drop entries of replaced avatars/neutrals
                self._on_device.clear()
            self._on_device[id(array)] = (array, tensor)
        return tensor

    def _run(self, module, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors = [self._tensor(a) for a in arrays]
        with torch.inference_mode():
            out = module(*tensors)
            out = out if isinstance(out, tuple) else (out,)
            return tuple(t.float().cpu().numpy() for t in out)

    def _keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._run(self.keypoint_net, image)

    def _source_outputs(self, image: np.ndarray) -> Arrays:
        return dict(zip(SOURCE_OUTPUTS, self._run(self.source_net, image)))

    def _frame(self, feeds: Arrays) -> np.ndarray:
        return self._run(self.frame_call, *(feeds[name] for name in FUSED_FRAME_INPUTS))[0]

    def animate_tensor(self, driving: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Device in, device out: driving (1, 3, 256, 256) float on this runner's device → the
        prediction there, without host copies (the cached avatar and calibration tensors were
        uploaded once). With a CUDA graph the result is overwritten by the next call."""
        cached = self.cached_state()
        if self._strength is None or self._strength[0] != strength:
            # One device tensor per value: no upload, and no graph input copy, while it holds.
            self._strength = (strength, torch.tensor([strength], dtype=torch.float32, device=self.device))
        tensors = [driving, *(self._tensor(cached[name]) for name in FUSED_FRAME_INPUTS[1:-1]), self._strength[1]]
        with torch.inference_mode():
            return self.frame_call(*tensors)


def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu's [cuda,cudnn] extras installed from
    pip (nvidia-* wheels), before the first session: without a system CUDA toolkit the CUDA provider
    would not find them and onnxruntime would run on the CPU. A no-op for CPU builds and where
    onnxruntime has no `preload_dlls` (before 1.21); what it prints goes to the debug log."""
    import contextlib

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not hasattr(ort, "preload_dlls"):
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as exc:  # the session's provider check says what runs
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def onnxruntime_providers(device: str = "auto", tensorrt_cache: Path | None = None,
                          fp16: bool = False, only: str | None = None) -> list:
    """Providers in preference order TensorRT → CUDA → CPU among those this onnxruntime build has;
    `only` ("tensorrt", "cuda" or "cpu") asks for that provider first, with only the fallbacks behind
    it (TensorRT keeps CUDA for the nodes it does not take; the CPU is always last)."""
    import onnxruntime as ort

    available = ort.get_available_providers()  # what the build offers; what runs is asked later
    chosen: list = []
    if device in ("auto", "cuda") and only in (None, "tensorrt"):
        if "TensorrtExecutionProvider" in available and tensorrt_cache is not None:
            tensorrt_cache.mkdir(parents=True, exist_ok=True)
            chosen.append(("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                         "trt_engine_cache_path": str(tensorrt_cache),
                                                         "trt_fp16_enable": fp16}))
    if device in ("auto", "cuda") and only in (None, "tensorrt", "cuda"):
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntimeRunner(FommRunner):
    """onnxruntime sessions over the graphs written by `python -m export`.

    `fused=True` runs fomm_frame.onnx (keypoint detector inside); `fused=False` runs
    fomm_keypoints.onnx then fomm_frame_kp.onnx on each frame.
    """

    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, device: str = "auto", fp16: bool = False, threads: int = 2,
                 fused: bool = True, adapt_scale: bool = True, only: str | None = None) -> None:
        super().__init__(adapt_scale)
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # Three sessions share few cores: idle pools spinning would steal them from the running one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = onnxruntime_providers(device, onnx_dir / "trt_cache", fp16, only)
        if any(p != "CPUExecutionProvider" for p in providers):
            preload_cuda_libraries()

        def session(filename: str) -> "ort.InferenceSession":
            path = onnx_dir / filename
            if not path.is_file():
                raise RunnerError(f"{path} is missing; run `python -m export --checkpoint CKPT --out {onnx_dir}`.")
            return ort.InferenceSession(str(path), options, providers=providers)

        self.fused = fused
        self.keypoint_session = session("fomm_keypoints.onnx")
        self.source_session = session("fomm_source.onnx")
        self.frame_session = session("fomm_frame.onnx" if fused else "fomm_frame_kp.onnx")
        self.providers = self.frame_session.get_providers()  # what actually runs, not what exists
        log.info("onnxruntime providers in use: %s", self.providers)

    def _keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self.keypoint_session.run(list(KEYPOINT_OUTPUTS), {"image": image}))

    def _source_outputs(self, image: np.ndarray) -> Arrays:
        return dict(zip(SOURCE_OUTPUTS, self.source_session.run(list(SOURCE_OUTPUTS), {"source_image": image})))

    def _frame(self, feeds: Arrays) -> np.ndarray:
        if not self.fused:
            value, jacobian = self._keypoints(feeds.pop("driving_image"))
            feeds = {"driving_value": value, "driving_jacobian": jacobian, **feeds}
        names = FUSED_FRAME_INPUTS if self.fused else FRAME_INPUTS
        return self.frame_session.run(list(FRAME_OUTPUTS), {n: feeds[n] for n in names})[0]


class TensorRTRunner(FommRunner):
    """Serialized TensorRT engines (from `python -m export --tensorrt`), I/O through torch CUDA tensors."""

    name = "tensorrt"

    def __init__(self, engines: dict[str, str | Path], adapt_scale: bool = True) -> None:
        super().__init__(adapt_scale)
        from export.tensorrt_build import import_tensorrt

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RunnerError("The TensorRT backend needs a CUDA GPU; use --backend onnxruntime or torch.")
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines = {}
        for name in ("fomm_keypoints", "fomm_source", "fomm_frame"):
            engine = runtime.deserialize_cuda_engine(Path(engines[name]).read_bytes())
            self._engines[name] = (engine, engine.create_execution_context())
        self._stream = torch.cuda.Stream()
        self.providers = [f"tensorrt-{trt.__version__}"]

    def _execute(self, name: str, feeds: Arrays, outputs: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        engine, context = self._engines[name]
        keep = []  # device tensors must outlive the launch
        for input_name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            context.set_tensor_address(input_name, tensor.data_ptr())
        results = []
        for output_name in outputs:
            shape = tuple(engine.get_tensor_shape(output_name))
            tensor = torch.empty(shape, dtype=torch.float32, device="cuda")
            results.append(tensor)
            context.set_tensor_address(output_name, tensor.data_ptr())
        context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        return tuple(t.cpu().numpy() for t in results)

    def _keypoints(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._execute("fomm_keypoints", {"image": image}, KEYPOINT_OUTPUTS)

    def _source_outputs(self, image: np.ndarray) -> Arrays:
        return dict(zip(SOURCE_OUTPUTS, self._execute("fomm_source", {"source_image": image}, SOURCE_OUTPUTS)))

    def _frame(self, feeds: Arrays) -> np.ndarray:
        return self._execute("fomm_frame", {n: feeds[n] for n in FUSED_FRAME_INPUTS}, FRAME_OUTPUTS)[0]
