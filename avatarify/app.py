"""The live app: the one place that knows the order of the stages and wires them together.

Per frame: capture → face finder (detect, lock, landmarks on a crop, track) → smoothed square driving
crop → calibration (neutral pose: the first face, moved to a more closed mouth in its first seconds;
hotkey c; find-best-frame) → engine (the avatar picture animated at the camera's size) → sinks
(virtual camera, video file: the same frame) → preview with HUD → hotkeys.
Time-based stages run on the frame's media time (the file's own clock for a video file, the capture
clock for a webcam); latency is measured from the capture timestamp.
Input: `Settings` (from the command line). Output: frames on the sinks and, with --stats, the
statistics JSON. `main` turns the errors a user can cause into one line on stderr and exit code 2.
Ctrl+C (SIGINT), SIGTERM and SIGHUP (a closed terminal, a service manager, logging out) all stop a run
the same way: the output video is closed (playable to its last frame), --stats is written, camera and
virtual camera are released, and the exit code is 128 + the signal number (130, 143, 129).
`animate_file` is the offline path: a photo animated by a driving video into an mp4.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from avatarify.avatars import Avatar, AvatarError, AvatarFraming, load_avatars, write_demo_avatars
from avatarify.capture import CaptureError, LiveCamera, VideoFileSource, open_frame_source
from avatarify.compose import to_camera
from avatarify.config import (DEFAULT_AVATARS_DIR, Settings, crop_size, find_default_checkpoint,
                              parse_args)
from avatarify.datatypes import DrivingFrame, FaceLandmarks
from avatarify.engines.base import Animator, AnimatorError
from avatarify.hotkeys import Controls, handle_key
from avatarify.hud import HudInfo, compose_preview, hud_lines
from avatarify.finder import FaceFinder
from avatarify.motion import mouth_open_ratio
from avatarify.sinks import PreviewWindow, Sink, SinkError, VideoFileSink, VirtualCameraSink
from avatarify.stats import Stats
from avatarify.tracking import DrivingTracker, crop_matrix, pose_distance, square_face_box

log = logging.getLogger("avatarify")

EXIT_USER_ERROR = 2
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # those this OS has are handled alike
_MESSAGE_SECONDS = 2.5  # how long a hotkey's message stays on the HUD
PREVIEW_HEIGHT = 360  # px: the preview shows the driving crop and the call frame at this height
_USER_ERRORS = (AvatarError, CaptureError, AnimatorError, SinkError)


@contextmanager
def native_notices_silenced(enabled: bool = True) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a while. MediaPipe's C++ side prints TensorFlow Lite
    and absl notices there when its models first run; they are not errors, and they bury the app's
    own lines. The CLI's log handler writes to its own copy of the descriptor, so it still shows."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class StopSignal(KeyboardInterrupt):
    """A stop asked for by a signal. A KeyboardInterrupt, so every place that ends cleanly on Ctrl+C
    ends cleanly on SIGTERM and SIGHUP too; `exit_code` is the shell's convention, 128 + the number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Held:
    """While a frame goes to the sinks (depth > 0), a stop signal waits in `pending`: the video file
    and the virtual camera then end on the same frame."""

    depth = 0
    pending: int | None = None


_HELD = _Held()


