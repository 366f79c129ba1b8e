"""Tests of the SAR/optical scene simulator (engine.simulate): determinism, imaging geometry
(layover, radar and sun shadows, double bounce), speckle statistics, output kinds, and the
misregistration truth of written GeoTIFF pairs."""
from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pytest

from engine.simulate import (LandCover, MisregParams, OpticalParams, SarParams, SceneParams,
                             generate_scene, load_truth, render_optical, render_sar,
                             sar_to_output, simulate_pair, simulate_pair_arrays, simulate_patch_pair,
                             single_building_scene)
from engine.simulate.sar import apply_speckle

# Single-building test scene: 160 x 160 px at 1 m, a 40 x 40 m box of height H on grass.
SIZE, GSD, H = 160, 1.0, 20.0
A, B = 60, 100            # footprint rows/cols [60, 100)


def _building(height=H):
    return single_building_scene(size=SIZE, gsd=GSD, height=height, footprint=(A, A, B, B))


def _profile_towards_sensor(img: np.ndarray, look_azimuth: float) -> np.ndarray:
    """Mean over the building's interior lines of a 1-D profile whose index grows towards the
    sensor; thanks to the symmetric footprint the building spans [A, B) in every orientation."""
    band = slice(A + 5, B - 5)
    if look_azimuth == 90:       # sensor east: +col
        return img[band, :].mean(0)
    if look_azimuth == 270:      # sensor west: -col
        return img[band, ::-1].mean(0)
    if look_azimuth == 0:        # sensor north: -row
        return img[::-1, band].mean(1)
    if look_azimuth == 180:      # sensor south: +row
        return img[:, band].mean(1)
    raise ValueError(look_azimuth)


def _crossing(prof_db: np.ndarray, start: int, step: int, level: float, above: bool) -> float:
    """First sub-pixel position from ``start`` (moving by ``step``) where the profile crosses
    ``level`` (from above to below if ``above`` is False, from below to above if True).

    Returned in corner coordinates (pixel i spans [i, i + 1)), like the footprint edges A, B.
    """
    i = start
    while 0 <= i + step < len(prof_db):
        a, b = prof_db[i], prof_db[i + step]
        if (a < level <= b) if above else (a >= level > b):
            return i + step * (level - a) / (b - a) + 0.5
        i += step
    raise AssertionError("no crossing found")


def _db(x):
    return 10 * np.log10(np.maximum(x, 1e-12))


# ---------------------------------------------------------------------------------------------
def test_scene_determinism_and_seed_dependence():
    p = SceneParams(size=(160, 200), gsd=2.5, kind="mixed", seed=7)
    s1, s2 = generate_scene(p), generate_scene(p)
    for name in ("dtm", "ndsm", "dsm", "landcover", "building_id", "object_id", "zone", "row_texture", "clutter"):
        np.testing.assert_array_equal(getattr(s1, name), getattr(s2, name), err_msg=name)
    assert s1.landcover.shape == (160, 200) and s1.landcover.dtype == np.uint8
    assert s1.ndsm.dtype == np.float32 and s1.ndsm.min() >= 0
    np.testing.assert_allclose(s1.dsm, s1.dtm + s1.ndsm)
    s3 = generate_scene(SceneParams(size=(160, 200), gsd=2.5, kind="mixed", seed=8))
    assert np.mean(s3.landcover != s1.landcover) > 0.2
    # Renderers: same rng seed -> identical images, different seed -> different speckle / noise.
    o1 = render_optical(s1, OpticalParams(), np.random.default_rng(1))
    o2 = render_optical(s1, OpticalParams(), np.random.default_rng(1))
    np.testing.assert_array_equal(o1, o2)
    r1 = render_sar(s1, SarParams(), np.random.default_rng(1))
    r2 = render_sar(s1, SarParams(), np.random.default_rng(1))
    r3 = render_sar(s1, SarParams(), np.random.default_rng(2))
    np.testing.assert_array_equal(r1, r2)
    assert np.mean(np.abs(r1 - r3) > 1e-6) > 0.5


