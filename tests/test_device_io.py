"""Device frame I/O gives what the host path gives: the conversions at the network's edges, the
torch runner's device-in/device-out call, and onnxruntime with IOBinding (all run on the CPU here;
on a GPU the same code runs with device tensors)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from avatarify.device_io import FromNetwork, OrtDeviceIO, ToNetwork, TorchDeviceIO
from avatarify.engines.fomm import bgr_to_network, network_to_bgr
from avatarify.runners import OnnxRuntimeRunner, TorchRunner
from models.fomm.checkpoint import load_fomm


@pytest.fixture(scope="module")
def crops(astronaut_bgr, grace_hopper_bgr) -> dict[str, np.ndarray]:
    side = min(grace_hopper_bgr.shape[:2])
    return {"avatar": cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA),
            "driving": cv2.resize(grace_hopper_bgr[:side, :side], (256, 256), interpolation=cv2.INTER_AREA),
            "driving_512": cv2.resize(grace_hopper_bgr[:side, :side], (512, 512), interpolation=cv2.INTER_AREA)}


class HostFrameIO:
    """The host path of FommAnimator: numpy and OpenCV conversions around runner.animate."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def predict_bgr(self, crop_bgr: np.ndarray, strength: float) -> np.ndarray:
        return network_to_bgr(self.runner.animate(bgr_to_network(crop_bgr), strength))


def _prepare(runner, crops, avatar="avatar") -> None:
    runner.prepare_source(bgr_to_network(crops[avatar]))
    runner.set_neutral(bgr_to_network(crops[avatar][:, ::-1]))


def test_to_network_matches_the_host_conversion(crops):
    with torch.inference_mode():
        same = ToNetwork()(torch.from_numpy(crops["driving"])).numpy()
        halved = ToNetwork()(torch.from_numpy(crops["driving_512"])).numpy()
    assert same.shape == (1, 3, 256, 256) and np.array_equal(same, bgr_to_network(crops["driving"]))
    # OpenCV's area resize rounds to uint8 before the division; the device path averages exactly:
    # at most half a level apart, plus a few fp32 ulps of a value ≤ 1 (eps 1.2e-7) from the division.
    assert np.abs(halved - bgr_to_network(crops["driving_512"])).max() <= 0.5 / 255 + 1e-6


def test_from_network_rounds_as_the_host_path():
    prediction = np.random.default_rng(0).uniform(-0.1, 1.1, (1, 3, 256, 256)).astype(np.float32)
    with torch.inference_mode():
        picture = FromNetwork()(torch.from_numpy(prediction)).numpy()
    assert picture.dtype == np.uint8 and np.array_equal(picture, network_to_bgr(prediction))


def test_torch_device_io_equals_the_host_path(fomm_checkpoint, crops):
    runner = TorchRunner(*load_fomm(fomm_checkpoint), optimized=True)
    _prepare(runner, crops)
    device_io, host_io = TorchDeviceIO(runner), HostFrameIO(runner)
    for strength in (1.0, 0.5):  # a new strength value must reach the network
        assert np.array_equal(device_io.predict_bgr(crops["driving"], strength),
                              host_io.predict_bgr(crops["driving"], strength))
    _prepare(runner, crops, avatar="driving")  # a new avatar: its tensors replace the cached ones
    expected = host_io.predict_bgr(crops["avatar"], 1.0)
    assert np.array_equal(device_io.predict_bgr(crops["avatar"], 1.0), expected)
    assert np.abs(device_io.predict_bgr(crops["driving"], 1.0).astype(int) - expected).mean() > 1.0


