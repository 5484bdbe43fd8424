"""Runners agree with the torch runner (fp32, ≤1e-4); FommAnimator honours the Animator contract."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.fomm import FommAnimator, bgr_to_network
from avatarify.runners import OnnxRuntimeRunner, TensorRTRunner, TorchRunner
from export.onnx_export import cached_export, sample_photos
from models.fomm.checkpoint import load_fomm, save_random_checkpoint

TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def fomm_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "fomm-random.pth.tar"
    return path if path.is_file() else save_random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def onnx_dir(fomm_checkpoint, tmp_path_factory) -> Path:
    return cached_export(fomm_checkpoint, tmp_path_factory.getbasetemp() / "fomm-onnx", progress=False)


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    source, driving = (t.numpy() for t in sample_photos())
    return source, driving, np.ascontiguousarray(source[..., ::-1])


@pytest.fixture(scope="module")
def torch_runner(fomm_checkpoint) -> TorchRunner:
    return TorchRunner(*load_fomm(fomm_checkpoint))


def _drive(runner, photos, strength: float = 0.8) -> np.ndarray:
    source, driving, neutral = photos
    runner.prepare_source(source)
    runner.set_neutral(neutral)
    return runner.animate(driving, strength)


@pytest.fixture(scope="module")
def reference(torch_runner, photos) -> np.ndarray:
    return _drive(torch_runner, photos)


@pytest.mark.parametrize("fused", [True, False])
def test_onnxruntime_runner_agrees_with_torch(onnx_dir, photos, reference, fused):
    runner = OnnxRuntimeRunner(onnx_dir, device="cpu", fused=fused)
    assert runner.providers == ["CPUExecutionProvider"]  # from session.get_providers()
    out = _drive(runner, photos)
    assert out.shape == (1, 3, 256, 256) and out.dtype == np.float32
    assert np.abs(out - reference).max() <= TOLERANCE


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt is not installed")
def test_tensorrt_runner_agrees_with_torch(onnx_dir, photos, reference):
    from export.tensorrt_build import build_engines

    graphs = {name: onnx_dir / f"{name}.onnx" for name in ("fomm_keypoints", "fomm_source", "fomm_frame")}
    runner = TensorRTRunner(build_engines(graphs, onnx_dir))
    assert np.abs(_drive(runner, photos) - reference).max() <= TOLERANCE


def _frame(crop_bgr: np.ndarray, motion_scale: float = 1.0) -> DrivingFrame:
    return DrivingFrame(crop_bgr=crop_bgr, landmarks=None, timestamp=0.0, motion_scale=motion_scale)


def _landmarks(image: np.ndarray) -> FaceLandmarks:
    return FaceLandmarks(np.zeros((478, 2), np.float32), 1.0, (image.shape[1], image.shape[0]))


@pytest.mark.parametrize("size", [256, 512])
def test_fomm_animator_contract(torch_runner, astronaut_bgr, grace_hopper_bgr, size):
    import cv2

    avatar = cv2.resize(astronaut_bgr, (size, size), interpolation=cv2.INTER_AREA)
    driving = cv2.resize(grace_hopper_bgr[:, 50:50 + grace_hopper_bgr.shape[0]], (size, size))
    animator = FommAnimator(torch_runner, size=size)
    animator.set_avatar(avatar, _landmarks(avatar))
    animator.set_neutral(_frame(avatar))
    out = animator.animate(_frame(driving))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert animator.backend_info() == {"backend": "torch", "providers": ["torch-cpu"]}


def test_fomm_animator_strength_zero_is_the_source_reconstruction(torch_runner, astronaut_bgr,
                                                                  grace_hopper_bgr, fomm_checkpoint):
    import cv2
    import torch

    avatar = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    animator = FommAnimator(torch_runner, size=256)
    animator.set_avatar(avatar, _landmarks(avatar))
    animator.set_neutral(_frame(avatar))
    still = animator.animate(_frame(cv2.resize(grace_hopper_bgr, (256, 256)), motion_scale=0.0))

    kp_detector, generator = load_fomm(fomm_checkpoint)
    with torch.inference_mode():
        source = torch.from_numpy(bgr_to_network(avatar))
        kp = kp_detector(source)
        reconstruction = generator(source, kp_driving=kp, kp_source=kp)["prediction"][0]
    expected = (reconstruction.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round()
    assert np.abs(still.astype(np.float32) - expected).max() <= 1.0
