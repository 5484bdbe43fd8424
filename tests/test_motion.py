"""Motion transfer: head fit, expression residual, adapt-scale, region/strength, smoothing."""
from __future__ import annotations

import numpy as np
import pytest

from avatarify.motion import (EYES, FACE_SIDES, NUM_LANDMARKS, STABLE_POINTS, MotionSettings,
                              MotionTransfer, Similarity, as_complex, as_points, fit_similarity, garrote)
from avatarify.tracking import OneEuroFilter


def synthetic_face(seed: int = 0) -> np.ndarray:
    """478 plausible-ish points: a jittered ellipse cloud centred at (128, 128), 120 px tall."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, NUM_LANDMARKS)
    radius = np.sqrt(rng.uniform(0, 1, NUM_LANDMARKS))
    return np.stack([128 + 45 * radius * np.cos(angle), 128 + 60 * radius * np.sin(angle)], 1).astype(np.float32)


def moved(points: np.ndarray, sim: Similarity) -> np.ndarray:
    return as_points(sim(as_complex(points)))


def about(centre: complex, angle_deg: float, scale: float, shift: complex) -> Similarity:
    m = complex(scale * np.exp(1j * np.radians(angle_deg)))
    return Similarity(m, centre + shift - m * centre)


def transfer(avatar: np.ndarray, neutral: np.ndarray, smoothing: bool = False,
             deadbands: bool = False) -> MotionTransfer:
    """The geometry tests run without the deadbands (their small bias is tested on its own)."""
    settings = MotionSettings(smoothing=smoothing)
    if not deadbands:
        settings = MotionSettings(smoothing=smoothing, deadband=0.0, head_deadband=0.0)
    motion = MotionTransfer(settings)
    motion.set_avatar(avatar)
    motion.set_neutral(neutral)
    return motion


def test_similarity_algebra():
    a, b = about(10 + 5j, 20, 1.3, 4 - 2j), about(-3j, -35, 0.8, 1 + 1j)
    z = as_complex(synthetic_face())
    np.testing.assert_allclose(a.inverse()(a(z)), z, atol=1e-9)
    np.testing.assert_allclose(a.then(b)(z), b(a(z)), atol=1e-9)
    matrix = a.matrix()
    xy = synthetic_face()
    np.testing.assert_allclose(xy @ matrix[:, :2].T + matrix[:, 2], as_points(a(z)), atol=1e-3)


def test_fit_similarity_ignores_a_few_outliers():
    src = as_complex(synthetic_face())
    truth = about(128 + 128j, 8, 1.1, 6 - 3j)
    dst = truth(src)
    dst[:20] += 25.0  # badly tracked points
    fit = fit_similarity(src, dst)
    assert abs(fit.m - truth.m) < 2e-3 and abs(fit.c - truth.c) < 0.3


def test_identity_motion_returns_the_avatar_points():
    avatar = synthetic_face(1)
    neutral = moved(synthetic_face(2), about(0j, 0, 0.7, 20 + 10j))
    motion = transfer(avatar, neutral)
    target = motion.target(neutral, 0.0)
    np.testing.assert_allclose(target.points, avatar, atol=1e-3)


def test_head_motion_is_carried_into_the_avatar_geometry():
    """Driver turns 10° and shifts; the avatar (twice the driver's size) turns 10°, shifts twice as far."""
    neutral = synthetic_face(3)
    avatar = moved(neutral, about(128 + 128j, 0, 2.0, 40 + 0j))
    head = about(128 + 128j, 10, 1.05, 6 + 2j)
    motion = transfer(avatar, neutral)
    target = motion.target(moved(neutral, head), 0.0)
    assert target.head.angle_deg == pytest.approx(10.0, abs=1e-3)
    assert target.head.scale == pytest.approx(1.05, abs=1e-4)
    expected = moved(avatar, motion.driving_to_avatar.inverse().then(head).then(motion.driving_to_avatar))
    np.testing.assert_allclose(target.points, expected, atol=1e-2)
    np.testing.assert_allclose(target.expression, 0.0, atol=1e-2)


def test_expression_is_scaled_to_the_avatar_face_size():
    """FOMM's adapt-scale: a 4 px lip drop on the driver is an 8 px drop on a face twice as big,
    whatever the driver's head does at the same time."""
    neutral = synthetic_face(4)
    avatar = moved(neutral, about(128 + 128j, 0, 2.0, 0j))
    eye_points = {i for eye in EYES for i in eye.upper_lid + eye.lower_lid}
    lips = [i for i in range(NUM_LANDMARKS) if i not in STABLE_POINTS and i not in eye_points][:30]
    driving = neutral.copy()
    driving[lips, 1] += 4.0
    head = about(128 + 128j, -6, 1.0, 3 + 0j)
    target = transfer(avatar, neutral).target(moved(driving, head), 0.0, region="expression")
    drop = target.points[lips] - avatar[lips]
    np.testing.assert_allclose(drop[:, 1], 8.0, atol=0.05)
    np.testing.assert_allclose(drop[:, 0], 0.0, atol=0.05)


@pytest.mark.parametrize("region", ["all", "expression", "pose"])
def test_regions_and_strength(region):
    neutral = synthetic_face(5)
    avatar = synthetic_face(5)
    driving = moved(neutral, about(128 + 128j, 12, 1.0, 0j))
    driving[400:410, 1] += 5.0
    motion = transfer(avatar, neutral)
    full = motion.target(driving, 0.0, region=region)
    half = motion.target(driving, 0.0, strength=0.5, region=region)
    settled = motion.target(driving, 0.0, region=region, motion_scale=0.0)
    np.testing.assert_allclose(settled.points, avatar, atol=1e-3)
    if region == "expression":
        assert full.head.angle_deg == 0.0
    else:
        assert full.head.angle_deg == pytest.approx(12.0, abs=0.2)
        assert half.head.angle_deg == pytest.approx(6.0, abs=0.1)
    if region == "pose":
        assert not np.any(full.expression)
    else:
        np.testing.assert_allclose(half.expression[400:410], 0.5 * full.expression[400:410], atol=1e-3)


def test_a_driver_blink_shuts_the_avatar_eye():
    """Face Mesh reads a shut eye at ~0.17 of its open gap; that must shut the avatar's eye fully."""
    neutral = synthetic_face(6)
    for eye in EYES:  # give the synthetic eyes a real opening: lids 10 px apart
        upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
        neutral[lower] = neutral[upper] + (0.0, 10.0)
    avatar = moved(neutral, about(128 + 128j, 0, 1.5, 0j))
    driving = neutral.copy()
    for eye in EYES:
        upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
        driving[upper] = driving[lower] - (0.0, 1.5)
    target = transfer(avatar, neutral).target(driving, 0.0)
    for eye in EYES:
        gap = target.points[list(eye.upper_lid[1:-1])] - target.points[list(eye.lower_lid[1:-1])]
        np.testing.assert_allclose(gap, 0.0, atol=0.05)


def _jitter(track: np.ndarray) -> float:
    return float(np.abs(np.diff(track, axis=0)).mean())


def test_smoothing_cuts_jitter_3x_and_lags_a_step_by_under_2_frames():
    """At 30 fps: landmark noise of 0.3 px on a still face, then a 12 px head shift."""
    settings = MotionSettings()
    rng = np.random.default_rng(0)
    frames, step_at, fps = 90, 45, 30.0
    truth = np.where(np.arange(frames) >= step_at, 12.0, 0.0)
    noisy = truth[:, None] + rng.normal(0.0, 0.3, (frames, 200))
    smooth = OneEuroFilter(settings.min_cutoff, settings.beta, settings.d_cutoff)
    filtered = np.stack([smooth(x, i / fps) for i, x in enumerate(noisy)])
    assert _jitter(noisy[5:step_at]) / _jitter(filtered[5:step_at]) >= 3.0
    reached = np.nonzero(filtered.mean(axis=1) >= 6.0)[0][0]  # half-way frame
    assert reached - step_at <= 2


def test_smoothing_switch_off_passes_points_through():
    motion = MotionTransfer(MotionSettings(smoothing=False))
    points = synthetic_face(7)
    np.testing.assert_array_equal(motion.smooth(points, 0.0), points)
    np.testing.assert_array_equal(motion.smooth(points + 5, 0.033), points + 5)


def test_garrote_is_a_continuous_deadband_with_a_fading_bias():
    x = np.array([0.0, 0.3, 0.5, 1.0, 4.0, -4.0, 3j])
    out = garrote(x, 0.5)
    np.testing.assert_allclose(out[:3], 0.0)
    np.testing.assert_allclose(out[3:], x[3:] * (1 - 0.25 / np.abs(x[3:]) ** 2))
    assert abs(abs(out[4]) - 4.0) < 0.07  # 4 px of motion keeps all but t^2/4
    np.testing.assert_array_equal(garrote(x, 0.0), x)


def test_tracker_wobble_on_a_still_face_gives_the_avatar_exactly():
    """Sub-deadband noise on every landmark (a still face in tracking mode) moves nothing at all;
    a 4 px lip drop next to it still comes through, less only the garrote's t^2/x."""
    neutral = synthetic_face(8)
    avatar = moved(synthetic_face(9), about(128 + 128j, 3, 1.2, 5 + 2j))
    motion = transfer(avatar, neutral, smoothing=True, deadbands=True)
    t = MotionSettings().deadband * float(np.linalg.norm(neutral[FACE_SIDES[1]] - neutral[FACE_SIDES[0]]))
    rng = np.random.default_rng(1)
    for i in range(20):
        noisy = neutral + rng.uniform(-0.5, 0.5, neutral.shape).astype(np.float32) * 0.7 * t
        target = motion.target(noisy, i / 30.0)
        assert target.head == Similarity()
        np.testing.assert_array_equal(target.points, as_points(as_complex(avatar)))
    head_t = t * MotionSettings().head_deadband / MotionSettings().deadband
    bob = moved(neutral, about(128 + 128j, 0.0, 1.0, complex(0.0, 0.8 * head_t)))
    nudged = transfer(avatar, neutral, deadbands=True).target(bob, 0.0)
    assert nudged.head == Similarity()  # a head bob below its deadband (Face Mesh's, as the mouth opens)
    eye_points = {i for eye in EYES for i in eye.upper_lid + eye.lower_lid}
    lips = [i for i in range(NUM_LANDMARKS) if i not in STABLE_POINTS and i not in eye_points][:30]
    driving = neutral.copy()
    driving[lips, 1] += 4.0
    still = transfer(avatar, neutral, deadbands=True).target(driving, 0.0)
    drop = np.linalg.norm(still.expression[lips], axis=1) / motion.driving_to_avatar.scale
    np.testing.assert_allclose(drop, 4.0 - t * t / 4.0, atol=0.05)
