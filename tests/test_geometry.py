"""Tests for engine.geometry: transform recovery, robust fitting, direction filter, coverage."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InputError, MatcherError, TooFewPointsError
from engine.geometry import (
    KINDS,
    DegenerateConfigurationError,
    coverage_fraction,
    convex_hull_area,
    direction_consistency,
    fit_transform,
    hull_coverage,
    residual_norms,
    rmse,
    robust_fit,
    transform_from_dict,
)

# UTM-sized coordinates: the point of the normalisation is that these stay well-conditioned.
E0, N0 = 500_000.0, 4_200_000.0


def grid_points(n: int = 10, span: float = 20_000.0) -> np.ndarray:
    g = np.linspace(0.0, span, n)
    xx, yy = np.meshgrid(g, g)
    return np.column_stack([xx.ravel() + E0, yy.ravel() + N0])


def random_points(n: int, seed: int = 0, span: float = 20_000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, span, (n, 2)) + [E0, N0]


AFFINE_A = np.array([[1.0 + 2e-4, 3e-4], [-1.5e-4, 1.0 - 1e-4]])
AFFINE_T = np.array([12.5, -7.25])


def affine_truth(xy: np.ndarray) -> np.ndarray:
    c = np.array([E0, N0])
    return (xy - c) @ AFFINE_A.T + c + AFFINE_T


def poly2_truth(xy: np.ndarray) -> np.ndarray:
    u = (xy - [E0, N0]) / 10_000.0
    dx = 5.0 + 3.0 * u[:, 0] - 2.0 * u[:, 1] + 4.0 * u[:, 0] ** 2 - 1.5 * u[:, 0] * u[:, 1]
    dy = -3.0 + 1.0 * u[:, 0] + 2.5 * u[:, 1] ** 2
    return xy + np.column_stack([dx, dy])


def poly3_truth(xy: np.ndarray) -> np.ndarray:
    u = (xy - [E0, N0]) / 10_000.0
    d = poly2_truth(xy) - xy
    return xy + d + np.column_stack([2.0 * u[:, 0] ** 3, -1.0 * u[:, 0] * u[:, 1] ** 2])


def homography_truth(xy: np.ndarray) -> np.ndarray:
    H = np.array([[1.001, 0.002, 10.0], [-0.001, 0.999, -5.0], [2e-6, -1e-6, 1.0]])
    u = (xy - [E0, N0]) / 1_000.0
    h = np.column_stack([u, np.ones(len(u))]) @ H.T
    return h[:, :2] / h[:, 2:3] * 1_000.0 + [E0, N0]


# ------------------------------------------------------------------ exact recovery


def test_shift_median_and_mean_recover_translation():
    src = random_points(40)
    dst = src + [3.5, -12.25]
    for kind in ("shift", "shift_mean"):
        t = fit_transform(kind, src, dst)
        assert t.dx == pytest.approx(3.5, abs=1e-6)
        assert t.dy == pytest.approx(-12.25, abs=1e-6)
        assert np.abs(t.apply(src) - dst).max() < 1e-6


def test_shift_median_ignores_outliers_mean_does_not():
    src = random_points(21)
    dst = src + [2.0, 1.0]
    dst[:5] += [300.0, -200.0]  # 5 of 21 gross outliers
    med = fit_transform("shift", src, dst)
    mean = fit_transform("shift_mean", src, dst)
    assert (med.dx, med.dy) == pytest.approx((2.0, 1.0), abs=1e-9)
    assert mean.dx == pytest.approx(2.0 + 300.0 * 5 / 21, abs=1e-6)


def test_weighted_shift_mean_uses_weights():
    src = np.array([[E0, N0], [E0 + 100, N0]])
    dst = src + np.array([[1.0, 0.0], [4.0, 0.0]])
    t = fit_transform("shift_mean", src, dst, weights=np.array([3.0, 1.0]))
    assert t.dx == pytest.approx((3 * 1.0 + 4.0) / 4.0)


@pytest.mark.parametrize("kind", ["affine", "poly1"])
def test_affine_recovers_parameters_exactly(kind):
    src = random_points(30, seed=1)
    t = fit_transform(kind, src, affine_truth(src))
    m = t.affine_matrix()
    c = np.array([E0, N0])
    np.testing.assert_allclose(m[:, 1:], AFFINE_A, atol=1e-12)
    # offset in raw units: t + c - A c
    np.testing.assert_allclose(m[:, 0], AFFINE_T + c - AFFINE_A @ c, atol=1e-6)
    probe = random_points(10, seed=99)
    assert np.abs(t.apply(probe) - affine_truth(probe)).max() < 1e-6


@pytest.mark.parametrize(
    "kind, truth, n",
    [("poly2", poly2_truth, 30), ("poly3", poly3_truth, 40), ("projective", homography_truth, 25)],
)
def test_nonlinear_models_recover_exact_data(kind, truth, n):
    src = random_points(n, seed=2)
    t = fit_transform(kind, src, truth(src))
    probe = random_points(15, seed=7)
    err = np.abs(t.apply(probe) - truth(probe)).max()
    assert err < 1e-5, err


def test_lower_order_cannot_fit_higher_order_truth():
    # Sanity check that the previous test can fail: affine on poly2 data leaves metres of residual.
    src = random_points(30, seed=2)
    t = fit_transform("affine", src, poly2_truth(src))
    assert residual_norms(t, src, poly2_truth(src)).max() > 1.0


def test_tps_interpolates_exactly_and_smoothing_relaxes():
    src = random_points(40, seed=3)
    dst = poly3_truth(src) + np.random.default_rng(0).normal(0, 0.5, src.shape)
    exact = fit_transform("tps", src, dst)
    assert np.abs(exact.apply(src) - dst).max() < 1e-6
    smooth = fit_transform("tps", src, dst, smoothing=5.0)
    r = residual_norms(smooth, src, dst)
    assert r.max() > 1e-3  # no longer interpolating
    # and it still follows the smooth field between points (error well below the 10 m distortion)
    probe = random_points(20, seed=11, span=16_000.0) + 2_000.0
    assert np.abs(smooth.apply(probe) - poly3_truth(probe)).max() < 2.0


@pytest.mark.parametrize("kind", ["affine", "poly2", "projective"])
def test_noisy_data_rmse_matches_noise(kind):
    rng = np.random.default_rng(5)
    src = random_points(400, seed=4)
    truth = {"affine": affine_truth, "poly2": poly2_truth, "projective": homography_truth}[kind]
    sigma = 0.8
    dst = truth(src) + rng.normal(0, sigma, src.shape)
    t = fit_transform(kind, src, dst)
    # per-point residual length: E|r|² = 2σ² (minus a few dof)
    got = rmse(t.residuals(src, dst))
    assert got == pytest.approx(math.sqrt(2) * sigma, rel=0.1)
    # fitted model much closer to the truth than the noise
    assert np.abs(t.apply(src) - truth(src)).max() < sigma


def test_weights_downweight_bad_points():
    src = random_points(30, seed=6)
    dst = affine_truth(src)
    dst[0] += [50.0, 50.0]
    w = np.ones(30)
    w[0] = 0.0
    t = fit_transform("affine", src, dst, weights=w)
    assert np.abs(t.apply(src[1:]) - dst[1:]).max() < 1e-6


def test_to_dict_is_json_and_round_trips():
    src = random_points(30, seed=8)
    dst = poly2_truth(src)
    for kind in KINDS:
        t = fit_transform(kind, src, dst)
        d = json.loads(json.dumps(t.to_dict()))
        assert d["kind"] == kind
        t2 = transform_from_dict(d)
        np.testing.assert_allclose(t2.apply(src), t.apply(src), atol=1e-7)


# ------------------------------------------------------------------ errors


def test_too_few_points_message_and_suggestion():
    src = random_points(2)
    with pytest.raises(TooFewPointsError) as exc:
        fit_transform("affine", src, src + 1.0)
    msg = str(exc.value)
    assert "affine needs at least 3 tie points, got 2" in msg
    assert "'shift'" in msg and "ORN" not in msg  # method-neutral: the pipeline adds the method's advice


def test_too_few_points_for_poly3_suggests_poly2():
    src = random_points(8)
    with pytest.raises(TooFewPointsError, match="poly3 needs at least 10 tie points, got 8; use 'poly2'"):
        fit_transform("poly3", src, src)


def test_shift_with_no_points():
    with pytest.raises(TooFewPointsError, match="shift needs at least 1 tie point, got 0"):
        fit_transform("shift", np.zeros((0, 2)), np.zeros((0, 2)))


@pytest.mark.parametrize("kind", ["affine", "poly1", "poly2", "projective", "tps"])
def test_collinear_points_are_degenerate(kind):
    t = np.linspace(0, 1000, 12)
    src = np.column_stack([E0 + t, N0 + 0.5 * t])
    with pytest.raises(DegenerateConfigurationError, match="collinear"):
        fit_transform(kind, src, src + 3.0)


def test_duplicated_points_are_degenerate():
    src = np.array([[E0, N0], [E0, N0], [E0 + 10, N0 + 5], [E0 + 10, N0 + 5]])
    with pytest.raises(DegenerateConfigurationError, match="only 2 distinct positions"):
        fit_transform("affine", src, src + 1.0)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="Unknown transform kind"):
        fit_transform("spline9", random_points(5), random_points(5))
    with pytest.raises(InputError, match="same number"):
        fit_transform("affine", random_points(5), random_points(4))
    bad = random_points(5)
    bad[2, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        fit_transform("affine", bad, random_points(5))


# ------------------------------------------------------------------ robust fitting


def _outlier_set(kind_truth, n=100, frac=0.3, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    src = random_points(n, seed=seed + 100)
    dst = kind_truth(src) + rng.normal(0, noise, src.shape)
    n_out = int(frac * n)
    out_idx = rng.choice(n, n_out, replace=False)
    # gross outliers: 30..300 m in random directions
    ang = rng.uniform(0, 2 * np.pi, n_out)
    mag = rng.uniform(30, 300, n_out)
    dst[out_idx] += np.column_stack([np.cos(ang), np.sin(ang)]) * mag[:, None]
    is_out = np.zeros(n, bool)
    is_out[out_idx] = True
    return src, dst, is_out


@pytest.mark.parametrize("kind, truth", [("affine", affine_truth), ("poly2", poly2_truth), ("shift", lambda s: s + [4.0, -2.0])])
def test_robust_fit_flags_all_outliers(kind, truth):
    src, dst, is_out = _outlier_set(truth)
    res = robust_fit(kind, src, dst, threshold=3.0, seed=1)
    assert not np.any(res.inliers & is_out), "an outlier was kept"
    assert np.all(res.inliers[~is_out]), "an inlier was flagged"
    assert res.rmse < 1.0
    assert np.abs(res.transform.apply(src) - truth(src)).max() < 0.5
    assert res.residuals.shape == (100,)
    assert np.all(res.residuals[is_out] > 3.0)


def test_plain_least_squares_is_ruined_by_the_same_outliers():
    src, dst, _ = _outlier_set(affine_truth)
    t = fit_transform("affine", src, dst)
    assert np.abs(t.apply(src) - affine_truth(src)).max() > 5.0


def test_robust_fit_is_deterministic_with_seed():
    src, dst, _ = _outlier_set(affine_truth, seed=3)
    a = robust_fit("affine", src, dst, threshold=3.0, seed=42)
    b = robust_fit("affine", src, dst, threshold=3.0, seed=42)
    assert np.array_equal(a.inliers, b.inliers)
    assert a.iterations == b.iterations
    np.testing.assert_array_equal(a.transform.affine_matrix(), b.transform.affine_matrix())


def test_robust_tps_uses_affine_consensus_then_spline():
    src, dst, is_out = _outlier_set(affine_truth, n=60, seed=5)
    res = robust_fit("tps", src, dst, threshold=3.0, seed=0, smoothing=1.0)
    assert res.transform.kind == "tps"
    assert np.array_equal(res.inliers, ~is_out)


def test_robust_fit_errors():
    src = random_points(2)
    with pytest.raises(TooFewPointsError, match="affine needs at least 3"):
        robust_fit("affine", src, src, threshold=1.0)
    with pytest.raises(InputError, match="threshold"):
        robust_fit("affine", random_points(5), random_points(5), threshold=0.0)
    # Scattered junk: every minimal poly2 sample fits its own 6 points, but no 7th point agrees.
    rng = np.random.default_rng(0)
    s = random_points(8, seed=9)
    d = s + rng.uniform(-500, 500, s.shape)
    with pytest.raises(TooFewPointsError):
        robust_fit("poly2", s, d, threshold=0.01)


# ------------------------------------------------------------------ direction filter


def test_direction_filter_flags_reversed_vectors():
    src = grid_points(12)  # 144 points
    u = (src - [E0, N0]) / 20_000.0
    # smooth field: ~10 m pointing north-east, slowly rotating
    ang = np.radians(40 + 15 * u[:, 0])
    d = 10.0 * np.column_stack([np.cos(ang), np.sin(ang)])
    bad = np.array([5, 40, 77, 100, 130])
    d[bad] *= -1.0
    res = direction_consistency(src, src + d)
    assert set(np.flatnonzero(~res.keep)) == set(bad)
    assert np.all(res.deviation[bad] > 1.5)
    assert res.angle_deg[0] == pytest.approx(40.0, abs=1e-6)
    keep, dev = res  # tuple-style unpacking used by the pipeline
    assert keep is res.keep and dev is res.deviation


def test_direction_filter_zero_spread_flags_nothing():
    src = grid_points(8)
    res = direction_consistency(src, src + [3.0, -4.0])
    assert res.keep.all()
    assert np.all(res.deviation < 1e-6)
    assert np.allclose(res.neighbour_std_deg, 0.0, atol=1e-5)


def test_direction_filter_zero_spread_still_catches_a_slight_turn():
    # Identical neighbours + floor of 3°: a point turned by 20° is 6.7 "sigmas" off.
    src = grid_points(8)
    d = np.tile([5.0, 0.0], (len(src), 1))
    a = np.radians(20.0)
    d[27] = 5.0 * np.array([np.cos(a), np.sin(a)])
    res = direction_consistency(src, src + d)
    assert list(np.flatnonzero(~res.keep)) == [27]
    assert res.deviation[27] == pytest.approx(20.0 / 3.0, rel=1e-3)


def test_direction_filter_ignores_tiny_displacements():
    src = grid_points(8)
    d = np.tile([5.0, 0.0], (len(src), 1))
    d[10] = [-1e-3, 0.0]  # reversed but below the 10 % of median guard: direction is noise
    res = direction_consistency(src, src + d)
    assert res.keep.all()
    all_zero = direction_consistency(src, src)
    assert all_zero.keep.all()


def test_direction_filter_small_sets():
    assert direction_consistency(np.zeros((0, 2)), np.zeros((0, 2))).keep.shape == (0,)
    one = direction_consistency(random_points(1), random_points(1))
    assert one.keep.tolist() == [True]


# ------------------------------------------------------------------ residuals / coverage


def test_coverage_of_known_square():
    sq = np.array([[0, 0], [50, 0], [50, 50], [0, 50], [25, 25]], float) + [E0, N0]
    rect = (E0, N0, E0 + 100, N0 + 100)
    assert coverage_fraction(sq, rect) == pytest.approx(0.25, abs=1e-12)
    # a triangle over half the rect
    tri = np.array([[0, 0], [100, 0], [0, 100]], float) + [E0, N0]
    assert coverage_fraction(tri, rect) == pytest.approx(0.5, abs=1e-12)
    # hull sticking out of the rect is clipped: square [-50, 50]² covers a quarter of [0,100]²
    big = np.array([[-50, -50], [50, -50], [50, 50], [-50, 50]], float) + [E0, N0]
    assert coverage_fraction(big, rect) == pytest.approx(0.25, abs=1e-12)
    assert convex_hull_area(sq) == pytest.approx(2500.0)
    assert hull_coverage(sq, rect) == coverage_fraction(sq, rect)


def test_coverage_degenerate_inputs():
    rect = (0, 0, 10, 10)
    assert coverage_fraction(np.zeros((0, 2)), rect) == 0.0
    assert coverage_fraction([[1, 1], [2, 2]], rect) == 0.0
    assert coverage_fraction([[1, 1], [2, 2], [3, 3], [4, 4]], rect) == 0.0  # collinear
    assert coverage_fraction([[1, 1], [1, 1], [1, 1]], rect) == 0.0  # duplicated
    with pytest.raises(InputError):
        coverage_fraction([[0, 0], [1, 0], [0, 1]], (0, 0, 0, 10))


def test_rmse_helper():
    assert rmse(np.array([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(math.sqrt(12.5))
    assert rmse(np.array([5.0, 1.0]), mask=np.array([True, False])) == pytest.approx(5.0)
    assert math.isnan(rmse(np.zeros((0, 2))))


# ------------------------------------------------------------------ property tests

coord = st.floats(min_value=-1e6, max_value=1e7, allow_nan=False, allow_infinity=False)


@st.composite
def point_sets(draw):
    """Random, collinear or duplicated point sets of 0..15 points."""
    n = draw(st.integers(0, 15))
    mode = draw(st.sampled_from(["random", "collinear", "duplicated", "clustered"]))
    if mode == "random":
        pts = [[draw(coord), draw(coord)] for _ in range(n)]
    elif mode == "collinear":
        x0, y0 = draw(coord), draw(coord)
        dx, dy = draw(st.floats(-1e3, 1e3)), draw(st.floats(-1e3, 1e3))
        pts = [[x0 + i * dx, y0 + i * dy] for i in range(n)]
    elif mode == "duplicated":
        base = [[draw(coord), draw(coord)] for _ in range(draw(st.integers(1, 3)))]
        pts = [base[i % len(base)] for i in range(n)]
    else:
        x0, y0 = draw(coord), draw(coord)
        pts = [[x0 + draw(st.floats(-1e-3, 1e-3)), y0 + draw(st.floats(-1e-3, 1e-3))] for _ in range(n)]
    return np.array(pts, dtype=float).reshape(-1, 2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=point_sets(), kind=st.sampled_from(KINDS), shift=st.tuples(st.floats(-500, 500), st.floats(-500, 500)))
def test_property_fit_never_crashes_with_foreign_errors(src, kind, shift):
    dst = src + np.array(shift)
    try:
        t = fit_transform(kind, src, dst)
    except MatcherError as exc:
        # Degenerate, collinear, duplicated or too few points: the engine's own errors only.
        assert isinstance(exc, (TooFewPointsError, InputError)), type(exc)
        return
    out = t.apply(src)
    assert out.shape == src.shape
    assert np.all(np.isfinite(out)), "a fitted transform must never map a tie point to NaN/Inf"
    assert np.all(np.isfinite(_numbers(t.to_dict())))


def _numbers(d) -> list[float]:
    """Every number in a transform's dict (nested lists/dicts), to check none is NaN/Inf."""
    if isinstance(d, dict):
        return [x for v in d.values() for x in _numbers(v)]
    if isinstance(d, (list, tuple)):
        return [x for v in d for x in _numbers(v)]
    return [float(d)] if isinstance(d, (int, float)) and not isinstance(d, bool) else []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=point_sets(), shift=st.tuples(st.floats(-500, 500), st.floats(-500, 500)))
