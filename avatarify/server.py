"""`python -m avatarify.server --checkpoint CKPT`: the FOMM networks served to many users by Triton.

Triton (through PyTriton) serves two models, described in avatarify/wire.py: `set_avatar` (a session's
avatar and neutral crops → the source encoder and the calibration run once; their arrays are kept per
session) and `animate` (session + driving crop + strength → the prediction). Triton's dynamic batcher
groups `animate` requests of many sessions; each group is one `animate_batch` pass of the runner.
Health (`/v2/health/ready`) and Prometheus metrics (`:8002/metrics`) are Triton's own.

Security: every endpoint but health needs the shared token (Triton's restricted-protocol header); the
token comes from --token-file, written with a fresh random token when the file does not exist. Session
ids are 256-bit random; a session's arrays are reachable only through its id. Sessions expire after
--session-idle-s without use, and the least recently used go first when their arrays exceed
--session-memory-mb. Bad requests get an error reply; the server keeps serving.

Inputs: the command line. Output: a running server until SIGTERM / Ctrl+C; exit 2 with one line on
stderr for errors the operator can fix (missing checkpoint, port in use, unfit token file).
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import sysconfig
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avatarify import wire
from avatarify.wire import WireError

log = logging.getLogger("avatarify.server")

EXIT_USER_ERROR = 2
Arrays = dict[str, np.ndarray]
# Everything but health needs the token: readiness probes and load balancers ask without one.
RESTRICTED_ENDPOINTS = ["inference", "metadata", "model-config", "model-repository", "shared-memory",
                        "statistics", "trace", "logging"]
INTERNAL_ERROR = "The server failed on this request (details in its log); try again."


class ServerError(RuntimeError):
    """The server cannot start; the message is one sentence saying what to do."""


# --- sessions -------------------------------------------------------------------------------------


@dataclass
class Session:
    """One user's avatar state on the server: SOURCE_OUTPUTS and the calibration arrays."""

    source: Arrays
    calibration: Arrays
    last_used: float

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.source.values(), *self.calibration.values()))


class SessionStore:
    """Sessions by unguessable id, least recently used first; idle ones expire, memory is capped."""

    def __init__(self, idle_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self.max_bytes, self.clock = idle_s, max_bytes, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, session_id: str, source: Arrays, calibration: Arrays) -> str:
        """Store a session's arrays under `session_id` if it exists, else under a new random id."""
        session = Session(source, calibration, self.clock())
        with self._lock:
            self._expire()
            old = self._sessions.pop(session_id, None)
            if old is None:
                session_id = secrets.token_urlsafe(32)  # the server names sessions, never the client
            else:
                self._bytes -= old.nbytes
            self._sessions[session_id] = session
            self._bytes += session.nbytes
            while self._bytes > self.max_bytes and len(self._sessions) > 1:
                evicted_id, evicted = self._sessions.popitem(last=False)
                self._bytes -= evicted.nbytes
                log.info("session %s… evicted (memory cap %d MB)", evicted_id[:6], self.max_bytes >> 20)
        return session_id

    def get(self, session_id: str) -> Session:
        """The session, marked as used now; WireError when it is unknown or expired."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise WireError(wire.UNKNOWN_SESSION)
            session.last_used = self.clock()
            self._sessions.move_to_end(session_id)
            return session

    def set_calibration(self, session_id: str, calibration: Arrays) -> None:
        self.get(session_id).calibration = calibration  # same shapes: the byte count does not change

    def _expire(self) -> None:
        now = self.clock()
        while self._sessions:
            oldest_id, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_used <= self.idle_s:
                break
            del self._sessions[oldest_id]
            self._bytes -= oldest.nbytes
            log.info("session %s… expired after %.0f s idle", oldest_id[:6], self.idle_s)



# --- the two models -------------------------------------------------------------------------------


def _first(request, name: str):
    """The single element of one request's input (shape (1,) unbatched, (1, 1) batched)."""
    return request[name].reshape(-1)[0]


