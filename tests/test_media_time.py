"""Media time: a video file animates the same at any processing speed, because every time-based stage
(One Euro filters of the crop and the landmarks, the face-lost ease, the finder's relock) runs on the
file's own timestamps; latency in --stats still runs from the capture clock."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from avatarify.app import LiveApp
from avatarify.avatars import load_avatars
from avatarify.capture import VideoFileSource
from avatarify.config import Settings
from avatarify.engines.mesh import MeshAnimator
from avatarify.stats import Stats


class RecordingSink:
    """Keeps every frame; `delay_s` makes processing slower, as a busy machine would."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.frames: list[np.ndarray] = []

    def send(self, frame_bgr: np.ndarray) -> None:
        self.frames.append(frame_bgr.copy())
        time.sleep(self.delay_s)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def clip_with_a_gap(tmp_path_factory):
    """A moving face, then a third of a second without it (the ease runs), then the face again."""
    from bench.clips import make_clip, write_clip

    frames, truth = make_clip("astronaut", "mixed", frames=30, size=256)
    empty = np.full_like(frames[0], 90)
    video, _ = write_clip(tmp_path_factory.mktemp("media_time") / "gap", frames[:20] + [empty] * 10 + frames[20:],
                          truth)
    return video


@pytest.fixture(scope="module")
def avatars(tmp_path_factory, grace_hopper_bgr):
    path = tmp_path_factory.mktemp("media_avatar") / "hopper.jpg"
    cv2.imwrite(str(path), grace_hopper_bgr)
    return load_avatars([path])


def render(video, avatars, delay_s: float) -> tuple[list[np.ndarray], dict]:
    settings = Settings(avatar=[avatars[0].path], camera=video, preview=False, virtual_cam=False)
    sink, stats = RecordingSink(delay_s), Stats()
    app = LiveApp(settings, MeshAnimator(), avatars, VideoFileSource(video, progress=False), [sink], None, stats)
    try:
        app.run()
    finally:
        app.close()
    return sink.frames, stats.summary("mesh", {})


def test_a_file_renders_the_same_at_two_processing_speeds(clip_with_a_gap, avatars):
    fast, fast_stats = render(clip_with_a_gap, avatars, delay_s=0.0)
    slow, slow_stats = render(clip_with_a_gap, avatars, delay_s=0.06)  # ~3x slower than the file's 30 fps
    assert len(fast) == len(slow) == 40
    moved = max(np.abs(f.astype(int) - fast[0]).mean() for f in fast)
    assert moved > 1.0  # the avatar really moves (a still output would pass the comparison trivially)
    differences = [np.abs(a.astype(int) - b).max() for a, b in zip(fast, slow)]
    assert max(differences) <= 1, differences
    # Latency still comes from the capture clock: the sleep after each send does not count, but frames
    # of the slow run are stamped later, so the capture clock and the media clock differ there.
    assert slow_stats["fps"] < fast_stats["fps"]
    assert 0 < slow_stats["latency_ms"]["p50"] < 1000


def test_file_frames_carry_the_files_own_timestamps(clip_with_a_gap):
    from avatarify.capture import iter_video_frames

    frames = list(iter_video_frames(clip_with_a_gap, progress=False))
    assert [f.media_time for f in frames] == pytest.approx([i / 30.0 for i in range(len(frames))], abs=1e-6)
    assert all(f.time == f.media_time for f in frames)
