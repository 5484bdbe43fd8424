"""Nothing is lost on stop: real signals sent to a real `run_live.py` animating a video file.

SIGINT (Ctrl+C), SIGTERM and SIGHUP must end the run alike: the output mp4 is closed and plays to its
last frame, --stats is written, and the exit code is 128 + the signal number.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from avatarify.capture import iter_video_frames
from conftest import ROOT

CLIP_FRAMES = 24
REPEATS = 40  # 960 frames: far more than the run gets through before the signal


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    from bench.clips import make_clip, write_clip

    frames, truth = make_clip("astronaut", "mixed", frames=CLIP_FRAMES, size=256)
    video, _ = write_clip(tmp_path_factory.mktemp("stop") / "long", frames * REPEATS, truth)
    return video


@pytest.fixture(scope="module")
def avatar(tmp_path_factory, grace_hopper_bgr):
    path = tmp_path_factory.mktemp("stop_avatar") / "hopper.jpg"
    cv2.imwrite(str(path), grace_hopper_bgr)
    return path


class StderrReader:
    """Reads the child's stderr on a thread; tqdm's progress (`n/total`) tells how far it got."""

    def __init__(self, stream) -> None:
        self.text = ""
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self._stream.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    def frames_done(self) -> int:
        counts = re.findall(r"(\d+)/%d" % (CLIP_FRAMES * REPEATS), self.text)
        return int(counts[-1]) if counts else 0

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_closes_the_video_writes_the_stats_and_exits_conventionally(signum, long_clip, avatar, tmp_path):
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run_live.py"), "--avatar", str(avatar), "--camera", str(long_clip),
         "--engine", "mesh", "--output", str(out), "--stats", str(stats_path), "--no-preview",
         "--no-virtual-cam"], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    reader = StderrReader(process.stderr)
    deadline = time.monotonic() + 120
    while reader.frames_done() < 30 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before the signal: {reader.join()}"
    process.send_signal(signum)
    returncode = process.wait(timeout=60)
    stderr = reader.join()
    assert returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert f"stopped ({signal.Signals(signum).name})" in stderr

    stats = json.loads(stats_path.read_text())
    frames = [f.frame_bgr for f in iter_video_frames(out, progress=False)]
    assert 30 <= stats["frames"] < CLIP_FRAMES * REPEATS
    # Every frame handed to the sinks is in the file, and the closing line says how many it holds
    # (a stop that lands while a frame goes out waits until every sink has it).
    assert len(frames) == stats["frames"]
    assert f"wrote {len(frames)} frames to" in stderr
    assert frames[-1].shape == (720, 1280, 3) and frames[-1].std() > 5  # the last one is a picture


def test_a_real_sigterm_in_process_releases_the_virtual_camera_and_writes_everything(long_clip, avatar, tmp_path):
    """The same stop inside one process, so the virtual camera (an in-memory pyvirtualcam backend) can
    be looked at: a real SIGTERM to this process once frames flow."""
    import os

    from avatarify.app import StopSignal, run, stop_on_signals
    from avatarify.config import Settings
    from test_sinks import MEMORY_BACKEND, MemoryBackend

    MemoryBackend.instances.clear()
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    settings = Settings(avatar=[avatar], camera=long_clip, engine="mesh", preview=False, output=out,
                        stats=stats_path, virtual_cam=True, virtual_cam_backend=MEMORY_BACKEND,
                        cam_width=640, cam_height=360)

    def kill_once_frames_flow() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (MemoryBackend.instances and len(MemoryBackend.instances[0].frames) >= 10):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_once_frames_flow, daemon=True).start()
    with pytest.raises(StopSignal) as stop, stop_on_signals():
        run(settings)
    assert stop.value.exit_code == 143
    (backend,) = MemoryBackend.instances
    assert backend.closed and 10 <= len(backend.frames) < CLIP_FRAMES * REPEATS
    stats = json.loads(stats_path.read_text())
    frames = [f.frame_bgr for f in iter_video_frames(out, progress=False)]
    # The file holds what the virtual camera got, frame for frame, and the stats count the same.
    assert len(frames) == len(backend.frames) == stats["frames"] and frames[-1].shape == (360, 640, 3)
    last = backend.frames[-1].reshape(360, 640, 3).astype(int)
    assert np.abs(frames[-1].astype(int) - last).mean() < 1  # lossless: the same picture, last to last