@contextmanager
def stop_held() -> Iterator[None]:
    _HELD.depth += 1
    try:
        yield
    finally:
        _HELD.depth -= 1
    if _HELD.depth == 0 and _HELD.pending is not None:
        signum, _HELD.pending = _HELD.pending, None
        raise StopSignal(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise StopSignal in the main thread. The next signal,
    while the run closes its files, is only logged, so the closing is not cut short; a third ends the
    process at once (a close that hangs can still be escaped)."""
    received: list[int] = []

    def handler(signum: int, frame) -> None:
        received.append(signum)
        if len(received) == 1:
            if _HELD.depth:  # a frame is being handed to the sinks: stop once every sink has it
                _HELD.pending = signum
                return
            raise StopSignal(signum)
        if len(received) == 2:
            log.warning("%s: already stopping, closing the output first (once more to quit at once)",
                        signal.Signals(signum).name)
            return
        os._exit(128 + signum)

    previous = {}
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


# ---------------------------------------------------------------------------------------------
# Engine choice


def choose_engine(settings: Settings) -> tuple[str, Path | None, str]:
    """(engine name, checkpoint, why) for --engine auto|mesh|fomm|remote."""
    if settings.engine == "remote":
        if not settings.server:
            raise AnimatorError("--engine remote needs --server HOST:PORT (the machine running "
                                "`python -m avatarify.server`).")
        return "remote", None, f"asked for with --engine remote: FOMM on {settings.server}"
    if settings.engine == "mesh":
        if settings.checkpoint is not None:
            log.warning("--checkpoint is ignored with --engine mesh")
        return "mesh", None, "asked for with --engine mesh"
    checkpoint = settings.checkpoint or find_default_checkpoint()
    if checkpoint is not None:
        why = "checkpoint given" if settings.checkpoint else "checkpoint found"
        return "fomm", checkpoint, f"{why}: {checkpoint}"
    if settings.engine == "fomm":
        raise AnimatorError("--engine fomm needs the FOMM checkpoint: pass --checkpoint "
                            "vox-adv-cpk.pth.tar or put it in checkpoints/ (README: Using the FOMM checkpoint).")
    return "mesh", None, "no FOMM checkpoint given or in checkpoints/"


def _build_mesh(settings: Settings) -> Animator:
    from avatarify.engines.mesh import MeshAnimator

    return MeshAnimator()


def _build_fomm(settings: Settings, checkpoint: Path) -> Animator:
    """The FOMM engine; which backend runs (and why) is avatarify.backends' business. torch and
    onnxruntime are imported only here, so the mesh engine starts fast."""
    try:
        from avatarify.backends import build_fomm_animator
    except ImportError as exc:
        raise AnimatorError(f"The FOMM engine cannot start ({exc}); install the requirements "
                            f"(pip install -r requirements.txt) or use --engine mesh.") from None
    return build_fomm_animator(settings, checkpoint)


def build_animator(settings: Settings, choice: tuple[str, Path | None, str] | None = None) -> Animator:
    """The engine `choose_engine` picks (or already picked: `choice`), saying which and why."""
    name, checkpoint, why = choice or choose_engine(settings)
    log.info("engine: %s (%s)", name, why)
    if name == "fomm":
        return _build_fomm(settings, checkpoint)
    if name == "remote":
        from avatarify.engines.remote import create_remote_animator

        # A video file gives every frame to the engine, so each waits for its own reply there.
        return create_remote_animator(settings.server, settings.token_file, settings.transport,
                                      settings.crop_margin,
                                      wait_for_reply=isinstance(settings.camera, Path) and not settings.realtime)
    return _build_mesh(settings)


# ---------------------------------------------------------------------------------------------
# The live loop


class LiveApp:
    """One run: owns the stages, the calibration state and the controls the hotkeys change."""

    def __init__(self, settings: Settings, animator: Animator, avatars: list[Avatar],
                 source: VideoFileSource | LiveCamera, sinks: list[Sink],
                 preview: PreviewWindow | None, stats: Stats) -> None:
        self.settings = settings
        self.animator = animator
        self.avatars = avatars
        self.source = source
        self.sinks = sinks
        self.preview = preview
        self.stats = stats
        self.controls = Controls.from_settings(settings)
        self.controls.avatar_count = len(avatars)
        self.finder = FaceFinder(settings.face_search_windows, settings.relock_after_s)
        with native_notices_silenced(not settings.verbose):
            # MediaPipe loads its models at the first detection: do it now, on a face, quietly.
            self.finder.warm_up(avatars[0].image_bgr)
        self.tracker = DrivingTracker(crop_size(settings), settings.crop_margin, settings.box_min_cutoff,
                                      settings.box_beta, settings.min_face_visible, settings.face_lost_ease_s)
        self.avatar_index = -1
        self.neutral: DrivingFrame | None = None
        self._settle_until: float | None = None  # media time up to which an automatic neutral may still move
        self._switched_face = False  # the lock moved to another face; its neutral is still to be taken
        self.match_score: float | None = None  # this frame's find-best distance to the avatar's pose
        self.best_score = math.inf
        self.faces_seen = 0
        self._find_best_was_on = False
        self._mirrored = self.controls.mirror
        self._message_until = 0.0
        self._shown_message = ""
        self._overlay_points: np.ndarray | None = None  # the avatar's landmarks in driving-crop px
        # A video file is rendered frame by frame: each picture goes out once (a pipelined engine's
        # first picture would otherwise repeat, its last stay in flight); a live camera gets one
        # picture per frame read, repeat or not.
        self._every_frame_once = source is not None and not getattr(source, "live", True)
        self._delivered: float | None = None  # capture time of the frame the sinks got last
        self._select_avatar(0)

    @property
    def avatar(self) -> Avatar:
        return self.avatars[self.avatar_index]

    # --- per frame --------------------------------------------------------------------------------

    def run(self) -> None:
        frames = iter(self.source)
        while not self.controls.quit:
            with self.stats.stage("capture"):  # decoding (file) or waiting for a new frame (camera)
                captured = next(frames, None)
            if captured is None:
                break
            self.step(captured.frame_bgr, captured.timestamp, captured.time)
        self._deliver_last()

    def step(self, frame_bgr: np.ndarray, timestamp: float, media_time: float | None = None) -> np.ndarray:
        """One frame through every stage; returns what the sinks received. `timestamp` is the capture
        time (perf_counter) latency runs from; `media_time` the clock of the time-based stages
        (default: the capture time, as for a live camera)."""
        stage = self.stats.stage
        media_time = timestamp if media_time is None else media_time
        self._follow_mirror()
        if self.controls.mirror:
            frame_bgr = cv2.flip(frame_bgr, 1)
        with stage("detect"):
            landmarks = self._find_face(frame_bgr, media_time)
        with stage("crop"):
            self.tracker.crop.zoom = self.controls.zoom
            self.tracker.crop.offset = self.controls.offset
            driving = self.tracker.update(frame_bgr, landmarks, media_time)
            if driving is not None:  # latency runs from the camera read, whatever clock animates
                driving = replace(driving, captured_at=timestamp)
        self._calibrate(driving)
        with stage("animate"):
            output, shown = self._animate(driving)
        if self.controls.passthrough:
            output, shown = frame_bgr, None
        output = self._camera_frame(output)
        if not (self._every_frame_once and shown is not None and shown == self._delivered):
            # Latency runs from the capture of the frame the picture shows (a pipelined engine
            # shows the previous one) to the moment it is handed to the sinks.
            self._deliver(output, timestamp if shown is None else shown)
        if self.preview is not None:
            with stage("preview"):
                self._show_preview(frame_bgr, driving, output)
        self._apply_requests()
        return output

    def _deliver(self, output: np.ndarray, shown: float) -> None:
        with stop_held():  # counted, recorded and sent as one: the stats, file and camera agree
            self.stats.frame_done(shown)
            self._delivered = shown
            with self.stats.stage("sinks"):
                for sink in self.sinks:
                    sink.send(output)

    def _deliver_last(self) -> None:
        """A video file ends: the picture an engine still has in flight (a pipelined one runs a
        frame behind) goes out too, so the recording has every frame, each once."""
        last = self.animator.finish() if self._every_frame_once else None
        if last is not None:
            picture, shown = last
            self._deliver(self._camera_frame(picture), shown)

    def _find_face(self, frame_bgr: np.ndarray, media_time: float) -> FaceLandmarks | None:
        """The locked person's landmarks; hotkey n moves the lock to the next face (a new neutral)."""
        asked = self.controls.next_face
        if asked:
            self.controls.next_face = False
            self.finder.request_next_face()
        landmarks = self.finder.find(frame_bgr, media_time)
        if self.finder.switched:
            self.tracker.crop.reset()  # the box would glide across the frame to the other face
            self.controls.calibrate = True  # another person: their own neutral pose
            self._switched_face = True
        if asked:
            self.controls.message = self.finder.message
            log.info("%s", self.finder.message)
        return landmarks

    def _camera_frame(self, picture_bgr: np.ndarray) -> np.ndarray:
        """What the virtual camera and --output get: the camera size; the call framing already is,
        the crop framing is padded as before, the camera (passthrough) is cut to fill it."""
        crop = self.settings.framing == "crop" and not self.controls.passthrough
        return to_camera(picture_bgr, self.settings.cam_width, self.settings.cam_height, pad=crop)

    def _animate(self, driving: DrivingFrame | None) -> tuple[np.ndarray, float | None]:
        """The picture and the capture time of the frame it shows (None: this frame's)."""
        if driving is None or self.neutral is None:
            return self.avatar.image_bgr, None  # no face yet: the avatar waits, still
        self.animator.strength = self.controls.strength
        self.animator.region = self.controls.region
        try:
            return self.animator.animate(driving), self.animator.shown_timestamp
        except AnimatorError as exc:  # one bad frame must not end a video call
            if self.controls.message != str(exc):
                self.controls.message = str(exc)
                log.warning("%s", exc)
            return self.avatar.image_bgr, None

    def _calibrate(self, driving: DrivingFrame | None) -> None:
        """First face → neutral; `c` → the next face is the neutral; find-best keeps the best match."""
        if driving is None or not self.tracker.face_found:
            return
        self.faces_seen += 1
        if self.controls.find_best and not self._find_best_was_on:
            self.best_score = math.inf  # a new search starts from this frame
        self._find_best_was_on = self.controls.find_best
        if self.neutral is None or self.controls.calibrate:
            # `c` is the user's own choice of neutral; the first face and a next-face switch are not.
            automatic = self.neutral is None or self._switched_face
            self._switched_face = False
            self._set_neutral(driving)
            self._settle_until = driving.timestamp + self.settings.neutral_settle_s if automatic else None
            self.controls.calibrate = False
            self.best_score = math.inf
            return
        if self._settle_until is not None:
            self._settle_neutral(driving)
        if self.controls.find_best:
            self.match_score = pose_distance(driving.landmarks, self.avatar.landmarks)
            if self.match_score < self.best_score:
                self.best_score = self.match_score
                self._set_neutral(driving)

    def _settle_neutral(self, driving: DrivingFrame) -> None:
        """While an automatic neutral is young, a frame whose mouth is more closed replaces it, if it
        matches the avatar's pose no worse (a head turned meanwhile must not become the rest pose)."""
        if driving.timestamp > self._settle_until:
            self._settle_until = None
            return
        closing = mouth_open_ratio(self.neutral.landmarks.points) - mouth_open_ratio(driving.landmarks.points)
        if closing < self.settings.neutral_mouth_margin:
            return
        if pose_distance(driving.landmarks, self.avatar.landmarks) <= pose_distance(self.neutral.landmarks,
                                                                                     self.avatar.landmarks):
            self._set_neutral(driving)

    def _set_neutral(self, driving: DrivingFrame) -> None:
        self.neutral = driving
        self.animator.set_neutral(driving)
        log.debug("neutral pose set")

    def _follow_mirror(self) -> None:
        if self.controls.mirror != self._mirrored:
            # The picture flips, so the smoothed box would glide across the frame; start it afresh.
            self.tracker.crop.reset()
            self.finder.reset()
            self._mirrored = self.controls.mirror
            self.controls.calibrate = True

    # --- hotkey requests --------------------------------------------------------------------------

    def _apply_requests(self) -> None:
        if self.controls.reload_avatars:
            self.controls.reload_avatars = False
            self._reload_avatars()
        if self.controls.avatar_index != self.avatar_index:
            self._select_avatar(self.controls.avatar_index)

    def _select_avatar(self, index: int) -> None:
        self.avatar_index = index
        self.controls.avatar_index = index
        avatar = self.avatar
        self.animator.photo_box = avatar.photo_box  # the fill beside a narrow photo never moves
        self.animator.set_avatar(avatar.image_bgr, avatar.landmarks)
        # The overlay hotkey draws the avatar's face where the driving crop frames the driver's.
        size = crop_size(self.settings)
        to_crop = crop_matrix(square_face_box(avatar.landmarks, self.settings.crop_margin), size)
        self._overlay_points = avatar.landmarks.transformed(to_crop, (size, size)).points
        if self.neutral is not None:
            self.animator.set_neutral(self.neutral)
        self.best_score = math.inf  # the best match depends on the avatar's pose
        log.info("avatar %d/%d: %s", index + 1, len(self.avatars), avatar.path)

    def _reload_avatars(self) -> None:
        current = self.avatar.path
        try:
            avatars = load_avatars(self.settings.avatar, avatar_framing(self.settings))
        except AvatarError as exc:
            self.controls.message = f"reload failed: {exc}"
            log.warning("%s", self.controls.message)
            return
        self.avatars = avatars
        self.controls.avatar_count = len(avatars)
        paths = [a.path for a in avatars]
        self._select_avatar(paths.index(current) if current in paths else 0)
        self.controls.message = f"{len(avatars)} avatars loaded"

    # --- preview ----------------------------------------------------------------------------------

    def _show_preview(self, frame_bgr: np.ndarray, driving: DrivingFrame | None, output: np.ndarray) -> None:
        size = crop_size(self.settings)
        if driving is not None:
            driving_bgr = driving.crop_bgr
        else:
            driving_bgr = to_camera(frame_bgr, size, size, pad=True)
        overlay = self._overlay_points if self.controls.overlay else None
        hud = hud_lines(self._hud_info()) if self.controls.hud else None
        key = self.preview.show(compose_preview(driving_bgr, output, hud, overlay, PREVIEW_HEIGHT))
        if handle_key(key, self.controls) is not None:
            log.info("%s", self.controls.message)
        if self.preview.closed_by_user():
            self.controls.quit = True

    def _status(self) -> list[str]:
        if self.tracker.face_found:
            face = "face tracked"
        elif self.neutral is None:
            face = "waiting for a face"
        else:
            face = "face lost: easing to neutral"
        lines = [f"{face} | avatar {self.avatar_index + 1}/{len(self.avatars)}",
                 f"strength {self.controls.strength:.1f} | region {self.controls.region}"]
        if self.controls.find_best and self.match_score is not None:
            lines[-1] += f" | match {self.match_score:.3f} (best {self.best_score:.3f})"
        return lines

    def _hud_info(self) -> HudInfo:
        now = time.perf_counter()
        if self.controls.message != self._shown_message:
            self._shown_message, self._message_until = self.controls.message, now + _MESSAGE_SECONDS
        info = self.animator.backend_info()
        return HudInfo(fps=self.stats.recent_fps(), stage_ms=self.stats.recent_ms(),
                       latency_ms=self.stats.recent_latency_ms(), engine=self.animator.name,
                       providers=list(info.get("providers", [])), backend_note=info.get("note", ""),
                       status=self._status(),
                       message=self._shown_message if now < self._message_until else "")

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.preview is not None:
            self.preview.close()
        self.finder.close()


# ---------------------------------------------------------------------------------------------
# Setting up and running


def _avatar_paths(settings: Settings) -> list[Path]:
    if settings.demo:
        written = write_demo_avatars(DEFAULT_AVATARS_DIR)
        log.info("demo avatars written: %s", ", ".join(str(p) for p in written))
        if DEFAULT_AVATARS_DIR not in settings.avatar:
            return [*settings.avatar, DEFAULT_AVATARS_DIR]
    return settings.avatar


def avatar_framing(settings: Settings) -> AvatarFraming:
    return AvatarFraming(settings.framing, settings.fill, settings.cam_width, settings.cam_height,
                         crop_size(settings), settings.crop_margin)


def open_sinks(settings: Settings, fps: float) -> tuple[list[Sink], PreviewWindow | None]:
    """The sinks asked for. A missing virtual camera or display is reported and skipped; an
    unwritable --output file is an error (the user asked for exactly that file)."""
    sinks: list[Sink] = []
    if settings.output is not None:
        sinks.append(VideoFileSink(settings.output, fps, settings.cam_width, settings.cam_height))
    if settings.virtual_cam:
        try:
            sinks.append(VirtualCameraSink(settings.cam_width, settings.cam_height, settings.cam_fps,
                                           settings.virtual_cam_backend, settings.virtual_cam_device))
        except SinkError as exc:
            log.warning("%s", exc)
    preview = None
    if settings.preview:
        try:
            preview = PreviewWindow()
        except SinkError as exc:
            log.warning("%s", exc)
    return sinks, preview


def run(settings: Settings, stats: Stats | None = None) -> dict:
    """Run the app until the source ends, --max-frames or q/Esc, and return the stats summary. A stop
    (KeyboardInterrupt, StopSignal) closes the sinks and writes the stats, then is raised again."""
    stats = stats or Stats()
    engine_choice = choose_engine(settings)  # a missing checkpoint is reported before any slow step
    if settings.size is not None and settings.framing == "call":
        log.warning("--size only sets the square output of --framing crop; with --framing call the "
                    "output is --cam-width x --cam-height (%dx%d) and --size is ignored.",
                    settings.cam_width, settings.cam_height)
    with native_notices_silenced(not settings.verbose):
        avatars = load_avatars(_avatar_paths(settings), avatar_framing(settings))
    log.info("%d avatar%s loaded", len(avatars), "" if len(avatars) == 1 else "s")
    source = open_frame_source(settings.camera, settings.max_frames, settings.capture_width,
                               settings.capture_height, realtime=settings.realtime)
    animator: Animator | None = None
    stopped: KeyboardInterrupt | None = None
    try:
        animator = build_animator(settings, engine_choice)
        sinks, preview = open_sinks(settings, source.fps)
        app = LiveApp(settings, animator, avatars, source, sinks, preview, stats)
        # What is loaded by now (modules, models, the avatars' precomputed data) lives as long as the
        # run: frozen out of the collector's reach, a full collection mid-call scans only what the
        # frames made. Unfrozen it held ~100k objects, and one full collection every few hundred
        # frames stopped a frame for ~30 ms (real driving videos; MediaPipe makes a class per call,
        # so garbage cycles keep the collector running). Unfrozen afterwards, so a later run in the
        # same process (tests, animate_file) frees this one's objects again.
        gc.freeze()
        try:
            app.run()
        except KeyboardInterrupt as stop:  # Ctrl+C, SIGTERM, SIGHUP: end as at the end of the video
            stopped = stop
        finally:
            gc.unfreeze()
            app.close()  # first: the output file is finished and the virtual camera released
        if app.faces_seen == 0 and stopped is None:
            log.warning("No face was found in any frame from %s; the avatar stayed still.", source.name)
    finally:
        _close_quietly(source)
        if animator is not None:
            animator.close()
    info = animator.backend_info()
    summary = stats.summary(animator.name, info, {
        "size": crop_size(settings), "framing": settings.framing,
        "output_size": [settings.cam_width, settings.cam_height], "camera": str(settings.camera),
        "dropped_frames": source.dropped, "avatars": len(avatars),
        **{key: value for key, value in info.items() if key not in ("backend", "providers")},
        **animator.run_stats()})
    log.info("%d frames, %.1f fps, engine %s on %s", summary["frames"], summary["fps"], animator.name,
             ", ".join(summary["providers"]))
    if settings.stats is not None:
        stats.write(settings.stats, animator.name, info, summary)
    if stopped is not None:
        raise stopped
    return summary


def _close_quietly(source: VideoFileSource | LiveCamera) -> None:
    """Release the camera or file. Its progress bar writes to stderr, which is gone after a SIGHUP
    from a closed terminal; that must not stop the statistics from being written."""
    try:
        source.close()
    except OSError as exc:
        log.debug("closing %s: %s", source.name, exc)


def animate_file(avatar: Path, driving: Path, output: Path, engine: str = "auto",
                 checkpoint: Path | None = None, max_frames: int | None = None,
                 stats_path: Path | None = None, width: int = 1280, height: int = 720,
                 framing: str = "call") -> dict:
    """The offline path: animate `avatar` with every frame of the `driving` video into `output`
    (an mp4 of width x height, as the virtual camera would get it), with a progress bar. Same
    stages as live, without camera or windows."""
    settings = Settings(avatar=[Path(avatar)], camera=Path(driving), output=Path(output), engine=engine,
                        checkpoint=checkpoint, virtual_cam=False, preview=False, max_frames=max_frames,
                        stats=stats_path, cam_width=width, cam_height=height, framing=framing)
    return run(settings)


class _CliFormatter(logging.Formatter):
    """Info lines as plain sentences; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def setup_logging(verbose: bool) -> None:
    """Log lines to stderr through a descriptor of their own (see native_notices_silenced)."""
    handler = logging.StreamHandler(os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1))
    handler.setFormatter(_CliFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 on success, 2 with one line on stderr for errors a user can cause."""
    stats = Stats()  # first, so the startup time covers everything this function does
    settings = parse_args(argv)
    setup_logging(settings.verbose)
    try:
        with stop_on_signals():
            run(settings, stats)
    except _USER_ERRORS as exc:
        _say(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as stop:  # Ctrl+C, SIGTERM, SIGHUP: the run has closed what it opened
        _say(f"stopped ({stop})" if isinstance(stop, StopSignal) else "stopped")
        return getattr(stop, "exit_code", 128 + signal.SIGINT)
    return 0


def _say(line: str) -> None:
    """A last line on stderr, if there still is one (not after a closed terminal's SIGHUP)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass
