"""Capture: a live camera hands over only its newest frame; a file hands over every frame in order."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from avatarify.capture import CaptureError, LiveCamera, VideoFileSource, open_camera, open_frame_source


class FakeCamera:
    """A camera delivering numbered frames at `fps`; frame k has pixel value k % 256."""

    def __init__(self, fps: float = 500.0, fail_after: int | None = None) -> None:
        self.interval = 1.0 / fps
        self.fail_after = fail_after
        self.delivered = 0
        self.released = threading.Event()

    def read(self):
        time.sleep(self.interval)
        if self.fail_after is not None and self.delivered >= self.fail_after:
            return False, None
        frame = np.full((4, 4, 3), self.delivered % 256, np.uint8)
        self.delivered += 1
        return True, frame

    def release(self) -> None:
        self.released.set()


def test_live_camera_drops_stale_frames_instead_of_queueing_them():
    fake = FakeCamera(fps=500)
    camera = LiveCamera(fake, name="fake")
    try:
        indices = []
        for _ in range(10):
            frame = camera.read()
            age = time.perf_counter() - frame.timestamp
            indices.append(frame.index)
            assert age < 0.05  # the newest frame; a queue would hand over ever older ones
            assert frame.frame_bgr[0, 0, 0] == frame.index % 256
            time.sleep(0.02)  # a slow consumer: ~10 frames arrive meanwhile
        assert all(b > a for a, b in zip(indices, indices[1:]))
        assert min(np.diff(indices)) > 2
        assert camera.dropped > 30
    finally:
        camera.close()
    assert fake.released.is_set()


def test_live_camera_never_returns_the_same_frame_twice():
    camera = LiveCamera(FakeCamera(fps=100), name="fake")
    try:
        indices = [camera.read().index for _ in range(5)]
    finally:
        camera.close()
    assert len(set(indices)) == 5


def test_live_camera_that_stops_delivering_ends_with_a_clear_error():
    camera = LiveCamera(FakeCamera(fps=1000, fail_after=3), name="7", max_failures=5)
    try:
        with pytest.raises(CaptureError, match="Camera 7 stopped delivering frames"):
            for _ in range(10):
                camera.read(timeout_s=1.0)
    finally:
        camera.close()


def test_live_camera_iteration_honours_max_frames():
    camera = LiveCamera(FakeCamera(fps=500), name="fake", max_frames=4)
    try:
        assert len(list(camera)) == 4
    finally:
        camera.close()


def test_missing_camera_names_what_was_tried():
    with pytest.raises(CaptureError) as error:
        open_camera(57)  # no machine has 58 cameras
    message = str(error.value)
    assert "No camera found at index 57" in message and "tried" in message and "--camera" in message
    assert "\n" not in message


def test_video_file_gives_every_frame_in_order(tmp_path):
    path = tmp_path / "count.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for index in range(12):
        writer.write(np.full((48, 64, 3), index * 20, np.uint8))
    writer.release()
    source = open_frame_source(path, progress=False)
    assert isinstance(source, VideoFileSource) and source.fps == pytest.approx(25.0)
    frames = list(source)
    source.close()
    assert [f.index for f in frames] == list(range(12))
    levels = [int(f.frame_bgr.mean()) for f in frames]
    assert levels == sorted(levels) and abs(levels[-1] - 220) < 6
    assert all(b.timestamp >= a.timestamp for a, b in zip(frames, frames[1:]))
    limited = open_frame_source(path, max_frames=5, progress=False)
    assert len(list(limited)) == 5


def _counting_clip(path, frames: int, fps: float) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for index in range(frames):
        writer.write(np.full((48, 64, 3), index * 10, np.uint8))
    writer.release()


def test_realtime_file_plays_at_its_own_rate_and_ends_cleanly(tmp_path):
    """--realtime: a 25 fps file of 20 frames takes its 0.8 s, every frame comes once and in order
    to a reader that keeps up, and the end of the file ends the frames (no camera error); the clock
    starts at the first read, so frames are not skipped while the app loads."""
    path = tmp_path / "paced.mp4"
    _counting_clip(path, 20, 25.0)
    source = open_frame_source(path, realtime=True)
    assert isinstance(source, LiveCamera) and source.fps == pytest.approx(25.0)
    time.sleep(0.3)  # the app loading its models
    start = time.perf_counter()
    frames = list(source)
    took = time.perf_counter() - start
    source.close()
    levels = [int(f.frame_bgr.mean()) for f in frames]
    assert len(frames) == 20 and source.dropped == 0
    assert levels == sorted(levels)
    assert 0.72 <= took <= 2.0  # 19 periods of 40 ms after the first frame, plus decoding


def test_realtime_file_skips_frames_a_slow_app_cannot_take(tmp_path):
    """A reader that needs two frame periods per frame gets about every second frame, always the
    newest (as from a webcam), not a growing backlog."""
    path = tmp_path / "paced.mp4"
    _counting_clip(path, 20, 25.0)
    source = open_frame_source(path, realtime=True)
    taken = []
    for frame in source:
        taken.append(frame)
        time.sleep(0.08)
    source.close()
    assert 5 <= len(taken) <= 14 and source.dropped >= 5  # about 10 and 10
    assert [f.index for f in taken] == sorted(f.index for f in taken)


def test_bad_video_paths_fail_with_one_line(tmp_path):
    with pytest.raises(CaptureError, match="does not exist"):
        open_frame_source(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(CaptureError, match="Cannot read"):
        open_frame_source(junk)
