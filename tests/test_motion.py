"""Motion transfer: head fit (2-D and 3-D), expression residual, adapt-scale, region/strength, smoothing,
and each feature's direction."""
from __future__ import annotations

import numpy as np
import pytest

from avatarify.motion import (EAR_LEVEL_POINTS, EYES, FACE_SIDES, LASH_RINGS, NUM_LANDMARKS, STABLE_POINTS,
                              MotionSettings, MotionTransfer, Pose3D, Similarity, angles_from_rotation, as_complex, as_points,
                              fit_similarity, garrote, head_pivot, rotation_from_angles)
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


# Tolerances in this file bound float64 algebra (eps 2.2e-16 × coordinates of a few hundred px:
# 1e-13, so atol 1e-9 holds on any CPU) or float32 landmarks (eps 1.2e-7 × 500 px ≈ 6e-5: atol 1e-3);
# the looser ones (0.05 px, 2°) bound the fits' model error on synthetic faces, not rounding.
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
    # The lids and the lash rings above them follow each eye's openness, not their own moves.
    eye_points = {i for eye in EYES for i in eye.upper_lid + eye.lower_lid} | {i for ring in LASH_RINGS for i in ring}
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
        assert target.pose.is_identity  # exactly: the mesh engine keeps an unmoved head off its room plate
        np.testing.assert_array_equal(target.points, as_points(as_complex(avatar)))
    head_t = t * MotionSettings().head_deadband / MotionSettings().deadband
    bob = moved(neutral, about(128 + 128j, 0.0, 1.0, complex(0.0, 0.8 * head_t)))
    nudged = transfer(avatar, neutral, deadbands=True).target(bob, 0.0)
    assert nudged.head == Similarity()  # a head bob below its deadband (Face Mesh's, as the mouth opens)
    # The lids and the lash rings above them follow each eye's openness, not their own moves.
    eye_points = {i for eye in EYES for i in eye.upper_lid + eye.lower_lid} | {i for ring in LASH_RINGS for i in ring}
    lips = [i for i in range(NUM_LANDMARKS) if i not in STABLE_POINTS and i not in eye_points][:30]
    driving = neutral.copy()
    driving[lips, 1] += 4.0
    still = transfer(avatar, neutral, deadbands=True).target(driving, 0.0)
    drop = np.linalg.norm(still.expression[lips], axis=1) / motion.driving_to_avatar.scale
    np.testing.assert_allclose(drop, 4.0 - t * t / 4.0, atol=0.05)


# ---------------------------------------------------------------------------------------------------
# The 3-D head (issue 12)

