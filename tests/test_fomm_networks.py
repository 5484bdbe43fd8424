"""FOMM networks: state_dict layout against the published key table, building blocks, random weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.fomm.blocks import antialias_kernel, grid_sample, make_coordinate_grid
from models.fomm.checkpoint import build_networks, random_networks
from models.fomm.keypoints import convex_hull_area

TSV = Path("/work/shared/fomm/vox256_state_dict.tsv")


def _shape(tensor: torch.Tensor) -> str:
    return "scalar" if tensor.dim() == 0 else "x".join(map(str, tensor.shape))


@pytest.mark.skipif(not TSV.is_file(), reason="key table not available")
def test_state_dict_keys_and_shapes_match_the_official_table():
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines() if not line.startswith("#")]
    assert len(rows) == 271
    kp_detector, generator = build_networks()
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        expected = [(key, shape) for owner, key, shape in rows if owner == name]
        got = [(key, _shape(value)) for key, value in module.state_dict().items()]
        assert got == expected  # same keys, same shapes, same order


def test_parameter_counts_match_the_spec():
    kp_detector, generator = build_networks()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(kp_detector) == 14_215_368
    assert count(generator) == 45_575_391
    assert count(generator.dense_motion_network) == 37_730_268


def test_antialias_kernel_values():
    kernel = antialias_kernel(3, 0.25)
    assert kernel.shape == (3, 1, 13, 13)
    # The reference values are given to 5-6 digits (half a unit of the last: 5e-7 and 5e-12 = 0.6 %);
    # float32 exp and sum on any CPU are a few ulps (~1e-8 of 0.07) off the exact value.
    assert kernel[0, 0, 6, 6].item() == pytest.approx(0.070737, abs=1e-6)
    assert kernel[0, 0, 0, 0].item() == pytest.approx(7.96e-9, rel=1e-2)


def test_identity_grid_reads_half_a_pixel_of_zero_padding():
    grid = make_coordinate_grid(64, 64).unsqueeze(0)
    warped = grid_sample(torch.ones(1, 1, 64, 64), grid)[0, 0]
    assert warped[0, 0].item() == pytest.approx(0.25)
    assert warped[0, 32].item() == pytest.approx(0.5)
    assert warped[32, 32].item() == pytest.approx(1.0)


def test_random_networks_give_distinct_keypoints_and_invertible_jacobians():
    kp_detector, _ = random_networks(seed=0)
    image = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        kp = kp_detector(image)
    value, jacobian = kp["value"][0], kp["jacobian"][0]
    assert torch.isfinite(value).all() and torch.isfinite(jacobian).all()
    assert torch.cdist(value, value).add(torch.eye(10)).min() > 0.02  # pairwise distinct
    assert torch.linalg.det(jacobian).abs().min() > 0.05
    assert (jacobian - torch.eye(2)).abs().max() > 0.05  # not trivially the identity


def test_convex_hull_area():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5], [0.2, 0.9]])
    assert convex_hull_area(square) == pytest.approx(1.0)
    triangle = np.array([[0, 0], [2, 0], [0, 3], [0.1, 0.1], [1, 0]])  # interior and collinear points
    assert convex_hull_area(triangle) == pytest.approx(3.0)
    assert convex_hull_area(np.array([[0, 0], [1, 1], [2, 2]])) == 0.0
    rng = np.random.default_rng(0)
    circle = np.stack([np.cos(t := rng.uniform(0, 2 * np.pi, 400)), np.sin(t)], 1)
    # 400 points on the circle: the inscribed polygon misses (2π/400)²/6 ≈ 4e-5 of π at even spacing,
    # 2.7e-4 with these random gaps (the bound is on geometry; float64 rounding is far below it).
    assert convex_hull_area(circle) == pytest.approx(np.pi, rel=1e-3)
