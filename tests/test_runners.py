"""Runners agree with the torch runner (fp32); FommAnimator honours the Animator contract.

Every tolerance is a rounding bound from models/fomm/rounding.py (its docstring derives them), not
one machine's result:
- two fp32 computations (onnxruntime or TensorRT against torch, a batch against single frames):
  max ≤ 5.2e-4, the fp32 re-association bound of these nets;
- the optimized fp32 net against the exact split: the same bound × 4 where grid sampling crosses a
  zero-padded border (max ≤ 2.1e-3), mean ≤ 1.0e-4 (its RMS);
- bf16 (CPU, keypoint detector fp32): max ≤ 8.7e-2, mean ≤ 4.4e-3; fp16 (CUDA): max ≤ 1.1e-2,
  mean ≤ 5.5e-4 (inputs rounded per layer, fp32 sums).
Measured worst cases (random weights, 4 seeds, strengths 1 and 0.8, real photos) sit below them:
optimized fp32 mean 6.7e-6, max 6.1e-4; bf16 mean 1.2e-3, max 1.9e-2; fp16 (H100) mean 1.7e-4,
max 3.5e-3.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from avatarify.datatypes import DrivingFrame
from avatarify.engines.fomm import FommAnimator, bgr_to_network
from avatarify.runners import OnnxRuntimeRunner, RunnerError, TensorRTRunner, TorchRunner
from export.onnx_export import sample_photos
from models.fomm import rounding
from models.fomm.checkpoint import load_fomm

# Two fp32 computations that sum in another order (kernel, batch size, instruction set): 5.2e-4.
TOLERANCE = rounding.FP32_MAX
# The optimized net also re-rounds folded weights; its worst pixels sit on the zero-padded border.
FP32_MAX, FP32_MEAN = rounding.BORDER * rounding.FP32_MAX, rounding.FP32_MEAN
BF16_MAX, BF16_MEAN = rounding.reduced_precision_max("bf16"), rounding.reduced_precision_rms("bf16")
FP16_MAX, FP16_MEAN = rounding.reduced_precision_max("fp16"), rounding.reduced_precision_rms("fp16")


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


def test_batch_of_two_avatars_matches_each_frame_alone(torch_runner, photos):
    """A server's batched pass: frames of different avatars, neutrals and strengths in one call give
    what each gives alone (the per-frame scalars must not broadcast across the batch)."""
    source, driving, mirrored = photos
    first = (torch_runner.source_state(source), None)
    first = (first[0], torch_runner.calibration_state(first[0], mirrored))
    second = (torch_runner.source_state(driving), None)
    second = (second[0], torch_runner.calibration_state(second[0], source))
    frames = np.concatenate([driving, mirrored])
    batch = torch_runner.animate_batch(frames, [first, second], [0.6, 1.0])
    alone = [torch_runner.animate_batch(frames[i:i + 1], [state], [s])[0]
             for i, (state, s) in enumerate([(first, 0.6), (second, 1.0)])]
    assert batch.shape == (2, 3, 256, 256)
    # oneDNN blocks a batch of two otherwise than one frame: fp32 re-association, ≤ 5.2e-4 (measured
    # 8e-6 with AVX-512, 2.7e-5 under AVX2, 2.3e-5 on an AMD EPYC); a broadcast strength moves it 0.25.
    assert np.abs(batch[0] - alone[0]).max() <= TOLERANCE
    assert np.abs(batch[1] - alone[1]).max() <= TOLERANCE
    assert np.abs(batch[0] - batch[1]).mean() > 1e-3  # two different pictures came out


def _assert_close(got: np.ndarray, expected: np.ndarray, max_abs: float, mean_abs: float) -> None:
    diff = np.abs(got - expected)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert diff.max() <= max_abs and diff.mean() <= mean_abs, (diff.max(), diff.mean())


def test_optimized_fp32_torch_runner_stays_close_to_the_exact_split(fomm_checkpoint, photos, reference):
    runner = TorchRunner(*load_fomm(fomm_checkpoint), optimized=True)
    assert runner.providers == ["torch-cpu-optimized"]
    _assert_close(_drive(runner, photos), reference, FP32_MAX, FP32_MEAN)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no bf16 support in oneDNN here")
def test_bf16_torch_runner_stays_close_to_fp32(fomm_checkpoint, photos, reference):
    runner = TorchRunner(*load_fomm(fomm_checkpoint), precision="bf16")
    assert runner.providers == ["torch-cpu-bf16"]
    out = _drive(runner, photos)
    _assert_close(out, reference, BF16_MAX, BF16_MEAN)
    assert np.abs(_drive(runner, photos, strength=0.0) - out).max() > 10 * BF16_MEAN  # still follows motion


@pytest.mark.parametrize("options, message", [({"precision": "fp8"}, "Unknown precision"),
                                              ({"precision": "fp16"}, "fp16 needs a CUDA device")])
def test_bad_precision_is_one_clear_error(fomm_checkpoint, options, message):
    with pytest.raises(RunnerError, match=message) as error:
        TorchRunner(*load_fomm(fomm_checkpoint), device="cpu", **options)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_graph_runner_stays_close_to_fp32_and_follows_new_frames(fomm_checkpoint, photos, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the fp32 reference must be fp32
    networks = load_fomm(fomm_checkpoint)
    exact = TorchRunner(*networks, device="cuda", cuda_graph=False)
    runner = TorchRunner(*networks, device="cuda", precision="fp16")
    assert runner.providers == ["torch-cuda-fp16-cudagraph"]
    _assert_close(_drive(runner, photos), _drive(exact, photos), FP16_MAX, FP16_MEAN)
    # A second driving frame through the same captured graph: its static inputs are refilled.
    other = np.ascontiguousarray(photos[0][..., ::-1, :])
    _assert_close(runner.animate(other, 0.8), exact.animate(other, 0.8), FP16_MAX, FP16_MEAN)


def _frame(crop_bgr: np.ndarray, motion_scale: float = 1.0) -> DrivingFrame:
    return DrivingFrame(crop_bgr=crop_bgr, landmarks=None, timestamp=0.0, motion_scale=motion_scale)


@pytest.fixture(scope="module")
def framed_hopper(grace_hopper_bgr):
    """Grace Hopper framed for a 640x360 call, as the app frames avatars."""
    from avatarify.compose import frame_photo
    from avatarify.landmarks import FaceMeshDetector

    with FaceMeshDetector(static=True) as detector:
        face = detector.detect(grace_hopper_bgr)
    framed = frame_photo(grace_hopper_bgr, face, 640, 360)
    return framed.image_bgr, framed.landmarks


def test_fomm_animator_pastes_the_prediction_into_the_full_picture(torch_runner, framed_hopper, astronaut_bgr):
    import cv2

    picture, landmarks = framed_hopper
    driving = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    animator = FommAnimator(torch_runner)
    animator.set_avatar(picture, landmarks)
    animator.set_neutral(_frame(animator.paste_back.crop_bgr))
    out = animator.animate(_frame(driving))
    assert out.shape == picture.shape and out.dtype == np.uint8
    assert animator.backend_info() == {"backend": "torch", "providers": ["torch-cpu"]}
    changed = np.abs(out.astype(np.int16) - picture).max(axis=2) > 0
    rows, cols = animator.paste_back.roi
    outside = np.ones(changed.shape, bool)
    outside[rows, cols] = False
    assert not changed[outside].any()  # beyond the face crop the photo's own pixels stay
    assert changed[rows, cols].mean() > 0.2  # the (random-weight) prediction went in


class _SourceRunner:
    """A runner whose prediction is the avatar's own crop: what a perfect network gives at rest."""

    name, providers = "identity", ["none"]

    def prepare_source(self, source):
        self.source = source

    def set_neutral(self, neutral):
        pass

    def animate(self, driving, strength=1.0):
        return self.source


