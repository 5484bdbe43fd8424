"""The --output encoder, run as its own low-priority process: `python -m avatarify.recorder ...`.

Why a process and not a thread: an encoder thread in the app's process takes the GIL every time it
returns from x264 or muxes a packet, and the frame's path then waits for it (measured: a writer
thread cost the app 10-20 % of its frame rate at 1280x720, the same encoder in another process at
idle priority ~0). Only avatarify.sinks.VideoFileSink starts it.

Input: a memory-mapped file of `slots` BGR pictures (height x width x 3 uint8 each) that the app
fills, and on stdin one line per frame: the number of the slot that holds it, in the order to
write. End of stdin (the app closed it, or died) ends the file.
Output: the mp4 (H.264 via PyAV's libx264, lossless 4:4:4), and on stdout one line per event:
`ready` once the file is open (or `error MESSAGE` and exit 1), `free SLOT FRAMES` when a slot may
be filled again (FRAMES: frames encoded so far), `error MESSAGE` once if writing fails (the slots
are still freed, so the app never waits on a dead writer), `done FRAMES` when the file is closed.
"""
from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction

import av
import numpy as np

CODEC, PIXEL_FORMAT = "libx264", "yuv444p"
OPTIONS = {"qp": "0", "preset": "ultrafast"}  # lossless: still pixels stay exactly still


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the mp4 to write")
    parser.add_argument("frames_file", help="memory-mapped file of the slots")
    parser.add_argument("--fps", type=float, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--slots", type=int, required=True)
    return parser.parse_args(argv)


def run_only_when_idle() -> None:
    """Lowest CPU priority for this process and the threads it starts later (x264's inherit it):
    SCHED_IDLE on Linux (runs only on a core nothing else wants), nice 19 on other POSIX systems.
    The app's stages use both cores in bursts; an encoder at equal priority takes one mid-burst."""
    try:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif hasattr(os, "nice"):
            os.nice(19)
    except OSError:
        pass  # keep the priority; only speed is at stake


def encoder_threads(width: int, height: int) -> int:
    """x264's threads. One up to 1280x720: it keeps up with ~110 fps there (9 ms a frame), and a
    second thread cost the app's frame rate more than it saved (0.80x of the plain run against
    0.89x with one, the same three rounds). Two above, where one thread alone falls behind."""
    return 1 if width * height <= 1280 * 720 else 2


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class Encoder:
    """One mp4 opened at construction; `write` encodes one BGR picture; `finish` closes the file."""

    def __init__(self, path: str, fps: float, width: int, height: int) -> None:
        self._container = av.open(path, mode="w")
        stream = self._container.add_stream(CODEC, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, PIXEL_FORMAT
        stream.options = dict(OPTIONS)
        stream.codec_context.thread_count = encoder_threads(width, height)
        self._stream = stream

    def write(self, picture_bgr: np.ndarray) -> None:
        # Wrapped, not copied: x264 copies the picture into its own buffers while encoding, and the
        # slot is handed back only after this returns.
        frame = av.VideoFrame.from_numpy_buffer(picture_bgr, format="bgr24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def finish(self) -> None:
        for packet in self._stream.encode():  # the frames the encoder still holds
            self._container.mux(packet)
        self._container.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_only_when_idle()
    try:
        slots = np.memmap(args.frames_file, dtype=np.uint8, mode="r",
                          shape=(args.slots, args.height, args.width, 3))
        encoder = Encoder(args.path, args.fps, args.width, args.height)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the user's file: say it, exit
        say(f"error {first_line(exc)}")
        return 1
    say("ready")
    frames, error = 0, None
    for line in sys.stdin:
        slot = int(line)
        if error is None:
            try:
                encoder.write(slots[slot])
                frames += 1
            except (av.FFmpegError, OSError) as exc:  # a full disk: say so once, keep freeing slots
                error = first_line(exc)
                say(f"error {error}")
        say(f"free {slot} {frames}")
    if error is None:
        try:
            encoder.finish()
        except (av.FFmpegError, OSError) as exc:
            say(f"error {first_line(exc)}")
    say(f"done {frames}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
