"""Remote engine: FOMM runs on a server (`python -m avatarify.server`), everything else stays local.

`RemoteRunner` is a FommRunner whose networks live on the server, so the engine is
`FommAnimator(RemoteRunner(...))` and keeps all FommAnimator does (conversions, first-frame neutral,
paste-back). Inputs and outputs are the runner's: RGB float (1, 3, 256, 256) in [0, 1].

Live behaviour (wire format in avatarify/wire.py):
- per avatar / per calibration: one blocking `set_avatar` call (the server runs the encoder once);
- per frame: at most one frame in flight. `animate` sends the newest frame only when no reply is
  pending and returns the newest prediction received, so a slow server lowers the avatar's frame rate
  instead of queuing frames; a reply later than `late_after_s` is dropped (the gRPC deadline). With
  `wait_for_reply` (video files, where no frame may be skipped) each call waits for its own reply, and
  so does the first frame after a new avatar (FommAnimator's picture of the avatar at rest).
- server gone: the avatar holds its last picture, one log line and a HUD status say so, a background
  thread reconnects and re-sends the avatar and neutral; the app never sees an exception. A server that
  lost the session (restart, idle expiry, another pod) is sent the avatar again the same way.
Round trips are kept for the HUD and for `--stats` (`rtt_ms`).
"""
from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import deque
from functools import partial
from pathlib import Path

import numpy as np

from avatarify import wire
from avatarify.datatypes import DrivingFrame
from avatarify.engines.base import AnimatorError
from avatarify.engines.fomm import FommAnimator
from avatarify.runners import FommRunner, RunnerError
from avatarify.stats import percentiles

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001
LIVE_LATE_AFTER_S = 1.0
FILE_LATE_AFTER_S = 30.0


class _Lost(Exception):
    """The server cannot be used right now (gone, refusing the token); the message says why."""


