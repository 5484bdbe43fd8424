"""The pipelined Animator overlaps the engine's work on frame N with the caller's work on frame N+1,
keeps frame order, keeps at most one frame in flight (latency <= 2 frame times), and runs every
engine call on one thread. A fake slow engine stands in for a GPU (time.sleep releases the GIL
as a GPU wait does)."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from avatarify.datatypes import DrivingFrame
from avatarify.engines.base import Animator, AnimatorError
from avatarify.engines.pipelined import PipelinedAnimator

ENGINE_S = 0.04  # the fake engine's time per frame
CPU_S = 0.04  # the caller's time per frame (capture, landmarks, crop)


class SlowEngine(Animator):
    """Returns a picture that encodes (avatar, frame index, strength); records what ran where and when."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.avatar = 0
        self.neutrals: list[int] = []
        self.threads: set[int] = set()
        self.running = 0
        self.most_running = 0
        self.finished: list[int] = []
        self.fail_on: set[int] = set()

    def set_avatar(self, avatar_bgr, landmarks) -> None:
        self.threads.add(threading.get_ident())
        self.avatar = int(avatar_bgr[0, 0, 0])

    def set_neutral(self, driving) -> None:
        self.threads.add(threading.get_ident())
        self.neutrals.append(_index(driving))

    def animate(self, driving: DrivingFrame) -> np.ndarray:
        self.threads.add(threading.get_ident())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        time.sleep(ENGINE_S)
        self.running -= 1
        index = _index(driving)
        self.finished.append(index)
        if index in self.fail_on:
            raise AnimatorError(f"frame {index} failed")
        return np.array([self.avatar, index, round(self.strength * 10)], dtype=np.int64)


def _frame(index: int) -> DrivingFrame:
    return DrivingFrame(crop_bgr=np.full((4, 4, 3), index % 256, np.uint8), landmarks=None,
                        timestamp=float(index), motion_scale=1.0)


def _index(driving: DrivingFrame) -> int:
    return int(driving.timestamp)


def _avatar(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


@pytest.fixture
def engine():
    inner = SlowEngine()
    pipelined = PipelinedAnimator(inner)
    pipelined.set_avatar(_avatar(1), None)
    yield inner, pipelined
    pipelined.close()


def test_frames_come_out_in_order_one_frame_late(engine):
    inner, pipelined = engine
    shown, latency = [], []
    for index in range(8):
        picture = pipelined.animate(_frame(index))
        shown.append(int(picture[1]))
        latency.append(index - pipelined.shown_timestamp)
        assert picture[1] == pipelined.shown_timestamp  # the timestamp belongs to the picture shown
        assert all(done <= index for done in inner.finished)  # nothing runs ahead of what was given
        assert len([i for i in range(index + 1) if i not in inner.finished]) <= 1  # at most one in flight
    assert shown == [0, 0, 1, 2, 3, 4, 5, 6]  # the first frame runs synchronously, then one frame late
    assert max(latency) <= 1 and inner.most_running == 1
    assert pipelined.backend_info()["pipelined"] is True and pipelined.name == "slow"


def _seconds_for(animator: Animator, frames: int) -> float:
    """Wall time of `frames` frames, each with the caller's own work before the engine call."""
    animator.set_avatar(_avatar(1), None)
    started = time.perf_counter()
    for index in range(frames):
        time.sleep(CPU_S)
        animator.animate(_frame(index))
    return time.perf_counter() - started


def test_the_callers_work_overlaps_the_engines():
    serial = _seconds_for(SlowEngine(), 12)
    pipelined = PipelinedAnimator(SlowEngine())
    overlapped = _seconds_for(pipelined, 12)
    pipelined.close()
    # Serial: frames x (cpu + engine). Overlapped: about frames x max(cpu, engine) plus one engine time.
    assert overlapped < 0.75 * serial, (overlapped, serial)


def test_strength_is_the_one_set_when_the_frame_was_given(engine):
    inner, pipelined = engine
    pipelined.strength = 1.0
    pipelined.animate(_frame(0))
    pipelined.strength = 0.3
    pipelined.animate(_frame(1))  # frame 1 was asked for at 0.3...
    pipelined.strength = 0.9  # ...and the caller moves on while it runs
    assert list(pipelined.animate(_frame(2))) == [1, 1, 3]


def test_calibration_waits_for_the_frame_in_flight_and_a_new_avatar_drops_it(engine):
    inner, pipelined = engine
    for index in range(3):
        pipelined.animate(_frame(index))
    pipelined.set_neutral(_frame(100))
    assert inner.neutrals == [100] and 2 in inner.finished  # frame 2 finished before the neutral was set
    assert list(pipelined.animate(_frame(3))[:2]) == [1, 2]  # and is still shown, in order
    pipelined.set_avatar(_avatar(7), None)
    assert list(pipelined.animate(_frame(4))[:2]) == [7, 4]  # the new avatar at once: no stale picture
    assert len(inner.threads) == 1 and threading.get_ident() not in inner.threads


def test_an_engine_error_surfaces_once_and_the_pipeline_restarts(engine):
    inner, pipelined = engine
    inner.fail_on = {2}
    pipelined.animate(_frame(0))
    pipelined.animate(_frame(1))
    pipelined.animate(_frame(2))
    with pytest.raises(AnimatorError, match="frame 2 failed"):
        pipelined.animate(_frame(3))
    assert list(pipelined.animate(_frame(4))[:2]) == [1, 4]  # synchronous again, then one late
    assert list(pipelined.animate(_frame(5))[:2]) == [1, 4]
    assert list(pipelined.animate(_frame(6))[:2]) == [1, 5]


def test_finish_hands_over_the_frame_in_flight_once(engine):
    _, pipelined = engine
    shown = [int(pipelined.animate(_frame(index))[1]) for index in range(4)]
    picture, timestamp = pipelined.finish()
    assert shown + [int(picture[1])] == [0, 0, 1, 2, 3] and timestamp == 3.0
    assert pipelined.finish() is None  # nothing left in flight


def test_latency_runs_from_the_camera_read_not_the_media_clock(engine):
    _, pipelined = engine
    for index in range(3):  # media time 0, 1, 2 (a file's clock); read from the camera at 100+
        pipelined.animate(replace(_frame(index), captured_at=100.0 + index))
    assert pipelined.shown_timestamp == 101.0
