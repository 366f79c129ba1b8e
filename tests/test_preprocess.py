"""SAR scale detection, SAR/optical conversion to [0, 1] and validity masks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.errors import InputError
from engine.preprocess import detect_sar_scale, optical_to_gray, optical_to_unit, sar_to_unit


def sar_scene(looks: int, texture_db: float, seed: int, n: int = 200) -> np.ndarray:
    """Calibrated sigma0-like linear intensity: dB texture (median ~ -12 dB) times gamma speckle."""
    rng = np.random.default_rng(seed)
    db = -12 + texture_db * ndimage.gaussian_filter(rng.standard_normal((n, n)), 3) * 5
    yy, xx = np.mgrid[:n, :n]
    db[(yy // 40 + xx // 40) % 2 == 0] -= 6  # fields of different brightness
    return 10 ** (db / 10) * rng.gamma(looks, 1.0 / looks, (n, n))


@pytest.mark.parametrize("looks", [1, 4])
@pytest.mark.parametrize("texture_db", [2.0, 5.0])
def test_detect_each_scale(looks, texture_db):
    lin = sar_scene(looks, texture_db, seed=looks)
    assert detect_sar_scale(lin.astype(np.float32)) == "linear"
    assert detect_sar_scale(np.sqrt(lin).astype(np.float32)) == "amplitude"
    db = 10 * np.log10(lin)
    assert detect_sar_scale(db.astype(np.float32)) == "db"
    display = np.clip((db + 30) / 35 * 255, 0, 255).astype(np.uint8)
    assert detect_sar_scale(display) == "dn"
    # Integer magnitudes (e.g. Sentinel-1 GRD uint16 DN are amplitudes) have a heavy right tail.
    assert detect_sar_scale(np.clip(np.sqrt(lin) * 600, 0, 65535).astype(np.uint16)) == "amplitude"
    # Uncalibrated intensity: the shape decides, not the absolute values.
    assert detect_sar_scale((lin * 1e4).astype(np.float32)) == "linear"


def test_detect_uses_source_dtype_and_ignores_nan():
    display = np.random.default_rng(0).integers(80, 180, (50, 50)).astype(np.float32)
    display[:5] = np.nan
    assert detect_sar_scale(display, dtype="uint8") == "dn"
    with pytest.raises(InputError, match="no valid"):
        detect_sar_scale(np.full((4, 4), np.nan, np.float32))


def test_complex_input_rejected():
    slc = (np.ones((8, 8)) + 1j * np.ones((8, 8))).astype(np.complex64)
    with pytest.raises(InputError, match="complex SAR"):
        detect_sar_scale(slc)
    with pytest.raises(InputError, match="SNAP"):
        sar_to_unit(slc)
    with pytest.raises(InputError, match="complex SAR"):
        sar_to_unit(np.ones((8, 8), np.float32), dtype="complex64")


def test_sar_to_unit_robust_stretch_and_masks():
    lin = sar_scene(1, 3.0, seed=5).astype(np.float32)
    lin[10:20, 10:20] = np.nan
    lin[30, :] = np.inf
    lin[40:45, 40:45] = -9999.0  # nodata value
    lin[50:52, 50:52] = 0.0  # log undefined -> invalid too
    unit, mask = sar_to_unit(lin, nodata=-9999.0)
    assert unit.dtype == np.float32 and unit.shape == lin.shape
    assert mask.dtype == bool
    assert not mask[10:20, 10:20].any() and not mask[30].any() and not mask[40:45, 40:45].any()
    assert not mask[50:52, 50:52].any()
    assert mask.sum() == lin.size - (100 + 200 + 25 + 4)
    assert np.all(unit[~mask] == 0.0)
    v = unit[mask]
    assert v.min() == 0.0 and v.max() == 1.0
    # 1-99 % stretch: about 1 % of valid pixels saturate at each end.
    assert 0.005 < np.mean(v == 0.0) < 0.02 and 0.005 < np.mean(v == 1.0) < 0.02
    # Monotonic in the input: brighter sigma0 never maps darker.
    order = np.argsort(lin[mask])
    assert np.all(np.diff(v[order]) >= -1e-6)


def test_linear_and_amplitude_give_same_unit_image_with_robust_clip():
    lin = sar_scene(2, 3.0, seed=6)
    a, ma = sar_to_unit(lin, scale="linear")
    b, mb = sar_to_unit(np.sqrt(lin), scale="amplitude")
    c, mc = sar_to_unit(10 * np.log10(lin), scale="db")
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert (ma == mb).all() and (ma == mc).all()


def test_fixed_db_clip():
    db = np.array([[-30.0, -25.0, -10.0], [5.0, 12.0, -17.5]])
    unit, mask = sar_to_unit(10 ** (db / 10), scale="linear", clip=(-25, 5))
    np.testing.assert_allclose(unit, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]], atol=1e-6)
    assert mask.all()
    unit_db, _ = sar_to_unit(db, scale="db", clip=(-25, 5))
    np.testing.assert_allclose(unit_db, unit, atol=1e-6)
    with pytest.raises(InputError):
        sar_to_unit(db, scale="db", clip=(5, -25))
    with pytest.raises(InputError):
        sar_to_unit(db, scale="db", clip="minmax")
    with pytest.raises(InputError, match="unknown SAR scale"):
        sar_to_unit(db, scale="log")


def test_dn_is_only_normalised():
    rng = np.random.default_rng(7)
    dn = rng.integers(0, 256, (100, 100)).astype(np.uint8)
    unit, mask = sar_to_unit(dn, scale="dn", valid_mask=dn > 0)
    assert not mask[dn == 0].any()
    lo, hi = np.percentile(dn[dn > 0].astype(float), [1, 99])
    expected = np.clip((dn.astype(float) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(unit[mask], expected[mask], atol=1e-6)


def test_constant_and_invalid_inputs_raise():
    with pytest.raises(InputError, match="constant"):
        sar_to_unit(np.full((20, 20), 0.1, np.float32), scale="linear")
    with pytest.raises(InputError, match="no valid"):
        sar_to_unit(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(InputError, match="no valid"):
        sar_to_unit(np.ones((20, 20)), valid_mask=np.zeros((20, 20), bool))
    with pytest.raises(InputError, match="single band"):
        sar_to_unit(np.ones((2, 20, 20)))
    with pytest.raises(InputError, match="constant"):
        optical_to_unit(np.full((10, 10), 7.0))
    with pytest.raises(InputError, match="no valid"):
        optical_to_unit(np.zeros((10, 10)), nodata=0)


def test_optical_to_gray_band_handling():
    rng = np.random.default_rng(8)
    rgb = rng.random((3, 16, 16))
    gray = optical_to_gray(rgb)
    np.testing.assert_allclose(gray, 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2], rtol=1e-6)
    assert gray.dtype == np.float32
    rgbn = np.concatenate([rgb, 100 * rng.random((1, 16, 16))])  # NIR ignored by default
    np.testing.assert_allclose(optical_to_gray(rgbn), gray, rtol=1e-6)
    np.testing.assert_allclose(optical_to_gray(rgbn, weights=[0, 0, 0, 1]), rgbn[3], rtol=1e-6)
    np.testing.assert_allclose(optical_to_gray(rgb[:1]), rgb[0], rtol=1e-6)
    np.testing.assert_allclose(optical_to_gray(rgb[0]), rgb[0], rtol=1e-6)
    np.testing.assert_allclose(optical_to_gray(rgb[:2]), 0.5 * (rgb[0] + rgb[1]), rtol=1e-6)
    with pytest.raises(InputError):
        optical_to_gray(rgb, weights=[1, 1])
    rgb_nan = rgb.copy()
    rgb_nan[1, 3, 4] = np.nan
    assert np.isnan(optical_to_gray(rgb_nan)[3, 4])


def test_optical_to_unit_ignores_nodata_collar():
    rng = np.random.default_rng(9)
    interior = 1000 + 3000 * ndimage.gaussian_filter(rng.random((60, 60)), 2)
    framed = np.zeros((80, 80))
    framed[10:70, 10:70] = interior
    framed[12, 12] = np.nan
    unit, mask = optical_to_unit(framed, nodata=0)
    interior[2, 2] = np.nan
    ref, _ = optical_to_unit(interior)
    assert mask.sum() == 60 * 60 - 1 and not mask[12, 12]
    assert not mask[:10].any()
    inner_mask = mask[10:70, 10:70]
    np.testing.assert_allclose(unit[10:70, 10:70][inner_mask], ref[inner_mask], atol=2e-3)
    assert unit.min() == 0.0 and unit.max() == 1.0
    ext_mask = np.ones((80, 80), bool)
    ext_mask[:, :40] = False
    _, m2 = optical_to_unit(framed, valid_mask=ext_mask, nodata=0)
    assert not m2[:, :40].any() and m2[10:70, 40:70].all()
