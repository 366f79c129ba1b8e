"""Robustness (issue 7): bad inputs, faults and odd-but-valid inputs, table-driven.

Every case builds its input (small rasters written with rasterio into the test's own folder), runs
the engine entry point (``match_pair`` and, for errors, ``python -m engine match`` through
``engine.cli.main``) and checks the exact error class and message, or the result; and that nothing
is left behind in the output folder (no half-written file, no temporary) and the inputs are
byte-for-byte unchanged.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.warp import transform as warp_transform

from engine.cli import main as cli_main
from engine.errors import (CancelledError, InputError, MatcherError, ModelError, NoOverlapError, OutputError,
                           TooFewPointsError)
from engine.outputs.points_file import read_points
from engine.params import MatchParams
from engine.pipeline import STAGES, classical_tile_matcher, match_pair
from engine.progress import CancelToken
from engine.runtime import registry
from engine.simulate.pair import simulate_pair_arrays
from engine.simulate.params import MisregParams, SarParams, SceneParams
from engine.simulate.sar import sar_to_output
from engine.tiling import TilingOptions
from engine.write_results import write_results

from helpers import files_under, fingerprint, write_geotiff

SIZE = 640
SHIFT = (6.0, -4.0)          # simulated misregistration, optical (columns, rows) px
SEARCH = 256                 # the default search window


# ============================================================================ shared scene


@dataclass
class Base:
    """One simulated scene, kept in memory; each case writes the variant it needs."""

    sigma0: np.ndarray        # linear SAR intensity (H, W)
    optical: np.ndarray       # (3, H, W) uint8 RGB, misregistered georeference
    sar_tf: Affine
    opt_tf: Affine
    crs: str
    ref_shift_px: tuple[float, float] = (np.nan, np.nan)
    """Shift recovered from the plain pair (dB SAR, RGB uint8 optical): what every variant that is
    handled must reproduce."""

    @property
    def sar_db(self) -> np.ndarray:
        return sar_to_output(self.sigma0, "db")

    def sar(self, d: Path, arr=None, name="sar.tif", tf=None, crs=None, **kw) -> str:
        return write_geotiff(d / name, self.sar_db if arr is None else arr, tf or self.sar_tf,
                             crs=crs or self.crs, **kw)

    def opt(self, d: Path, arr=None, name="opt.tif", tf=None, crs=None, **kw) -> str:
        return write_geotiff(d / name, self.optical if arr is None else arr, tf or self.opt_tf,
                             crs=crs or self.crs, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    arr = simulate_pair_arrays(SceneParams(size=SIZE, kind="suburban", seed=5), sar=SarParams(output="linear"),
                               misreg=MisregParams(shift=SHIFT))
    b = Base(sigma0=arr.sar_sigma0, optical=arr.optical, sar_tf=arr.sar_transform, opt_tf=arr.optical_transform,
             crs=arr.crs_wkt)
    d = tmp_path_factory.mktemp("ref")
    res = match_pair(b.sar(d), b.opt(d), MatchParams(n_target=40, transform="shift"))
    assert res.stats.n_inliers >= 10
    # Classical matching is biased by layover here (about +2.9 px in x), the same for every variant.
    assert res.stats.shift_px == pytest.approx(SHIFT, abs=3.5)
    b.ref_shift_px = res.stats.shift_px
    return b


def warp_array(arr: np.ndarray, src_tf: Affine, crs: str, dst_crs=None, dst_tf=None, shape=None,
               resampling=Resampling.bilinear, dst_nodata=None) -> tuple[np.ndarray, Affine]:
    """Reproject/resample ``arr`` ((bands,) H, W) onto another CRS (default grid) or onto ``dst_tf``."""
    a = arr if arr.ndim == 3 else arr[None]
    h, w = a.shape[1:]
    if dst_tf is None:
        left, top = src_tf.c, src_tf.f
        dst_tf, dw, dh = calculate_default_transform(crs, dst_crs, w, h, left, top + h * src_tf.e,
                                                     left + w * src_tf.a, top)
        shape = (dh, dw)
    out = np.zeros((a.shape[0],) + tuple(shape or (h, w)), a.dtype)
    if dst_nodata is not None:
        out[:] = dst_nodata
    for i in range(a.shape[0]):
        reproject(a[i], out[i], src_transform=src_tf, src_crs=crs, dst_transform=dst_tf, dst_crs=dst_crs or crs,
                  resampling=resampling, dst_nodata=dst_nodata)
    return (out if arr.ndim == 3 else out[0]), dst_tf


def rotated(tf: Affine, degrees: float, size: int = SIZE) -> Affine:
    """``tf`` rotated about the centre of a ``size``² raster."""
    cx, cy = tf * (size / 2, size / 2)
    return Affine.translation(cx, cy) * Affine.rotation(degrees) * Affine.translation(-cx, -cy) * tf


# ============================================================================ bookkeeping


def params_of(kw: dict) -> MatchParams:
    return MatchParams(**{"n_target": 40, "transform": "shift", **kw})


CLI_FLAGS = {"n_target": "--n-target", "transform": "--transform", "aoi": "--aoi", "aoi_crs": "--aoi-crs",
             "method": "--method", "sar_band": "--sar-band", "opt_bands": "--optical-bands",
             "resolution": "--resolution", "device": "--device", "model_size": "--model-size"}


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """``python -m engine ...`` in-process: (exit status, what it printed on stderr)."""
    capsys.readouterr()
    rc = cli_main(args)
    return rc, capsys.readouterr().err


def cli_args(sar: str, opt: str, out: Path, kw: dict) -> list[str]:
    args = ["match", "--sar", sar, "--optical", opt, "--out", str(out), "--quiet"]
    for k, v in {"n_target": 40, "transform": "shift", **kw}.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(repr(float(x)) if k == "aoi" else str(x) for x in v)
        args += [CLI_FLAGS[k], str(v)]
    return args


# ============================================================================ inputs that must fail


def _far(d, b):
    return b.sar(d), b.opt(d, tf=b.opt_tf * Affine.translation(5 * SIZE, 0)), {}


def _thin_overlap(d, b):   # the optical overlaps the SAR by 200 columns only
    return b.sar(d), b.opt(d, tf=b.opt_tf * Affine.translation(SIZE - 200, 0)), {}


def _aoi_outside(d, b):
    x0, y0 = b.sar_tf.c + 10 * SIZE * 2.5, b.sar_tf.f
    return b.sar(d), b.opt(d), {"aoi": (x0, y0 - 1000, x0 + 1000, y0)}


def _aoi_unknown_crs(d, b):
    return b.sar(d), b.opt(d), {"aoi": (0.0, 0.0, 1.0, 1.0), "aoi_crs": "EPSG:99999"}


def _aoi_inverted(d, b):
    return b.sar(d), b.opt(d), {"aoi": (10.0, 10.0, 0.0, 0.0)}


def _no_crs(d, b):
    p = d / "sar.tif"
    with rasterio.open(p, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="float32",
                       transform=b.sar_tf) as ds:
        ds.write(b.sar_db[None])
    return str(p), b.opt(d), {}


def _no_geotransform(d, b):
    p = d / "sar.tif"
    with rasterio.open(p, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="float32",
                       crs=b.crs) as ds:
        ds.write(b.sar_db[None])
    return str(p), b.opt(d), {}


def _sar_with(fill: Callable[[np.ndarray], None], nodata=None):
    def build(d, b):
        a = b.sar_db.copy()
        fill(a)
        return b.sar(d, a, nodata=nodata), b.opt(d), {}
    return build


def _set(region, value):
    def fill(a):
        a[region] = value
    return fill


def _zero_sar(dtype):
    def build(d, b):
        return b.sar(d, np.zeros((SIZE, SIZE), dtype)), b.opt(d), {}
    return build


def _constant_optical(d, b):
    return b.sar(d), b.opt(d, np.full_like(b.optical, 77)), {}


def _scattered_nan(d, b):   # 0.5 % of the pixels NaN, spread everywhere: no window is free of them
    a = b.sar_db.copy()
    r, c = np.random.default_rng(0).integers(0, SIZE, (2, 2000))
    a[r, c] = np.nan
    return b.sar(d, a), b.opt(d), {}


def _complex_sar(d, b):
    s = np.sqrt(b.sigma0)
    return b.sar(d, (s + 1j * s).astype(np.complex64), dtype="complex64"), b.opt(d), {}


def _complex_optical(d, b):
    o = b.optical.astype(np.float32)
    return b.sar(d), b.opt(d, (o[:1] + 1j * o[1:2]).astype(np.complex64), dtype="complex64"), {}


def _truncated(which: str, keep: float):
    def build(d, b):
        sar, opt = b.sar(d), b.opt(d)
        path = sar if which == "sar" else opt
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: int(len(data) * keep)])
        return sar, opt, {}
    return build


def _not_a_raster(d, b):
    (d / "sar.tif").write_text("this is not a raster\n")
    return str(d / "sar.tif"), b.opt(d), {}


def _missing(d, b):
    return str(d / "nowhere" / "sar.tif"), b.opt(d), {}


def _folder(d, b):
    (d / "a_folder.tif").mkdir()
    return str(d / "a_folder.tif"), b.opt(d), {}


def _same_file(d, b):
    p = b.opt(d)
    return p, p, {}


def _plain(**kw):
    def build(d, b):
        return b.sar(d), b.opt(d), dict(kw)
    return build


def _coarse_optical(factor: int, **kw):
    """The optical resampled (averaged) to ``factor`` times the SAR pixel size."""
    def build(d, b):
        tf = b.opt_tf * Affine.scale(factor)
        arr, _ = warp_array(b.optical.astype(np.float32), b.opt_tf, b.crs, dst_tf=tf,
                            shape=(SIZE // factor, SIZE // factor), resampling=Resampling.average)
        return b.sar(d), b.opt(d, arr, tf=tf), dict(kw)
    return build


@dataclass
class Fails:
    id: str
    build: Callable
    error: type
    message: str
    """Regular expression the message must contain."""
    cli: bool = True


FAILS = [
    Fails("no_overlap", _far, NoOverlapError, r"do not overlap \(SAR extent .*, optical extent"),
    Fails("overlap_smaller_than_window", _thin_overlap, NoOverlapError,
          r"only 200×640 pixels, smaller than one search window \(256 px\)"),
    Fails("aoi_outside_both", _aoi_outside, NoOverlapError, r"area of interest .* lies outside the overlap"),
    Fails("aoi_unknown_crs", _aoi_unknown_crs, InputError,
          r"AOI CRS 'EPSG:99999' is not a coordinate reference system GDAL knows"),
    Fails("aoi_inverted", _aoi_inverted, InputError, r"xmin < xmax and ymin < ymax", cli=False),
    Fails("sar_without_crs", _no_crs, InputError, r"SAR raster .* has no coordinate reference system; assign one"),
    Fails("sar_without_geotransform", _no_geotransform, InputError, r"has no geotransform \(it is not georeferenced\)"),
    Fails("nodata_everywhere", _sar_with(_set(np.s_[:, :], -9999.0), nodata=-9999), InputError,
          r"the SAR image has no valid pixels \(all NaN, nodata or masked\)"),
    Fails("nodata_in_99_percent", _sar_with(_set(np.s_[:, :636], -9999.0), nodata=-9999), InputError,
          r"Less than 1 % of the area of interest holds valid pixels in both rasters"),
    Fails("nodata_in_most_of_the_aoi", _sar_with(_set(np.s_[:, :400], -9999.0), nodata=-9999), TooFewPointsError,
          r"No candidate location has a complete search window \(256 px\).*only 3\d\.\d% of the area holds valid"),
    Fails("nan_everywhere", _sar_with(_set(np.s_[:, :], np.nan)), InputError, r"the SAR image has no valid pixels"),
    Fails("nan_scattered_everywhere", _scattered_nan, TooFewPointsError,
          r"99\.\d% of the area is valid, but invalid pixels \(nodata, NaN or Inf\) are spread through it"),
    Fails("constant_sar", _sar_with(_set(np.s_[:, :], -7.5)), InputError,
          r"the SAR image is constant \(value -7\.5\); nothing to match\.$"),
    Fails("all_zero_sar_float32", _zero_sar(np.float32), InputError,
          r"the SAR image is constant \(value 0\); nothing to match\. An all-zero SAR is usually an empty"),
    Fails("all_zero_sar_uint16", _zero_sar(np.uint16), InputError, r"the SAR image is constant \(value 0\)"),
    Fails("constant_optical", _constant_optical, InputError, r"the optical image is constant \(value 77\)"),
    Fails("complex_sar_slc", _complex_sar, InputError,
          r"holds complex values \(SLC\): complex SAR is not supported; detect it first"),
    Fails("complex_optical", _complex_optical, InputError, r"optical raster .* holds complex values"),
    Fails("truncated_sar_header", _truncated("sar", 0.02), InputError,
          r"SAR (file|raster) .*sar\.tif.* (not a readable raster|truncated or corrupt)"),
    Fails("truncated_optical_data", _truncated("opt", 0.6), InputError,
          r"opt\.tif.*(truncated or corrupt|not a readable raster)"),
    Fails("not_a_raster", _not_a_raster, InputError, r"The SAR file .*sar\.tif' is not a readable raster"),
    Fails("path_does_not_exist", _missing, InputError, r"The SAR raster .*nowhere/sar\.tif' does not exist"),
    Fails("folder_instead_of_raster", _folder, InputError, r"is a folder, not a raster file"),
    Fails("sar_equals_optical", _same_file, InputError, r"The SAR and the optical inputs are the same file"),
    Fails("missing_sar_band", _plain(sar_band=2), InputError, r"SAR band 2 does not exist \(the SAR raster has 1"),
    Fails("missing_optical_band", _plain(opt_bands=[1, 5]), InputError, r"Optical band 5 does not exist"),
    Fails("no_candidates_wanted", _plain(n_target=0), InputError, r"n_target\) must be at least 1, got 0"),
    Fails("too_few_points_for_affine", _plain(n_target=2, transform="affine"), TooFewPointsError,
          r"affine needs at least 3 tie points, got 2.*\(2 candidates, 2 reliable matches\)\. Try a larger area, "
          r"more candidates \(--n-target\), or a simpler transform \('shift'\)\."),
    Fails("too_few_points_for_poly3", _plain(n_target=6, transform="poly3"), TooFewPointsError,
          r"poly3 needs at least 10 tie points, got 6"),
    # The run's warnings travel with the error: here the resolution ratio is a likely reason.
    Fails("too_few_points_with_extreme_resolution_ratio", _coarse_optical(10, n_target=2, transform="affine"),
          TooFewPointsError, r"affine needs at least 3 .*Try a larger area.* Note: The optical pixel size is 10\.0× "
          r"the matching grid's"),
]


@pytest.mark.parametrize("case", FAILS, ids=[c.id for c in FAILS])
def test_bad_input_fails_with_a_specific_error_and_leaves_nothing(case, base, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt, kw = case.build(d, base)
    before = fingerprint(d)
    with pytest.raises(MatcherError) as ei:
        match_pair(sar, opt, params_of(kw))
    assert type(ei.value) is case.error, f"{type(ei.value).__name__}: {ei.value}"
    assert re.search(case.message, str(ei.value)), str(ei.value)
    assert fingerprint(d) == before                       # inputs untouched, no side-car written
    if not case.cli:
        return
    out = tmp_path / "out"
    rc, err = run_cli(capsys, cli_args(sar, opt, out, kw))
    assert rc == 2
    assert "\nerror: " in err and "Traceback" not in err
    assert re.search(case.message, err.split("\nerror: ", 1)[1]), err
    assert not out.exists()                               # not even an empty output folder
    assert fingerprint(d) == before


def test_cli_rejects_an_inverted_aoi_before_running(base, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt, _ = _plain()(d, base)
    with pytest.raises(SystemExit) as ei:
        cli_main(["match", "--sar", sar, "--optical", opt, "--out", str(tmp_path / "out"), "--aoi", "10,10,0,0"])
    assert ei.value.code == 2
    assert "AOI must be 'xmin,ymin,xmax,ymax' with xmin<xmax and ymin<ymax" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ============================================================================ inputs that must work


def _sar_kind(kind):
    def build(d, b):
        return b.sar(d, sar_to_output(b.sigma0, kind)), b.opt(d), {}
    return build


def _opt_bands(arr_of: Callable[[np.ndarray], np.ndarray], **kw):
    def build(d, b):
        return b.sar(d), b.opt(d, arr_of(b.optical)), dict(kw)
    return build


def _grey(o):
    return np.rint(0.2126 * o[0] + 0.7152 * o[1] + 0.0722 * o[2]).astype(np.uint8)[None]


def _reprojected(which: str, dst_crs: str):
    def build(d, b):
        sar, opt = b.sar(d), b.opt(d)
        if which in ("sar", "both"):
            a, tf = warp_array(b.sar_db, b.sar_tf, b.crs, dst_crs, dst_nodata=np.nan)
            sar = b.sar(d, a, name="sar_geo.tif", tf=tf, crs=dst_crs, nodata=np.nan)
        if which in ("optical", "both"):
            a, tf = warp_array(b.optical, b.opt_tf, b.crs, dst_crs)
            opt = b.opt(d, a, name="opt_geo.tif", tf=tf, crs=dst_crs, nodata=0)
        return sar, opt, {}
    return build


def _optical_on(tf_of: Callable[[Affine], Affine]):
    """The optical resampled onto a rotated/sheared grid: same content, non-north-up geotransform."""
    def build(d, b):
        tf = tf_of(b.opt_tf)
        a, _ = warp_array(b.optical, b.opt_tf, b.crs, dst_tf=tf)
        return b.sar(d), b.opt(d, a, tf=tf, nodata=0), {}
    return build


def _rotated_sar(d, b):
    tf = rotated(b.sar_tf, 10.0)
    a, _ = warp_array(b.sar_db, b.sar_tf, b.crs, dst_tf=tf, dst_nodata=np.nan)
    return b.sar(d, a, tf=tf, nodata=np.nan), b.opt(d), {}


def _nan_inf_blobs(d, b):
    a = b.sar_db.copy()
    a[40:90, 40:120] = np.nan
    a[560:600, 300:640] = np.inf
    a[0:30, 500:640] = -np.inf
    o = b.optical.astype(np.float32)
    o[:, 600:, :50] = np.nan
    return b.sar(d, a), b.opt(d, o), {}


def _aoi_lonlat(d, b):
    xs, ys = [b.sar_tf.c + 60, b.sar_tf.c + 1540], [b.sar_tf.f - 1540, b.sar_tf.f - 60]
    lon, lat = warp_transform(b.crs, "EPSG:4326", xs, ys)
    return b.sar(d), b.opt(d), {"aoi": (lon[0], lat[0], lon[1], lat[1]), "aoi_crs": "EPSG:4326"}


@dataclass
class Works:
    id: str
    build: Callable
    min_inliers: int = 8
    tol_px: float = 1.5
    """Largest difference from the reference run's recovered shift."""
    warning: Optional[str] = None
    """A fragment one of ``MatchResult.warnings`` must contain (None: there must be none)."""
    check: Optional[Callable] = None


