"""The wire format between the remote engine (engines/remote.py) and the server (server.py).

Two Triton models (KServe v2 protocol over gRPC):
- `set_avatar`  inputs `session`, `avatar`, `neutral` (BYTES, shape [1] each; `avatar` / `neutral` may
  be empty = "keep") → outputs `session` (the id to use from now on), `error` (empty when it worked),
  `runner` (what runs the network on the server, e.g. "torch-cpu-optimized").
- `animate`     inputs `session` (BYTES [1]), `driving` (BYTES [1]), `strength` (FP32 [1]) → outputs
  `prediction` (FP32 [3, 256, 256], RGB in [0, 1]) or `prediction_jpeg` (BYTES [1]), whichever the
  client asks for, and `error` (BYTES [1]). Dynamically batched: frames of many sessions run as one
  network pass.
Images travel as bytes: exactly 196,608 bytes is raw 8-bit RGB in the network's layout (3, 256, 256),
which is lossless for the app's 8-bit crops; anything else must be a JPEG or PNG of 256×256×3.
Errors a request can cause in the application (unknown session, bad image) come back in `error`, per
request, so one bad request never fails the other frames batched with it; Triton itself refuses wrong
dtypes and shapes, and requests without the access token.

Transports (client's choice, per frame): "raw" sends the crop raw and gets the float32 prediction
(bit-exact with the local torch runner); "jpeg" sends and gets JPEG (quality JPEG_QUALITY), ~30×
less data, with the error that bench/serve_perf.py measures.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

SET_AVATAR = "set_avatar"
ANIMATE = "animate"
TRANSPORTS = ("raw", "jpeg")
JPEG_QUALITY = 90
IMAGE_SIZE = 256
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # RGB planar, the network's layout
RAW_IMAGE_BYTES = int(np.prod(IMAGE_SHAPE))
MAX_IMAGE_BYTES = 1 << 20  # a 256² JPEG at quality 90 is ~30 kB; anything near 1 MiB is not a frame
MAX_SESSION_BYTES = 64
MAX_STRENGTH = 4.0
# The reply to a session the server does not know (expired, evicted, restarted server, another pod):
# the client answers it by sending its avatar again.
UNKNOWN_SESSION = "Unknown or expired session; send the avatar again (set_avatar)."
# Triton's restricted-protocol check: HTTP clients send TOKEN_HEADER, gRPC clients the prefixed form.
TOKEN_HEADER = "triton-access-token"
GRPC_TOKEN_HEADER = "triton-grpc-protocol-" + TOKEN_HEADER
DEFAULT_TOKEN_FILE = Path.home() / ".config" / "avatarify" / "server.token"
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_\-.~+/]{16,256}")  # no ',', ':' or '=' (Triton's flag syntax)
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: the only files a frame may be


class WireError(ValueError):
    """A request or reply does not fit the wire format; the message is one sentence."""


# --- images ---------------------------------------------------------------------------------------


def network_to_u8(image: np.ndarray) -> np.ndarray:
    """(1, 3, 256, 256) or (3, 256, 256) float in [0, 1] → (3, 256, 256) uint8; exact for 8-bit images."""
    image = np.asarray(image, dtype=np.float32).reshape(IMAGE_SHAPE)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def u8_to_network(image_u8: np.ndarray) -> np.ndarray:
    """(3, 256, 256) uint8 → (3, 256, 256) float32 in [0, 1], the same arithmetic as the local engine."""
    return image_u8.astype(np.float32) / 255.0


def encode_image(image: np.ndarray, transport: str) -> bytes:
    """A network image (float RGB in [0, 1]) as the bytes of one `avatar`/`neutral`/`driving` input."""
    image_u8 = network_to_u8(image)
    if transport == "raw":
        return image_u8.tobytes()
    if transport == "jpeg":
        return encode_jpeg(image_u8)
    raise WireError(f"Unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}.")


def encode_jpeg(image_u8: np.ndarray) -> bytes:
    """(3, 256, 256) RGB uint8 → JPEG bytes."""
    bgr = np.ascontiguousarray(image_u8.transpose(1, 2, 0)[:, :, ::-1])
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise WireError("The frame could not be JPEG-encoded.")
    return data.tobytes()


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Bytes of an image input → (3, 256, 256) float32 RGB in [0, 1]; WireError if it does not fit."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise WireError(f"The {what} is empty.")
    if len(data) > MAX_IMAGE_BYTES:
        raise WireError(f"The {what} has {len(data)} bytes; at most {MAX_IMAGE_BYTES} are accepted.")
    if len(data) == RAW_IMAGE_BYTES:
        return u8_to_network(np.frombuffer(data, dtype=np.uint8).reshape(IMAGE_SHAPE))
    if not data.startswith(_MAGIC):
        raise WireError(f"The {what} is neither {RAW_IMAGE_BYTES} raw bytes (3×256×256 RGB) nor a JPEG/PNG file.")
    # A small file can claim a huge picture: its header is read first, so nothing that is not 256×256
    # gets decoded (and no memory is spent on it).
    declared = declared_size(data)
    if declared != (IMAGE_SIZE, IMAGE_SIZE):
        shape = "of unreadable size" if declared is None else "{}×{}".format(*declared)
        raise WireError(f"The {what} must be a 256×256 8-bit RGB image; it is {shape}.")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        bgr = None
    if bgr is None or bgr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or bgr.dtype != np.uint8:
        shape = "undecodable" if bgr is None else f"{bgr.shape} {bgr.dtype}"
        raise WireError(f"The {what} must be a 256×256 8-bit RGB image; it is {shape}.")
    return u8_to_network(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that a PNG's IHDR or a JPEG's frame header states, without decoding; None if
    the header cannot be read."""
    if data.startswith(_MAGIC[1]):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    index = 2  # after SOI; walk the marker segments up to the frame header
    while index + 9 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            index += 2
            continue
        if marker in _JPEG_FRAME_MARKERS:
            height = int.from_bytes(data[index + 5:index + 7], "big")
            return int.from_bytes(data[index + 7:index + 9], "big"), height
        index += 2 + int.from_bytes(data[index + 2:index + 4], "big")
    return None


