"""Sinks: the virtual camera gets every frame at camera size; a missing device or display is one
line with the fix and the app goes on; the preview window opens under a virtual X display."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pyvirtualcam

from avatarify.app import animate_file, run
from avatarify.config import Settings
from avatarify.compose import to_camera
from avatarify.sinks import SinkError, VideoFileSink, VirtualCameraSink
from conftest import ROOT

MEMORY_BACKEND = "avatarify-test-memory"


class MemoryBackend:
    """A pyvirtualcam backend that keeps what it is sent, registered in-process for the tests."""

    instances: list["MemoryBackend"] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kwargs) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[np.ndarray] = []
        self.closed = False
        MemoryBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "memory"

    def native_fourcc(self):
        return None


class BrokenBackend(MemoryBackend):
    def __init__(self, **kwargs) -> None:
        raise RuntimeError("device busy. More details follow here.")


pyvirtualcam.register_backend(MEMORY_BACKEND, MemoryBackend)
pyvirtualcam.register_backend("avatarify-test-broken", BrokenBackend)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    from bench.clips import make_clip, write_clip

    frames, truth = make_clip("astronaut", "mixed", frames=24, size=256)
    video, _ = write_clip(tmp_path_factory.mktemp("clip") / "astronaut_mixed", frames, truth)
    return video


@pytest.fixture(scope="module")
def avatar_path(tmp_path_factory, grace_hopper_bgr) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("avatar") / "hopper.jpg"
    cv2.imwrite(str(path), grace_hopper_bgr)
    return path


def test_to_camera_pads_the_crop_framing_and_fills_without_bars_otherwise():
    square = np.full((256, 256, 3), 200, np.uint8)
    canvas = to_camera(square, 1280, 720, pad=True)
    assert canvas.shape == (720, 1280, 3)
    assert canvas[:, 280:1000].min() == 200 and canvas[:, :280].max() == 0 and canvas[:, 1000:].max() == 0
    wide = np.full((480, 640, 3), 90, np.uint8)
    boxed = to_camera(wide, 256, 256, pad=True)
    assert boxed.shape == (256, 256, 3) and boxed[:32].max() == 0 and boxed[40:210].min() == 90
    assert to_camera(square, 256, 256) is square
    covered = to_camera(wide, 1280, 720)  # a 4:3 camera frame (passthrough) fills 16:9: no bars
    assert covered.shape == (720, 1280, 3) and covered.min() == 90


def test_virtual_camera_receives_every_frame_at_camera_size(clip_path, avatar_path):
    MemoryBackend.instances.clear()
    settings = Settings(avatar=[avatar_path], camera=clip_path, engine="mesh", preview=False,
                        virtual_cam=True, virtual_cam_backend=MEMORY_BACKEND, cam_width=640, cam_height=360)
    summary = run(settings)
    (backend,) = MemoryBackend.instances
    assert backend.closed and (backend.width, backend.height) == (640, 360)
    assert len(backend.frames) == summary["frames"] == 24
    frames = [f.reshape(360, 640, 3) for f in backend.frames]  # pyvirtualcam hands backends flat arrays
    assert all(f.dtype == np.uint8 for f in frames)
    assert (frames[0].reshape(-1, 3).max(axis=1) < 8).mean() < 0.01  # the photo fills it: no black bars
    moving = np.mean([np.abs(f.astype(int) - frames[0]).mean() for f in frames[1:]])
    assert moving > 0.5  # the avatar moves with the driver


def test_missing_virtual_camera_is_one_line_with_the_fix():
    with pytest.raises(SinkError) as error:
        VirtualCameraSink(backend="avatarify-test-broken")
    message = str(error.value)
    assert "device busy" in message and "More details" not in message and "\n" not in message
    assert "modprobe v4l2loopback" in message or "OBS" in message


def test_without_any_virtual_camera_device_the_app_goes_on(clip_path, avatar_path, tmp_path, caplog,
                                                           monkeypatch):
    for name in (MEMORY_BACKEND, "avatarify-test-broken"):  # only the OS's own backends count here
        monkeypatch.delitem(pyvirtualcam.camera.BACKENDS, name)
    try:
        VirtualCameraSink().close()
        pytest.skip("this machine has a virtual camera device")
    except SinkError:
        pass
    summary = animate_file(avatar_path, clip_path, tmp_path / "out.mp4", engine="mesh", max_frames=3)
    settings = Settings(avatar=[avatar_path], camera=clip_path, engine="mesh", preview=False, max_frames=3)
    with caplog.at_level("WARNING"):
        assert run(settings)["frames"] == summary["frames"] == 3
    assert any("No virtual camera" in r.getMessage() for r in caplog.records)


def test_unwritable_output_file_is_a_clear_error(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        VideoFileSink(tmp_path / "missing-folder" / "out.mp4", 30.0, 256, 256)


def test_output_without_pyav_is_one_line_with_the_fix(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    with pytest.raises(SinkError, match="needs PyAV.*pip install -r requirements.txt"):
        VideoFileSink(tmp_path / "out.mp4", 30.0, 256, 256)
    assert not list(tmp_path.iterdir())


def _decoded(path: Path) -> list[np.ndarray]:
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            capture.release()
            return frames
        frames.append(frame)


def _numbered_frames(count: int, width: int = 640, height: int = 360) -> list[np.ndarray]:
    """The astronaut as a still room, with a moving block in the middle whose grey level is the
    frame's number (its order is read back from the file) and a moving stripe beside it."""
    import cv2

    from conftest import load_astronaut_bgr

    room = cv2.resize(load_astronaut_bgr(), (width, height), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(count):
        frame = room.copy()
        frame[140:220, 280:360] = 20 + 5 * index
        frame[100:260, 240 + index % 16:250 + index % 16] = (0, 0, 255)
        frames.append(frame)
    return frames


def test_the_video_file_holds_every_frame_in_order_and_keeps_still_pixels_still(tmp_path, caplog):
    frames = _numbered_frames(40)
    sink = VideoFileSink(tmp_path / "out.mp4", 30.0, 640, 360)
    for frame in frames:
        sink.send(frame)
    with caplog.at_level("INFO"):
        sink.close()
    decoded = _decoded(tmp_path / "out.mp4")
    assert len(decoded) == sink.frames == len(frames)
    assert f"wrote {len(frames)} frames to" in caplog.text
    numbers = [round((f[150:210, 290:350].mean() - 20) / 5) for f in decoded]
    assert numbers == list(range(len(frames)))  # every frame, once, in order
    far = np.ones((360, 640), bool)
    far[80:280, 200:440] = False  # the moving parts and a margin around them
    still = max(np.abs(f.astype(int) - decoded[0])[far].max() for f in decoded)
    assert still <= 1  # within 1/255 of the first frame over the whole clip
    # And close to what was sent: lossless in YCbCr; BGR → YCbCr → BGR rounds by a level or two.
    assert max(np.abs(d.astype(int) - f)[far].max() for d, f in zip(decoded, frames)) <= 3


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_encoder_runs_in_its_own_process_only_on_idle_cpu(tmp_path):
    sink = VideoFileSink(tmp_path / "out.mp4", 30.0, 320, 180)
    try:
        sink.send(_numbered_frames(1, 320, 180)[0])
        encoder = sink._process.pid
        assert encoder != os.getpid() and os.sched_getscheduler(encoder) == os.SCHED_IDLE
        assert os.getsid(encoder) != os.getsid(0)  # a Ctrl+C in the terminal reaches only the app
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the app keeps its priority
    finally:
        sink.close()
    assert sink.frames == 1 and sink._process.returncode == 0
    assert not sink._slots_path.exists()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="pauses the encoder with SIGSTOP")