def test_scene_kinds_have_their_character():
    frac = {}
    for kind in ("rural", "suburban", "urban"):
        s = generate_scene(SceneParams(size=256, gsd=2.5, kind=kind, seed=11))
        lc = s.landcover
        frac[kind] = {c: float(np.mean(lc == c)) for c in LandCover}
        # Buildings span 3..60 m; heights are finite and non-negative everywhere.
        bh = s.ndsm[lc == LandCover.BUILDING]
        if bh.size:
            assert bh.min() >= 2.5 and bh.max() <= 61.0
        assert np.isfinite(s.dtm).all()
    assert frac["urban"][LandCover.BUILDING] > 0.15 > frac["rural"][LandCover.BUILDING]
    green = (LandCover.CROP, LandCover.GRASS, LandCover.BARE, LandCover.TREE)
    assert sum(frac["rural"][c] for c in green) > 0.6
    assert frac["urban"][LandCover.ROAD] + frac["urban"][LandCover.PAVED] > 0.3
    assert frac["suburban"][LandCover.BUILDING] > frac["rural"][LandCover.BUILDING]


@pytest.mark.parametrize("look", [90, 270, 0])
def test_sar_layover_displaces_elevated_energy_towards_sensor(look):
    inc = 35.0
    sar = SarParams(incidence=inc, look_azimuth=look, looks=4, blur_sigma=0.8, texture=0.0)
    img = render_sar(_building(), sar, np.random.default_rng(3))
    prof = _db(_profile_towards_sensor(img, look))
    L = H / math.tan(math.radians(inc)) / GSD            # 28.56 px
    ground = np.median(np.concatenate([prof[:25], prof[-12:]]))
    # 1) Sensor-facing wall + roof + ground in layover form a bright band [B, B + L]; its outer
    #    edge is where the top of the wall is imaged.
    band = np.median(prof[B + 3: int(B + L) - 3])
    assert band > ground + 4.0
    # Searched from the open ground inwards, so dips inside the band (storey stripes, speckle)
    # cannot end it early.
    edge = _crossing(prof, int(B + L) + 10, -1, 0.5 * (band + ground), above=True)
    assert abs(edge - (B + L)) < 1.5, (edge, B + L)
    # 2) The roof is imaged from A + L: the dark gap (shadow + uncovered footprint) ends there.
    dark = np.median(prof[A - 8: A + 8])
    roof = np.median(prof[int(A + L) + 3: B - 2])
    assert roof > dark + 5.0
    roof_start = _crossing(prof, int(A + L) + 4, -1, 0.5 * (roof + dark), above=False)
    assert abs(roof_start - (A + L)) < 1.5, (roof_start, A + L)


@pytest.mark.parametrize("inc", [30.0, 45.0])
def test_sar_shadow_length_behind_building(inc):
    sar = SarParams(incidence=inc, look_azimuth=90, looks=4, blur_sigma=0.8, texture=0.0)
    img = render_sar(_building(), sar, np.random.default_rng(4))
    prof = _db(_profile_towards_sensor(img, 90))
    ground = np.median(prof[:A - int(H * math.tan(math.radians(inc))) - 4])
    dark = np.median(prof[A - 6: A])
    assert dark < ground - 8.0          # shadow bottoms out at the noise floor
    start = _crossing(prof, 2, +1, 0.5 * (ground + dark), above=False)
    length = A - start
    expected = H * math.tan(math.radians(inc)) / GSD     # 11.5 px at 30 deg, 20 px at 45 deg
    assert abs(length - expected) < 1.5, (length, expected)


@pytest.mark.parametrize("look", [90, 270])
def test_sar_double_bounce_line_at_sensor_facing_base(look):
    sar = SarParams(incidence=35.0, look_azimuth=look, looks=4, blur_sigma=0.8, texture=0.0)
    img = render_sar(_building(), sar, np.random.default_rng(5))
    prof = _db(_profile_towards_sensor(img, look))
    L = H / math.tan(math.radians(35.0))
    window = np.arange(A - 10, int(B + L) + 5)
    peak = window[np.argmax(prof[window])]
    # The dihedral wall-ground corner is the boundary between the last roof column (B - 1) and
    # the first ground column (B).
    assert peak in (B - 1, B), peak
    band = np.median(prof[B + 3: int(B + L) - 3])
    assert prof[peak] > band + 8.0
    # No such line at the base of the wall facing away from the sensor (it is in shadow).
    assert prof[A - 2: A + 2].max() < band


