"""Build serialized TensorRT engines from the exported ONNX graphs (the `tensorrt` Python API).

Input: {name: onnx path}. Output: {name: engine path}, cached in `out_dir/trt_cache/` under a key
made of the ONNX file's sha256, the TensorRT version, the GPU name and the precision, so a
rebuild happens only when one of them changes.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """The `tensorrt` package (or a CUDA GPU) is not available here."""


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, see "
                                  "requirements-gpu.txt); the ONNX graphs were written.") from None
    return tensorrt


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("No CUDA GPU is visible, so no TensorRT engine can be built.")
    return torch.cuda.get_device_name(0)


def engine_key(onnx_path: Path, trt_version: str, gpu: str, fp16: bool) -> str:
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    gpu_slug = "".join(c if c.isalnum() else "-" for c in gpu)
    return f"{onnx_path.stem}-{digest}-trt{trt_version}-{gpu_slug}-{'fp16' if fp16 else 'fp32'}"


def build_engine(trt, onnx_path: Path, engine_path: Path, fp16: bool) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT ≥ 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}.")
    engine_path.write_bytes(bytes(serialized))


def build_engines(graphs: dict[str, Path], out_dir: Path, fp16: bool = False) -> dict[str, Path]:
    """Engines for every graph, reusing cached ones whose key still matches."""
    trt = import_tensorrt()
    gpu = gpu_name()
    cache = out_dir / "trt_cache"
    cache.mkdir(parents=True, exist_ok=True)
    engines = {}
    for name, onnx_path in graphs.items():
        engine_path = cache / (engine_key(onnx_path, trt.__version__, gpu, fp16) + ".engine")
        if engine_path.is_file():
            log.info("TensorRT engine cache hit: %s", engine_path.name)
        else:
            log.info("Building TensorRT engine %s", engine_path.name)
            build_engine(trt, onnx_path, engine_path, fp16)
        engines[name] = engine_path
    return engines
