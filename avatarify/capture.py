"""Frame sources: a video file read frame by frame (none dropped, with a progress bar), or a live
webcam read on a background thread that keeps only the newest frame (stale frames are dropped,
never queued, so latency stays one frame at most).

Input: a webcam index or a video file path (with `realtime`: delivered at its own frame rate through
the webcam's reader, as a webcam would deliver it). Output: `CapturedFrame` (BGR uint8 frame, capture
timestamp from `time.perf_counter()` taken when the frame was read, index in the source, and media time).
Media time is the clock every time-based stage runs on (smoothing filters, the face-lost ease): a live
camera's is its capture timestamp; a video file's is the file's own (the container's timestamp of the
frame, or index / fps where the container has none), so a file renders the same at any processing speed.
`open_frame_source` picks the reader; both readers iterate the same way and have `close()`.
"""
from __future__ import annotations

import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np


log = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """A frame source could not be opened or read (message is one clear sentence)."""


class EndOfFrames(CaptureError):
    """A paced video file (`--realtime`) has delivered its last frame."""


@dataclass
class CapturedFrame:
    frame_bgr: np.ndarray
    timestamp: float  # time.perf_counter() when the frame was read (latency is measured from it)
    index: int
    media_time: float | None = None  # seconds on the source's own clock; None: the same as timestamp

    @property
    def time(self) -> float:
        """The media time time-based stages use."""
        return self.timestamp if self.media_time is None else self.media_time


@dataclass
class VideoInfo:
    fps: float
    frame_count: int
    width: int
    height: int


def open_video_file(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a video file for reading, or raise CaptureError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"Video file {path} does not exist; check the path given to --camera.")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CaptureError(f"Cannot read {path} as a video; use an mp4/avi/mov file OpenCV can decode.")
    info = VideoInfo(
        fps=cap.get(cv2.CAP_PROP_FPS) or 30.0,
        frame_count=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    return cap, info


def _media_time(cap: cv2.VideoCapture, previous: float | None, fps: float) -> float:
    """The frame's time in the file: the container's timestamp while it keeps increasing, else one
    frame period after the previous frame (containers without timestamps report 0)."""
    stamp = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
    if previous is None:
        return stamp if stamp >= 0 else 0.0
    return stamp if stamp > previous else previous + 1.0 / fps


def iter_video_frames(path: str | Path, max_frames: int | None = None,
                      progress: bool = True) -> Iterator[CapturedFrame]:
    """Every frame of a video file, in order, with a progress bar on stderr."""
    from tqdm import tqdm

    cap, info = open_video_file(path)
    total = info.frame_count if max_frames is None else min(info.frame_count, max_frames)
    try:
        with tqdm(total=total or None, unit="frame", desc=Path(path).name, disable=not progress,
                  leave=False) as bar:
            index, media_time = 0, None
            while max_frames is None or index < max_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                media_time = _media_time(cap, media_time, info.fps)
                yield CapturedFrame(frame, time.perf_counter(), index, media_time)
                index += 1
                bar.update(1)
    finally:
        cap.release()


class VideoFileSource:
    """Every frame of a video file, in order; `fps` is the file's own frame rate."""

    live = False

    def __init__(self, path: str | Path, max_frames: int | None = None, progress: bool = True) -> None:
        cap, self.info = open_video_file(path)  # fail now, with the reason, not at the first frame
        cap.release()
        self.path = Path(path)
        self.fps = self.info.fps
        self.dropped = 0
        self._frames = self._read(max_frames, progress)

    def _read(self, max_frames: int | None, progress: bool) -> Iterator[CapturedFrame]:
        count = 0
        for captured in iter_video_frames(self.path, max_frames=max_frames, progress=progress):
            count += 1
            yield captured
        if count == 0:
            raise CaptureError(f"{self.path} has no frame that can be decoded (an empty or damaged video); "
                               f"use an mp4/avi/mov file that plays in a video player.")
        expected = self.info.frame_count if max_frames is None else min(self.info.frame_count, max_frames)
        if count < expected:
            log.warning("%s ended after %d of its %d frames (the file is cut off or damaged).",
                        self.path, count, expected)

    @property
    def name(self) -> str:
        return str(self.path)

    def __iter__(self) -> Iterator[CapturedFrame]:
        return self._frames

    def close(self) -> None:
        self._frames.close()


class FrameReader(Protocol):
    """What LiveCamera reads from: cv2.VideoCapture, or a stand-in in tests."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


class PacedFileReader:
    """A video file delivered at its own frame rate, as a webcam delivers frames (`--realtime`): the
    FrameReader LiveCamera reads, so a frame the app is too busy for is skipped, as a webcam's is.
    `ended` tells the end of the file from a camera's failure."""

    def __init__(self, path: str | Path) -> None:
        self._cap, info = open_video_file(path)
        self.fps = info.fps
        self._period = 1.0 / info.fps
        self._due: float | None = None  # perf_counter time the next frame is delivered at
        self.ended = False

    def read(self) -> tuple[bool, np.ndarray | None]:
        now = time.perf_counter()
        if self._due is not None and self._due > now:
            time.sleep(self._due - now)
        # Behind by more than a frame (a stalled machine): the camera's clock goes on from now.
        self._due = max(self._due + self._period, now) if self._due is not None else now + self._period
        ok, frame = self._cap.read()
        self.ended = not ok
        return ok, frame

    def release(self) -> None:
        self._cap.release()


class LiveCamera:
    """A webcam read on a background thread; `read()` returns the newest frame not yet returned.

    A frame that is replaced before anyone read it counts in `dropped`: under load the app always
    animates the most recent picture of the user instead of working through a backlog.
    """

    live = True

    def __init__(self, reader: FrameReader, name: str, fps: float = 30.0,
                 max_failures: int = 60, first_frame_timeout_s: float = 5.0,
                 max_frames: int | None = None, start_on_first_read: bool = False) -> None:
        self.name = name
        self.fps = fps
        self.dropped = 0
        self._reader = reader
        self._max_failures = max_failures
        self._first_frame_timeout_s = first_frame_timeout_s
        self._max_frames = max_frames
        self._latest: CapturedFrame | None = None
        self._failed = False
        self._ended = False  # the reader ran out of frames (a paced file's end)
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read_forever, name=f"camera {name}", daemon=True)
        if not start_on_first_read:  # a webcam starts at once (its exposure settles while the app loads)
            self._thread.start()

    def _read_forever(self) -> None:
        failures, index = 0, 0
        while not self._stopping.is_set():
            ok, frame = self._reader.read()
            stamp = time.perf_counter()
            if not ok and getattr(self._reader, "ended", False):
                break  # a paced file's end: the frames stop, the source has not failed
            if not ok or frame is None:
                failures += 1
                if failures >= self._max_failures:
                    break
                time.sleep(0.005)  # a hiccup, not the end: let the driver recover
                continue
            failures = 0
            with self._changed:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = CapturedFrame(frame, stamp, index)
                self._changed.notify_all()
            index += 1
        with self._changed:
            self._ended = getattr(self._reader, "ended", False)
            self._failed = not self._stopping.is_set() and not self._ended
            self._changed.notify_all()

    def read(self, timeout_s: float = 2.0) -> CapturedFrame:
        """The newest frame, waiting for one newer than the last returned; CaptureError if none comes."""
        if not self._thread.is_alive() and not self._thread.ident:
            self._thread.start()
        with self._changed:
            ready = self._changed.wait_for(
                lambda: self._latest is not None or self._failed or self._ended or self._stopping.is_set(),
                timeout_s)
            if self._latest is None:
                if self._ended:
                    raise EndOfFrames(f"{self.name} has no more frames.")
                if self._stopping.is_set():
                    raise CaptureError(f"Camera {self.name} was closed.")
                reason = "stopped delivering frames" if self._failed or ready else \
                    f"delivered no frame within {timeout_s:.0f} s"
                raise CaptureError(f"Camera {self.name} {reason}; check that no other app is using it.")
            frame, self._latest = self._latest, None
            return frame

    def __iter__(self) -> Iterator[CapturedFrame]:
        count = 0
        timeout = self._first_frame_timeout_s
        while self._max_frames is None or count < self._max_frames:
            if self._stopping.is_set():
                return
            try:
                frame = self.read(timeout)
            except EndOfFrames:
                return
            yield frame
            timeout = 2.0
            count += 1

    def close(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.ident:
            self._thread.join(timeout=2.0)
        self._reader.release()


def _camera_backends() -> list[tuple[int, str]]:
    """OpenCV capture backends worth trying on this OS, most reliable first."""
    system = platform.system()
    if system == "Linux":
        return [(cv2.CAP_V4L2, "V4L2"), (cv2.CAP_ANY, "OpenCV's default backend")]
    if system == "Windows":
        return [(cv2.CAP_DSHOW, "DirectShow"), (cv2.CAP_MSMF, "Media Foundation")]
    if system == "Darwin":
        return [(cv2.CAP_AVFOUNDATION, "AVFoundation")]
    return [(cv2.CAP_ANY, "OpenCV's default backend")]


def open_camera(index: int, width: int = 640, height: int = 480,
                max_frames: int | None = None) -> LiveCamera:
    """Open webcam `index` and start its reader thread, or raise CaptureError naming what was tried."""
    tried = []
    previous_level = cv2.getLogLevel()
    cv2.setLogLevel(0)  # OpenCV prints its own multi-line warnings for every failed probe
    try:
        for api, api_name in _camera_backends():
            device = f"/dev/video{index}" if api == cv2.CAP_V4L2 else f"index {index}"
            tried.append(f"{api_name} {device}")
            cap = cv2.VideoCapture(index, api)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a driver-side queue would add latency
                fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
                log.info("camera %d opened with %s (%dx%d)", index, api_name,
                         int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
                return LiveCamera(cap, name=str(index), fps=fps, max_frames=max_frames)
            cap.release()
    finally:
        cv2.setLogLevel(previous_level)
    raise CaptureError(f"No camera found at index {index} (tried {' and '.join(tried)}); connect a "
                       f"webcam, pick another with --camera N, or pass a video file with --camera FILE.")


def open_frame_source(camera: int | Path, max_frames: int | None = None, width: int = 640,
                      height: int = 480, progress: bool = True,
                      realtime: bool = False) -> VideoFileSource | LiveCamera:
    """A webcam index → LiveCamera (newest frame only); a path → VideoFileSource (every frame), or
    with `realtime` a LiveCamera over the file at its own frame rate (as a webcam delivers it)."""
    if isinstance(camera, int):
        return open_camera(camera, width, height, max_frames)
    if realtime:
        reader = PacedFileReader(camera)
        # Started by the first read: a file's first frames are not skipped while the app loads.
        return LiveCamera(reader, name=str(camera), fps=reader.fps, max_frames=max_frames, start_on_first_read=True)
    return VideoFileSource(camera, max_frames=max_frames, progress=progress)
