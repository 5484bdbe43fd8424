"""Real-time split equals the official full forward + relative normalization (fp32, real photos)."""
from __future__ import annotations

import pytest
import torch

from export.onnx_export import sample_photos
from models.fomm import rounding
from models.fomm.checkpoint import random_networks
from models.fomm.keypoints import normalize_kp
from models.fomm.realtime import FrameNet, FusedFrameNet, KeypointNet, SourceNet, calibrate

# The split computes the same fp32 sums as the official forward, some in another order (the avatar's
# features once, the keypoint normalisation fused): the fp32 re-association bound of these nets.
TOLERANCE = rounding.FP32_MAX


@pytest.fixture(scope="module")
def setup():
    kp_detector, generator = random_networks(seed=1)
    source, driving = sample_photos()
    neutral = source.flip(3)
    with torch.inference_mode():
        cached = SourceNet(kp_detector, generator)(source)
        kps = {name: kp_detector(image) for name, image in
               (("source", source), ("driving", driving), ("neutral", neutral))}
    return kp_detector, generator, source, driving, cached, kps


def _split(setup, adapt: bool, strength: float) -> torch.Tensor:
    kp_detector, generator, _, driving, cached, kps = setup
    neutral = kps["neutral"]
    cal = calibrate(cached[0], neutral["value"], neutral["jacobian"], adapt_scale=adapt)
    tail = (*cached, cal.neutral_value, cal.neutral_jacobian_inv, cal.adapt_scale, torch.tensor([strength]))
    with torch.inference_mode():
        return FusedFrameNet(kp_detector, generator)(driving, *tail)


@pytest.mark.parametrize("adapt", [False, True])
def test_split_equals_full_forward_with_relative_normalization(setup, adapt):
    kp_detector, generator, source, _, cached, kps = setup
    with torch.inference_mode():
        norm = normalize_kp(kps["source"], kps["driving"], kps["neutral"], adapt_movement_scale_on=adapt,
                            use_relative_movement=True, use_relative_jacobian=True)
        expected = generator(source, kp_driving=norm, kp_source=kps["source"])["prediction"]
    got = _split(setup, adapt, 1.0)
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert (expected - source).abs().mean() > 0.05  # the comparison is on a non-trivial output


def test_source_outputs_match_the_networks(setup):
    kp_detector, generator, source, _, cached, kps = setup
    with torch.inference_mode():
        assert torch.equal(cached[0], kps["source"]["value"])
        assert torch.equal(cached[2], generator.encode(source))


def test_strength_zero_returns_the_source_pose(setup):
    _, generator, source, _, _, kps = setup
    with torch.inference_mode():
        reconstruction = generator(source, kp_driving=kps["source"], kp_source=kps["source"])["prediction"]
    assert (_split(setup, True, 0.0) - reconstruction).abs().max().item() <= TOLERANCE
    halfway = _split(setup, True, 0.5)
    assert (halfway - reconstruction).abs().max() > 1e-3 and (halfway - _split(setup, True, 1.0)).abs().max() > 1e-3


def test_unfused_frame_net_equals_fused(setup):
    kp_detector, generator, _, driving, cached, kps = setup
    cal = calibrate(cached[0], kps["neutral"]["value"], kps["neutral"]["jacobian"], adapt_scale=True)
    tail = (*cached, cal.neutral_value, cal.neutral_jacobian_inv, cal.adapt_scale, torch.tensor([1.0]))
    with torch.inference_mode():
        unfused = FrameNet(generator)(*KeypointNet(kp_detector)(driving), *tail)
    assert torch.equal(unfused, _split(setup, True, 1.0))
