"""load_fomm: official layout loads strictly; every bad file ends in one CheckpointError sentence."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from models.fomm.checkpoint import CheckpointError, load_fomm, save_random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "vox-random.pth.tar", seed=0)


@pytest.fixture(scope="module")
def official(checkpoint) -> dict:
    return torch.load(checkpoint, weights_only=True)


def _error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_fomm(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_loads_official_layout_in_eval_mode(checkpoint, official):
    assert {"generator", "kp_detector", "discriminator", "optimizer_generator", "epoch"} <= official.keys()
    kp_detector, generator = load_fomm(checkpoint)
    assert not kp_detector.training and not generator.training
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        for key, value in module.state_dict().items():
            assert torch.equal(value, official[name][key]), key


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "vox-adv-cpk.pth.tar")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth.tar"
    path.write_text("hello, I am text\n" * 10)
    assert "not a PyTorch checkpoint" in _error(path)
    other = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, other)
    assert "not a FOMM checkpoint" in _error(other)


def test_missing_and_unexpected_keys_are_named(tmp_path, official):
    broken = dict(official, generator=dict(official["generator"]))
    del broken["generator"]["final.bias"]
    broken["generator"]["extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.pth.tar"
    torch.save(broken, path)
    message = _error(path)
    assert "final.bias" in message and "extra.weight" in message


def test_wrong_shapes_are_named(tmp_path, official):
    broken = dict(official, kp_detector=dict(official["kp_detector"]))
    broken["kp_detector"]["kp.weight"] = torch.zeros(12, 35, 7, 7)
    path = tmp_path / "shapes.pth.tar"
    torch.save(broken, path)
    message = _error(path)
    assert "kp.weight" in message and "(12, 35, 7, 7)" in message


class _Payload:
    """Unpickling this would create a marker file: the weights-only loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"generator": _Payload(str(marker)), "kp_detector": {}}, path)  # as a real .pth.tar would be
    message = _error(path)
    assert "refused" in message and "makedirs" in message
    assert not marker.exists()
    raw = tmp_path / "evil_raw.pkl"  # a plain pickle with newer opcodes is refused too
    raw.write_bytes(pickle.dumps({"generator": _Payload(str(marker))}, protocol=4))
    assert "not a PyTorch checkpoint that can be loaded safely" in _error(raw)
    assert not marker.exists()


def test_nan_weights_are_refused_naming_the_file_and_the_tensor(tmp_path, official):
    damaged = {**official, "generator": dict(official["generator"])}
    key = "final.weight"
    damaged["generator"][key] = damaged["generator"][key].clone()
    damaged["generator"][key][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth.tar"
    torch.save(damaged, path)
    message = _error(path)
    assert "NaN or infinite" in message and f"generator.{key}" in message


def test_a_first_prediction_with_nan_is_refused_naming_the_weights(astronaut_bgr):

    from avatarify.engines.base import AnimatorError
    from avatarify.engines.fomm import FommAnimator
    from avatarify.runners import TorchRunner
    from models.fomm.checkpoint import random_networks

    kp_detector, generator = random_networks(seed=0)
    generator.down_blocks[0].norm.weight.data.fill_(3e38)  # finite, but the next layers overflow
    animator = FommAnimator(TorchRunner(kp_detector, generator), weights="overflowing.pth.tar")
    with pytest.raises(AnimatorError, match="overflowing.pth.tar gives NaN or infinite output"):
        animator.set_avatar(astronaut_bgr, None)