def test_optical_cast_shadow_direction_and_length():
    scene = _building()
    for sun_az, sun_el in ((180.0, 45.0), (135.0, 35.0), (250.0, 55.0)):
        opt = OpticalParams(sun_azimuth=sun_az, sun_elevation=sun_el, blur_sigma=0.3, noise_std=0.0, texture=0.0)
        img = render_optical(scene, opt, np.random.default_rng(0)).mean(0)
        foot = np.zeros(img.shape, bool)
        foot[A:B, A:B] = True
        ground = np.median(img[~foot])
        shadow = (img < 0.75 * ground) & ~foot
        rr, cc = np.nonzero(shadow)
        # Direction from the building to its shadow: opposite to the sun.
        dx = cc.mean() - (A + B - 1) / 2
        dy = rr.mean() - (A + B - 1) / 2
        az = math.degrees(math.atan2(dx, -dy)) % 360
        diff = (az - (sun_az + 180.0) + 180.0) % 360 - 180.0
        assert abs(diff) < 6.0, (sun_az, az)
        # Length: how far the shadow reaches beyond the footprint along that direction.
        d = np.array([math.sin(math.radians(sun_az + 180)), -math.cos(math.radians(sun_az + 180))])
        # Length from the area: a w x w box casts a w * L * (|dx| + |dy|) shadow outside itself.
        length = shadow.sum() / ((B - A) * (abs(d[0]) + abs(d[1])))
        expected = H / math.tan(math.radians(sun_el)) / GSD
        assert abs(length - expected) < 1.0, (sun_az, length, expected)


def test_optical_off_nadir_relief_displacement():
    from engine.simulate.optical import render_optical_clean

    scene = _building()
    base = OpticalParams(sun_elevation=90.0, blur_sigma=0.0, noise_std=0.0, texture=0.0)
    nadir = render_optical_clean(scene, base, np.random.default_rng(0)).mean(0)
    ground = np.median(nadir[:, :40])
    for az in (90.0, 270.0):
        p = OpticalParams(sun_elevation=90.0, blur_sigma=0.0, noise_std=0.0, texture=0.0,
                          off_nadir=30.0, off_nadir_azimuth=az)
        cover = np.zeros(scene.shape, bool)
        img = render_optical_clean(scene, p, np.random.default_rng(0), cover=cover).mean(0)
        prof = np.abs(img[A + 5:B - 5] - ground).mean(0)
        changed = np.flatnonzero(prof > 0.02)
        shift = H * math.tan(math.radians(30.0)) / GSD                 # 11.5 px away from the sensor
        if az == 90:   # sensor east: the roof leans west, the east facade shows in [B - shift, B)
            assert abs(changed.min() - (A - shift)) <= 1.0 and changed.max() == B - 1
            assert cover[A + 5:B - 5, int(A - shift) + 1:A].all()
        else:
            assert abs(changed.max() + 1 - (B + shift)) <= 1.0 and changed.min() == A
            assert cover[A + 5:B - 5, B:int(B + shift)].all()
    # At nadir the building covers exactly its footprint.
    assert np.array_equal(np.flatnonzero(np.abs(nadir[A + 5:B - 5] - ground).mean(0) > 0.02), np.arange(A, B))


def test_speckle_is_gamma_with_L_looks():
    mean = np.full((256, 256), 0.05, np.float32)
    for looks in (1, 4):
        for blur in (0.0, 0.8):
            s = apply_speckle(mean, looks, blur, np.random.default_rng(looks))
            assert abs(s.mean() / 0.05 - 1) < 0.03
            enl = s.mean() ** 2 / s.var()
            assert abs(enl - looks) < 0.12 * looks, (looks, blur, enl)
    # Resolution blur correlates neighbouring pixels; without it they are independent.
    s0 = apply_speckle(mean, 1, 0.0, np.random.default_rng(9))
    s1 = apply_speckle(mean, 1, 0.8, np.random.default_rng(9))
    corr = lambda a: np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]  # noqa: E731
    assert abs(corr(s0)) < 0.02 and corr(s1) > 0.3


