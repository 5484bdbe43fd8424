"""Export the FOMM real-time split to ONNX and check every graph against torch.

Input: an official checkpoint (vox-cpk.pth.tar / vox-adv-cpk.pth.tar). Output, in `out_dir`:
- `fomm_keypoints.onnx`  image → (kp_value, kp_jacobian)                     (avatar + calibration)
- `fomm_source.onnx`     source image → SOURCE_OUTPUTS                         (once per avatar)
- `fomm_frame.onnx`      driving image + cached tensors → prediction         (per frame, kp detector fused)
- `fomm_frame_kp.onnx`   driving keypoints + cached tensors → prediction     (optional, unfused variant)
- `manifest.json`        checkpoint sha256, opset, input/output names, parity errors, and each graph's
                         size and sha256 (`files`).
Each graph is single-file, opset 17, static 256×256, and is run on onnxruntime CPU against the torch
modules on real photos; a max abs difference above the fp32
rounding bound of these nets (5.2e-4, models/fomm/rounding.py) raises ExportError.

The app's cache (`cached_export`) heals itself: an export is written into a temporary folder and moved
into place with one rename, under a lock file, so a crash, a full disk or two runs starting at once never
leave a half-written cache; a cache whose files do not match their manifest is rebuilt (one log line).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.fomm import rounding
from models.fomm.checkpoint import load_fomm
from models.fomm.realtime import (FRAME_INPUTS, FRAME_OUTPUTS, FUSED_FRAME_INPUTS, KEYPOINT_OUTPUTS,
                                  SOURCE_OUTPUTS, FrameNet, FusedFrameNet, KeypointNet, SourceNet, calibrate)

log = logging.getLogger(__name__)

OPSET = 17
# onnxruntime sums in another order than oneDNN, differently per instruction set: the fp32
# re-association bound of these nets (5.2e-4, derived in models/fomm/rounding.py), not one CPU's figure.
PARITY_TOLERANCE = rounding.FP32_MAX
IMAGE_SIZE = 256


class ExportError(RuntimeError):
    """Export failed (unwritable folder, parity failure); the message is one sentence."""


@dataclass
class GraphSpec:
    """One ONNX graph to write: the torch module, its example inputs and its I/O names."""

    filename: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


@dataclass
class ExportResult:
    """Paths written by `export_fomm` and the parity error measured for each graph."""

    out_dir: Path
    checkpoint_sha256: str
    graphs: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)

    def manifest(self) -> dict:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["graphs"] = {k: p.name for k, p in self.graphs.items()}
        data["engines"] = {k: p.name for k, p in self.engines.items()}
        return data


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sample_photos() -> tuple[torch.Tensor, torch.Tensor]:
    """Two real photos from installed packages as (1, 3, 256, 256) RGB in [0, 1]: source, driving."""
    import matplotlib.cbook
    import matplotlib.pyplot as plt
    import skimage.data

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(image[..., :3], dtype=np.float32) / 255).permute(2, 0, 1)[None]
        return nn.functional.interpolate(tensor, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = plt.imread(handle, format="jpg")
    return to_tensor(skimage.data.astronaut()), to_tensor(hopper)


@torch.inference_mode()
def graph_specs(kp_detector: nn.Module, generator: nn.Module, unfused_frame: bool = False) -> list[GraphSpec]:
    """The graphs of the split with example inputs computed from real photos."""
    source, driving = sample_photos()
    keypoints, source_net = KeypointNet(kp_detector), SourceNet(kp_detector, generator)
    cached = source_net(source)
    neutral_value, neutral_jacobian = keypoints(source.flip(3))  # a mirrored avatar as the neutral pose
    calibration = calibrate(cached[0], neutral_value, neutral_jacobian, adapt_scale=True)
    tail = (*cached, calibration.neutral_value, calibration.neutral_jacobian_inv, calibration.adapt_scale,
            torch.tensor([0.8]))  # strength ≠ 1 so the blend is exercised
    specs = [
        GraphSpec("fomm_keypoints.onnx", keypoints, (driving,), ("image",), KEYPOINT_OUTPUTS),
        GraphSpec("fomm_source.onnx", source_net, (source,), ("source_image",), SOURCE_OUTPUTS),
        GraphSpec("fomm_frame.onnx", FusedFrameNet(kp_detector, generator), (driving, *tail),
                  FUSED_FRAME_INPUTS, FRAME_OUTPUTS),
    ]
    if unfused_frame:
        specs.append(GraphSpec("fomm_frame_kp.onnx", FrameNet(generator), (*keypoints(driving), *tail),
                               FRAME_INPUTS, FRAME_OUTPUTS))
    return specs


def export_graph(spec: GraphSpec, path: Path) -> None:
    # The exporter restores the wrapper's train flag recursively afterwards: a wrapper left in
    # train mode would switch every BatchNorm to batch statistics.
    spec.module.eval()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(spec.module, spec.inputs, str(path), input_names=list(spec.input_names),
                          output_names=list(spec.output_names), opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


@torch.inference_mode()
def check_graph(spec: GraphSpec, path: Path) -> float:
    """Max abs difference between onnxruntime CPU and torch on the spec's inputs; raises above the bound."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: tensor.numpy() for name, tensor in zip(spec.input_names, spec.inputs)}
    got = session.run(list(spec.output_names), feeds)
    expected = spec.module(*spec.inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    error = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    if not error <= PARITY_TOLERANCE:
        raise ExportError(f"{path.name} differs from torch by {error:.2e} (limit {PARITY_TOLERANCE:.1e}) on "
                          f"onnxruntime CPU; the export is wrong, please report it.")
    return error


def _writable_dir(out_dir: Path, flag: str = "--out") -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A probe of its own: two runs starting at once (the cache test, two app windows) shared
        # one probe name, and one unlinked the other's: "No such file or directory" for a fine folder.
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write_test-"):
            pass
    except OSError as exc:
        raise ExportError(f"Cannot write to output folder {out_dir} ({exc.strerror}); choose another {flag}.") from None
    return out_dir


def export_fomm(checkpoint: str | Path, out_dir: str | Path, fp16: bool = False, progress: bool = True,
                tensorrt: bool = False, unfused_frame: bool = False) -> ExportResult:
    """Export, check and (optionally) build TensorRT engines; returns the written paths.

    Raises CheckpointError for a bad checkpoint and ExportError for export problems. `fp16` only
    affects TensorRT engines (the ONNX graphs stay fp32; TensorRT converts at build time).
    """
    out = _writable_dir(Path(out_dir))
    # User errors surface before the progress bar starts, so they print as one clean line.
    kp_detector, generator = load_fomm(checkpoint)
    result = ExportResult(out_dir=out, checkpoint_sha256=file_sha256(checkpoint))
    steps = ["prepare inputs", "export + check keypoints", "export + check source",
             "export + check frame"] + (["export + check frame_kp"] if unfused_frame else [])
    steps += ["build TensorRT engines"] if tensorrt else []
    bar = tqdm(total=len(steps), desc="export", unit="step", disable=not progress)

    def step(name: str, work: Callable[[], object]) -> object:
        bar.set_postfix_str(name)
        value = work()
        bar.update(1)
        return value

    try:
        specs = step(steps[0], lambda: graph_specs(kp_detector, generator, unfused_frame))
        for spec in specs:
            path = out / spec.filename
            result.parity[spec.filename] = step(f"export + check {spec.filename[5:-5]}",
                                                lambda: (export_graph(spec, path), check_graph(spec, path))[1])
            result.graphs[spec.filename[:-5]] = path
            log.info("%s: max |onnxruntime − torch| = %.2e", spec.filename, result.parity[spec.filename])
        if tensorrt:
            from export.tensorrt_build import build_engines
            result.engines = step(steps[-1], lambda: build_engines(result.graphs, out, fp16=fp16))
    finally:
        bar.close()
    files = {path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)} for path in result.graphs.values()}
    manifest = result.manifest() | {"opset": OPSET, "fp16": fp16,
                                    "inputs": {s.filename: list(s.input_names) for s in specs},
                                    "outputs": {s.filename: list(s.output_names) for s in specs},
                                    "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return result


def cache_problem(folder: Path, checkpoint_sha256: str, unfused_frame: bool = True) -> str | None:
    """What is wrong with the export cached in `folder` (a few words), or None when every graph is
    there with the size and sha256 its manifest records."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return "its manifest.json is missing"
    try:
        data = json.loads(manifest.read_text())
        files, graphs = dict(data["files"]), dict(data["graphs"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest.json is unreadable or from an older version"
    if data.get("checkpoint_sha256") != checkpoint_sha256:
        return "it was made from another checkpoint"
    if unfused_frame and "fomm_frame_kp" not in graphs:
        return "it lacks fomm_frame_kp.onnx"
    for name in graphs.values():
        path, expected = folder / name, files.get(name, {})
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} is {size} bytes instead of {expected.get('bytes')}"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its sha256"
    return None


def _try_lock(handle) -> bool:
    """Take the exclusive lock on an open file without waiting; False if another process holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` for this process (the OS drops it if the process dies), so runs
    sharing a cache export one at a time; the others wait, then reuse the export."""
    with open(path, "a+b") as handle:
        if not _try_lock(handle):
            log.info("Another run is exporting into %s; waiting for it.", path.parent)
            while not _try_lock(handle):
                time.sleep(0.2)
        try:
            yield
        finally:
            if os.name == "nt":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_UN)


def _move_into_place(built: Path, out: Path) -> None:
    """Put the finished export `built` at `out` with renames (a damaged `out` is moved aside first)."""
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}-damaged-", dir=out.parent))
        os.replace(out, aside / out.name)
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(built, out)


def cached_export(checkpoint: str | Path, cache_root: str | Path, progress: bool = True,
                  unfused_frame: bool = True) -> Path:
    """The export folder for this checkpoint under `cache_root/<sha256[:16]>`, exporting on first use.

    The folder is reused when every graph matches the size and sha256 in its manifest; otherwise it is
    rebuilt, saying so in one log line. The export is written to a temporary folder next to it and moved
    into place by rename, under a lock, so concurrent runs and interrupted exports are safe.
    """
    digest = file_sha256(checkpoint)
    root = _writable_dir(Path(cache_root), "--cache-dir")
    out = root / digest[:16]
    with _cache_lock(root / f".{digest[:16]}.lock"):
        problem = cache_problem(out, digest, unfused_frame)
        if problem is None:
            log.info("Reusing the ONNX export in %s.", out)
            return out
        if out.exists():
            log.warning("The ONNX cache in %s is damaged (%s); rebuilding it.", out, problem)
        else:
            log.info("First run with this checkpoint: exporting ONNX graphs into %s (once).", out)
        building = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-building-", dir=root))
        try:
            export_fomm(checkpoint, building, progress=progress, unfused_frame=unfused_frame)
            manifest = json.loads((building / "manifest.json").read_text())
            (building / "manifest.json").write_text(json.dumps(manifest | {"out_dir": str(out)}, indent=2))
            _move_into_place(building, out)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return out