class RemoteRunner(FommRunner):
    """The FOMM runner interface over a Triton server: prepare_source / set_neutral / animate."""

    name = "remote"

    def __init__(self, server: str, token: str, transport: str = "raw", wait_for_reply: bool = False,
                 late_after_s: float = 1.0, connect_timeout_s: float = 3.0, retry_s: float = 1.0) -> None:
        super().__init__()
        if transport not in wire.TRANSPORTS:
            raise RunnerError(f"Unknown transport {transport!r}; use one of {', '.join(wire.TRANSPORTS)}.")
        self.server, self.transport, self.wait_for_reply = server, transport, wait_for_reply
        self.late_after_s, self.connect_timeout_s, self.retry_s = late_after_s, connect_timeout_s, retry_s
        self._headers = wire.grpc_headers(token)
        self._output = "prediction" if transport == "raw" else "prediction_jpeg"
        self._lock = threading.Lock()         # state shared with the reply callback
        self._send_lock = threading.RLock()   # set_avatar traffic: the app's thread or the reconnect thread
        self._avatar: bytes | None = None     # raw bytes, re-sent after a reconnect
        self._neutral: bytes | None = None    # None: the avatar is its own neutral
        self._session = ""
        self._generation = 0                  # bumps when avatar or neutral change: older replies are stale
        self._latest: np.ndarray | None = None
        self._sent_at: float | None = None    # the frame in flight, if any
        self._replied = threading.Event()
        self._replied.set()                   # nothing in flight
        self._first_frame = False             # the next frame is the first of a new avatar
        self._connected = True
        self._closed = False
        self._reconnector: threading.Thread | None = None
        self.rtt_ms = array("d")
        self.recent_rtt_ms: deque = deque(maxlen=30)
        self.late_replies = 0
        self.disconnects = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.status = ""
        self.frame_timestamp: float | None = None  # capture time of the frame the next animate gets
        self.shown_timestamp: float | None = None  # capture time of the frame the newest prediction shows
        self._client = self._connect()
        self._check_token()
        self.providers = [f"triton@{server}"]  # names the server's runner after the first set_avatar

    # --- FommRunner interface ----------------------------------------------------------------------
    def _keypoints(self, image):
        raise RunnerError("The remote runner's networks run on the server; use prepare_source/animate.")

    _source_outputs = _frame = _keypoints

    def prepare_source(self, source: np.ndarray) -> None:
        with self._send_lock:
            with self._lock:
                self._avatar = wire.encode_image(source, "raw")
                self._neutral = None
                self._generation += 1
                self._latest = np.ascontiguousarray(source, dtype=np.float32)  # held until a reply comes
                self.shown_timestamp = None
                self._first_frame = True
            self._send_state(avatar=True)

    def set_neutral(self, neutral: np.ndarray) -> None:
        if self._avatar is None:
            raise RunnerError("set_neutral needs an avatar first; call prepare_source.")
        encoded = wire.encode_image(neutral, "raw")
        with self._send_lock:
            if self._neutral is None and encoded == self._avatar:
                return  # the server already takes the avatar as its own neutral
            with self._lock:
                self._neutral = encoded
                self._generation += 1
            self._send_state(avatar=False)

    def animate(self, driving: np.ndarray, strength: float = 1.0) -> np.ndarray:
        if self._avatar is None:
            raise RunnerError("animate needs an avatar; call prepare_source.")
        # FommAnimator.set_avatar takes the first frame of a new avatar (the avatar at strength 0) as
        # the network's picture of it at rest, for the paste-back: that one waits for its own reply.
        first, self._first_frame = self._first_frame, False
        if first:
            self._replied.wait(self.late_after_s + 0.5)  # a frame of the previous avatar lands first
        with self._lock:
            idle = self._connected and self._sent_at is None
        if idle:
            self._send_frame(driving, strength)
        if self.wait_for_reply or first:
            self._replied.wait(self.late_after_s + 0.5)
        with self._lock:
            return self._latest

    def animate_batch(self, driving, states, strengths):
        raise RunnerError("Batches of several avatars are the server's business; call animate.")

    def close(self) -> None:
        self._closed = True
        self._client.close()

    # --- per frame ----------------------------------------------------------------------------------
    def _send_frame(self, driving: np.ndarray, strength: float) -> None:
        from tritonclient.grpc import InferRequestedOutput

        frame = wire.encode_image(driving, self.transport)
        inputs = self._inputs(session=wire.bytes_tensor(self._session), driving=wire.bytes_tensor(frame),
                              strength=np.array([[strength]], np.float32))
        with self._lock:
            self._sent_at = time.perf_counter()
            self._replied.clear()
            callback = partial(self._on_reply, self._generation, self._sent_at, self.frame_timestamp)
        self.bytes_sent += len(frame)
        try:
            self._client.async_infer(wire.ANIMATE, inputs, callback, headers=self._headers,
                                     outputs=[InferRequestedOutput(self._output), InferRequestedOutput("error")],
                                     client_timeout=self.late_after_s)
        except Exception as exc:  # noqa: BLE001 — any client failure means: hold still, reconnect
            self._finish_frame()
            self._lost(_reason(exc))

    def _on_reply(self, generation: int, sent_at: float, captured_at: float | None, result=None,
                  error=None) -> None:
        """gRPC's callback thread: keep the newest prediction; stale or late replies are dropped."""
        rtt_ms = (time.perf_counter() - sent_at) * 1000.0
        try:
            if error is not None:
                if is_late(error):
                    self.late_replies += 1  # too late to show: dropped, the next frame goes out
                else:
                    self._lost(_reason(error))
                return
            message = result.as_numpy("error")[0, 0].decode()
            if message:
                self._refused(message)
                return
            prediction = result.as_numpy(self._output)
            if self.transport == "jpeg":
                self.bytes_received += len(prediction[0, 0])
                prediction = wire.decode_jpeg_prediction(prediction[0, 0])
            else:
                self.bytes_received += prediction.nbytes
            with self._lock:
                if generation == self._generation:
                    self._latest = prediction
                    self.shown_timestamp = captured_at
                    self.rtt_ms.append(rtt_ms)
                    self.recent_rtt_ms.append(rtt_ms)
                    self.status = f"server rtt {np.mean(self.recent_rtt_ms):.0f} ms"
        except Exception as exc:  # noqa: BLE001 — never let a reply kill the callback thread silently
            log.warning("remote reply could not be used: %s", exc)
        finally:
            self._finish_frame()

    def _finish_frame(self) -> None:
        with self._lock:
            self._sent_at = None
        self._replied.set()

    def _refused(self, message: str) -> None:
        if message == wire.UNKNOWN_SESSION:
            self._lost("the server lost this session")
        elif self.status != message:
            self.status = message
            log.warning("server refused a frame: %s", message)

    # --- avatar and neutral --------------------------------------------------------------------------
    def _send_state(self, avatar: bool) -> None:
        """set_avatar from the app's thread; a failure leaves the reconnect thread to send it later."""
        if not self._connected:
            return  # the reconnect thread sends the newest avatar and neutral
        try:
            self._set_avatar(avatar)
        except _Lost as exc:
            self._lost(str(exc))

    def _set_avatar(self, avatar: bool) -> None:
        """One blocking call; after an unknown-session answer, the avatar and neutral go again."""
        for with_avatar in (avatar, True):
            inputs = self._inputs(session=np.array([self._session.encode()], np.object_),
                                  avatar=np.array([self._avatar if with_avatar else b""], np.object_),
                                  neutral=np.array([self._neutral or b""], np.object_))
            try:
                result = self._client.infer(wire.SET_AVATAR, inputs, headers=self._headers,
                                            client_timeout=max(self.late_after_s, 10.0))
            except Exception as exc:  # noqa: BLE001
                raise _Lost(_reason(exc)) from None
            message = result.as_numpy("error")[0].decode()
            if not message:
                self._session = result.as_numpy("session")[0].decode()
                self.providers = [f"{result.as_numpy('runner')[0].decode()}@{self.server}"]
                return
            if message != wire.UNKNOWN_SESSION:
                raise _Lost(f"the server refused the avatar: {message}")
        raise _Lost("the server keeps losing this session")

    @staticmethod
    def _inputs(**arrays: np.ndarray) -> list:
        from tritonclient.grpc import InferInput

        inputs = []
        for name, array in arrays.items():
            item = InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "BYTES")
            item.set_data_from_numpy(array)
            inputs.append(item)
        return inputs

    # --- connection ----------------------------------------------------------------------------------
    def _connect(self):
        """A client whose server is ready; RunnerError with what to do when none answers in time."""
        from tritonclient.grpc import InferenceServerClient

        deadline = time.monotonic() + self.connect_timeout_s
        reason = "no answer"
        tls = self.server.startswith("grpcs://")  # trusted roots: the system's, or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH
        client = InferenceServerClient(self.server.removeprefix("grpcs://"), ssl=tls)
        while True:
            try:
                # Triton loads the models one after the other and says "ready" in between: ask for both.
                if all(client.is_model_ready(model, client_timeout=self.connect_timeout_s)
                       for model in (wire.SET_AVATAR, wire.ANIMATE)):
                    return client
                reason = "it answers but its models are not ready yet"
            except Exception as exc:  # noqa: BLE001 — refused, unresolvable, timed out: all say the same
                reason = _reason(exc)
            if time.monotonic() >= deadline:
                client.close()
                raise RunnerError(f"Cannot reach the avatarify server at {self.server} ({reason}); start it "
                                  f"with `python -m avatarify.server --checkpoint CKPT` or fix --server.")
            time.sleep(0.25)

    def _check_token(self) -> None:
        """RunnerError when the server refuses the token or serves something else."""
        try:
            self._client.get_model_metadata(wire.ANIMATE, headers=self._headers,
                                            client_timeout=self.connect_timeout_s)
        except Exception as exc:  # noqa: BLE001
            if "restricted" in str(exc):
                raise RunnerError(f"The server at {self.server} refused the access token; pass the server's "
                                  f"token file with --token-file FILE.") from None
            raise RunnerError(f"The server at {self.server} does not serve avatarify ({_reason(exc)}); "
                              f"check --server.") from None

    def _lost(self, reason: str) -> None:
        """Hold the avatar still and reconnect in the background (once, however often it is called)."""
        with self._lock:
            if not self._connected or self._closed:
                return
            self._connected = False
            self.disconnects += 1
            self.status = f"server {self.server}: {reason}; avatar held, reconnecting"
        log.warning("%s", self.status)
        self._reconnector = threading.Thread(target=self._reconnect, name="remote-reconnect", daemon=True)
        self._reconnector.start()

    def _reconnect(self) -> None:
        while not self._closed:
            time.sleep(self.retry_s)
            try:
                client = self._connect()
            except RunnerError:
                continue
            old, self._client = self._client, client  # a fresh channel: no inherited gRPC backoff
            old.close()
            with self._send_lock:
                try:
                    self._set_avatar(avatar=True)
                except _Lost as exc:  # e.g. a restarted server with another token: say so on the HUD
                    self.status = f"server {self.server}: {exc}; avatar held, reconnecting"
                    continue
                with self._lock:
                    self._connected = True
                    self._sent_at = None
                    self.status = ""
            log.info("server %s is back: avatar sent again", self.server)
            return


