"""Settings: every knob of the live app, its default and its one-line documentation, in one place.

Input: command-line arguments (`parse_args`). Output: a `Settings` dataclass that the app hands to
the stages. The help text of each flag is the `help` metadata of its field, so a knob is documented
once; knobs without a flag are tuning constants that only change by editing this file.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from avatarify.wire import DEFAULT_TOKEN_FILE, TRANSPORTS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AVATARS_DIR = Path("avatars")
# Where --engine auto looks for the FOMM checkpoint when --checkpoint is not given (first found wins).
DEFAULT_CHECKPOINTS = (
    PROJECT_ROOT / "checkpoints" / "vox-adv-cpk.pth.tar",
    PROJECT_ROOT / "checkpoints" / "vox-cpk.pth.tar",
)
DEFAULT_CACHE_DIR = PROJECT_ROOT / "cache"
ENGINES = ("auto", "mesh", "fomm", "remote")
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SIZES = (256, 512)
FRAMINGS = ("call", "crop")
FILLS = ("blur", "zoom")
DEFAULT_CROP_SIZE = 256


def _knob(default, help: str, **kwargs):
    """A dataclass field carrying its documentation (used for --help and the README)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class Settings:
    """Every knob of the live app. Flag names are the field names with dashes."""

    # --- inputs ---------------------------------------------------------------------------------
    avatar: list[Path] = _knob([DEFAULT_AVATARS_DIR],
                               "avatar photo or folder of photos (jpg/png/webp); repeatable; "
                               "hotkeys 1-9 and a/d switch between them")
    camera: int | Path = _knob(0, "webcam index, or a video file read frame by frame (none dropped)")
    realtime: bool = _knob(False, "with --camera FILE: play the file at its own frame rate, as a webcam "
                                  "delivers frames (a frame the app is too busy for is skipped, as a "
                                  "webcam's is), e.g. to drive a call from a recorded video")
    demo: bool = _knob(False, "write two public-domain sample photos into avatars/ and use them")
    # --- engine ---------------------------------------------------------------------------------
    engine: str = _knob("auto", "animation engine: mesh (embedded, no weights), fomm (neural, needs "
                                "a checkpoint), remote (fomm on a server, see --server), or auto (fomm "
                                "when a checkpoint is given or found in checkpoints/, else mesh)")
    checkpoint: Path | None = _knob(None, "FOMM checkpoint (vox-adv-cpk.pth.tar); default: looked "
                                          "up in checkpoints/")
    backend: str = _knob("auto", "FOMM runner: auto takes the fastest path that runs here: a GPU path "
                                 "(TensorRT, onnxruntime CUDA, torch CUDA) if one runs, else the faster "
                                 "of torch and onnxruntime on the CPU; timed once at the first start "
                                 "and cached beside the ONNX export")
    device: str = _knob("auto", "FOMM device: auto uses a GPU path when one runs here; cpu keeps FOMM "
                                "on the CPU")
    precision: str = _knob("auto", "FOMM arithmetic: auto is fp16 on a GPU; on a CPU with native bf16 "
                                   "--backend auto times bf16 and fp32 and takes the faster (bf16: close "
                                   "but not exact), --backend torch takes bf16 with AMX, else fp32; bf16 "
                                   "needs a CPU with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT")
    size: int | None = _knob(None, "side of the square output with --framing crop (256 or 512; default "
                                   "256); with --framing call the output is the camera size and this is "
                                   "ignored (FOMM's network always runs at 256)")
    server: str | None = _knob(None, "remote engine: the server's HOST:PORT (its gRPC port, 8001 if not "
                                     "given), started with `python -m avatarify.server`")
    token_file: Path = _knob(DEFAULT_TOKEN_FILE, "remote engine: file with the server's access token (the "
                                                 "server writes it at its first start)")
    transport: str = _knob("raw", "remote engine: raw sends 8-bit crops and gets float predictions "
                                  "(identical to local FOMM; 236 Mbit/s at 30 fps, for a LAN), jpeg sends "
                                  "and gets JPEG (~5 Mbit/s; small error, see README)")
    cache_dir: Path = _knob(DEFAULT_CACHE_DIR, "where exported ONNX / TensorRT files are cached "
                                               "(keyed by the checkpoint's hash)")
    # --- outputs --------------------------------------------------------------------------------
    framing: str = _knob("call", "what the call sees: call = the avatar photo at full resolution filling "
                                 "the camera frame around the face (only the face moves); crop = the "
                                 "square face crop of --size, padded to the camera size")
    fill: str = _knob("blur", "with --framing call, where the photo is narrower than the frame: blur = "
                              "the photo over a blurred, dimmed enlargement of itself; zoom = framed "
                              "closer so the photo fills the frame (the face comes out bigger)")
    output: Path | None = _knob(None, "also record to this .mp4 file exactly what the virtual camera gets")
    virtual_cam: bool = _knob(True, "send the avatar to a virtual camera (v4l2loopback / OBS)")
    cam_width: int = _knob(1280, "camera frame width: what the virtual camera and --output get")
    cam_height: int = _knob(720, "camera frame height")
    cam_fps: float = _knob(30.0, "frame rate announced to the virtual camera")
    virtual_cam_backend: str | None = _knob(None, "pyvirtualcam backend (v4l2loopback, obs, "
                                                  "unitycapture); default: the first that works")
    virtual_cam_device: str | None = _knob(None, "virtual camera device, e.g. /dev/video10 or "
                                                 "'OBS Virtual Camera'; default: the first free one")
    preview: bool = _knob(True, "show the preview window with the HUD (needs a display)")
    max_frames: int | None = _knob(None, "stop after this many frames")
    stats: Path | None = _knob(None, "write timing, latency and memory statistics to this JSON file")
    verbose: bool = _knob(False, "log debug details")
    # --- camera ---------------------------------------------------------------------------------
    capture_width: int = _knob(640, "resolution asked of the webcam (width)")
    capture_height: int = _knob(480, "resolution asked of the webcam (height)")
    mirror: bool = _knob(False, "start mirrored (hotkey m toggles)")
    # --- tracking (no flags: tuning constants) ----------------------------------------------------
    # FOMM squares the face box and adds `increase` of its side on each side; its vox crops come from
    # the union of boxes over a whole clip, so a single-frame landmark box needs a larger margin to
    # frame the head the same way (hair and chin inside the crop).
    crop_margin: float = _knob(0.3, "share of the face box side added on each side of the crop")
    box_min_cutoff: float = _knob(0.4, "One Euro cutoff (Hz) of the crop box when the head is still")
    box_beta: float = _knob(0.02, "One Euro speed coefficient of the crop box")
    face_search_windows: int = _knob(3, "face detector runs per frame while no face is tracked (the whole "
                                        "frame and tiles, in turn: a full pass takes 1, 3 and 6 frames at "
                                        "640x480, 1280x720 and 1920x1080)")
    relock_after_s: float = _knob(1.5, "seconds a lost face is searched for near its last place before the "
                                       "largest face in view is taken instead")
    min_face_visible: float = _knob(0.6, "share of the face that must be inside the frame to track it")
    face_lost_ease_s: float = _knob(1.0, "seconds to ease back to the neutral pose when the face is lost")
    # The first face found becomes the neutral, but a search pass takes up to 6 frames (a far face in
    # a 1080p frame), so that frame may catch the user mid-word: a neutral with the mouth open makes
    # every closing read as the lips pressing through each other (the avatar's mouth barely moves).
    neutral_settle_s: float = _knob(2.0, "seconds after a face is first found (or switched to) in which the "
                                         "automatic neutral moves to any frame with a more closed mouth")
    neutral_mouth_margin: float = _knob(0.05, "how much more closed (mouth-open ratio: inner-lip gap over mouth "
                                              "width, ~0.5 wide open) a frame's mouth must be to become the "
                                              "neutral in that time; well above a still mouth's wobble")
    zoom_step: float = _knob(1.1, "crop zoom factor per w/s key press")
    move_step: float = _knob(0.04, "crop move per h/j/k/u key press, as a share of the crop side")
    strength_step: float = _knob(0.1, "motion strength change per +/- key press")
    max_strength: float = _knob(2.0, "largest motion strength reachable with +")


