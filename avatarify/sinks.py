"""Where animated frames go: a virtual camera, the preview window, an mp4 file.

Input: BGR uint8 frames of the camera size (the app composes them: compose.py). A frame of another
size is scaled to fit and padded, keeping its aspect ratio.
Output: the virtual camera device (pyvirtualcam: v4l2loopback on Linux, OBS on Windows/macOS),
an OpenCV window (which also reads the hotkeys), or a video file (H.264 on a writer thread).
A sink that cannot start raises SinkError with one line saying how to fix it; the app decides
whether to go on without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from avatarify.compose import to_camera

log = logging.getLogger(__name__)

KEY_NONE = -1


class SinkError(RuntimeError):
    """A sink cannot be used (message is one line with the fix)."""


class Sink(Protocol):
    def send(self, frame_bgr: np.ndarray) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Virtual camera


def virtual_camera_fix() -> str:
    """How to get a virtual camera on this OS, in one sentence."""
    system = platform.system()
    if system == "Linux":
        return ("load v4l2loopback: sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback "
                "devices=1 exclusive_caps=1 card_label=Avatarify")
    if system in ("Windows", "Darwin"):
        return ("install OBS Studio 30 or newer and start its virtual camera once "
                "(Start Virtual Camera in OBS's Controls dock), then stop it and run this again")
    return "this OS has no virtual camera backend in pyvirtualcam"


class VirtualCameraSink:
    """Frames to a virtual camera that video-call apps list as a webcam.

    Output frames are (height, width) — 1280x720 by default, what call apps expect of a webcam.
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30.0,
                 backend: str | None = None, device: str | None = None) -> None:
        import pyvirtualcam

        self.width, self.height = width, height
        try:
            self._camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.BGR,
                                               backend=backend, device=device)
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            # pyvirtualcam's reason can run long; its first sentence names the missing device.
            detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
            log.debug("virtual camera failed: %s", exc)
            raise SinkError(f"No virtual camera available ({detail}); to fix, {virtual_camera_fix()}. "
                            f"Going on without it.") from None
        self.device = self._camera.device
        log.info("virtual camera: %s (%s, %dx%d)", self.device, self._camera.backend, width, height)

    def send(self, frame_bgr: np.ndarray) -> None:
        self._camera.send(np.ascontiguousarray(to_camera(frame_bgr, self.width, self.height, pad=True)))

    def close(self) -> None:
        self._camera.close()


# ---------------------------------------------------------------------------------------------
# Video file


