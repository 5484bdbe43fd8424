"""Keypoint normalization for animation (ARCHITECTURE.md §9) and the 2-D convex-hull area.

`normalize_kp` is the reference: FOMM's relative movement / relative Jacobian / adapt-scale
transfer from (kp_source, kp_driving, kp_initial) dicts, with torch.inverse as the original uses.
`adapt_movement_scale` is the hull-area ratio computed once per calibration (no scipy).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

_MIN_HULL_AREA = 1e-12  # below this the neutral keypoints are collinear: no meaningful scale


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (monotone chain + shoelace), in float64."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).reshape(-1, 2))))
    if len(pts) < 3:
        return 0.0

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(chain_points: list) -> list:
        chain: list = []
        for p in chain_points:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]  # the last point starts the other half

    hull = np.array(half(pts) + half(pts[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def adapt_movement_scale(source_value: torch.Tensor | np.ndarray, initial_value: torch.Tensor | np.ndarray) -> float:
    """α = sqrt(hull area of source kps) / sqrt(hull area of initial driving kps), batch element 0."""
    source = np.asarray(torch.as_tensor(source_value).detach().cpu())[0]
    initial = np.asarray(torch.as_tensor(initial_value).detach().cpu())[0]
    initial_area = convex_hull_area(initial)
    if initial_area < _MIN_HULL_AREA:
        log.warning("Neutral keypoints are collinear; movement scale left at 1.")
        return 1.0
    return float(np.sqrt(convex_hull_area(source)) / np.sqrt(initial_area))


def normalize_kp(kp_source: dict[str, torch.Tensor], kp_driving: dict[str, torch.Tensor],
                 kp_driving_initial: dict[str, torch.Tensor], adapt_movement_scale_on: bool = False,
                 use_relative_movement: bool = False, use_relative_jacobian: bool = False) -> dict[str, torch.Tensor]:
    """FOMM's transfer of driving motion onto the source keypoints (the parity reference)."""
    scale = (adapt_movement_scale(kp_source["value"], kp_driving_initial["value"])
             if adapt_movement_scale_on else 1.0)
    kp_new = dict(kp_driving)
    if use_relative_movement:
        kp_new["value"] = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
        if use_relative_jacobian:
            relative = kp_driving["jacobian"] @ torch.inverse(kp_driving_initial["jacobian"])
            kp_new["jacobian"] = relative @ kp_source["jacobian"]
    return kp_new
