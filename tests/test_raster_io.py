"""Raster input: overlap, reprojection onto the SAR grid, masks, and specific errors."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from engine.errors import InputError, NoOverlapError
from engine.raster_io import common_grid, load_pair, open_raster

from helpers import write_geotiff

X0, Y0, RES = 500000.0, 5000000.0, 2.5


def _scene(n=400, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((n, n)).astype(np.float32) * 0.1
    img[200:220, 100:130] = 1.0   # a bright block at a known place
    return img


def test_reads_sar_window_and_reprojects_optical_from_wgs84(tmp_path):
    img = _scene()
    sar = write_geotiff(tmp_path / "sar.tif", img, Affine(RES, 0, X0, 0, -RES, Y0))
    # Optical: same content written in EPSG:4326 by warping the UTM image.
    from rasterio.warp import calculate_default_transform, reproject

    t, w, h = calculate_default_transform("EPSG:32633", "EPSG:4326", 400, 400,
                                          X0, Y0 - 400 * RES, X0 + 400 * RES, Y0)
    dst = np.zeros((h, w), np.float32)
    reproject(img, dst, src_transform=Affine(RES, 0, X0, 0, -RES, Y0), src_crs="EPSG:32633",
              dst_transform=t, dst_crs="EPSG:4326")
    opt = write_geotiff(tmp_path / "opt.tif", dst, t, crs="EPSG:4326")
    pair = load_pair(sar, opt, min_size=64)
    assert pair.grid.crs.to_epsg() == 32633
    assert pair.grid.res == pytest.approx(RES)
    # SAR read without resampling: identical values.
    np.testing.assert_array_equal(pair.sar[: img.shape[0], : img.shape[1]][pair.sar_valid[: 400, : 400]],
                                  img[: pair.sar.shape[0], : pair.sar.shape[1]][pair.sar_valid[:400, :400]])
    # The bright block lands where it is in the SAR (within a pixel after two resamplings).
    opt_band = pair.optical[0]
    ys, xs = np.nonzero(np.nan_to_num(opt_band) > 0.6)
    assert abs(ys.mean() - 209.5) < 1.0 and abs(xs.mean() - 114.5) < 1.0


def test_aoi_limits_the_grid_and_accepts_other_crs(tmp_path):
    img = _scene()
    t = Affine(RES, 0, X0, 0, -RES, Y0)
    sar = write_geotiff(tmp_path / "sar.tif", img, t)
    opt = write_geotiff(tmp_path / "opt.tif", img, t)
    aoi = (X0 + 100, Y0 - 700, X0 + 800, Y0 - 100)
    pair = load_pair(sar, opt, aoi=aoi, min_size=64)
    assert pair.grid.width == 280 and pair.grid.height == 240
    assert pair.grid.transform.c == pytest.approx(X0 + 100) and pair.grid.transform.f == pytest.approx(Y0 - 100)
    # The same AOI given in WGS84 gives (almost) the same grid.
    lons, lats = warp_transform("EPSG:32633", "EPSG:4326", [aoi[0], aoi[2]], [aoi[1], aoi[3]])
    pair2 = load_pair(sar, opt, aoi=(lons[0], lats[0], lons[1], lats[1]), aoi_crs="EPSG:4326", min_size=64)
    assert abs(pair2.grid.width - 280) <= 2 and abs(pair2.grid.height - 240) <= 2


def test_no_overlap_and_small_overlap_and_outside_aoi(tmp_path):
    img = _scene()
    sar = write_geotiff(tmp_path / "sar.tif", img, Affine(RES, 0, X0, 0, -RES, Y0))
    far = write_geotiff(tmp_path / "far.tif", img, Affine(RES, 0, X0 + 5000, 0, -RES, Y0))
    with pytest.raises(NoOverlapError, match="do not overlap"):
        load_pair(sar, far)
    near = write_geotiff(tmp_path / "near.tif", img, Affine(RES, 0, X0 + 350 * RES, 0, -RES, Y0))
    with pytest.raises(NoOverlapError, match=r"only 50×400 pixels, smaller than one search window \(256 px\)"):
        load_pair(sar, near, min_size=256)
    with pytest.raises(NoOverlapError, match="area of interest"):
        load_pair(sar, sar.replace("sar", "sar"), aoi=(0, 0, 10, 10), min_size=64) if False else \
            load_pair(sar, write_geotiff(tmp_path / "o.tif", img, Affine(RES, 0, X0, 0, -RES, Y0)),
                      aoi=(0, 0, 10, 10), min_size=64)


def test_nodata_and_nan_become_invalid(tmp_path):
    img = _scene()
    img[:50] = -9999
    opt_img = _scene()
    opt_img[:, :30] = np.nan
    t = Affine(RES, 0, X0, 0, -RES, Y0)
    sar = write_geotiff(tmp_path / "sar.tif", img, t, nodata=-9999)
    opt = write_geotiff(tmp_path / "opt.tif", opt_img, t)
    pair = load_pair(sar, opt, min_size=64)
    assert not pair.sar_valid[:50].any() and pair.sar_valid[50:].all()
    assert not pair.opt_valid[:, :30].any() and pair.opt_valid[:, 30:].all()
    assert np.isnan(pair.sar[:50]).all()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_raster", "not a readable raster"),
    ("no_crs", "no coordinate reference system"),
    ("complex", "complex SAR"),
    ("same_file", "same file"),
])
def test_bad_inputs_have_specific_errors(tmp_path, case, message):
    img = _scene(100)
    t = Affine(RES, 0, X0, 0, -RES, Y0)
    good = write_geotiff(tmp_path / "good.tif", img, t)
    sar = str(tmp_path / "x.tif")
    if case == "not_raster":
        (tmp_path / "x.tif").write_text("this is not a raster")
    elif case == "no_crs":
        with rasterio.open(sar, "w", driver="GTiff", width=100, height=100, count=1, dtype="float32",
                           transform=t) as ds:
            ds.write(img[None])
    elif case == "complex":
        write_geotiff(sar, (img + 1j * img).astype(np.complex64), t, dtype="complex64")
    elif case == "same_file":
        sar = good
    with pytest.raises(InputError, match=message):
        load_pair(sar, good, min_size=16)


def test_truncated_file_is_reported(tmp_path):
    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    path = write_geotiff(tmp_path / "t.tif", img, Affine(RES, 0, X0, 0, -RES, Y0))
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 3])
    other = write_geotiff(tmp_path / "o.tif", img, Affine(RES, 0, X0, 0, -RES, Y0))
    with pytest.raises(InputError, match=r"t\.tif.*(truncated or corrupt|not a readable raster)"):
        load_pair(path, other, min_size=64)