def test_sar_output_kinds():
    sig = np.array([[1e-3, 0.1, 1.0], [10.0, 100.0, 0.0]], np.float32)
    lin = sar_to_output(sig, "linear")
    assert lin.dtype == np.float32 and np.array_equal(lin, sig)
    db = sar_to_output(sig, "db")
    assert db.dtype == np.float32
    np.testing.assert_allclose(db[0], [-30, -10, 0], atol=1e-5)
    assert np.isfinite(db).all()
    amp = sar_to_output(sig, "amplitude")
    assert amp.dtype == np.float32
    np.testing.assert_allclose(amp ** 2, sig, rtol=1e-6)
    dn8 = sar_to_output(sig, "dn8", (-25.0, 5.0))
    assert dn8.dtype == np.uint8
    assert dn8.tolist() == [[0, 128, 212], [255, 255, 0]]   # 212.5 rounds to even
    dn16 = sar_to_output(sig, "dn16", (-30.0, 10.0))
    assert dn16.dtype == np.uint16
    assert dn16.tolist() == [[0, 32768, 49151], [65535, 65535, 0]]
    with pytest.raises(ValueError):
        sar_to_output(sig, "foo")


def _phase_corr(a: np.ndarray, b: np.ndarray):
    """Integer+parabolic sub-pixel (dx, dy) such that b(p) ~ a(p - (dx, dy))."""
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    r = np.fft.ifft2(fb * np.conj(fa) / (np.abs(fb * np.conj(fa)) + 1e-9)).real
    iy, ix = np.unravel_index(np.argmax(r), r.shape)
    def sub(c, m, p):
        d = c - 2 * m + p
        return 0.0 if d == 0 else 0.5 * (c - p) / d
    h, w = r.shape
    dy = iy + sub(r[iy - 1, ix], r[iy, ix], r[(iy + 1) % h, ix])
    dx = ix + sub(r[iy, ix - 1], r[iy, ix], r[iy, (ix + 1) % w])
    return (dx + w / 2) % w - w / 2, (dy + h / 2) % h - h / 2


def test_written_pair_pure_shift_recovered(tmp_path):
    import rasterio

    scene = SceneParams(size=256, gsd=2.5, kind="suburban", seed=21)
    opt = OpticalParams(noise_std=0.0)
    sar = SarParams(output="dn16")
    mis = MisregParams(shift=(12.0, -7.0))
    paths = simulate_pair(str(tmp_path), "p", scene=scene, optical=opt, sar=sar, misreg=mis)
    arrays = simulate_pair_arrays(scene, opt, sar, mis)
    assert sorted(os.listdir(tmp_path)) == ["p_opt.tif", "p_sar.tif", "p_truth.json"]   # no temp files
    with rasterio.open(paths.optical) as ds:
        written = ds.read().astype(np.float32) / 255.0
        assert ds.crs.to_epsg() == 32633
        assert ds.dtypes[0] == "uint8" and ds.count == 3
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        opt_gt = ds.transform.to_gdal()
    with rasterio.open(paths.sar) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.dtypes[0] == "uint16" and ds.nodata is None
        assert np.array_equal(ds.read(1), arrays.sar)
        sar_gt = ds.transform.to_gdal()
    truth = load_truth(paths.truth)
    np.testing.assert_allclose(truth.optical_geotransform, opt_gt)
    np.testing.assert_allclose(truth.sar_geotransform, sar_gt)
    assert "UTM zone 33N" in truth.crs_wkt
    # f is a pure translation: +12 px east, 7 px north.
    nom = np.array([[452100.0, 5411800.0], [452500.0, 5411500.0]])
    np.testing.assert_allclose(truth.true_xy(nom) - nom, [[30.0, 17.5], [30.0, 17.5]])
    # The written optical shows at nominal p the ground at p + (12, -7): its content is the
    # true-grid rendering moved by (-12, +7) pixels.
    dx, dy = _phase_corr(arrays.optical_true.mean(0), written.mean(0))
    assert abs(dx - (-12.0)) < 0.25 and abs(dy - 7.0) < 0.25, (dx, dy)