def is_late(error: Exception) -> bool:
    """The client's deadline passed, or the server's queue refused a frame (it waited too long, or the
    queue is full): the frame is dropped, the connection is fine."""
    text = str(error)
    return any(sign in text for sign in ("DEADLINE_EXCEEDED", "Deadline Exceeded", "Request timeout expired",
                                         "maximum queue size"))


def _reason(exc: Exception) -> str:
    """The first line of a client error, without gRPC's status prefix."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "restricted" in text:
        return "the server refused the access token"
    return text.split("] ", 1)[-1].strip() or type(exc).__name__


# --- the engine -------------------------------------------------------------------------------------


class RemoteAnimator(FommAnimator):
    """FommAnimator over a RemoteRunner, reporting the server, the round trip and its state."""

    name = "remote"

    def animate(self, driving: DrivingFrame) -> np.ndarray:
        runner: RemoteRunner = self.runner
        runner.frame_timestamp = driving.capture_time
        picture = super().animate(driving)
        # The picture shows the newest reply, an earlier frame: latency counts from that one's capture.
        self.shown_timestamp = runner.shown_timestamp
        return picture

    def backend_info(self) -> dict:
        """The HUD's engine line ends with the note: the round trip, or why the avatar is held."""
        runner: RemoteRunner = self.runner
        return {"backend": "remote", "providers": list(runner.providers), "note": runner.status}

    def run_stats(self) -> dict:
        runner: RemoteRunner = self.runner
        return {"rtt_ms": percentiles(runner.rtt_ms),
                "remote": {"server": runner.server, "transport": runner.transport, "replies": len(runner.rtt_ms),
                           "late_replies": runner.late_replies, "disconnects": runner.disconnects,
                           "bytes_sent": runner.bytes_sent, "bytes_received": runner.bytes_received}}

    def close(self) -> None:
        self.runner.close()


