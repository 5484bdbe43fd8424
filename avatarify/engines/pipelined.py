"""Pipelined Animator: the engine works on frame N while the app captures and tracks frame N+1.

Wraps any Animator whose work runs on a GPU. `animate(frame N)` hands frame N to one worker thread
and returns frame N-1's picture, so the CPU stages of the next frame (capture, landmarks, crop)
overlap the engine's work on this one: throughput is set by the slower side, not their sum. At most
one frame is in flight; pictures come out in frame order, each one frame late (latency <= 2 frame
times). The first frame after a start, a new avatar or a failed frame runs synchronously, and the
next call shows it once more while the pipeline fills. Every call into the wrapped engine runs on
the worker thread (a CUDA graph is captured and replayed on one thread), and avatar and neutral
changes wait for the frame in flight first. `shown_timestamp` is the capture time of the frame the
last returned picture shows, for the latency statistics.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import Animator

log = logging.getLogger(__name__)


@dataclass
class _Shown:
    picture: np.ndarray
    timestamp: float


class PipelinedAnimator(Animator):
    """`inner` run one frame ahead on a worker thread (module docstring)."""

    def __init__(self, inner: Animator) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.shown_timestamp: float | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._in_flight: tuple[Future, float] | None = None
        self._last: _Shown | None = None

    def _call(self, function, *args):
        """Run `function(*args)` on the worker thread after the frame in flight, and wait for it."""
        return self._worker.submit(function, *args).result()

    def _settle(self, keep: bool) -> None:
        """Wait for the frame in flight; keep its picture for the next call or drop it."""
        if self._in_flight is None:
            return
        future, timestamp = self._in_flight
        self._in_flight = None
        try:
            picture = future.result()
        except Exception:  # noqa: BLE001 — its error belongs to a frame nobody will see
            log.debug("frame in flight failed while settling", exc_info=True)
            return
        if keep:
            self._last = _Shown(picture, timestamp)

    def set_avatar(self, avatar_bgr: np.ndarray, landmarks: FaceLandmarks) -> None:
        self._settle(keep=False)  # the old avatar's picture would show once more after the switch
        self._last = None
        self._call(self.inner.set_avatar, avatar_bgr, landmarks)

    def set_neutral(self, driving: DrivingFrame) -> None:
        self._settle(keep=True)  # that frame was driven before the calibration: still shown next
        self._call(self.inner.set_neutral, driving)

    def _animate_one(self, driving: DrivingFrame, strength: float, region: str) -> np.ndarray:
        self.inner.strength, self.inner.region = strength, region  # as they were when it was asked
        return self.inner.animate(driving)

    def animate(self, driving: DrivingFrame) -> np.ndarray:
        submitted = self._worker.submit(self._animate_one, driving, self.strength, self.region)
        previous, self._in_flight = self._in_flight, (submitted, driving.capture_time)
        if previous is not None:
            future, timestamp = previous
            try:
                self._last = _Shown(future.result(), timestamp)
            except Exception:
                self._settle(keep=False)  # an error shows as this call's; the next call restarts
                self._last = None
                raise
        elif self._last is None:  # nothing to show yet: this frame runs synchronously
            self._in_flight = None
            self._last = _Shown(submitted.result(), driving.capture_time)
        self.shown_timestamp = self._last.timestamp
        return self._last.picture

    def finish(self) -> tuple[np.ndarray, float] | None:
        """The picture of the frame in flight (the last one given), once; None if there is none."""
        if self._in_flight is None:
            return None
        timestamp = self._in_flight[1]
        self._settle(keep=True)
        if self._last is None or self._last.timestamp != timestamp:  # it failed: nothing new to show
            return None
        self.shown_timestamp = self._last.timestamp
        return self._last.picture, self._last.timestamp

    def backend_info(self) -> dict:
        return {**self.inner.backend_info(), "pipelined": True}

    def close(self) -> None:
        """Finish the frame in flight and stop the worker thread."""
        self._settle(keep=False)
        self._worker.shutdown(wait=True)