def decode_jpeg_prediction(data: bytes) -> np.ndarray:
    """`prediction_jpeg` → (1, 3, 256, 256) float32, the shape a runner returns."""
    return decode_image(data, "prediction")[None]


# --- small fields ---------------------------------------------------------------------------------


def session_text(value: object) -> str:
    """A `session` input element → its text; ids are short printable ASCII (empty = no session yet)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > MAX_SESSION_BYTES:
            raise WireError(f"The session id has {len(value)} bytes; ids have at most {MAX_SESSION_BYTES}.")
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            text = "\x00"
        if text.isprintable():
            return text
    raise WireError("The session id is not printable ASCII text.")


def strength_value(value: object) -> float:
    strength = float(value)
    if not 0.0 <= strength <= MAX_STRENGTH:  # also refuses NaN
        raise WireError(f"The strength is {strength}; it must be between 0 and {MAX_STRENGTH}.")
    return strength


def bytes_tensor(*values: bytes | str) -> np.ndarray:
    """A BYTES tensor of shape (1, len(values)): one request's field as Triton wants it."""
    return np.array([[v.encode() if isinstance(v, str) else v for v in values]], dtype=np.object_)


# --- the shared token -----------------------------------------------------------------------------


def read_token(path: Path) -> str:
    """The access token in `path` (one line); WireError with what to do when it is missing or unfit."""
    try:
        token = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise WireError(f"Token file {path} does not exist; copy the server's token file there or "
                        f"pass --token-file FILE.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WireError(f"Token file {path} cannot be read ({exc}); pass --token-file FILE.") from None
    if not _TOKEN_PATTERN.fullmatch(token):
        raise WireError(f"Token file {path} does not hold a token (16-256 characters of letters, digits "
                        f"and _-.~+/ on one line); remove it to let the server write a new one.")
    return token


def grpc_headers(token: str) -> dict[str, str]:
    return {GRPC_TOKEN_HEADER: token}