def test_onnxruntime_iobinding_equals_the_host_path(onnx_dir, crops):
    runner = OnnxRuntimeRunner(onnx_dir, device="cpu", only="cpu")
    assert runner.providers == ["CPUExecutionProvider"]
    _prepare(runner, crops)
    device_io, host_io = OrtDeviceIO(runner, device="cpu"), HostFrameIO(runner)
    for strength in (0.8, 0.0):
        got, expected = device_io.predict_bgr(crops["driving"], strength), host_io.predict_bgr(crops["driving"], strength)
        assert got.shape == (256, 256, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - expected).max() <= 1  # the same graph; rounding at most one level
    got = device_io.predict_bgr(crops["driving_512"], 0.8)  # the driving crop at 512: a second pre graph
    expected = host_io.predict_bgr(crops["driving_512"], 0.8)
    assert np.abs(got.astype(int) - expected).mean() < 0.5
    _prepare(runner, crops, avatar="driving")
    assert np.abs(device_io.predict_bgr(crops["avatar"], 1.0).astype(int)
                  - host_io.predict_bgr(crops["avatar"], 1.0)).max() <= 1


def test_animate_tensor_is_the_runner_without_host_copies(fomm_checkpoint, crops):
    runner = TorchRunner(*load_fomm(fomm_checkpoint))
    _prepare(runner, crops)
    driving = bgr_to_network(crops["driving"])
    with torch.inference_mode():
        on_device = runner.animate_tensor(torch.from_numpy(driving), 0.7)
    assert isinstance(on_device, torch.Tensor)
    assert np.array_equal(on_device.numpy(), runner.animate(driving, 0.7))


# --- the paste-back on torch (the torch CUDA path's composite), run on the CPU ----------------------


@pytest.fixture(scope="module")
def framed_astronaut():
    from avatarify.compose import frame_photo
    from bench.clips import load_photo_bgr, photo_landmarks

    return frame_photo(load_photo_bgr("astronaut"), photo_landmarks("astronaut"), 1280, 720)


@pytest.mark.parametrize("with_reference", [False, True])
def test_torch_paste_back_equals_the_numpy_one(framed_astronaut, with_reference):
    from avatarify.compose import PasteBack
    from avatarify.compose_torch import TorchPasteBack
    from avatarify.motion import Similarity

    paste_back = PasteBack(framed_astronaut.image_bgr, framed_astronaut.landmarks, 256, 0.3)
    rng = np.random.default_rng(0)
    noisy = paste_back.crop_bgr.astype(int) + rng.integers(-40, 40, paste_back.crop_bgr.shape)
    prediction = cv2.GaussianBlur(np.clip(noisy, 0, 255).astype(np.uint8), (0, 0), 1.0)
    if with_reference:
        paste_back.set_reference(cv2.GaussianBlur(paste_back.crop_bgr, (0, 0), 2.0))
    on_torch = TorchPasteBack(paste_back, "cpu")
    for head in (None, Similarity(complex(1.04, 0.06), complex(7.0, -5.0))):  # still, then turned and moved
        expected = paste_back.paste(prediction, head)
        with torch.inference_mode():
            got = on_torch.paste(torch.from_numpy(prediction), head).numpy()
        assert got.shape == expected.shape == framed_astronaut.image_bgr.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
        assert np.abs(expected.astype(int) - framed_astronaut.image_bgr).max() > 20  # the face did change


def test_fomm_animator_on_the_torch_device_path_gives_the_host_picture(fomm_checkpoint, framed_astronaut, crops):
    from avatarify.datatypes import DrivingFrame
    from avatarify.engines.fomm import FommAnimator

    runner = TorchRunner(*load_fomm(fomm_checkpoint), optimized=True)
    pictures = []
    for frame_io in (None, TorchDeviceIO(runner)):
        animator = FommAnimator(runner, 0.3, frame_io=frame_io)
        animator.set_avatar(framed_astronaut.image_bgr, framed_astronaut.landmarks)
        animator.set_neutral(DrivingFrame(crops["avatar"], None, 0.0))
        pictures.append(animator.animate(DrivingFrame(crops["driving"], None, 0.0)))
    host, device = pictures
    assert device.shape == host.shape == framed_astronaut.image_bgr.shape
    assert np.abs(device.astype(int) - host).max() <= 1
