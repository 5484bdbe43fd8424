"""Every hotkey changes the controls as its table entry says; the README shows the same table."""
from __future__ import annotations

import numpy as np
import pytest

from avatarify.config import Settings
from avatarify.hotkeys import ESC, HOTKEYS, Controls, handle_key, key_name, markdown_table
from conftest import ROOT


@pytest.fixture
def controls() -> Controls:
    controls = Controls.from_settings(Settings())
    controls.avatar_count = 3
    return controls


def press(controls: Controls, key: str) -> None:
    code = ESC if key == "Esc" else ord(key)
    assert handle_key(code, controls) is not None, f"{key!r} is not a hotkey"


@pytest.mark.parametrize("key", ["q", "Esc"])
def test_quit(controls, key):
    press(controls, key)
    assert controls.quit


def test_calibrate_requests_a_neutral(controls):
    press(controls, "c")
    assert controls.calibrate


def test_next_face_requests_a_switch(controls):
    press(controls, "n")
    assert controls.next_face and "next face" in controls.message


@pytest.mark.parametrize("key, name", [("f", "find_best"), ("o", "overlay"), ("m", "mirror"),
                                       ("p", "passthrough"), ("i", "hud")])
def test_toggles(controls, key, name):
    before = getattr(controls, name)
    press(controls, key)
    assert getattr(controls, name) is (not before)
    press(controls, key)
    assert getattr(controls, name) is before


def test_number_keys_pick_an_avatar_that_exists(controls):
    press(controls, "2")
    assert controls.avatar_index == 1
    press(controls, "9")  # only 3 loaded: stays, and says why
    assert controls.avatar_index == 1 and "3 loaded" in controls.message


def test_previous_next_avatar_wrap_around(controls):
    press(controls, "a")
    assert controls.avatar_index == 2
    press(controls, "d")
    press(controls, "d")
    assert controls.avatar_index == 1


def test_reload_requests_the_folder_again(controls):
    press(controls, "l")
    assert controls.reload_avatars


def test_zoom_and_move_the_crop_then_reset(controls):
    press(controls, "w")
    assert controls.zoom == pytest.approx(controls.zoom_step)
    press(controls, "s")
    press(controls, "s")
    assert controls.zoom == pytest.approx(1 / controls.zoom_step)
    for key, direction in (("u", (0, -1)), ("j", (0, 1)), ("h", (-1, 0)), ("k", (1, 0))):
        before = controls.offset.copy()
        press(controls, key)
        np.testing.assert_allclose(controls.offset - before, np.array(direction) * controls.move_step)
    press(controls, "z")
    assert controls.zoom == 1.0 and not controls.offset.any()


def test_strength_steps_and_stays_in_range(controls):
    press(controls, "+")
    assert controls.strength == pytest.approx(1.0 + controls.strength_step)
    press(controls, "=")  # the unshifted + key
    press(controls, "-")
    assert controls.strength == pytest.approx(1.0 + controls.strength_step)
    for _ in range(50):
        press(controls, "-")
    assert controls.strength == 0.0
    for _ in range(50):
        press(controls, "+")
    assert controls.strength == controls.max_strength


def test_region_cycles_through_the_engine_regions(controls):
    seen = [controls.region]
    for _ in range(3):
        press(controls, "r")
        seen.append(controls.region)
    assert seen == ["all", "expression", "pose", "all"]


def test_uppercase_and_modifier_bits_still_match(controls):
    assert key_name(ord("Q")) == "q"
    assert key_name(0x100000 | ord("c")) == "c"
    assert handle_key(-1, controls) is None
    assert handle_key(ord("x"), controls) is None


def test_every_key_is_in_exactly_one_entry():
    keys = [key for hotkey in HOTKEYS for key in hotkey.keys]
    assert len(keys) == len(set(keys))


def test_every_hotkey_is_tested_here():
    tested = set("q c f 1 2 9 a d l n w s u j h k z o m p i + = - r".split()) | {"Esc"}
    assert {key for hotkey in HOTKEYS for key in hotkey.keys} - tested <= set("345678")


def test_readme_shows_the_hotkey_table_of_the_code():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's hotkey table differs from avatarify/hotkeys.py: " \
                                       "paste hotkeys.markdown_table() into it"
