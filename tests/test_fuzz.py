"""Fuzz of what users hand the app: random and truncated bytes as avatars, checkpoints and videos.

In process (hypothesis, derandomized so a run is repeatable): each bad file ends in the stage's own
error with one sentence naming the file, never another exception. On the command line: exit code 2,
one `error:` line, no traceback.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarify.avatars import AvatarError, is_cut_off, load_avatar
from avatarify.capture import CaptureError, VideoFileSource
from avatarify.landmarks import FaceMeshDetector
from conftest import ROOT
from models.fomm.checkpoint import CheckpointError, load_fomm

FUZZ = settings(derandomize=True, deadline=None, max_examples=30,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=6)


def refused(error: type[Exception], load, path: Path, data: bytes) -> None:
    """`data` written to `path` and loaded: `error`, with one sentence naming the file."""
    path.write_bytes(data)
    with pytest.raises(error) as raised:
        load(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message, message


@pytest.fixture(scope="module")
def mesh():
    with FaceMeshDetector(static=True, max_faces=2) as detector:
        yield detector


@pytest.fixture(scope="module")
def photo_files(astronaut_bgr) -> dict[str, bytes]:
    """The astronaut encoded as each avatar format the app takes."""
    return {suffix: cv2.imencode(suffix, astronaut_bgr)[1].tobytes() for suffix in (".jpg", ".png", ".webp")}


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    from bench.clips import make_clip, write_clip

    frames, truth = make_clip("astronaut", "still_noise", frames=8, size=128)
    video, _ = write_clip(tmp_path_factory.mktemp("fuzz_clip") / "clip", frames, truth)
    return video.read_bytes()


def check_avatar(path: Path, data: bytes, mesh: FaceMeshDetector) -> None:
    refused(AvatarError, lambda p: load_avatar(p, 256, mesh), path, data)


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".png", ".webp"]))
def test_random_bytes_as_an_avatar(tmp_path, mesh, data, suffix):
    check_avatar(tmp_path / f"random{suffix}", data, mesh)


@FUZZ
@given(share=st.floats(0.0, 0.97), suffix=st.sampled_from([".jpg", ".png", ".webp"]))
def test_truncated_avatar_photos(tmp_path, mesh, photo_files, share, suffix):
    data = photo_files[suffix]
    cut = data[:int(len(data) * share)]
    assert is_cut_off(cut) or len(cut) < 16
    check_avatar(tmp_path / f"cut{suffix}", cut, mesh)


def test_whole_photos_are_not_cut_off(photo_files):
    assert not any(is_cut_off(data) for data in photo_files.values())


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_a_checkpoint(tmp_path, data):
    refused(CheckpointError, load_fomm, tmp_path / "random.pth.tar", data)


@pytest.fixture(scope="module")
def checkpoint_bytes(fomm_checkpoint) -> bytes:
    return fomm_checkpoint.read_bytes()


@FEW
@given(share=st.floats(0.0, 0.999))
def test_truncated_checkpoints(tmp_path, checkpoint_bytes, share):
    refused(CheckpointError, load_fomm, tmp_path / "cut.pth.tar", checkpoint_bytes[:int(len(checkpoint_bytes) * share)])


def read_video(path: Path) -> None:
    source = VideoFileSource(path, progress=False)
    try:
        for _ in source:
            pass
    finally:
        source.close()


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_a_video(tmp_path, data):
    refused(CaptureError, read_video, tmp_path / "random.mp4", data)


@FUZZ
@given(share=st.floats(0.0, 0.95))
def test_truncated_videos(tmp_path, clip_bytes, share):
    refused(CaptureError, read_video, tmp_path / "cut.mp4", clip_bytes[:int(len(clip_bytes) * share)])


# --- the same on the command line --------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_inputs(tmp_path_factory, photo_files, clip_bytes) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fuzz_cli")
    avatar, video = folder / "astronaut.jpg", folder / "clip.mp4"
    avatar.write_bytes(photo_files[".jpg"])
    video.write_bytes(clip_bytes)
    return avatar, video


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, fomm_checkpoint) -> Path:
    import torch

    official = torch.load(fomm_checkpoint, weights_only=True)
    official["kp_detector"]["kp.weight"].view(-1)[0] = float("inf")
    path = tmp_path_factory.mktemp("nan") / "vox-nan.pth.tar"
    torch.save(official, path)
    return path


def cli_cases(folder: Path, avatar: Path, video: Path, photo_files, clip_bytes, checkpoint_bytes, nan_checkpoint):
    rng = np.random.default_rng(0)
    files = {
        "random.png": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "cut.jpg": photo_files[".jpg"][:len(photo_files[".jpg"]) // 2],
        "random.mp4": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "cut.mp4": clip_bytes[:len(clip_bytes) // 2],
        "cut.pth.tar": checkpoint_bytes[:len(checkpoint_bytes) // 2],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    run = ["--engine", "mesh", "--max-frames", "3"]
    return {
        "random avatar": (["--avatar", str(folder / "random.png"), "--camera", str(video), *run], "not a readable image"),
        "cut avatar": (["--avatar", str(folder / "cut.jpg"), "--camera", str(video), *run], "is cut off"),
        "random video": (["--avatar", str(avatar), "--camera", str(folder / "random.mp4"), *run], "Cannot read"),
        "cut video": (["--avatar", str(avatar), "--camera", str(folder / "cut.mp4"), *run], "Cannot read"),
        "cut checkpoint": (["--avatar", str(avatar), "--camera", str(video), "--engine", "fomm", "--backend", "torch",
                            "--device", "cpu", "--checkpoint", str(folder / "cut.pth.tar")], "not a PyTorch checkpoint"),
        "nan checkpoint": (["--avatar", str(avatar), "--camera", str(video), "--engine", "fomm", "--backend", "torch",
                            "--device", "cpu", "--checkpoint", str(nan_checkpoint)],
                           f"{nan_checkpoint} has weights that are NaN or infinite (1 tensors: kp_detector.kp.weight)"),
    }


@pytest.mark.parametrize("case", ["random avatar", "cut avatar", "random video", "cut video", "cut checkpoint",
                                  "nan checkpoint"])
def test_bad_files_on_the_command_line_end_in_one_error_line(case, tmp_path, good_inputs, photo_files, clip_bytes,
                                                             checkpoint_bytes, nan_checkpoint):
    args, expected = cli_cases(tmp_path, *good_inputs, photo_files, clip_bytes, checkpoint_bytes, nan_checkpoint)[case]
    result = subprocess.run([sys.executable, str(ROOT / "run_live.py"), *args, "--no-preview", "--no-virtual-cam"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