def test_written_pair_general_misregistration_truth(tmp_path):
    import rasterio
    from scipy import ndimage as ndi

    scene = SceneParams(size=(224, 256), gsd=2.5, kind="urban", seed=5)
    opt = OpticalParams(noise_std=0.0, bands="pan", bits=16)
    mis = MisregParams(shift=(5.3, -3.7), rotation_deg=0.4, scale=1.003, shear=0.002, warp_px=2.5, seed=3)
    paths = simulate_pair(str(tmp_path), "g", scene=scene, optical=opt, misreg=mis)
    arrays = simulate_pair_arrays(scene, opt, SarParams(), mis)
    truth = load_truth(paths.truth)
    with rasterio.open(paths.optical) as ds:
        written = ds.read(1).astype(np.float64) / 65535.0
        assert ds.dtypes[0] == "uint16"
    with open(paths.truth) as f:
        raw = json.load(f)
    assert raw["params"]["misreg"]["rotation_deg"] == pytest.approx(0.4)
    # Every written pixel must equal the true-grid rendering sampled at f(nominal position).
    ho, wo = written.shape
    rr, cc = np.mgrid[0:ho, 0:wo]
    gt = truth.optical_geotransform
    nom = np.column_stack([gt[0] + (cc.ravel() + 0.5) * gt[1], gt[3] + (rr.ravel() + 0.5) * gt[5]])
    sar_px = truth.xy_to_sar_px(truth.true_xy(nom))
    inside = ((sar_px[:, 0] > 1) & (sar_px[:, 0] < 255) & (sar_px[:, 1] > 1) & (sar_px[:, 1] < 223))
    assert inside.mean() > 0.8
    pred = ndi.map_coordinates(arrays.optical_true[0].astype(np.float64),
                               [sar_px[inside, 1] - 0.5, sar_px[inside, 0] - 0.5], order=1)
    err = np.abs(pred - written.ravel()[inside])
    assert np.median(err) < 1e-4 and np.percentile(err, 99) < 2e-3
    # The misregistration really is there: without f the match is much worse.
    pred_nom = ndi.map_coordinates(arrays.optical_true[0].astype(np.float64),
                                   [rr.ravel()[inside], cc.ravel()[inside]], order=1)
    assert np.median(np.abs(pred_nom - written.ravel()[inside])) > 20 * np.median(err) + 1e-3
    # Check points: enough, spread, at ground level and self-consistent.
    cp = truth.check_points
    assert len(cp) >= 50
    assert np.ptp(cp.opt_colrow[:, 0]) > 0.7 * wo and np.ptp(cp.opt_colrow[:, 1]) > 0.7 * ho
    np.testing.assert_allclose(truth.optical_px_to_true_xy(cp.opt_colrow), cp.true_xy, atol=1e-6)
    np.testing.assert_allclose(truth.true_xy(cp.nominal_xy), cp.true_xy, atol=1e-6)
    np.testing.assert_allclose(truth.xy_to_sar_px(cp.true_xy), cp.sar_colrow, atol=1e-6)
    sc = np.floor(cp.sar_colrow).astype(int)
    assert (arrays.scene.ndsm[sc[:, 1], sc[:, 0]] <= 0.5).all()
    assert len(glob.glob(os.path.join(tmp_path, "*.tmp"))) == 0


def test_misregistration_changes_only_the_written_optical():
    scene = SceneParams(size=96, gsd=2.5, kind="urban", seed=8)
    a = simulate_pair_arrays(scene, OpticalParams(), SarParams(), MisregParams(shift=(30.0, -25.0)))
    b = simulate_pair_arrays(scene, OpticalParams(), SarParams(), MisregParams(shift=(2.0, 1.0), rotation_deg=0.3))
    np.testing.assert_array_equal(a.scene.ndsm, b.scene.ndsm)
    np.testing.assert_array_equal(a.sar, b.sar)
    np.testing.assert_array_equal(a.optical_true, b.optical_true)
    assert not np.array_equal(a.optical, b.optical)


def test_misreg_random_is_within_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = MisregParams.random(rng, max_shift=40)
        assert max(abs(m.shift[0]), abs(m.shift[1])) <= 40
        assert abs(m.rotation_deg) <= 0.5 and abs(m.scale - 1) <= 0.004 and m.warp_px <= 3.0


def test_patch_pairs_are_fast_path_and_deterministic():
    a = simulate_patch_pair(np.random.default_rng(42), size=128)
    b = simulate_patch_pair(np.random.default_rng(42), size=128)
    np.testing.assert_array_equal(a.sar, b.sar)
    np.testing.assert_array_equal(a.optical, b.optical)
    assert a.sar.shape == (128, 128) and a.sar.dtype == np.float32 and (a.sar >= 0).all()
    assert a.optical.shape[1:] == (128, 128) and a.optical.shape[0] in (1, 3)
    assert a.optical.min() >= 0 and a.optical.max() <= 1
    assert a.landcover.shape == (128, 128)
    c = simulate_patch_pair(np.random.default_rng(43), size=128, gsd=8.0, kind="urban")
    assert c.sar.shape == (128, 128) and c.info["oversampled"]