def test_property_shift_reproduces_exact_data(src, shift):
    dst = src + np.array(shift)
    try:
        t = fit_transform("shift", src, dst)
    except TooFewPointsError:
        assert len(src) == 0
        return
    scale = 1.0 + np.abs(src).max()
    assert np.abs(t.apply(src) - dst).max() <= 1e-9 * scale


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=point_sets(), a=st.floats(-0.01, 0.01), b=st.floats(-0.01, 0.01),
       shift=st.tuples(st.floats(-500, 500), st.floats(-500, 500)))
def test_property_affine_reproduces_exact_data(src, a, b, shift):
    A = np.array([[1.0 + a, b], [-b, 1.0 - a]])
    c = src.mean(axis=0) if len(src) else np.zeros(2)
    dst = (src - c) @ A.T + c + np.array(shift)
    try:
        t = fit_transform("affine", src, dst)
    except TooFewPointsError:  # includes DegenerateConfigurationError
        return
    spread = np.ptp(src, axis=0).max() if len(src) else 0.0
    tol = 1e-6 * (1.0 + spread) + 1e-12 * np.abs(src).max()
    assert np.abs(t.apply(src) - dst).max() <= tol


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=point_sets(), kind=st.sampled_from(["shift", "affine", "projective", "tps"]),
       thr=st.floats(0.01, 100.0))
def test_property_robust_fit_never_crashes_with_foreign_errors(src, kind, thr):
    rng = np.random.default_rng(0)
    dst = src + rng.normal(0, 5.0, src.shape)
    try:
        res = robust_fit(kind, src, dst, threshold=thr, max_iter=50)
    except MatcherError as exc:
        assert isinstance(exc, (TooFewPointsError, InputError)), type(exc)
        return
    assert res.inliers.shape == (len(src),)
    assert res.inliers.sum() >= 1
    assert np.all(np.isfinite(res.transform.apply(src))) and np.all(np.isfinite(_numbers(res.transform.to_dict())))
    assert np.all(np.isfinite(res.residuals)) and math.isfinite(res.rmse)