class VideoFileSink:
    """Frames to an mp4 file, encoded on a writer thread so encoding stays off the frame's path.

    H.264 through PyAV's libx264, lossless (qp 0) in 4:4:4: a still pixel decodes to the same value
    in every frame (a lossy encoder refines still areas frame by frame, moving them by up to 9
    levels at crf 18, and MPEG-4 part 2 by 52), and each pixel is within 2 levels of what the virtual
    camera got (BGR → YCbCr rounding; 4:2:0 moved colour edges by 20–95). Plays in VLC, mpv,
    ffmpeg/OpenCV and OBS; browsers and QuickTime want 4:2:0 (README: Useful flags).
    The queue holds at most `queue_frames` frames: when the encoder falls behind, `send` waits
    for it rather than drop a frame or grow without bound. `frames` counts frames encoded, so the
    closing line tells what the file holds, also after a stop signal.
    """

    CODEC, PIXEL_FORMAT, OPTIONS = "libx264", "yuv444p", {"qp": "0", "preset": "ultrafast"}
    QUEUE_FRAMES = 8  # ~22 MB at 1280x720; a quarter second of slack at 30 fps

    def __init__(self, path: Path, fps: float, width: int, height: int, queue_frames: int = QUEUE_FRAMES) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        if not self.path.parent.is_dir():
            raise SinkError(f"Cannot write {self.path}: folder {self.path.parent} does not exist.")
        try:
            import av
        except ImportError:
            raise SinkError("--output needs PyAV (the av package); install it with pip install -r "
                            "requirements.txt.") from None
        try:
            self._container = av.open(str(self.path), mode="w")
            fps = fps if 0 < fps < 1000 else 30.0  # some webcams report 0 or NaN for their rate
            stream = self._container.add_stream(self.CODEC, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, self.PIXEL_FORMAT
            stream.options = dict(self.OPTIONS)
            # Two encoder threads at most: the app's own stages need the other cores.
            stream.codec_context.thread_count = min(2, os.cpu_count() or 1)
        except (av.FFmpegError, ValueError, OSError) as exc:
            log.debug("video writer failed: %s", exc)
            raise SinkError(f"Cannot write video file {self.path}; use an .mp4 name in a writable folder.") from None
        self._stream = stream
        self.frames = 0
        self.error: str | None = None
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_frames)
        self._thread = threading.Thread(target=self._write_all, name="video-writer", daemon=True)
        self._thread.start()

    def send(self, frame_bgr: np.ndarray) -> None:
        frame = to_camera(frame_bgr, self.width, self.height, pad=True)
        if frame is frame_bgr:  # the engine may draw its next frame into the same buffer
            frame = frame.copy()
        if self.error is None:
            self._queue.put(np.ascontiguousarray(frame))

    def _encode(self, frame_bgr: np.ndarray) -> None:
        import av

        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame_bgr, format="bgr24")):
            self._container.mux(packet)

    def _write_all(self) -> None:
        import av

        while (frame := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so send never blocks on a dead writer
            try:
                self._encode(frame)
                self.frames += 1
            except (av.FFmpegError, OSError) as exc:  # a full disk: say so once, keep the app going
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("Writing %s stopped after %d frames: %s", self.path, self.frames, self.error)

    def close(self) -> None:
        import av

        self._queue.put(None)
        self._thread.join()
        try:
            for packet in self._stream.encode():  # the frames the encoder still holds
                self._container.mux(packet)
            self._container.close()
        except (av.FFmpegError, OSError) as exc:
            log.warning("Finishing %s failed: %s", self.path, str(exc).splitlines()[0] if str(exc) else exc)
        log.info("wrote %d frames to %s", self.frames, self.path)


# ---------------------------------------------------------------------------------------------
# Preview window


def display_problem() -> str | None:
    """Why no window can be shown here, or None if one can. OpenCV's Qt backend aborts the whole
    process when it cannot reach a display, so this must be checked before opening a window."""
    if platform.system() in ("Windows", "Darwin"):
        return None
    if not os.environ.get("DISPLAY"):
        if os.environ.get("WAYLAND_DISPLAY"):
            return "OpenCV's window needs X11 (XWayland), and DISPLAY is not set"
        return "no display (DISPLAY is not set)"
    library = ctypes.util.find_library("X11")
    if library is None:
        return None  # cannot probe; trust DISPLAY
    xlib = ctypes.cdll.LoadLibrary(library)
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = xlib.XOpenDisplay(None)
    if not handle:
        return f"cannot connect to display {os.environ['DISPLAY']}"
    xlib.XCloseDisplay(handle)
    return None


class PreviewWindow:
    """An OpenCV window showing the preview; `show` returns the key pressed (or KEY_NONE)."""

    def __init__(self, title: str = "avatarify") -> None:
        problem = display_problem()
        if problem is not None:
            raise SinkError(f"No preview window: {problem}. Going on without it "
                            f"(--no-preview skips this check; Ctrl+C stops).")
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        self._shown = False
        log.info("preview window open (hotkeys: q or Esc quits, i shows the HUD; see README)")

    def show(self, image_bgr: np.ndarray) -> int:
        cv2.imshow(self.title, image_bgr)
        self._shown = True
        return cv2.waitKey(1)

    def closed_by_user(self) -> bool:
        """True once the user closed the window with the mouse."""
        return self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)  # lets the GUI thread process the close
