"""The FOMM server (`python -m avatarify.server`, Triton through PyTriton) and its client, the remote
engine, against a real server in a subprocess on the CPU with random weights in the official layout.

One server serves most tests (module fixture); a second one, with a short idle timeout, is stopped
and started again for the eviction and restart tests. Parity is against the local torch runner that
the app's `--backend torch` uses on the CPU (fast fp32 layers)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from avatarify import wire
from avatarify.engines.fomm import bgr_to_network
from avatarify.engines.remote import RemoteRunner
from avatarify.runners import RunnerError, TorchRunner
from bench.serving import ServerProcess
from conftest import ROOT, load_astronaut_bgr, load_grace_hopper_bgr
from models.fomm import rounding
from models.fomm.checkpoint import load_fomm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or importlib.util.find_spec("pytriton") is None,
                                reason="the server needs Linux and PyTriton (pip install -r requirements-server.txt)")

STRENGTH = 0.8
# The server batches frames of several sessions into one pass, which sums in another order than the
# local runner's single frame: the fp32 re-association bound of these nets (models/fomm/rounding.py).
PARITY = rounding.FP32_MAX
JPEG_MAX, JPEG_MEAN = 0.3, 0.04  # measured 0.13 / 0.020 on these photos: JPEG both ways at quality 90


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    """8-bit photos as the app hands them to a runner: (1, 3, 256, 256) RGB in [0, 1]."""
    astronaut, hopper = bgr_to_network(load_astronaut_bgr()), bgr_to_network(load_grace_hopper_bgr())
    return {"astronaut": astronaut, "hopper": hopper, "mirrored": np.ascontiguousarray(hopper[..., ::-1])}


@pytest.fixture(scope="module")
def local(fomm_checkpoint) -> TorchRunner:
    return TorchRunner(*load_fomm(fomm_checkpoint), optimized=True)  # what --backend torch runs on the cpu


def reference(local: TorchRunner, avatar: np.ndarray, neutral: np.ndarray, driving: np.ndarray) -> np.ndarray:
    local.prepare_source(avatar)
    local.set_neutral(neutral)
    return local.animate(driving, STRENGTH)


@pytest.fixture(scope="module")
def references(local, images) -> dict[str, np.ndarray]:
    """Local predictions, computed before any session exists (nothing idles while they run)."""
    return {"astronaut": reference(local, images["astronaut"], images["mirrored"], images["hopper"]),
            "hopper": reference(local, images["hopper"], images["hopper"], images["mirrored"])}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    return tmp_path_factory.mktemp("token") / "server.token"  # the first server writes it


@pytest.fixture(scope="module")
def server(fomm_checkpoint, token_file, tmp_path_factory, references):
    # Frames may queue for long here: on 2 busy cores one pass takes up to seconds, and these tests
    # want every reply (the default refuses frames queued for over a second: too late for a call).
    process = ServerProcess(fomm_checkpoint, token_file, tmp_path_factory.mktemp("server") / "server.log",
                            "--queue-timeout-ms", "120000").start()
    yield process
    assert process.stop() == 0, process.log_tail()


def connect(server, token_file, **options) -> RemoteRunner:
    return RemoteRunner(server.client_address, wire.read_token(token_file), wait_for_reply=True,
                        late_after_s=30.0, **options)


def drive(runner: RemoteRunner, images, avatar: str, neutral: str, driving: str) -> np.ndarray:
    runner.prepare_source(images[avatar])
    runner.set_neutral(images[neutral])
    return runner.animate(images[driving], STRENGTH)


# --- plain protocol calls, as any Triton client would make them -------------------------------------


def call(server, model: str, token: str | None, outputs: tuple[str, ...] = ("error",), **fields):
    """One request with tritonclient; each field is (array, Triton dtype)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.address, ssl=server.tls)
    inputs = []
    for name, (array, dtype) in fields.items():
        item = grpcclient.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    headers = wire.grpc_headers(token) if token else None
    try:
        result = client.infer(model, inputs, headers=headers,
                              outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def animate_call(server, token, session: str, frame: bytes, strength: float = STRENGTH, overrides: dict | None = None):
    fields = {"session": (wire.bytes_tensor(session), "BYTES"), "driving": (wire.bytes_tensor(frame), "BYTES"),
              "strength": (np.array([[strength]], np.float32), "FP32"), **(overrides or {})}
    return call(server, wire.ANIMATE, token, **fields)["error"][0, 0].decode()


def set_avatar_call(server, token, session: str = "", avatar: bytes = b"", neutral: bytes = b"") -> tuple[str, str]:
    fields = {name: (np.array([value.encode() if isinstance(value, str) else value], np.object_), "BYTES")
              for name, value in (("session", session), ("avatar", avatar), ("neutral", neutral))}
    reply = call(server, wire.SET_AVATAR, token, outputs=("session", "error"), **fields)
    return reply["session"][0].decode(), reply["error"][0].decode()


# --- with the shared server ---------------------------------------------------------------------------


def test_remote_prediction_matches_local_torch_raw_exactly_and_jpeg_within_its_label(server, token_file, images,
                                                                                       references):
    runner = connect(server, token_file)
    try:
        raw = drive(runner, images, "astronaut", "mirrored", "hopper")
        assert runner.providers == [f"torch-cpu-optimized@{server.address}"]
        assert raw.shape == (1, 3, 256, 256) and raw.dtype == np.float32
        assert np.abs(raw - references["astronaut"]).max() <= PARITY
    finally:
        runner.close()
    runner = connect(server, token_file, transport="jpeg")
    try:
        jpeg = drive(runner, images, "astronaut", "mirrored", "hopper")
        error = np.abs(jpeg - references["astronaut"])
        assert error.max() <= JPEG_MAX and error.mean() <= JPEG_MEAN, (error.max(), error.mean())
        assert runner.bytes_sent < 60_000 and runner.bytes_received < 60_000  # vs 196 kB + 786 kB raw
    finally:
        runner.close()


def test_remote_engine_gives_the_local_engine_s_call_picture(server, token_file, local, references):
    """The whole engine, paste-back included, live (pipelined) as the app runs it from a camera."""
    from avatarify.compose import frame_photo
    from avatarify.datatypes import DrivingFrame
    from avatarify.engines.fomm import FommAnimator
    from avatarify.engines.remote import RemoteAnimator
    from avatarify.landmarks import FaceMeshDetector

    photo = load_grace_hopper_bgr()
    with FaceMeshDetector(static=True) as detector:
        framed = frame_photo(photo, detector.detect(photo), 640, 360)
    driving = DrivingFrame(cv2.resize(load_astronaut_bgr(), (256, 256), interpolation=cv2.INTER_AREA), None, 123.0)
    engines = [FommAnimator(local), RemoteAnimator(RemoteRunner(server.address, wire.read_token(token_file),
                                                                late_after_s=30.0))]
    for engine in engines:
        engine.set_avatar(framed.image_bgr, framed.landmarks)
        engine.set_neutral(DrivingFrame(engine.paste_back.crop_bgr, None, 0.0))
    want = engines[0].animate(driving)
    try:
        # Live, a frame's picture comes with a later call; until then the newest one received is shown.
        assert wait_until(lambda: np.abs(engines[1].animate(driving).astype(int) - want).max() <= 1, 60)
        assert engines[1].backend_info()["note"].startswith("server rtt")
        assert engines[1].shown_timestamp == 123.0  # latency counts from the capture of the frame shown
        assert "rtt_ms" in engines[1].run_stats()
    finally:
        engines[1].close()


def test_frames_of_several_sessions_are_batched_and_each_gets_its_own_avatar(server, token_file, images,
                                                                               references):
    token = wire.read_token(token_file)
    sessions = {}
    for avatar, neutral in (("astronaut", "mirrored"), ("hopper", "hopper")):
        sessions[avatar], error = set_avatar_call(server, token, avatar=wire.encode_image(images[avatar], "raw"),
                                                  neutral=wire.encode_image(images[neutral], "raw"))
        assert error == ""
        assert len(sessions[avatar]) >= 43  # 256 random bits, URL-safe base64
    assert sessions["astronaut"] != sessions["hopper"]
    driving = {"astronaut": "hopper", "hopper": "mirrored"}
    executions_before = server.metric("nv_inference_exec_count", wire.ANIMATE)
    requests_before = server.metric("nv_inference_count", wire.ANIMATE)
    results, threads = {}, []

    def send(avatar: str, index: int) -> None:
        reply = call(server, wire.ANIMATE, token, outputs=("prediction", "error"),
                     session=(wire.bytes_tensor(sessions[avatar]), "BYTES"),
                     driving=(wire.bytes_tensor(wire.encode_image(images[driving[avatar]], "raw")), "BYTES"),
                     strength=(np.array([[STRENGTH]], np.float32), "FP32"))
        results[(avatar, index)] = reply

    for index in range(3):
        for avatar in sessions:
            threads.append(threading.Thread(target=send, args=(avatar, index)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 6
    for (avatar, _), reply in results.items():
        assert reply["error"][0, 0] == b""
        assert np.abs(reply["prediction"] - references[avatar]).max() <= PARITY  # never the other's avatar
    time.sleep(2.5)  # Triton refreshes its metrics every 2 s
    requests = server.metric("nv_inference_count", wire.ANIMATE) - requests_before
    executions = server.metric("nv_inference_exec_count", wire.ANIMATE) - executions_before
    assert requests == 6 and executions < 6  # some frames of different sessions shared a network pass


def test_without_the_token_or_with_a_wrong_one_inference_is_refused(server, token_file, images):
    from tritonclient.utils import InferenceServerException

    for token in (None, "not-the-right-token-at-all"):
        with pytest.raises(InferenceServerException, match="restricted"):
            set_avatar_call(server, token, avatar=wire.encode_image(images["hopper"], "raw"))
        with pytest.raises(InferenceServerException, match="restricted"):
            animate_call(server, token, "x" * 43, wire.encode_image(images["hopper"], "raw"))
    with pytest.raises(RunnerError, match="refused the access token"):
        RemoteRunner(server.address, "not-the-right-token-at-all")
    assert server.ready()  # health stays open for probes and load balancers


def test_sessions_cannot_be_guessed_or_chosen(server, token_file, images):
    token = wire.read_token(token_file)
    avatar = wire.encode_image(images["hopper"], "raw")
    chosen = "my-own-session-id"
    session, error = set_avatar_call(server, token, session=chosen, avatar=avatar)
    assert error == "" and session != chosen  # the server names sessions, never the client
    assert animate_call(server, token, chosen, avatar) == wire.UNKNOWN_SESSION
    assert animate_call(server, token, session[:-1] + ("A" if session[-1] != "A" else "B"), avatar) == (
        wire.UNKNOWN_SESSION)
    assert animate_call(server, token, session, avatar) == ""


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(server, token_file, images):
    from tritonclient.utils import InferenceServerException

    token = wire.read_token(token_file)
    good = wire.encode_image(images["hopper"], "raw")
    session, _ = set_avatar_call(server, token, avatar=good)
    small = cv2.imencode(".jpg", np.zeros((128, 128, 3), np.uint8))[1].tobytes()
    bomb = cv2.imencode(".jpg", np.zeros((4096, 4096, 3), np.uint8))[1].tobytes()  # 65 kB, 48 MB decoded
    bad_frames = {
        good[:-1]: "neither 196608 raw bytes",
        b"\x00" * (2 << 20): "at most 1048576",
        small: "it is 128×128",
        bomb: "it is 4096×4096",  # refused from its header, never decoded
        b"": "is empty",
    }
    for frame, message in bad_frames.items():
        assert message in animate_call(server, token, session, frame)
    assert "strength" in animate_call(server, token, session, good, strength=float("nan"))
    assert "printable" in animate_call(server, token, "\u00e9t\u00e9", good)
    assert "needs an avatar or a neutral" in set_avatar_call(server, token, session=session)[1]
    assert set_avatar_call(server, token, avatar=good[:100])[1].startswith("The avatar is neither")
    # Triton itself refuses wrong dtypes and shapes before the model sees them.
    with pytest.raises(InferenceServerException, match="data-type"):
        animate_call(server, token, session, good, overrides={"strength": (np.array([[0.5]], np.float64), "FP64")})
    with pytest.raises(InferenceServerException, match="shape"):
        animate_call(server, token, session, good, overrides={"driving": (np.array([[good, good]], np.object_), "BYTES")})
    assert animate_call(server, token, session, good) == ""  # still serving, same session
    assert server.process.poll() is None


def test_health_and_metrics_are_triton_s_own_and_need_no_token(server):
    assert server.ready()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/live", timeout=5) as reply:
        assert reply.status == 200
    metrics = server.metrics()
    for name in ("nv_inference_queue_duration_us", "nv_inference_request_success", "nv_inference_exec_count"):
        assert f'{name}{{model="{wire.ANIMATE}"' in metrics
    if importlib.util.find_spec("yaml") is not None:  # what the Kubernetes autoscaler reads is really there
        from test_deploy import adapter_metric_names

        for name in adapter_metric_names():
            assert f'{name}{{model="{wire.ANIMATE}"' in metrics


@pytest.fixture(scope="module")
def app_inputs(tmp_path_factory):
    """A 4-frame synthesized driving clip and an avatar photo, as files for run_live.py."""
    from bench.clips import make_clip, write_clip

    folder = tmp_path_factory.mktemp("app")
    frames, truth = make_clip("astronaut", "mixed", frames=4, size=256)
    video, _ = write_clip(folder / "clip", frames, truth)
    avatar = folder / "hopper.jpg"
    cv2.imwrite(str(avatar), load_grace_hopper_bgr())
    return video, avatar


def run_app(video, avatar, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_live.py"), "--avatar", str(avatar), "--camera", str(video),
                           "--engine", "remote", "--no-preview", "--no-virtual-cam", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_live_app_animates_through_the_server_and_reports_round_trips(server, token_file, app_inputs, tmp_path):
    stats_path, out = tmp_path / "stats.json", tmp_path / "out.mp4"
    result = run_app(*app_inputs, "--server", server.address, "--token-file", str(token_file), "--output", str(out),
                     "--stats", str(stats_path))
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["engine"] == "remote" and stats["frames"] == 4
    assert stats["providers"] == [f"torch-cpu-optimized@{server.address}"]
    assert 0 < stats["rtt_ms"]["p50"] <= stats["rtt_ms"]["p95"]
    # A file waits for each frame: 4 replies, plus the avatar's picture at rest that set_avatar asks for.
    assert stats["remote"]["replies"] == 4 + 1 and stats["remote"]["late_replies"] == 0
    assert {"latency_ms", "stages_ms", "fps", "peak_rss_mb", "startup_s"} <= stats.keys()


def test_unreachable_server_at_start_is_one_line_and_exit_code_2(token_file, app_inputs, server):
    from bench.serving import free_ports

    result = run_app(*app_inputs, "--server", f"127.0.0.1:{free_ports(1)[0]}", "--token-file", str(token_file))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Cannot reach the avatarify server" in errors[0] and "Traceback" not in result.stderr


# --- a server that forgets quickly, stopped and started again ------------------------------------------


@pytest.fixture(scope="module")
def forgetful(fomm_checkpoint, token_file, tmp_path_factory, references):
    """Sessions expire after 2 s idle; gRPC over TLS (Triton's own, a self-signed certificate), so the
    client's grpcs:// path is the one tested here, with its CA given as a user behind a private CA would."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test certificate")
    folder = tmp_path_factory.mktemp("forgetful")
    process = ServerProcess(fomm_checkpoint, token_file, folder / "server.log", "--session-idle-s", "2",
                            tls_dir=folder / "tls")
    previous = os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(process.certificate)  # read at the first TLS channel
    yield process.start()
    process.stop()
    if previous is None:
        del os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"]
    else:
        os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = previous


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_idle_session_expires_and_the_client_sends_its_avatar_again(forgetful, token_file, images, references):
    runner = connect(forgetful, token_file, retry_s=0.2)
    try:
        assert np.abs(drive(runner, images, "astronaut", "mirrored", "hopper") - references["astronaut"]).max() <= PARITY
        session = runner._session
        time.sleep(3)  # idle longer than --session-idle-s
        token = wire.read_token(token_file)
        frame = wire.encode_image(images["hopper"], "raw")
        assert animate_call(forgetful, token, session, frame) == wire.UNKNOWN_SESSION
        runner.animate(images["hopper"], STRENGTH)  # answered "unknown session": re-send in the background
        assert wait_until(lambda: runner._connected, 60) and runner._session != session
        again = runner.animate(images["hopper"], STRENGTH)
        assert np.abs(again - references["astronaut"]).max() <= PARITY  # the same avatar and neutral as before
    finally:
        runner.close()


def test_server_restart_mid_run_the_avatar_holds_still_then_the_client_recovers(forgetful, token_file, images,
                                                                                  references):
    runner = RemoteRunner(forgetful.client_address, wire.read_token(token_file), late_after_s=30.0, retry_s=0.5)
    try:
        runner.prepare_source(images["astronaut"])
        runner.set_neutral(images["mirrored"])
        assert wait_until(lambda: np.abs(runner.animate(images["hopper"], STRENGTH)
                                         - references["astronaut"]).max() <= PARITY, 60)
        held = runner.animate(images["hopper"], STRENGTH)
        forgetful.stop()
        for _ in range(20):  # live frames keep coming while the server is gone: no exception, no queue
            assert np.array_equal(runner.animate(images["mirrored"], 1.0), held)
            time.sleep(0.05)
        assert wait_until(lambda: "reconnecting" in runner.status, 30), runner.status
        assert runner.disconnects == 1
        replies_before = len(runner.rtt_ms)  # a frame in flight at the stop may still have been answered

        forgetful.start()  # same ports, same token file
        assert wait_until(lambda: runner._connected, 90), runner.status
        assert wait_until(lambda: runner.animate(images["hopper"], STRENGTH) is not None
                          and len(runner.rtt_ms) > replies_before, 60)  # a reply of the new server
        assert np.abs(runner.animate(images["hopper"], STRENGTH) - references["astronaut"]).max() <= PARITY
        assert runner.status.startswith("server rtt") and runner.disconnects == 1
    finally:
        runner.close()


# --- the server's start-up errors ----------------------------------------------------------------------


def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatarify.server", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_server_start_up_errors_are_one_line_and_exit_code_2(tmp_path, fomm_checkpoint, server):
    from bench.serving import free_ports

    http, metrics = (str(port) for port in free_ports(2))
    common = ["--address", "127.0.0.1", "--http-port", http, "--metrics-port", metrics]
    free = [*common, "--grpc-port", str(free_ports(1)[0])]
    token = ["--token-file", str(tmp_path / "token")]
    missing = run_server("--checkpoint", str(tmp_path / "none.pth.tar"), *free, *token)
    busy = run_server("--checkpoint", str(fomm_checkpoint), *common, "--grpc-port", str(server.grpc_port), *token)
    (tmp_path / "bad.token").write_text("a b\n")
    bad_token = run_server("--checkpoint", str(fomm_checkpoint), *free, "--token-file", str(tmp_path / "bad.token"))
    for result, message in ((missing, "does not exist"), (busy, "another server may run there"),
                            (bad_token, "does not hold a token")):
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "token").stat().st_mode & 0o077 == 0  # the written token is the owner's alone



def test_the_hud_shows_the_engine_s_status_line(tmp_path):
    from avatarify.app import LiveApp
    from avatarify.avatars import load_avatars
    from avatarify.config import Settings
    from avatarify.engines.base import Animator
    from avatarify.stats import Stats

    class Reporting(Animator):
        name = "remote"

        def set_avatar(self, avatar_bgr, landmarks) -> None:
            pass

        def set_neutral(self, driving) -> None:
            pass

        def animate(self, driving) -> np.ndarray:
            return np.zeros((720, 1280, 3), np.uint8)

        def backend_info(self) -> dict:
            return {"backend": "remote", "providers": ["x"], "note": "server rtt 12 ms"}

    photo = tmp_path / "hopper.jpg"
    cv2.imwrite(str(photo), load_grace_hopper_bgr())
    settings = Settings(avatar=[photo], preview=False, virtual_cam=False)
    app = LiveApp(settings, Reporting(), load_avatars([photo]), source=None, sinks=[], preview=None,
                  stats=Stats())
    try:
        from avatarify.hud import hud_lines

        assert "remote on x (server rtt 12 ms)" in hud_lines(app._hud_info())
    finally:
        app.close()