def server_address(text: str | None) -> str:
    """`--server [grpcs://]HOST[:PORT]` → "HOST:PORT", or "grpcs://HOST:PORT" for TLS (through a proxy,
    README: Serving many users). The port defaults to 8001, or 443 with TLS. AnimatorError when unusable."""
    if not text:
        raise AnimatorError("--engine remote needs --server HOST:PORT (the machine running "
                            "`python -m avatarify.server`).")
    text = text.strip()
    scheme, _, rest = text.rpartition("://")
    if scheme not in ("", "grpc", "grpcs"):
        raise AnimatorError(f"--server {text}: use HOST:PORT, or grpcs://HOST[:PORT] for TLS.")
    host, separator, port = rest.rpartition(":")
    if not separator or (":" in host and not host.startswith("[")):  # no port, or a bare IPv6 address
        host, port = rest, str(443 if scheme == "grpcs" else DEFAULT_PORT)
        host = f"[{host}]" if ":" in host else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AnimatorError(f"--server {text} is not HOST:PORT (e.g. gpu.example.com:8001).")
    return f"{'grpcs://' if scheme == 'grpcs' else ''}{host}:{port}"


def create_remote_animator(server: str | None, token_file: Path, transport: str = "raw", margin: float = 0.3,
                           wait_for_reply: bool = False) -> RemoteAnimator:
    """The remote engine, connected and with its token checked; AnimatorError (one sentence) if not."""
    address = server_address(server)
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        raise AnimatorError("The remote engine needs tritonclient; run `pip install -r requirements.txt`.") from None
    try:
        # Live, a reply after a second is no use to a call; from a file every frame is wanted, however slow.
        runner = RemoteRunner(address, wire.read_token(token_file), transport, wait_for_reply=wait_for_reply,
                              late_after_s=FILE_LATE_AFTER_S if wait_for_reply else LIVE_LATE_AFTER_S)
    except (wire.WireError, RunnerError) as exc:
        raise AnimatorError(str(exc)) from None
    log.info("remote engine: %s runs FOMM (%s transport)", runner.providers[0], transport)
    return RemoteAnimator(runner, margin)