def test_the_frames_waiting_for_the_encoder_are_bounded_and_send_waits_for_it(tmp_path):
    sink = VideoFileSink(tmp_path / "out.mp4", 30.0, 320, 180, queue_frames=2)
    frames = _numbered_frames(6, 320, 180)
    os.kill(sink._process.pid, signal.SIGSTOP)  # an encoder far behind the app
    sender = threading.Thread(target=lambda: [sink.send(f) for f in frames], daemon=True)
    try:
        sender.start()
        sender.join(1.0)
        # Both slots hold a frame and the third send waits: nothing dropped, memory bounded.
        assert sender.is_alive() and not sink._free and sink.frames == 0
    finally:
        os.kill(sink._process.pid, signal.SIGCONT)
    sender.join(10)
    sink.close()
    decoded = _decoded(tmp_path / "out.mp4")
    assert not sender.is_alive() and sink.frames == 6 and len(decoded) == 6
    assert [round((f[150:175, 285:315].mean() - 20) / 5) for f in decoded] == list(range(6))


def test_an_encoder_killed_from_outside_leaves_the_app_running_and_says_so(tmp_path, caplog):
    sink = VideoFileSink(tmp_path / "out.mp4", 30.0, 320, 180, queue_frames=2)
    frames = _numbered_frames(5, 320, 180)
    sink.send(frames[0])
    sink._process.kill()
    sink._process.wait()
    with caplog.at_level("WARNING"):
        for frame in frames[1:]:
            sink.send(frame)  # neither blocks nor raises
        sink.close()
    assert sink.error == "the encoder stopped" and "the encoder stopped" in caplog.text
    assert sink.frames <= 1


def test_a_name_the_encoder_cannot_write_is_one_line_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(SinkError, match="use an .mp4 name"):
        VideoFileSink(tmp_path / "out.notavideo", 30.0, 320, 180)
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "out.notavideo"])


def _start_xvfb() -> tuple[subprocess.Popen, str] | None:
    if shutil.which("Xvfb") is None:
        return None
    for number in range(90, 100):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                return server, f":{number}"
            if server.poll() is not None:
                break
            time.sleep(0.1)
        server.kill()
        server.wait()
    return None


@pytest.fixture
def virtual_display():
    started = _start_xvfb()
    if started is None:
        pytest.skip("Xvfb is not installed (apt install xvfb); the preview test needs a display")
    server, display = started
    yield display
    server.terminate()
    server.wait(timeout=10)


def test_preview_window_opens_on_a_display(virtual_display, clip_path, avatar_path):
    env = {**os.environ, "DISPLAY": virtual_display}
    result = subprocess.run([sys.executable, "run_live.py", "--avatar", str(avatar_path), "--camera",
                             str(clip_path), "--engine", "mesh", "--no-virtual-cam", "--max-frames", "8"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "preview window open" in result.stderr
    assert "No preview window" not in result.stderr and "Traceback" not in result.stderr


def test_without_a_display_the_preview_is_skipped_with_one_line(clip_path, avatar_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "run_live.py", "--avatar", str(avatar_path), "--camera",
                             str(clip_path), "--engine", "mesh", "--no-virtual-cam", "--max-frames", "3"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "preview" in line.lower()]
    assert len(lines) == 1 and "no display" in lines[0]