# Flags that the command line offers (field name → argparse extras). Others are tuning constants.
_FLAGS: dict[str, dict] = {
    "avatar": {"action": "append", "type": Path, "metavar": "PATH"},
    "camera": {"metavar": "INDEX|FILE"},
    "realtime": {"action": "store_true"},
    "demo": {"action": "store_true"},
    "engine": {"choices": ENGINES},
    "checkpoint": {"type": Path, "metavar": "PATH"},
    "backend": {"choices": BACKENDS},
    "device": {"choices": DEVICES},
    "precision": {"choices": PRECISIONS},
    "size": {"type": int, "choices": SIZES},
    "framing": {"choices": FRAMINGS},
    "fill": {"choices": FILLS},
    "server": {"metavar": "HOST:PORT"},
    "token_file": {"type": Path, "metavar": "FILE"},
    "transport": {"choices": TRANSPORTS},
    "cache_dir": {"type": Path, "metavar": "DIR"},
    "output": {"type": Path, "metavar": "FILE.mp4"},
    "virtual_cam": {"action": argparse.BooleanOptionalAction},
    "cam_width": {"type": int, "metavar": "PX"},
    "cam_height": {"type": int, "metavar": "PX"},
    "cam_fps": {"type": float, "metavar": "FPS"},
    "virtual_cam_backend": {"metavar": "NAME"},
    "virtual_cam_device": {"metavar": "DEVICE"},
    "preview": {"action": argparse.BooleanOptionalAction},
    "max_frames": {"type": int, "metavar": "N"},
    "stats": {"type": Path, "metavar": "FILE.json"},
    "verbose": {"action": "store_true"},
    "capture_width": {"type": int, "metavar": "PX"},
    "capture_height": {"type": int, "metavar": "PX"},
    "mirror": {"action": "store_true"},
}


