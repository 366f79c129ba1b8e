"""Matchers (NCC, MI, structural) and the shared sub-pixel/quality/covariance logic.

Test data is synthetic and built here: a smooth multi-scale texture with rectangles and discs as
the "optical" scene, and a "SAR" scene from the same geometry with a non-monotonic radiometric
mapping (bright becomes dark and back again, so intensities are not linearly related) and
multiplicative gamma speckle, log-scaled to [0, 1]. Offsets follow the project convention: the
optical template centred at (r0 + dr, c0 + dc) of the common grid is found in the search window
centred at (r0, c0) at offset (dr, dc).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from engine.errors import InputError
from engine.matchers import MATCHERS, get_matcher, mi, ncc, structural
from engine.matchers.subpixel import COV_FLOOR, refine_peak, top_peaks
from engine.types import PatchMatch

S, T = 256, 128


def make_optical(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 2.4 * ndimage.gaussian_filter(rng.standard_normal((n, n)), 4) + 4.0 * ndimage.gaussian_filter(
        rng.standard_normal((n, n)), 12
    )
    img = (img - img.min()) / (img.max() - img.min()) * 0.6 + 0.2
    yy, xx = np.mgrid[:n, :n]
    for _ in range(n * n // 1500):
        r, c = rng.integers(0, n, 2)
        h, w = rng.integers(6, 30, 2)
        img[r : r + h, c : c + w] = rng.random()
    for _ in range(n * n // 8000):
        r, c = rng.integers(0, n, 2)
        img[(yy - r) ** 2 + (xx - c) ** 2 < rng.integers(5, 20) ** 2] = rng.random()
    return np.clip(img, 0.0, 1.0)


def to_sar(opt: np.ndarray, looks: int, seed: int, mapping: str = "cos") -> np.ndarray:
    """Same geometry, different radiometry, gamma speckle with ``looks`` looks, dB -> [0, 1]."""
    rng = np.random.default_rng(seed)
    m = 0.5 + 0.5 * np.cos(2 * np.pi * 1.3 * opt) if mapping == "cos" else opt
    lin = 10 ** ((-22 + 18 * m) / 10) * rng.gamma(looks, 1.0 / looks, opt.shape)
    db = 10 * np.log10(lin)
    lo, hi = np.percentile(db, [1, 99])
    return np.clip((db - lo) / (hi - lo), 0, 1)


def cut(img: np.ndarray, r: int, c: int, size: int) -> np.ndarray:
    return img[r - size // 2 : r - size // 2 + size, c - size // 2 : c - size // 2 + size]


@pytest.fixture(scope="module")
def scene():
    opt = make_optical(768, seed=1)
    return opt, to_sar(opt, looks=1, seed=2)


def _pairs(n: int, seed: int, max_shift: int = 40, size: int = 768):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        r0, c0 = rng.integers(S // 2 + max_shift, size - S // 2 - max_shift, 2)
        dr, dc = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
        yield r0, c0, dr, dc


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("name", ["ncc", "mi", "structural"])
def test_heatmap_shape_and_offset_convention(scene, name):
    opt, _ = scene
    r0, c0 = 380, 400
    search = cut(opt, r0, c0, S)
    template = cut(opt, r0 + 5, c0 - 9, T)
    m = get_matcher(name)(search, template)
    assert isinstance(m, PatchMatch)
    assert m.heatmap.shape == (S - T + 1, S - T + 1) == (129, 129)
    assert m.peak == (5, -9)
    assert abs(m.offset[0] - 5) < 0.3 and abs(m.offset[1] + 9) < 0.3
    # index [i, j] <-> offset (i - 64, j - 64)
    i, j = np.unravel_index(np.argmax(m.heatmap), m.heatmap.shape)
    assert (i - 64, j - 64) == (5, -9)
    assert m.score == pytest.approx(float(m.heatmap.max()), rel=1e-5)


def test_rectangular_sizes_and_odd_difference(scene):
    opt, _ = scene
    search = opt[100:300, 200:360]  # 200 x 160
    # template 101 x 80; (S-T)//2 = (99//2, 80//2) = (49, 40): the template at top-left (49 + dr, 40 + dc)
    template = search[49 + 7 : 49 + 7 + 101, 40 - 3 : 40 - 3 + 80]
    for name in MATCHERS:
        m = get_matcher(name)(search, template)
        assert m.heatmap.shape == (100, 81)
        assert m.peak == (7, -3), name


def test_registry():
    assert MATCHERS == ["ncc", "mi", "structural"]
    assert get_matcher("NCC") is ncc.match
    with pytest.raises(InputError, match="unknown matcher"):
        get_matcher("sift")


def test_template_larger_than_search_rejected():
    with pytest.raises(ValueError):
        ncc.match(np.zeros((50, 50)), np.zeros((60, 40)))


# --------------------------------------------------------------------------- NCC


def _brute_ncc(s, t, sm, tm):
    th, tw = t.shape
    out = np.zeros((s.shape[0] - th + 1, s.shape[1] - tw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            m = sm[i : i + th, j : j + tw] & tm
            a = s[i : i + th, j : j + tw][m]
            b = t[m]
            a, b = a - a.mean(), b - b.mean()
            out[i, j] = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
    return out


def test_ncc_equals_direct_computation_with_and_without_masks():
    rng = np.random.default_rng(0)
    s, t = rng.random((34, 30)), rng.random((14, 12))
    ones_s, ones_t = np.ones(s.shape, bool), np.ones(t.shape, bool)
    np.testing.assert_allclose(ncc.ncc_heatmap(s, t), _brute_ncc(s, t, ones_s, ones_t), atol=1e-10)
    sm, tm = rng.random(s.shape) > 0.2, rng.random(t.shape) > 0.2
    np.testing.assert_allclose(ncc.ncc_heatmap(s, t, sm, tm), _brute_ncc(s, t, sm, tm), atol=1e-10)


def test_ncc_flat_regions_score_zero_not_nan():
    rng = np.random.default_rng(1)
    s = rng.random((64, 64))
    s[:, :32] = 0.5  # flat left half
    h = ncc.ncc_heatmap(s, rng.random((16, 16)))
    assert np.isfinite(h).all()
    assert np.all(h[:, :17] == 0.0)  # windows entirely inside the flat half
    assert np.all(ncc.ncc_heatmap(s, np.full((16, 16), 0.3)) == 0.0)  # flat template


@pytest.mark.parametrize("shift", [(3.3, -7.6), (-12.5, 4.25), (0.8, 0.1), (20.0, -15.0)])
def test_ncc_recovers_subpixel_shift_same_modality(shift):
    opt = ndimage.gaussian_filter(make_optical(400, seed=3), 1.5)  # band-limited, so shifts are exact
    moved = ndimage.shift(opt, (-shift[0], -shift[1]), order=3, mode="nearest")
    # moved[r, c] = opt[r + dr, c + dc]: the template centred at (200, 200) of `moved` shows the
    # content that sits at (200 + dr, 200 + dc) in `opt`.
    m = ncc.match(cut(opt, 200, 200, S), cut(moved, 200, 200, T))
    err = np.hypot(m.offset[0] - shift[0], m.offset[1] - shift[1])
    assert err < 0.2, (m.offset, shift)
    assert m.score > 0.98


def test_ncc_masked_template_ignores_garbage(scene):
    opt, _ = scene
    search = cut(opt, 400, 380, S)
    template = cut(opt, 400 - 11, 380 + 6, T).copy()
    tmask = np.ones(template.shape, bool)
    template[:50, :70] = 1.0  # e.g. a cloud
    tmask[:50, :70] = False
    smask = np.ones(search.shape, bool)
    search = search.copy()
    search[200:, 200:] = np.nan  # nodata corner, also masked
    smask[200:, 200:] = False
    m = ncc.match(search, template, smask, tmask)
    assert m.peak == (-11, 6)
    assert np.isfinite(m.heatmap).all()
    # Offsets whose overlap is too small are scored as the minimum, never as the best.
    assert m.heatmap.min() <= m.heatmap[-1, -1]


# --------------------------------------------------------------------------- MI


def test_mi_equals_direct_joint_histograms():
    rng = np.random.default_rng(4)
    s, t = rng.random((30, 28)), rng.random((12, 10))
    sm, tm = rng.random(s.shape) > 0.2, rng.random(t.shape) > 0.1
    p = mi.MIParams(bins=8, smooth_sigma=0.0)
    ws, wt = mi.soft_bin_weights(s, sm, 8), mi.soft_bin_weights(t, tm, 8)
    expected = np.zeros((19, 19))
    for i in range(19):
        for j in range(19):
            joint = np.einsum("auv,buv->ab", wt, ws[:, i : i + 12, j : j + 10])
            pj = joint / joint.sum()
            pa, pb = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
            nz = pj > 0
            expected[i, j] = (pj[nz] * np.log(pj[nz] / (pa @ pb)[nz])).sum()
    np.testing.assert_allclose(mi.mi_heatmap(s, t, sm, tm, p), expected, atol=1e-6)


def test_mi_recovers_shift_under_nonmonotonic_mapping():
    opt = make_optical(768, seed=5)
    sar = to_sar(opt, looks=4, seed=6)  # cos mapping: intensity order scrambled
    errs_mi, errs_ncc = [], []
    for r0, c0, dr, dc in _pairs(5, seed=7):
        search, template = cut(sar, r0, c0, S), cut(opt, r0 + dr, c0 + dc, T)
        m = mi.match(search, template)
        errs_mi.append(np.hypot(m.offset[0] - dr, m.offset[1] - dc))
        n = ncc.match(search, template)
        errs_ncc.append(np.hypot(n.offset[0] - dr, n.offset[1] - dc))
    assert sum(e <= 1.0 for e in errs_mi) >= 4, errs_mi
    assert np.median(errs_mi) < 0.5


def test_mi_flat_template_has_no_preference():
    rng = np.random.default_rng(8)
    m = mi.match(rng.random((96, 96)), np.full((48, 48), 0.4))
    assert np.allclose(m.heatmap, 0.0, atol=1e-6)
    assert m.quality == pytest.approx(1.0)


# --------------------------------------------------------------------------- structural


def test_structural_recovers_shift_on_speckled_sar_where_ncc_fails(scene):
    opt, sar = scene  # single-look speckle, non-monotonic mapping
    ok_struct, ok_ncc, errs = 0, 0, []
    for r0, c0, dr, dc in _pairs(8, seed=11):
        search, template = cut(sar, r0, c0, S), cut(opt, r0 + dr, c0 + dc, T)
        m = structural.match(search, template)
        e = np.hypot(m.offset[0] - dr, m.offset[1] - dc)
        errs.append(e)
        ok_struct += e <= 1.0
        n = ncc.match(search, template)
        ok_ncc += np.hypot(n.offset[0] - dr, n.offset[1] - dc) <= 1.0
    assert ok_struct >= 7, errs
    assert ok_struct >= ok_ncc + 2, (ok_struct, ok_ncc)
    assert np.median(errs) < 0.5


def test_structural_plain_gradients_and_masks(scene):
    opt, sar = scene
    p = structural.StructuralParams(structural.DescriptorParams(sar_gradient="plain"))
    r0, c0, dr, dc = 400, 360, -13, 21
    search, template = cut(sar, r0, c0, S).copy(), cut(opt, r0 + dr, c0 + dc, T).copy()
    assert structural.match(search, template, params=p).peak == (dr, dc)
    smask = np.ones(search.shape, bool)
    smask[:, :40] = False
    search[:, :40] = np.nan
    tmask = np.ones(template.shape, bool)
    tmask[90:, :] = False
    template[90:, :] = 0.0
    m = structural.match(search, template, smask, tmask)
    assert np.hypot(m.offset[0] - dr, m.offset[1] - dc) <= 1.0


def test_descriptor_properties():
    rng = np.random.default_rng(12)
    img = ndimage.gaussian_filter(rng.random((64, 80)), 2)
    d = structural.dense_descriptor(img, "optical")
    assert d.shape == (9, 64, 80) and d.dtype == np.float32
    norms = np.sqrt((d.astype(float) ** 2).sum(0))
    assert norms.max() <= 1.0 + 1e-5 and np.median(norms) > 0.8
    assert (d >= 0).all()
    # Unsigned orientations: contrast reversal leaves the descriptor unchanged.
    np.testing.assert_allclose(structural.dense_descriptor(1.0 - img, "optical"), d, atol=1e-5)
    # A vertical edge puts its energy in the horizontal-gradient bins (0 and 8 around 0 rad).
    edge = np.zeros((40, 40))
    edge[:, 20:] = 1.0
    de = structural.dense_descriptor(edge, "optical")[:, 20, 18:22].sum(axis=1)
    assert set(np.argsort(de)[-2:]) == {0, 8}
    with pytest.raises(ValueError):
        structural.dense_descriptor(img, "lidar")


def test_scene_descriptors_cut_into_windows(scene):
    """The pipeline path: descriptors once per scene, windows cut from them."""
    opt, sar = scene
    dsar = structural.dense_descriptor(sar, "sar")
    dopt = structural.dense_descriptor(opt, "optical")
    for r0, c0, dr, dc in _pairs(3, seed=13):
        sd = dsar[:, r0 - S // 2 : r0 + S // 2, c0 - S // 2 : c0 + S // 2]
        td = dopt[:, r0 + dr - T // 2 : r0 + dr + T // 2, c0 + dc - T // 2 : c0 + dc + T // 2]
        m = structural.match_descriptors(sd, td)
        assert np.hypot(m.offset[0] - dr, m.offset[1] - dc) <= 1.0


# --------------------------------------------------------------------------- quality / covariance


def test_quality_distinctive_vs_flat_and_periodic(scene):
    opt, _ = scene
    yy, xx = np.mgrid[:S, :S]
    periodic = 0.5 + 0.25 * (np.sin(2 * np.pi * xx / 16) + np.sin(2 * np.pi * yy / 16))
    rng = np.random.default_rng(14)
    # Nearly flat (water, bare field): only independent sensor noise, below 8-bit quantisation.
    flat_s = 0.5 + 0.0005 * rng.standard_normal((S, S))
    flat_t = 0.5 + 0.0005 * rng.standard_normal((T, T))
    for name in ("ncc", "structural"):
        fn = get_matcher(name)
        q_dist = fn(cut(opt, 400, 400, S), cut(opt, 403, 395, T)).quality
        q_per = fn(periodic, periodic[64 + 3 : 64 + 3 + T, 64 + 5 : 64 + 5 + T]).quality
        q_flat = fn(flat_s, flat_t).quality
        assert q_dist > 2.0, name
        assert q_per < 1.3, (name, q_per)
        assert q_flat < 1.3, (name, q_flat)
        assert q_dist > 2 * max(q_per, q_flat)


def test_covariance_positive_definite_and_grows_with_noise():
    opt = make_optical(400, seed=15)
    rng = np.random.default_rng(16)
    search = cut(opt, 200, 200, S)
    template = cut(opt, 206, 193, T)
    clean = ncc.match(search, template)
    noisy = ncc.match(search + 0.5 * rng.standard_normal(search.shape), template)
    for m in (clean, noisy):
        vr, cv, vc = m.cov
        c = np.array([[vr, cv], [cv, vc]])
        assert np.all(np.linalg.eigvalsh(c) > 0)
        assert m.peak == (6, -7)
    assert noisy.cov[0] + noisy.cov[2] > 2 * (clean.cov[0] + clean.cov[2])
    assert noisy.score < clean.score


def test_refine_peak_on_analytic_heatmap():
    yy, xx = np.mgrid[-20:21, -20:21].astype(float)
    # Anisotropic Gaussian peak at (drow, dcol) = (3.3, -5.2), broad along columns.
    h = np.exp(-((yy - 3.3) ** 2) / (2 * 2.0**2) - ((xx + 5.2) ** 2) / (2 * 4.0**2))
    h += 0.5 * np.exp(-((yy + 10) ** 2 + (xx - 10) ** 2) / (2 * 2.0**2))  # rival peak at (-10, 10)
    h += 0.02 * np.random.default_rng(17).standard_normal(h.shape)  # some heatmap noise
    r = refine_peak(h)
    assert r.peak == (3, -5)
    assert abs(r.offset[0] - 3.3) < 0.1 and abs(r.offset[1] + 5.2) < 0.1
    assert r.quality == pytest.approx(1.0 / 0.5, rel=0.1)  # median ~0 here
    noiseless = refine_peak(h - 0.02 * np.random.default_rng(17).standard_normal(h.shape))
    assert abs(noiseless.offset[0] - 3.3) < 0.05 and abs(noiseless.offset[1] + 5.2) < 0.05
    vr, cv, vc = r.cov
    assert vr > 0 and vc > 0 and vr * vc - cv * cv > 0
    # Broader along columns -> less certain along columns (beyond the interpolation floor).
    assert vc - COV_FLOOR > 2 * (vr - COV_FLOOR) > 0
    offs, vals = top_peaks(h, k=3, min_distance=3)
    assert tuple(offs[0]) == (3, -5) and tuple(offs[1]) == (-10, 10)
    assert vals[0] > vals[1]
    assert len(offs) <= 3
    if len(offs) > 2:
        assert np.min(np.hypot(*(offs[2] - offs[:2]).T)) >= 3


def test_refine_peak_border_and_nan():
    h = np.zeros((11, 11))
    h[0, 4] = 1.0
    h[5, 5] = np.nan
    r = refine_peak(h)
    assert r.peak == (-5, -1) and r.offset == (-5.0, -1.0)
    assert r.cov[0] == pytest.approx(25 / 3)  # uninformative: uniform over the search range


# --------------------------------------------------------------------------- timings


def test_print_per_match_timings(scene):
    opt, sar = scene
    search, template = cut(sar, 384, 384, S), cut(opt, 390, 380, T)
    lines = []
    for name in MATCHERS:
        fn = get_matcher(name)
        fn(search, template)  # warm-up (FFT plans, imports)
        reps = 3
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(search, template)
        lines.append(f"{name}: {(time.perf_counter() - t0) / reps * 1000:.1f} ms per {S}/{T} match")
    dsar = structural.dense_descriptor(sar[: S, : S], "sar")
    dopt = structural.dense_descriptor(opt[: T, : T], "optical")
    t0 = time.perf_counter()
    for _ in range(3):
        structural.match_descriptors(dsar, dopt)
    lines.append(f"structural match_descriptors only: {(time.perf_counter() - t0) / 3 * 1000:.1f} ms")
    print("\n" + "\n".join(lines))