class FommService:
    """The infer functions of `set_avatar` and `animate` over one runner and one session store."""

    def __init__(self, runner, store: SessionStore) -> None:
        self.runner, self.store = runner, store
        self._network = threading.Lock()  # one pass at a time: the two models share the cores / GPU

    def set_avatar(self, requests: list) -> list[Arrays]:
        return [self._guarded(self._set_avatar_one, r, self._set_avatar_reply) for r in requests]

    def animate(self, requests: list) -> list[Arrays]:
        try:
            return self._animate_batch(requests)
        except Exception:  # noqa: BLE001 — a bug must cost this batch, never the server
            log.exception("animate failed on a batch of %d", len(requests))
            return [self._animate_reply(r, error=INTERNAL_ERROR) for r in requests]

    # set_avatar
    def _set_avatar_one(self, request) -> Arrays:
        session_id = wire.session_text(_first(request, "session"))
        avatar_bytes, neutral_bytes = _first(request, "avatar"), _first(request, "neutral")
        if avatar_bytes:
            avatar = wire.decode_image(avatar_bytes, "avatar")[None]
            neutral = wire.decode_image(neutral_bytes, "neutral")[None] if neutral_bytes else avatar
            with self._network:
                source = self.runner.source_state(avatar)
                calibration = self.runner.calibration_state(source, neutral)
            session_id = self.store.put(session_id, source, calibration)
        elif neutral_bytes:
            neutral = wire.decode_image(neutral_bytes, "neutral")[None]
            source = self.store.get(session_id).source
            with self._network:
                calibration = self.runner.calibration_state(source, neutral)
            self.store.set_calibration(session_id, calibration)
        else:
            raise WireError("set_avatar needs an avatar or a neutral image.")
        return self._set_avatar_reply(request, session=session_id)

    def _set_avatar_reply(self, request, session: str = "", error: str = "") -> Arrays:
        runner = ",".join(self.runner.providers)
        return {name: np.array([value.encode()], dtype=np.object_)
                for name, value in (("session", session), ("error", error), ("runner", runner))}

    # animate
    def _animate_batch(self, requests: list) -> list[Arrays]:
        replies: list[Arrays | None] = [None] * len(requests)
        valid, images, states, strengths = [], [], [], []
        for index, request in enumerate(requests):
            try:
                session = self.store.get(wire.session_text(_first(request, "session")))
                image = wire.decode_image(_first(request, "driving"), "driving frame")
                strength = wire.strength_value(_first(request, "strength"))
            except WireError as exc:
                replies[index] = self._animate_reply(request, error=str(exc))
                continue
            valid.append(index)
            images.append(image)
            states.append((session.source, session.calibration))
            strengths.append(strength)
        if valid:
            with self._network:
                predictions = self.runner.animate_batch(np.stack(images), states, strengths)
            log.debug("animated a batch of %d", len(valid))
            for index, prediction in zip(valid, predictions):
                replies[index] = self._animate_reply(requests[index], prediction=prediction)
        return replies

    @staticmethod
    def _animate_reply(request, prediction: np.ndarray | None = None, error: str = "") -> Arrays:
        """Only the outputs the client asked for: the float32 prediction or its JPEG, and the error."""
        wanted = request.requested_output_names or ["prediction", "error"]
        reply = {"error": wire.bytes_tensor(error)}
        if "prediction" in wanted:
            reply["prediction"] = (prediction if prediction is not None
                                   else np.zeros(wire.IMAGE_SHAPE, np.float32))[None].astype(np.float32)
        if "prediction_jpeg" in wanted:
            jpeg = wire.encode_jpeg(wire.network_to_u8(prediction)) if prediction is not None else b""
            reply["prediction_jpeg"] = wire.bytes_tensor(jpeg)
        return reply

    @staticmethod
    def _guarded(handle: Callable, request, reply: Callable) -> Arrays:
        try:
            return handle(request)
        except WireError as exc:
            return reply(request, error=str(exc))
        except Exception:  # noqa: BLE001 — a bug must cost this request, never the server
            log.exception("set_avatar failed")
            return reply(request, error=INTERNAL_ERROR)

    def warm_up(self) -> None:
        """One avatar and one frame through every network, so the first user does not wait for it."""
        gray = np.full((1, *wire.IMAGE_SHAPE), 0.5, np.float32)
        source = self.runner.source_state(gray)
        self.runner.animate_batch(gray, [(source, self.runner.calibration_state(source, gray))], [1.0])