def test_fomm_paste_back_at_rest_gives_back_the_photo(framed_hopper):
    picture, landmarks = framed_hopper
    animator = FommAnimator(_SourceRunner())
    animator.set_avatar(picture, landmarks)
    out = animator.animate(_frame(animator.paste_back.crop_bgr))
    np.testing.assert_array_equal(out, picture)  # the prediction is the reference: no change, all photo


def test_fomm_at_rest_is_the_photo_and_its_reference_is_the_source_reconstruction(
        torch_runner, astronaut_bgr, grace_hopper_bgr, fomm_checkpoint):
    """Strength 0: the network gives its reconstruction of the avatar (its reference, checked against
    the official generator), and the paste-back turns that into the photo itself, full detail."""
    import cv2
    import torch

    from avatarify.compose import crop_photo
    from avatarify.landmarks import FaceMeshDetector

    with FaceMeshDetector(static=True) as detector:
        face = detector.detect(astronaut_bgr)
    framed = crop_photo(astronaut_bgr, face, 256, 0.3)
    animator = FommAnimator(torch_runner)
    animator.set_avatar(framed.image_bgr, framed.landmarks)
    animator.set_neutral(_frame(framed.image_bgr))
    still = animator.animate(_frame(cv2.resize(grace_hopper_bgr, (256, 256)), motion_scale=0.0))
    np.testing.assert_array_equal(still, framed.image_bgr)

    kp_detector, generator = load_fomm(fomm_checkpoint)
    with torch.inference_mode():
        source = torch.from_numpy(bgr_to_network(animator.paste_back.crop_bgr))
        kp = kp_detector(source)
        reconstruction = generator(source, kp_driving=kp, kp_source=kp)["prediction"][0]
    expected = (reconstruction.permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round()
    assert np.abs(animator.paste_back.reference - expected).max() <= 1.0