def synthetic_face_3d(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """478 points on the front of an ellipsoid head (x, y px; depth z px, smaller = nearer): the face
    spans 90 px across, the nose side bulges 45 px toward the camera, the ear-level outline lies in
    the plane of the head's centre."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-0.95, 0.95, NUM_LANDMARKS)
    v = rng.uniform(-0.95, 0.95, NUM_LANDMARKS)
    inside = u * u + v * v
    u, v = u / np.sqrt(np.maximum(inside, 1.0)), v / np.sqrt(np.maximum(inside, 1.0))
    z = -45.0 * np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    points = np.stack([128 + 45 * u, 128 + 60 * v], axis=1).astype(np.float32)
    for index in EAR_LEVEL_POINTS:  # the outline at ear level, in the centre plane
        points[index] = (128 + (45 if points[index, 0] > 128 else -45), 128)
        z[index] = 0.0
    return points, z.astype(np.float32)


def turned(points: np.ndarray, depth: np.ndarray, yaw: float, pitch: float, roll: float,
           scale: float = 1.0, shift=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    pose = Pose3D(rotation_from_angles(yaw, pitch, roll), scale, head_pivot(points, depth),
                  np.array([shift[0], shift[1], 0.0]))
    moved = pose(np.column_stack([points, depth]))
    return moved[:, :2].astype(np.float32), moved[:, 2].astype(np.float32)


@pytest.mark.parametrize("yaw, pitch, roll", [(25, 0, 0), (-25, 0, 0), (0, 15, 0), (0, -15, 0),
                                              (18, -10, 6), (-12, 12, -8)])
def test_head_pose_recovers_known_rotations_of_a_3d_face(yaw, pitch, roll):
    """Known rotations (and a lean and shift) of a synthetic 3-D face, with 0.3 px landmark noise,
    come back within 2 degrees about every axis."""
    points, depth = synthetic_face_3d(11)
    motion = MotionTransfer(MotionSettings(smoothing=False, deadband=0.0, head_deadband=0.0))
    motion.set_avatar(points, depth)
    motion.set_neutral(points, depth)
    moved, moved_depth = turned(points, depth, yaw, pitch, roll, 1.3, (7.0, -4.0))
    rng = np.random.default_rng(2)
    noisy = moved + rng.normal(0.0, 0.3, moved.shape).astype(np.float32)
    pose = motion.head_pose(np.column_stack([noisy, moved_depth + rng.normal(0.0, 0.3, len(moved_depth))]))
    np.testing.assert_allclose(pose.angles_deg, (yaw, pitch, roll), atol=2.0)
    assert pose.scale == pytest.approx(1.3, abs=0.02)


def test_a_3d_head_turn_moves_the_avatar_as_the_driver_turned():
    """The driver turns 20 degrees (yaw) and nods 10: the avatar (another size, shifted) turns the
    same, about its own head; its landmarks are its own 3-D points turned, nothing left over as
    expression."""
    points, depth = synthetic_face_3d(12)
    avatar = moved(points, about(128 + 128j, 0, 1.6, 30 - 20j))
    motion = MotionTransfer(MotionSettings(smoothing=False, deadband=0.0, head_deadband=0.0))
    motion.set_avatar(avatar, depth * 1.6)
    motion.set_neutral(points, depth)
    driving, driving_depth = turned(points, depth, 20, 10, 0)
    target = motion.target(driving, 0.0, driving_depth=driving_depth)
    np.testing.assert_allclose(target.pose.angles_deg, (20, 10, 0), atol=0.1)
    expected, _ = turned(avatar, depth * 1.6, 20, 10, 0)
    np.testing.assert_allclose(target.points, expected, atol=0.05)
    np.testing.assert_allclose(target.expression, 0.0, atol=0.05)
    assert motion.in_3d


def test_pose_algebra():
    pose = Pose3D(rotation_from_angles(20, -10, 5), 1.2, np.array([10.0, 20.0, 30.0]), np.array([3.0, -2.0, 1.0]))
    p = np.random.default_rng(3).normal(0, 50, (30, 3))
    np.testing.assert_allclose(pose.inverse()(pose(p)), p, atol=1e-9)
    np.testing.assert_allclose(pose.scaled(0.0)(p), p, atol=1e-9)
    np.testing.assert_allclose(pose.scaled(1.0)(p), pose(p), atol=1e-12)
    half = pose.scaled(0.5)
    np.testing.assert_allclose(half(half(p)), pose(p), atol=0.5)  # about the same pivot: near enough
    assert angles_from_rotation(rotation_from_angles(25, 15, -5)) == pytest.approx((25, 15, -5))


# Feature directions: each expression of the driver moves the avatar's same feature the same way.
LEFT_BROW, RIGHT_BROW = (70, 63, 105, 66, 107), (336, 296, 334, 293, 300)


def _feature_target(change) -> tuple[np.ndarray, np.ndarray]:
    """The avatar's landmarks before and after a driver expression (`change` edits driver points)."""
    points, depth = synthetic_face_3d(13)
    for eye in EYES:  # give the synthetic eyes a real opening: lids 10 px apart
        upper, lower = list(eye.upper_lid[1:-1]), list(eye.lower_lid[1:-1])
        points[lower] = points[upper] + (0.0, 10.0)
    avatar = moved(points, about(128 + 128j, 0, 1.5, 0j))
    motion = MotionTransfer(MotionSettings(smoothing=False))
    motion.set_avatar(avatar, depth * 1.5)
    motion.set_neutral(points, depth)
    driving = points.copy()
    change(driving)
    return avatar, motion.target(driving, 0.0, driving_depth=depth).points


def _eye_gaps(points: np.ndarray) -> list[float]:
    return [float(np.mean(points[list(e.lower_lid[1:-1]), 1] - points[list(e.upper_lid[1:-1]), 1])) for e in EYES]


def test_a_wink_shuts_only_that_eye():
    def wink(p):
        upper, lower = list(EYES[0].upper_lid[1:-1]), list(EYES[0].lower_lid[1:-1])
        p[upper] = p[lower] - (0.0, 1.5)
    before, after = _feature_target(wink)
    gaps_before, gaps_after = _eye_gaps(before), _eye_gaps(after)
    assert gaps_after[0] < 0.05 * gaps_before[0]
    assert gaps_after[1] == pytest.approx(gaps_before[1], abs=0.05)


def test_an_eye_opened_wider_lifts_only_that_lid_with_its_lashes():
    """The image-right eye opened 20% wider: its upper lid rises by eye_wider_gain times that, the
    lash ring above moves with the lid as one piece; the other eye stays."""
    def wider(p):
        upper, lower = list(EYES[1].upper_lid[1:-1]), list(EYES[1].lower_lid[1:-1])
        p[upper] = p[lower] + 1.2 * (p[upper] - p[lower])
    before, after = _feature_target(wider)
    gaps_before, gaps_after = _eye_gaps(before), _eye_gaps(after)
    gain = MotionSettings().eye_wider_gain
    assert gain > 1.0
    assert gaps_after[1] == pytest.approx(gaps_before[1] * (1.0 + 0.2 * gain), rel=0.02)
    assert gaps_after[0] == pytest.approx(gaps_before[0], abs=0.05)
    upper, lashes = list(EYES[1].upper_lid[1:-1]), list(LASH_RINGS[1])
    np.testing.assert_allclose(after[lashes] - before[lashes], after[upper] - before[upper], atol=1e-3)
    assert np.abs(after[list(LASH_RINGS[0])] - before[list(LASH_RINGS[0])]).max() < 0.05


def test_a_squint_raises_the_lower_lid_and_narrows_the_eye():
    def squint(p):
        p[list(EYES[1].lower_lid[1:-1]), 1] -= 4.0
    before, after = _feature_target(squint)
    lower = list(EYES[1].lower_lid[1:-1])
    assert (after[lower, 1] - before[lower, 1]).mean() < -4.0  # up, times the adapt-scale 1.5
    assert _eye_gaps(after)[1] < 0.7 * _eye_gaps(before)[1]
    assert _eye_gaps(after)[0] == pytest.approx(_eye_gaps(before)[0], abs=0.05)


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_brows_raise_and_frown(direction):
    """Driver brows up 5 px (raise) or down and in (frown): the avatar's brows go the same way,
    7.5 px (adapt-scale 1.5) times brow_gain; the eyes stay."""
    def brows(p):
        p[list(LEFT_BROW + RIGHT_BROW), 1] += 5.0 * direction
        if direction > 0:  # a frown also pulls the brows together
            p[list(LEFT_BROW), 0] += 2.0
            p[list(RIGHT_BROW), 0] -= 2.0
    before, after = _feature_target(brows)
    lift = (after[list(LEFT_BROW + RIGHT_BROW), 1] - before[list(LEFT_BROW + RIGHT_BROW), 1]).mean()
    gain = MotionSettings().brow_gain
    assert gain > 1.0
    assert lift == pytest.approx(7.5 * gain * direction, abs=0.5)
    if direction > 0:
        assert (after[list(LEFT_BROW), 0] - before[list(LEFT_BROW), 0]).mean() > 2.0 * gain
        assert (after[list(RIGHT_BROW), 0] - before[list(RIGHT_BROW), 0]).mean() < -2.0 * gain
    np.testing.assert_allclose(_eye_gaps(after), _eye_gaps(before), atol=0.05)


@pytest.mark.parametrize("shape", ["smile", "purse", "asymmetric", "jaw"])
def test_lip_shapes_and_jaw(shape):
    corners = (61, 291)

    def lips(p):
        if shape == "smile":
            p[61] += (-3.0, -3.0)
            p[291] += (3.0, -3.0)
        if shape == "purse":
            p[61, 0] += 4.0
            p[291, 0] -= 4.0
        if shape == "asymmetric":
            p[291] += (2.0, -4.0)
        if shape == "jaw":
            p[152, 1] += 6.0
    before, after = _feature_target(lips)
    move = after - before
    if shape == "smile":
        assert move[61, 0] < -3.5 and move[291, 0] > 3.5 and move[61, 1] < -3.5 and move[291, 1] < -3.5
    if shape == "purse":
        assert move[61, 0] > 4.5 and move[291, 0] < -4.5
    if shape == "asymmetric":
        assert move[291, 1] < -4.5 and abs(move[61]).max() < 0.01
    if shape == "jaw":
        assert move[152, 1] == pytest.approx(9.0, abs=0.2)
    others = [i for i in range(NUM_LANDMARKS) if i not in corners + (152,)]
    assert np.abs(move[others]).max() < 0.01  # nothing else moves