# --- start-up -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m avatarify.server",
        description="Serve the FOMM networks to remote clients (`run_live.py --engine remote`) with "
                    "NVIDIA Triton. See README: Serving many users.")
    add = parser.add_argument
    add("--checkpoint", type=Path, required=True, metavar="PATH", help="FOMM checkpoint (vox-adv-cpk.pth.tar)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto uses CUDA when available")
    add("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
        help="network arithmetic: auto is fp16 on CUDA, fp32 on the CPU (default: auto)")
    add("--address", default="0.0.0.0", help="address the gRPC, HTTP and metrics ports bind to (default: 0.0.0.0)")
    add("--grpc-port", type=int, default=8001, help="gRPC port the clients use (default: 8001)")
    add("--http-port", type=int, default=8000, help="HTTP port: /v2/health/ready for probes (default: 8000)")
    add("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    add("--token-file", type=Path, default=wire.DEFAULT_TOKEN_FILE, metavar="FILE",
        help=f"shared access token; written with a new random token if missing (default: {wire.DEFAULT_TOKEN_FILE})")
    add("--max-batch", type=int, default=16, help="most frames in one network pass (default: 16)")
    add("--batch-delay-ms", type=float, default=2.0,
        help="how long a frame may wait for others to join its batch (default: 2)")
    add("--queue-timeout-ms", type=float, default=1000.0,
        help="a frame still queued after this long is refused: it would arrive too late (default: 1000)")
    add("--session-idle-s", type=float, default=600.0, help="a session unused this long is dropped (default: 600)")
    add("--session-memory-mb", type=int, default=4096,
        help="memory for sessions (~4.3 MB each); least recently used go first (default: 4096)")
    add("--verbose", action="store_true", help="log debug details")
    return parser


def ensure_token(path: Path) -> str:
    """The token in `path`; a missing file is created (owner-only) with a fresh random token."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        log.info("new access token written to %s: give this file to the clients (--token-file)", path)
    try:
        return wire.read_token(path)
    except WireError as exc:
        raise ServerError(str(exc)) from None


def check_ports_free(address: str, ports: dict[str, int]) -> None:
    """Triton would fail late and verbosely on a busy port; say which one, first."""
    if len(set(ports.values())) != len(ports):
        raise ServerError(f"The ports must differ: {ports}.")
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                raise ServerError(f"Cannot listen on {address}:{port} ({exc.strerror}); another server may "
                                  f"run there: stop it or pass --{name}-port.") from None


def build_runner(checkpoint: Path, device: str, precision: str):
    """The torch runner (fast layers) on the best device: the fastest backend measured on these
    machines, and the one whose `animate_batch` takes any batch size. When runners.py chooses backends
    automatically (issue 10), that choice plugs in here. CUDA graphs stay off: a graph is captured per
    batch shape, and the dynamic batcher changes the shape from one pass to the next."""
    import torch

    from avatarify.runners import RunnerError, TorchRunner
    from models.fomm.checkpoint import CheckpointError, load_fomm

    if device == "cuda" and not torch.cuda.is_available():
        raise ServerError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    try:
        return TorchRunner(*load_fomm(checkpoint), device=device, precision=precision, optimized=True,
                           cuda_graph=False)
    except (CheckpointError, RunnerError) as exc:
        raise ServerError(str(exc)) from None


def _use_own_libpython() -> None:
    """Triton's Python backend stub links libpython3.X dynamically and would pick the system's copy;
    a venv on another Python build then fails to load the models ('_thread.RLock' object has no
    attribute '_recursion_count'). Put this interpreter's library folder first; Triton and the stubs
    are started by this process and inherit it."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")


