"""The preview picture: what the engine sees next to what it makes, with the HUD and overlay.

Input: the driving crop (or the camera frame before a face is found), the output frame, the HUD
lines, and optionally the avatar's landmarks. Output: one BGR image for the preview window
(never sent to the virtual camera: the call sees the avatar only).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_OVERLAY_COLOR = (80, 255, 80)
_TEXT_COLOR = (255, 255, 255)


@dataclass
class HudInfo:
    """What the HUD reports; the app fills it from the stats and its own state."""

    fps: float
    stage_ms: dict[str, float]
    latency_ms: float
    engine: str
    providers: list[str]
    status: list[str]  # face found / lost, avatar, strength, find-best score
    message: str = ""  # the last hotkey's effect
    backend_note: str = ""  # e.g. "GPU idle: <name>" when FOMM runs on the CPU beside an NVIDIA GPU


def hud_lines(info: HudInfo) -> list[str]:
    stages = " ".join(f"{name} {ms:.1f}" for name, ms in info.stage_ms.items())
    lines = [f"{info.fps:5.1f} fps  latency {info.latency_ms:.1f} ms",
             f"ms: {stages}",
             f"{info.engine} on {', '.join(info.providers) or '?'}"
             + (f" ({info.backend_note})" if info.backend_note else ""),
             *info.status]
    if info.message:
        lines.append(info.message)
    return lines


def draw_text_block(image_bgr: np.ndarray, lines: list[str], scale: float = 0.4) -> None:
    """Lines of text at the top left, on a darkened band so they stay readable on any picture."""
    if not lines:
        return
    line_h = int(22 * scale / 0.5)
    width = max(cv2.getTextSize(line, _FONT, scale, 1)[0][0] for line in lines) + 10
    height = line_h * len(lines) + 6
    band = image_bgr[:height, :width]
    band[:] = (band * 0.4).astype(np.uint8)
    for row, line in enumerate(lines):
        cv2.putText(image_bgr, line, (5, line_h * (row + 1)), _FONT, scale, _TEXT_COLOR, 1, cv2.LINE_AA)


def draw_landmarks(image_bgr: np.ndarray, points: np.ndarray, color=_OVERLAY_COLOR) -> None:
    """Landmarks as dots; every second mesh point is enough to see the face's outline and features."""
    for x, y in np.asarray(points)[::2].astype(np.int32):
        cv2.circle(image_bgr, (int(x), int(y)), 1, color, -1, cv2.LINE_AA)


def _at_height(image_bgr: np.ndarray, height: int) -> np.ndarray:
    """`image_bgr` scaled to `height` (aspect kept); a copy either way, as it is drawn on."""
    if image_bgr.shape[0] == height:
        return image_bgr.copy()
    width = max(1, round(image_bgr.shape[1] * height / image_bgr.shape[0]))
    interpolation = cv2.INTER_AREA if image_bgr.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image_bgr, (width, height), interpolation=interpolation)


def compose_preview(driving_bgr: np.ndarray, output_bgr: np.ndarray, hud: list[str] | None,
                    overlay_points: np.ndarray | None = None, height: int | None = None) -> np.ndarray:
    """[driving | output] side by side at `height` (default: the output's), HUD over the driving
    half. `overlay_points` are in the driving picture's pixels."""
    height = height or output_bgr.shape[0]
    scale = height / driving_bgr.shape[0]
    driving_bgr = _at_height(driving_bgr, height)  # drawn on below; the engine's input stays clean
    if overlay_points is not None:
        draw_landmarks(driving_bgr, np.asarray(overlay_points) * scale)
    preview = np.hstack([driving_bgr, _at_height(output_bgr, height)])
    if hud:
        draw_text_block(preview, hud)
    return preview