def _scale_is(kind):
    return lambda r: r.stretch.sar_scale == kind


WORKS = [
    # SAR scaling (detected automatically); amplitude and intensity have the same dB shape, so
    # amplitude may be read as 'linear' with identical results under the robust stretch.
    Works("sar_linear_intensity", _sar_kind("linear"), check=_scale_is("linear")),
    Works("sar_amplitude", _sar_kind("amplitude"), check=lambda r: r.stretch.sar_scale in ("amplitude", "linear")),
    Works("sar_db", _sar_kind("db"), check=_scale_is("db")),
    Works("sar_dn8", _sar_kind("dn8"), check=_scale_is("dn")),
    Works("sar_dn16", _sar_kind("dn16"), check=_scale_is("dn")),
    # Optical band counts and data types.
    Works("optical_1_band", _opt_bands(_grey)),
    Works("optical_4_bands", _opt_bands(lambda o: np.concatenate([o, o[1:2] // 2]))),
    Works("optical_8_bands", _opt_bands(lambda o: np.concatenate([o, o, o[:2]]))),
    Works("optical_8_bands_picked", _opt_bands(lambda o: np.concatenate([o[::-1], o, o[:2]]), opt_bands=[3, 2, 1])),
    Works("optical_uint16", _opt_bands(lambda o: o.astype(np.uint16) * 257)),
    Works("optical_float32", _opt_bands(lambda o: o.astype(np.float32) / 255)),
    # Different CRSs: reprojected onto the SAR grid (a geographic SAR is matched in its UTM zone).
    Works("optical_epsg4326", _reprojected("optical", "EPSG:4326")),
    Works("sar_epsg4326", _reprojected("sar", "EPSG:4326"),
          check=lambda r: r.pair.grid.crs.to_epsg() == 32633 and r.pair.sar_info.crs.to_epsg() == 4326),
    Works("both_epsg4326", _reprojected("both", "EPSG:4326")),
    Works("optical_web_mercator", _reprojected("optical", "EPSG:3857")),
    # Rotated / sheared geotransforms are resampled onto the north-up SAR-aligned grid.
    Works("optical_rotated_geotransform", _optical_on(lambda tf: rotated(tf, 10.0))),
    Works("optical_sheared_geotransform", _optical_on(lambda tf: tf * Affine.shear(5.0, 0.0))),
    Works("sar_rotated_geotransform", _rotated_sar,
          check=lambda r: not r.pair.sar_info.north_up and r.pair.grid.transform.b == 0),
    # Resolutions: moderate ratios silently, extreme ones (> 4×) with a warning.
    Works("optical_2x_coarser", _coarse_optical(2)),
    Works("optical_4x_coarser", _coarse_optical(4)),
    Works("optical_5x_coarser_warns", _coarse_optical(5),
          warning="The optical pixel size is 5.0× the matching grid's (2.5 metre); expect weaker matches"),
    Works("optical_10x_coarser_warns", _coarse_optical(10, transform="affine"), min_inliers=3, tol_px=4.0,
          warning="The optical pixel size is 10.0× the matching grid's"),
    # Invalid pixels in part of the area.
    Works("nan_and_inf_blobs", _nan_inf_blobs),
    Works("nodata_in_half_the_aoi", _sar_with(_set(np.s_[:, :320], -9999.0), nodata=-9999), min_inliers=3,
          check=lambda r: all(p.sar_col > 320 - 1 for p in r.tieset.points)),
    Works("aoi_in_lon_lat", _aoi_lonlat, check=lambda r: r.pair.grid.width < SIZE and r.pair.grid.height < SIZE),
]


@pytest.mark.parametrize("case", WORKS, ids=[c.id for c in WORKS])
def test_valid_input_variant_is_handled(case, base, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt, kw = case.build(d, base)
    before = fingerprint(d)
    kw = {"n_target": 40, "transform": "shift", **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the resolution note is also a Python warning
        res = match_pair(sar, opt, MatchParams(**kw))
    st = res.stats
    assert st.n_inliers >= case.min_inliers, st
    assert len(res.tieset.points) == st.n_matched and st.n_matched > 0
    if kw["transform"] == "shift":
        assert st.shift_px == pytest.approx(base.ref_shift_px, abs=case.tol_px), (st.shift_px, base.ref_shift_px)
    else:
        assert np.hypot(*np.subtract(st.shift_px, base.ref_shift_px)) < case.tol_px, st.shift_px
    assert np.isfinite(st.rmse_px)
    if case.warning is None:
        assert res.warnings == []
    else:
        assert any(case.warning in w for w in res.warnings), res.warnings
    if case.check is not None:
        assert case.check(res)
    assert fingerprint(d) == before


def test_extreme_resolution_warning_reaches_the_cli_user(base, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt, _ = _coarse_optical(5)(d, base)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, err = run_cli(capsys, cli_args(sar, opt, out, {}) + ["--no-corrected", "--no-checkerboard"])
    assert rc == 0
    assert "warning: The optical pixel size is 5.0× the matching grid's" in err
    assert files_under(out) == ["opt.tif.points", "summary.json", "tie_points.gpkg"]
    assert json.loads((out / "summary.json").read_text())["warnings"][0].startswith("The optical pixel size is 5.0×")


# ============================================================================ outputs


@pytest.fixture(scope="module")
def result(base, tmp_path_factory):
    d = tmp_path_factory.mktemp("result_in")
    return match_pair(base.sar(d), base.opt(d), MatchParams(n_target=40, transform="shift"))


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_unwritable_output_folder_is_an_output_error(result, base, tmp_path, capsys, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file\n")
    out = blocker / "sub" if where == "under_a_file" else Path("/proc/som_robustness_test/out")
    inputs = Path(result.pair.sar_info.path).parent
    before = fingerprint(inputs)
    with pytest.raises(OutputError,
                       match=r"Cannot create the output folder '.*(file\.txt/sub|/proc/som_robustness_test/out)': "):
        write_results(result, str(out))
    assert not out.exists() and blocker.read_text() == "a regular file\n"
    rc, err = run_cli(capsys, cli_args(result.pair.sar_info.path, result.pair.opt_info.path, out, {}))
    assert rc == 2
    assert "error: Cannot create the output folder" in err
    assert fingerprint(inputs) == before


def test_output_folder_equal_to_an_input_file_is_refused(base, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = base.sar(d), base.opt(d)
    before = fingerprint(d)
    rc, err = run_cli(capsys, cli_args(sar, opt, Path(opt), {}))
    assert rc == 2
    assert f"error: The output folder '{opt}' is a file, not a folder" in err
    assert fingerprint(d) == before


def test_output_file_equal_to_an_input_is_refused_before_writing(base, tmp_path, capsys):
    """The corrected optical of 'scene.tif' is 'scene_corrected.tif': here that is the SAR input."""
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = base.sar(d, name="scene_corrected.tif"), base.opt(d, name="scene.tif")
    res = match_pair(sar, opt, MatchParams(n_target=40, transform="shift"))
    before = fingerprint(d)
    with pytest.raises(OutputError, match=r"The output .*scene_corrected\.tif is the same file as the input"):
        write_results(res, str(d))
    assert fingerprint(d) == before                       # nothing written, the SAR not overwritten
    rc, err = run_cli(capsys, cli_args(sar, opt, d, {}))
    assert rc == 2 and "is the same file as the input" in err
    assert fingerprint(d) == before


def test_failed_rerun_keeps_the_previous_complete_results(result, tmp_path):
    out = tmp_path / "out"
    write_results(result, str(out))
    previous = fingerprint(out)
    assert sorted(previous) == ["checkerboard_after.png", "checkerboard_before.png", "opt.tif.points",
                                "opt_corrected.tif", "summary.json", "tie_points.gpkg"]
    token = CancelToken()

    def progress(f, stage):
        if stage.startswith("Warping"):           # after the new .points and .gpkg exist
            token.cancel()

    with pytest.raises(CancelledError):
        write_results(result, str(out), progress=progress, cancel=token)
    assert fingerprint(out) == previous                   # the old set, whole: nothing lost, nothing mixed


# ============================================================================ deep models


def _tiny_onnx(meta: dict) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, json.dumps(v)
    return m.SerializeToString()


GOOD_META = {"version": "1", "size": "lite", "search_px": 256, "template_px": 128, "heatmap": 65, "cell_px": 2.0,
             "centre_cell": 32}


def fake_models(d: Path, meta: Optional[Callable[[str], dict]] = None) -> Path:
    """A models folder with a manifest and five stand-in networks (identity graphs with metadata).
    Enough to test verification, loading and provider choice; not a matcher."""
    d.mkdir(parents=True, exist_ok=True)
    recs = []
    for name in registry.NETWORKS:
        p = d / f"{name}_lite.onnx"
        p.write_bytes(_tiny_onnx(meta(name) if meta else GOOD_META))
        recs.append({"name": name, "size": "lite", "file": p.name, "sha256": registry.sha256_of(p)})
    (d / registry.MANIFEST).write_text(json.dumps({"models": recs}))
    return d


def _resign(d: Path, name: str) -> None:
    doc = json.loads((d / registry.MANIFEST).read_text())
    for r in doc["models"]:
        if r["name"] == name:
            r["sha256"] = registry.sha256_of(d / r["file"])
    (d / registry.MANIFEST).write_text(json.dumps(doc))


def _m_empty(d):
    d.mkdir()


def _m_corrupt_manifest(d):
    d.mkdir()
    (d / registry.MANIFEST).write_text("{not json")


def _m_missing_file(d):
    fake_models(d)
    (d / "goodness_sar_lite.onnx").unlink()


def _m_tampered(d):
    fake_models(d)
    p = d / "orn_lite.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _m_not_onnx(d):
    fake_models(d)
    (d / "orn_lite.onnx").write_bytes(b"\x00garbage, not a protobuf" * 10)
    _resign(d, "orn")


def _m_wrong_geometry(d):
    fake_models(d, lambda n: dict(GOOD_META, cell_px=4.0))


def _m_mixed_versions(d):
    fake_models(d, lambda n: dict(GOOD_META, version="2" if n == "orn" else "1"))


MODEL_FAULTS = [
    ("not_installed", _m_empty, {}, r"no model manifest at .*: the deep models are not installed; use a classical"),
    ("corrupt_manifest", _m_corrupt_manifest, {}, r"model manifest .* is corrupt .*; reinstall the plugin"),
    ("missing_model_file", _m_missing_file, {},
     r"model set 'lite' is incomplete: goodness_sar_lite\.onnx is missing from .*; a set is used whole or not"),
    ("tampered_model_sha256", _m_tampered, {}, r"model file orn_lite\.onnx does not match its recorded checksum"),
    ("corrupt_model_file", _m_not_onnx, {}, r"model file orn_lite\.onnx could not be loaded .*corrupt or not an ONNX"),
    ("metadata_mismatch", _m_wrong_geometry, {}, r"model corrasl_sar has cell_px=4\.0, this engine expects 2\.0"),
    ("models_from_two_builds", _m_mixed_versions, {}, r"the installed model files do not belong together"),
    ("size_not_installed", fake_models, {"model_size": "full"}, r"no 'full' models installed \(available: lite\)"),
]


@pytest.mark.parametrize("case", MODEL_FAULTS, ids=[c[0] for c in MODEL_FAULTS])
def test_deep_method_with_bad_models_fails_before_reading_or_writing(case, base, tmp_path, monkeypatch, capsys):
    _id, make, kw, message = case
    models = tmp_path / "models"
    make(models)
    monkeypatch.setattr(registry, "MODELS_DIR", models)
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = base.sar(d), base.opt(d)
    before = fingerprint(d)
    stages = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelError, match=message) as ei:
            match_pair(sar, opt, MatchParams(method="deep", **kw), progress=lambda f, s: stages.append(s))
    assert type(ei.value) is ModelError
    assert "Reading rasters" not in stages                # refused before any pixel is read
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, err = run_cli(capsys, cli_args(sar, opt, out, {"method": "deep", **kw}))
    assert rc == 2
    assert re.search(message, err), err
    assert not out.exists()
    assert fingerprint(d) == before


def test_deep_method_without_shipped_models_says_not_installed(base, tmp_path):
    """The real ``models/`` folder: until the networks ship, 'deep' says so (no monkeypatching)."""
    if registry.available_sizes():
        pytest.skip("deep models are installed in models/: nothing missing to report")
    d = tmp_path / "in"
    d.mkdir()
    with pytest.raises(ModelError, match=r"not installed|no complete set of networks|corrupt"):
        match_pair(base.sar(d), base.opt(d), MatchParams(method="deep"))


def _cuda_really_works(models: Path) -> bool:
    from engine.runtime.session import make_session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_session(models / "orn_lite.onnx", "cuda").provider == "cuda"


def _stand_in_matcher():
    """Classical matching in place of the stand-in networks, reliable by construction."""
    classical = classical_tile_matcher()

    def run(tile, points, params, report=None):
        ms = classical(tile, points, replace(params, method="structural"), report)
        return [replace(m, reliability=1.0) for m in ms]

    return run


def test_gpu_requested_but_unusable_runs_on_cpu_with_a_warning(base, tmp_path, monkeypatch):
    models = fake_models(tmp_path / "models")
    if _cuda_really_works(models):
        pytest.skip("CUDA is usable on this machine: there is no fallback to observe")
    monkeypatch.setattr(registry, "MODELS_DIR", models)
    d = tmp_path / "in"
    d.mkdir()
    params = MatchParams(method="deep", device="cuda", candidates="structure", n_target=40, transform="shift")
    with pytest.warns(RuntimeWarning, match="CUDA was requested but is not usable here"):
        res = match_pair(base.sar(d), base.opt(d), params, matcher=_stand_in_matcher())
    assert res.models["provider"] == "cpu"
    assert res.warnings == ["CUDA was requested but is not usable here; running the models on the CPU"]
    assert res.stats.n_inliers >= 8
    assert res.summary()["warnings"] == res.warnings     # and it is recorded in summary.json


@pytest.mark.skipif(not registry.available_sizes(), reason="deep models not installed (no models/manifest.json "
                    "with a complete set of networks): the real-network CUDA fallback cannot run")
def test_gpu_requested_with_the_shipped_models(base, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = match_pair(base.sar(d), base.opt(d), MatchParams(method="deep", device="cuda", n_target=40,
                                                               transform="shift"))
    fallback = [w for w in res.warnings if "CUDA was requested" in w]
    assert (res.models["provider"] == "cpu") == bool(fallback)
    assert res.stats.n_matched > 0


# ============================================================================ cancel


@pytest.mark.parametrize("stage", [s for s, _w in STAGES])
def test_cancel_at_every_stage_stops_promptly(stage, base, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = base.sar(d), base.opt(d)
    before = fingerprint(d)
    token = CancelToken()
    seen: list[str] = []
    at: list[float] = []

    def progress(f, s):
        seen.append(s)
        if s.startswith(stage) and not at:
            at.append(time.perf_counter())
            token.cancel()

    with pytest.raises(CancelledError, match="Cancelled by the user") as ei:
        # Small tiles (9 for this scene): the candidate and matching passes check between tiles.
        match_pair(sar, opt, MatchParams(n_target=40, transform="shift"), progress=progress, cancel=token,
                   tiling=TilingOptions(core=256, block=256))
    assert type(ei.value) is CancelledError
    assert at, f"stage {stage!r} never reported: {seen}"
    assert time.perf_counter() - at[0] < 3.0
    assert seen[-1].startswith(stage), seen               # nothing was reported after the cancel
    assert fingerprint(d) == before


@pytest.mark.parametrize("stage", ["Writing tie points", "Warping the optical raster"])
def test_cancel_while_writing_leaves_no_file(stage, result, tmp_path):
    out = tmp_path / "out"
    token = CancelToken()
    at: list[float] = []

    def progress(f, s):
        if s.startswith(stage) and not at:
            at.append(time.perf_counter())
            token.cancel()

    with pytest.raises(CancelledError):
        write_results(result, str(out), progress=progress, cancel=token)
    assert time.perf_counter() - at[0] < 3.0
    assert files_under(out) == []                         # no output, no hidden temporary, no side-car


def test_ctrl_c_in_the_cli_cancels_and_removes_partial_outputs(base, tmp_path, monkeypatch, capsys):
    import engine.cli as cli

    d = tmp_path / "in"
    d.mkdir()
    sar, opt = base.sar(d), base.opt(d)
    before = fingerprint(d)

    class Bar:  # the console bar, pressing Ctrl-C (a real SIGINT) once matching is under way
        def __call__(self, f, stage):
            if stage.startswith("Matching") and not hasattr(self, "sent"):
                self.sent = True
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli, "ConsoleProgressBar", Bar)
    out = tmp_path / "out"
    args = cli_args(sar, opt, out, {})
    args.remove("--quiet")
    handler = signal.getsignal(signal.SIGINT)
    rc, err = run_cli(capsys, args)
    assert rc == 130
    assert "cancelled: Cancelled by the user. Partial outputs were removed." in err
    assert not out.exists()
    assert fingerprint(d) == before
    assert signal.getsignal(signal.SIGINT) is handler     # the CLI's handler is removed again


# ============================================================================ .points files read back


GOOD_ROWS = "400100.5,4999800.25,401.5,-203.25,1,0,0,0.5\n400200,4999700,402,-204,0,0,0,1.5\n"
CRS_LINE = '#CRS: PROJCS["WGS 84 / UTM zone 33N"]\n'
HEADER = "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual\n"


def _expect(crs, n=2):
    def check(pf):
        assert pf.crs_wkt == crs and len(pf) == n
        np.testing.assert_array_equal(pf.map_xy, [[400100.5, 4999800.25], [400200, 4999700]][:n])
        np.testing.assert_array_equal(pf.source_xy, [[401.5, -203.25], [402, -204]][:n])
        assert pf.enabled.tolist() == [True, False][:n]
    return check


POINTS_CASES = [
    ("qgis_file", (CRS_LINE + HEADER + GOOD_ROWS).encode(), _expect('PROJCS["WGS 84 / UTM zone 33N"]')),
    ("windows_line_endings", (CRS_LINE + HEADER + GOOD_ROWS).replace("\n", "\r\n").encode(),
     _expect('PROJCS["WGS 84 / UTM zone 33N"]')),
    ("utf8_bom_and_crlf", b"\xef\xbb\xbf" + (CRS_LINE + HEADER + GOOD_ROWS).replace("\n", "\r\n").encode(),
     _expect('PROJCS["WGS 84 / UTM zone 33N"]')),
    ("extra_columns", (CRS_LINE + HEADER.strip() + ",note\n"
                       + GOOD_ROWS.replace("0.5\n", "0.5,a,b\n").replace("1.5\n", "1.5,c\n")).encode(),
     _expect('PROJCS["WGS 84 / UTM zone 33N"]')),
    ("missing_crs_line", (HEADER + GOOD_ROWS).encode(), _expect(None)),
    ("missing_crs_and_header", GOOD_ROWS.encode(), _expect(None)),
    ("empty_file", b"", lambda pf: len(pf) == 0 and pf.crs_wkt is None and pf.map_xy.shape == (0, 2)),
    ("too_few_fields", (CRS_LINE + HEADER + "1,2,3\n").encode(),
     (InputError, r"malformed line 3: expected at least 4 comma-separated values .* got 3")),
    ("non_numeric_value", (CRS_LINE + HEADER + GOOD_ROWS + "1,abc,3,4\n").encode(),
     (InputError, r"malformed line 5: mapY value 'abc' is not a finite number")),
    ("infinite_value", (HEADER + "1,2,inf,4\n").encode(), (InputError, r"line 2: sourceX value 'inf' is not a finite")),
    ("bad_enable_flag", (HEADER + "1,2,3,4,maybe\n").encode(),
     (InputError, r"line 2: enable value 'maybe' is not 0/1")),
    ("binary_garbage", bytes(range(256)) * 4, (InputError, r"malformed line")),
]


@pytest.mark.parametrize("case", POINTS_CASES, ids=[c[0] for c in POINTS_CASES])
def test_points_file_read_back(case, tmp_path):
    _id, content, expect = case
    p = tmp_path / "gcps.points"
    p.write_bytes(content)
    if isinstance(expect, tuple):
        cls, message = expect
        with pytest.raises(InputError, match=message) as ei:
            read_points(p)
        assert type(ei.value) is cls and "gcps.points" in str(ei.value)
    else:
        assert expect(read_points(p)) in (None, True)
    assert p.read_bytes() == content


# ============================================================================ no network


def test_runs_with_the_network_disabled(base, tmp_path, monkeypatch):
    """Nothing is downloaded at run time: matching, writing and loading the plugin work offline."""
    attempts: list = []

    def refuse(*a, **kw):
        attempts.append(a)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("PROJ_NETWORK", "OFF")
    d = tmp_path / "in"
    d.mkdir()
    a, tf = warp_array(base.optical, base.opt_tf, base.crs, "EPSG:4326")   # a datum-free reprojection, too
    res = match_pair(base.sar(d), base.opt(d, a, tf=tf, crs="EPSG:4326", nodata=0),
                     MatchParams(n_target=40, transform="shift"))
    paths = write_results(res, str(tmp_path / "out"))
    assert res.stats.n_inliers >= 8 and os.path.getsize(paths.corrected) > 0
    from conftest import load_plugin_package

    pkg = load_plugin_package()
    import importlib

    assert importlib.import_module(f"{pkg.__name__}.plugin.tasks").MatchTask
    assert attempts == []
    with pytest.raises(OSError, match="network disabled"):   # the guard itself works
        socket.create_connection(("example.org", 80), timeout=1)
