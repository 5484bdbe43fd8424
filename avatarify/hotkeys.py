"""Hotkeys: the one table of key → action, and the live controls the keys change.

Input: key codes from the preview window (`cv2.waitKey`). Output: changes to `Controls`, the
user-adjustable state the app reads every frame (and requests it acts on once, like calibrate).
The README's hotkey table is `markdown_table()` of this table (a test keeps them equal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from avatarify.config import Settings
from avatarify.engines.base import REGIONS

ESC = 27


@dataclass
class Controls:
    """What the hotkeys change. `calibrate`, `reload_avatars` and `next_face` are requests the app clears."""

    zoom_step: float
    move_step: float
    strength_step: float
    max_strength: float
    quit: bool = False
    calibrate: bool = False
    find_best: bool = False
    avatar_index: int = 0
    avatar_count: int = 1
    reload_avatars: bool = False
    next_face: bool = False
    zoom: float = 1.0
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))  # crop shift, shares of its side
    overlay: bool = False
    mirror: bool = False
    passthrough: bool = False
    hud: bool = True
    strength: float = 1.0
    region: str = REGIONS[0]
    message: str = ""  # the last thing a key did, for the HUD

    @classmethod
    def from_settings(cls, settings: Settings) -> "Controls":
        return cls(zoom_step=settings.zoom_step, move_step=settings.move_step,
                   strength_step=settings.strength_step, max_strength=settings.max_strength,
                   mirror=settings.mirror)


def _toggle(name: str, label: str) -> Callable[[Controls, str], str]:
    def toggle(controls: Controls, key: str) -> str:
        setattr(controls, name, not getattr(controls, name))
        return f"{label} {'on' if getattr(controls, name) else 'off'}"
    return toggle


def _quit(controls: Controls, key: str) -> str:
    controls.quit = True
    return "quit"


def _calibrate(controls: Controls, key: str) -> str:
    controls.calibrate = True
    return "calibrating: the next frame with a face is the neutral pose"


def _select_avatar(controls: Controls, key: str) -> str:
    wanted = int(key) - 1
    if wanted >= controls.avatar_count:
        return f"no avatar {key}: {controls.avatar_count} loaded"
    controls.avatar_index = wanted
    return f"avatar {key}"


def _step_avatar(step: int) -> Callable[[Controls, str], str]:
    def step_avatar(controls: Controls, key: str) -> str:
        controls.avatar_index = (controls.avatar_index + step) % max(controls.avatar_count, 1)
        return f"avatar {controls.avatar_index + 1}"
    return step_avatar


def _next_face(controls: Controls, key: str) -> str:
    controls.next_face = True
    return "looking for the next face"


def _reload(controls: Controls, key: str) -> str:
    controls.reload_avatars = True
    return "reloading avatars"


def _zoom(direction: int) -> Callable[[Controls, str], str]:
    def zoom(controls: Controls, key: str) -> str:
        controls.zoom = float(np.clip(controls.zoom * controls.zoom_step ** direction, 0.25, 4.0))
        return f"zoom {controls.zoom:.2f}"
    return zoom


def _move(dx: int, dy: int) -> Callable[[Controls, str], str]:
    def move(controls: Controls, key: str) -> str:
        controls.offset = np.clip(controls.offset + np.array([dx, dy]) * controls.move_step, -1.0, 1.0)
        return f"crop offset {controls.offset[0]:+.2f}, {controls.offset[1]:+.2f}"
    return move


def _reset_crop(controls: Controls, key: str) -> str:
    controls.zoom, controls.offset = 1.0, np.zeros(2)
    return "crop reset"


def _strength(direction: int) -> Callable[[Controls, str], str]:
    def strength(controls: Controls, key: str) -> str:
        value = controls.strength + direction * controls.strength_step
        controls.strength = round(float(np.clip(value, 0.0, controls.max_strength)), 3)
        return f"motion strength {controls.strength:.1f}"
    return strength


def _next_region(controls: Controls, key: str) -> str:
    controls.region = REGIONS[(REGIONS.index(controls.region) + 1) % len(REGIONS)]
    return f"region: {controls.region}"


@dataclass(frozen=True)
class Hotkey:
    keys: tuple[str, ...]  # characters this entry answers to; "Esc" is the escape key
    label: str  # how the README and HUD write the keys
    description: str
    act: Callable[[Controls, str], str]


HOTKEYS: tuple[Hotkey, ...] = (
    Hotkey(("q", "Esc"), "q / Esc", "quit", _quit),
    Hotkey(("c",), "c", "calibrate: your current pose becomes the neutral (look straight, relax)",
           _calibrate),
    Hotkey(("f",), "f", "find best frame on/off: keep the neutral that best matches the avatar's pose "
                        "(score shown, lower is better)", _toggle("find_best", "find best frame")),
    Hotkey(tuple("123456789"), "1–9", "switch to avatar 1–9", _select_avatar),
    Hotkey(("a",), "a", "previous avatar", _step_avatar(-1)),
    Hotkey(("d",), "d", "next avatar", _step_avatar(+1)),
    Hotkey(("l",), "l", "reload the avatars folder", _reload),
    Hotkey(("n",), "n", "next face: follow the next person to the right (with several people in view)",
           _next_face),
    Hotkey(("w",), "w", "zoom the camera crop in", _zoom(+1)),
    Hotkey(("s",), "s", "zoom the camera crop out", _zoom(-1)),
    Hotkey(("u",), "u", "move the camera crop up", _move(0, -1)),
    Hotkey(("j",), "j", "move the camera crop down", _move(0, +1)),
    Hotkey(("h",), "h", "move the camera crop left", _move(-1, 0)),
    Hotkey(("k",), "k", "move the camera crop right", _move(+1, 0)),
    Hotkey(("z",), "z", "reset the camera crop zoom and offset", _reset_crop),
    Hotkey(("o",), "o", "alignment overlay on/off: the avatar's landmarks over the camera",
           _toggle("overlay", "overlay")),
    Hotkey(("m",), "m", "mirror the camera on/off", _toggle("mirror", "mirror")),
    Hotkey(("p",), "p", "passthrough on/off: send the camera instead of the avatar",
           _toggle("passthrough", "passthrough")),
    Hotkey(("i",), "i", "HUD on/off: fps, per-stage ms, latency, engine, providers",
           _toggle("hud", "HUD")),
    Hotkey(("+", "="), "+ / =", "more motion", _strength(+1)),
    Hotkey(("-",), "-", "less motion", _strength(-1)),
    Hotkey(("r",), "r", "motion region: all → expression → pose", _next_region),
)

_BY_KEY: dict[str, Hotkey] = {key: hotkey for hotkey in HOTKEYS for key in hotkey.keys}


def key_name(code: int) -> str | None:
    """The table's name for an OpenCV key code ("Esc", "q", ...), or None for no/unknown key."""
    if code is None or code < 0:
        return None
    code &= 0xFF  # some GUI backends put modifier flags in the high bits
    if code == ESC:
        return "Esc"
    char = chr(code)
    return char.lower() if char.isprintable() else None


def handle_key(code: int, controls: Controls) -> Hotkey | None:
    """Apply the hotkey for `code` to `controls`; returns the entry used, or None."""
    name = key_name(code)
    hotkey = _BY_KEY.get(name) if name is not None else None
    if hotkey is not None:
        controls.message = hotkey.act(controls, name)
    return hotkey


def markdown_table() -> str:
    """The hotkey table as the README shows it."""
    rows = ["| Key | Action |", "| --- | --- |"]
    for hotkey in HOTKEYS:
        keys = " / ".join(f"`{key}`" for key in hotkey.label.split(" / "))
        rows.append(f"| {keys} | {hotkey.description} |")
    return "\n".join(rows)
