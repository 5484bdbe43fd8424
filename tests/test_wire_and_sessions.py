"""The server's session store (ids, idle expiry, memory cap) and the wire format's checks, without a
server: these parts decide who may use which avatar and what the server accepts."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatarify import wire
from avatarify.engines.base import AnimatorError
from avatarify.engines.fomm import bgr_to_network
from avatarify.engines.remote import server_address
from avatarify.server import SessionStore, ensure_token
from conftest import load_astronaut_bgr


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(megabytes: int) -> tuple[dict, dict]:
    return {"source_features": np.zeros(megabytes << 18, np.float32)}, {"adapt_scale": np.ones(1, np.float32)}


def test_sessions_get_random_ids_and_only_their_id_reaches_them():
    store = SessionStore(idle_s=60, max_bytes=1 << 30)
    first, second = store.put("", *state(1)), store.put("", *state(1))
    assert first != second and len(first) >= 43 and len(store) == 2
    assert store.put("chosen-by-client", *state(1)) != "chosen-by-client"  # no session fixation
    assert store.put(first, *state(2)) == first and len(store) == 3  # a known id is updated in place
    assert store.get(first).source["source_features"].nbytes == 2 << 20
    with pytest.raises(wire.WireError, match="Unknown or expired session"):
        store.get(first[:-1])


def test_idle_sessions_expire_and_the_memory_cap_drops_the_least_recently_used():
    clock = Clock()
    one = (1 << 20) + 4  # bytes of one state(1)
    store = SessionStore(idle_s=10, max_bytes=3 * one, clock=clock)
    a, b = store.put("", *state(1)), store.put("", *state(1))
    clock.now = 5
    store.get(a)  # a is used: b is now the least recently used
    c = store.put("", *state(1))
    assert len(store) == 3 and store.nbytes == 3 * one
    d = store.put("", *state(1))  # over the cap: b goes first
    assert len(store) == 3 and store.nbytes == 3 * one
    with pytest.raises(wire.WireError):
        store.get(b)
    clock.now = 12
    store.get(a)
    clock.now = 16  # c and d were last used at 5: idle for 11 s > 10; a only for 4 s
    assert store.get(a) and len(store) == 1 and store.nbytes == one
    for gone in (c, d):
        with pytest.raises(wire.WireError):
            store.get(gone)


def test_declared_sizes_are_read_from_jpeg_and_png_headers():
    for width, height in ((256, 256), (640, 480), (31, 7)):
        image = np.zeros((height, width, 3), np.uint8)
        for ext in (".jpg", ".png"):
            assert wire.declared_size(cv2.imencode(ext, image)[1].tobytes()) == (width, height)


def test_images_cross_the_wire_raw_exactly_and_as_jpeg_closely():
    image = bgr_to_network(load_astronaut_bgr())  # what the app hands a runner: 8-bit values
    raw = wire.encode_image(image, "raw")
    assert len(raw) == wire.RAW_IMAGE_BYTES
    assert np.array_equal(wire.decode_image(raw)[None], image)  # bit for bit
    jpeg = wire.encode_image(image, "jpeg")
    assert len(jpeg) < wire.RAW_IMAGE_BYTES / 4
    assert np.abs(wire.decode_image(jpeg)[None] - image).mean() < 0.02


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"\x00" * 1000, "neither 196608 raw bytes"),
    (b"\x00" * (wire.MAX_IMAGE_BYTES + 1), "at most"),
    (b"\xff\xd8\xff" + b"\x00" * 500, "of unreadable size"),
    (cv2.imencode(".png", np.zeros((256, 256), np.uint8))[1].tobytes(), "(256, 256)"),
    (cv2.imencode(".png", np.zeros((256, 256, 4), np.uint8))[1].tobytes(), "(256, 256, 4)"),
    (cv2.imencode(".png", np.zeros((256, 128, 3), np.uint8))[1].tobytes(), "128×256"),
    # A JPEG header that claims 60000×60000 pixels, then nothing: refused from the header alone.
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
     b"\xff\xc0\x00\x11\x08\xea\x60\xea\x60\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01", "60000×60000"),
])
def test_images_that_do_not_fit_are_refused_with_a_reason(data, message):
    with pytest.raises(wire.WireError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wire.decode_image(data, "driving frame")


def test_session_and_strength_fields_are_checked():
    assert wire.session_text(b"abc") == "abc" and wire.session_text(b"") == ""
    for bad in (b"\xc3\xa9", b"a\x00b", b"x" * 65, "text"):
        with pytest.raises(wire.WireError):
            wire.session_text(bad)
    assert wire.strength_value(np.float32(0.5)) == 0.5
    for bad in (float("nan"), -0.1, 4.5, float("inf")):
        with pytest.raises(wire.WireError, match="strength"):
            wire.strength_value(bad)


def test_token_file_is_written_once_owner_only_and_checked(tmp_path):
    path = tmp_path / "sub" / "server.token"
    token = ensure_token(path)
    assert ensure_token(path) == token and wire.read_token(path) == token  # kept, not rewritten
    assert path.stat().st_mode & 0o777 == 0o600 and len(token) >= 43
    path.write_text("short\n")
    with pytest.raises(wire.WireError, match="does not hold a token"):
        wire.read_token(path)
    with pytest.raises(wire.WireError, match="does not exist"):
        wire.read_token(tmp_path / "missing")


def test_server_address_defaults_the_port_and_refuses_nonsense():
    assert server_address("gpu.example.com") == "gpu.example.com:8001"
    assert server_address(" 10.0.0.5:9001 ") == "10.0.0.5:9001"
    assert server_address("[::1]:9001") == "[::1]:9001" and server_address("::1") == "[::1]:8001"
    assert server_address("grpcs://avatarify.example.com") == "grpcs://avatarify.example.com:443"
    assert server_address("grpc://10.0.0.5") == "10.0.0.5:8001"
    for bad in (None, "", "host:port", "host:0", "host:70000", ":8001", "http://host:8000"):
        with pytest.raises(AnimatorError):
            server_address(bad)