def _bytes_input(name: str):
    from pytriton.model_config import Tensor

    return Tensor(name=name, dtype=bytes, shape=(1,))


def serve(args: argparse.Namespace, token: str, service: FommService) -> None:
    """Start Triton with the two models and serve until SIGTERM / Ctrl+C."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(grpc_address=args.address, http_address=args.address, metrics_address=args.address,
                          grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                          strict_readiness=True, exit_timeout_secs=5, log_verbose=1 if args.verbose else 0)
    security = TritonSecurityConfig(access_token=token, restricted_endpoints=RESTRICTED_ENDPOINTS)
    queue = QueuePolicy(timeout_action=TimeoutAction.REJECT,
                        default_timeout_microseconds=int(args.queue_timeout_ms * 1000),
                        max_queue_size=max(64, 8 * args.max_batch))
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(args.batch_delay_ms * 1000),
                             default_queue_policy=queue)
    with Triton(config=config, security_config=security) as triton:
        triton.bind(wire.SET_AVATAR, service.set_avatar,
                    inputs=[_bytes_input(n) for n in ("session", "avatar", "neutral")],
                    outputs=[_bytes_input(n) for n in ("session", "error", "runner")],
                    config=ModelConfig(batching=False))
        triton.bind(wire.ANIMATE, service.animate,
                    inputs=[_bytes_input("session"), _bytes_input("driving"),
                            Tensor(name="strength", dtype=np.float32, shape=(1,))],
                    outputs=[Tensor(name="prediction", dtype=np.float32, shape=wire.IMAGE_SHAPE),
                             _bytes_input("prediction_jpeg"), _bytes_input("error")],
                    config=ModelConfig(max_batch_size=args.max_batch, batcher=batcher))
        log.info("serving on gRPC %s:%d (clients), HTTP %d (/v2/health/ready), metrics %d (/metrics); "
                 "runner %s; sessions: %.0f s idle timeout, %d MB", args.address, args.grpc_port, args.http_port,
                 args.metrics_port, ",".join(service.runner.providers), args.session_idle_s,
                 args.session_memory_mb)
        triton.serve()


_stop_requested = threading.Event()


def _stop_on_signals() -> None:
    """SIGTERM (docker stop, Kubernetes) and Ctrl+C end the serve loop, which stops Triton too; the
    flag tells that stop from Triton ending on its own (PyTriton's loop swallows the interrupt)."""
    def handler(signum, frame):
        _stop_requested.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _stop_on_signals()
    try:
        if not sys.platform.startswith("linux"):
            raise ServerError("The server runs on Linux only (Triton); run it on a Linux GPU machine or "
                              "in the Docker image (deploy/Dockerfile).")
        try:
            import pytriton  # noqa: F401
        except ImportError:
            raise ServerError("PyTriton is not installed; run `pip install -r requirements-server.txt`.") from None
        if args.max_batch < 1 or args.session_memory_mb < 1 or args.session_idle_s <= 0:
            raise ServerError("--max-batch, --session-memory-mb and --session-idle-s must be positive.")
        check_ports_free(args.address, {"grpc": args.grpc_port, "http": args.http_port,
                                        "metrics": args.metrics_port})
        token = ensure_token(args.token_file)
        runner = build_runner(args.checkpoint, args.device, args.precision)
        service = FommService(runner, SessionStore(args.session_idle_s, args.session_memory_mb << 20))
        service.warm_up()
        _use_own_libpython()
        serve(args, token, service)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _stop_requested.set()
    if _stop_requested.is_set():
        log.info("stopped")
        return 0
    log.error("Triton stopped on its own (see its log above)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