def parse_camera(value: str | int | Path) -> int | Path:
    """`--camera`: a plain integer is a webcam index, anything else a video file path."""
    if isinstance(value, (int, Path)):
        return value
    return int(value) if value.strip().isdigit() else Path(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_live.py",
        description="Animate an avatar photo with your webcam and send it to a virtual camera. "
                    "Hotkeys are listed in the README and shown with the HUD (i).",
    )
    defaults = Settings()
    for knob in fields(Settings):
        if knob.name not in _FLAGS:
            continue
        extras = dict(_FLAGS[knob.name])
        default = getattr(defaults, knob.name)
        help_text = knob.metadata["help"]
        if default is not None and extras.get("action") not in ("store_true", "append"):
            help_text += f" (default: {default})"
        parser.add_argument("--" + knob.name.replace("_", "-"), dest=knob.name,
                            default=None if extras.get("action") == "append" else default,
                            help=help_text, **extras)
    return parser


def parse_args(argv: list[str] | None = None) -> Settings:
    """Settings from the command line (argparse exits with a usage line on malformed flags)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = vars(args)
    if values["avatar"] is None:
        values["avatar"] = [DEFAULT_AVATARS_DIR]
    values["camera"] = parse_camera(values["camera"])
    if values["max_frames"] is not None and values["max_frames"] < 1:
        parser.error("--max-frames must be at least 1")
    if values["cam_width"] < 16 or values["cam_height"] < 16:
        parser.error("--cam-width and --cam-height must be at least 16 pixels")
    return Settings(**values)


def crop_size(settings: Settings) -> int:
    """The square side of the driving crop and of the --framing crop output."""
    return settings.size or DEFAULT_CROP_SIZE


def find_default_checkpoint() -> Path | None:
    """The first of DEFAULT_CHECKPOINTS that exists, for --engine auto."""
    return next((path for path in DEFAULT_CHECKPOINTS if path.is_file()), None)
