"""Where animated frames go: a virtual camera, the preview window, an mp4 file.

Input: BGR uint8 frames of the camera size (the app composes them: compose.py). A frame of another
size is scaled to fit and padded, keeping its aspect ratio.
Output: the virtual camera device (pyvirtualcam: v4l2loopback on Linux, OBS on Windows/macOS),
an OpenCV window (which also reads the hotkeys), or a video file (H.264, encoded by another process: recorder.py).
A sink that cannot start raises SinkError with one line saying how to fix it; the app decides
whether to go on without it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import tempfile
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
    """Frames to an mp4 file, encoded by another process (avatarify/recorder.py) so that encoding
    stays off the frame's path and out of its GIL.

    H.264 through PyAV's libx264, lossless (qp 0) in 4:4:4: a still pixel decodes to the same value
    in every frame (a lossy encoder refines still areas frame by frame, moving them by up to 9
    levels at crf 18, and MPEG-4 part 2 by 52), and each pixel is within 2 levels of what the virtual
    camera got (BGR → YCbCr rounding; 4:2:0 moved colour edges by 20–95). Plays in VLC, mpv,
    ffmpeg/OpenCV and OBS; browsers and QuickTime want 4:2:0 (README: Useful flags).
    `send` copies the frame into one of `queue_frames` slots of a memory-mapped file and tells the
    encoder its number; with every slot taken (the encoder behind) it waits for one rather than
    drop a frame or grow without bound. `frames` counts frames encoded, so the closing line tells
    what the file holds, also after a stop signal. The encoder runs in its own session, so a Ctrl+C
    or a closed terminal reaches only the app, which then ends the file in order.
    """

    QUEUE_FRAMES = 8  # ~22 MB at 1280x720; a quarter second of slack at 30 fps
    WAIT_S = 60.0  # for the encoder to finish the file once its input ends

    def __init__(self, path: Path, fps: float, width: int, height: int, queue_frames: int = QUEUE_FRAMES) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        if not self.path.parent.is_dir():
            raise SinkError(f"Cannot write {self.path}: folder {self.path.parent} does not exist.")
        if importlib.util.find_spec("av") is None:  # checked here: the encoder would die with a traceback
            raise SinkError("--output needs PyAV (the av package); install it with pip install -r "
                            "requirements.txt.")
        fps = fps if 0 < fps < 1000 else 30.0  # some webcams report 0 or NaN for their rate
        self.frames = 0
        self.error: str | None = None
        self._slots_path = _slots_file(queue_frames * height * width * 3)
        self._slots = np.memmap(self._slots_path, dtype=np.uint8, mode="w+", shape=(queue_frames, height, width, 3))
        self._free = list(range(queue_frames))
        self._stopped = False  # the encoder is gone: frames go nowhere
        # -P: the script's folder (this package) stays off sys.path, so its modules shadow nothing.
        command = [sys.executable, "-P", str(Path(__file__).with_name("recorder.py")), str(self.path),
                   str(self._slots_path), "--fps", repr(fps), "--width", str(width), "--height", str(height),
                   "--slots", str(queue_frames)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                          bufsize=1, **_own_session())
        reply = self._reply()
        if reply != "ready":  # e.g. "error Invalid argument" for a name without a video extension
            self._discard()
            log.debug("video writer failed: %s", reply)
            raise SinkError(f"Cannot write video file {self.path}; use an .mp4 name in a writable folder.")
        if os.name == "posix":  # the encoder has it mapped; nothing is left behind if the app dies
            self._slots_path.unlink(missing_ok=True)

    def send(self, frame_bgr: np.ndarray) -> None:
        frame = to_camera(frame_bgr, self.width, self.height, pad=True)
        while not self._free and not self._stopped:  # every slot waits for the encoder: wait for one
            self._read_event()
        if self._stopped:
            return
        slot = self._free.pop()
        self._slots[slot] = frame
        try:
            self._process.stdin.write(f"{slot}\n")
        except OSError:  # the encoder was killed from outside: keep the call going
            self._encoder_gone()

    def _reply(self) -> str:
        line = self._process.stdout.readline()
        return line.strip() if line else ""

    def _read_event(self) -> str:
        """One line from the encoder, its news taken in: a freed slot, an error, the end."""
        kind, _, rest = self._reply().partition(" ")
        if kind == "free":
            slot, frames = rest.split()
            self._free.append(int(slot))
            self.frames = int(frames)
        elif kind == "done":
            self.frames = int(rest)
        elif kind == "error":
            self._note_error(rest)
        else:  # no line: the encoder is gone
            self._encoder_gone()
            return "done"
        return kind

    def _note_error(self, message: str) -> None:
        if self.error is None:  # a full disk: say so once, keep the app going
            self.error = message
            log.warning("Writing %s stopped after %d frames: %s", self.path, self.frames, message)

    def _encoder_gone(self) -> None:
        self._stopped = True
        self._note_error("the encoder stopped")

    def close(self) -> None:
        try:
            self._process.stdin.close()  # the end of the file
        except OSError:
            pass
        while not self._stopped and self._read_event() != "done":
            pass
        self._discard()
        log.info("wrote %d frames to %s", self.frames, self.path)

    def _discard(self) -> None:
        try:
            self._process.wait(timeout=self.WAIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
        del self._slots
        self._slots_path.unlink(missing_ok=True)


def _slots_file(size: int) -> Path:
    """A new file for the frames handed to the encoder: in RAM (/dev/shm) where it has room to
    spare (a full /dev/shm would crash the writer on a page fault), else in the temp folder."""
    shm = "/dev/shm"
    roomy = os.path.isdir(shm) and os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 2 * size
    folder = shm if roomy else None
    handle, name = tempfile.mkstemp(prefix="avatarify-recording-", suffix=".frames", dir=folder)
    os.close(handle)
    return Path(name)


def _own_session() -> dict:
    """Popen arguments that keep terminal signals (Ctrl+C, a closed terminal) from the encoder: the
    app gets them and closes the file; the encoder ends when its input does."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}


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
