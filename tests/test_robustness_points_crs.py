"""Robustness (issue 14, D1): the Georeferencer ``.points`` file when the rasters' CRSs differ.

QGIS reads ``sourceX,sourceY`` in the *optical raster's own* CRS (the raster being georeferenced)
and ``mapX,mapY`` in the CRS named by the ``#CRS:`` line. Every front end writes the file through
one writer: the run's file (CLI; batch, Processing and the dock's run call the same
``write_results``) and the dock's *Export GCPs* must agree, for every pair of CRSs.

Table-driven: each case simulates a misregistered scene, reprojects the SAR and/or the optical
raster, runs ``python -m engine match`` in-process, reads the ``.points`` file back the way QGIS's
``QgsGCPList::loadGcps`` does (a ``#CRS:`` first line, a header, comma-separated rows), turns every
source coordinate into an optical pixel with the optical raster's inverse geotransform and checks
that it lies on the raster, at the tie point's optical pixel, and that the GCP pairs it with its
true position (the simulator's misregistration model), within the matcher's accuracy.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.warp import transform as warp_transform

from conftest import PLUGIN_PKG, load_plugin_package
from engine.cli import main as cli_main
from engine.errors import InputError
from engine.outputs.gpkg import read_tiepoints_gpkg
from engine.outputs.points_file import write_optical_points
from engine.simulate.pair import DEFAULT_ORIGIN, simulate_pair_arrays
from engine.simulate.params import MisregParams, SarParams, SceneParams
from engine.simulate.sar import sar_to_output
from engine.types import TiePoint, TieSet

from helpers import write_geotiff

SIZE = 512
GSD = 2.5
SHIFT = (6.0, -4.0)        # simulated misregistration, optical (columns, rows) px
TRUTH_TOL_PX = 6.0
"""Largest distance of an inlier GCP from its true position, in SAR pixels (classical matching is
biased by layover by about 2.5-3 px on this scene; an uncorrected point is 7.2 px away)."""

SF_UTM = ("EPSG:32610", (548_000.0, 4_182_000.0))   # San Francisco, where EPSG:2227 (US feet) applies
EUROPE_UTM = ("EPSG:32633", DEFAULT_ORIGIN)


@dataclass
class Case:
    id: str
    scene: tuple[str, tuple[float, float]]
    """(CRS, origin) the scene is simulated in."""
    sar_crs: Optional[str]
    """CRS the SAR is reprojected to (None: kept in the scene's CRS)."""
    opt_crs: Optional[str]
    grid_epsg: int
    """EPSG code of the working CRS, which the ``#CRS:`` line must name."""


CASES = [
    Case("sar_utm_optical_4326", EUROPE_UTM, None, "EPSG:4326", 32633),
    Case("sar_4326_optical_4326", EUROPE_UTM, "EPSG:4326", "EPSG:4326", 32633),   # geographic SAR: its UTM zone
    Case("sar_4326_optical_other_utm_zone", EUROPE_UTM, "EPSG:4326", "EPSG:32634", 32633),
    Case("sar_utm_optical_us_feet", SF_UTM, None, "EPSG:2227", 32610),
    Case("sar_us_feet_optical_utm", SF_UTM, "EPSG:2227", None, 2227),
]


# ============================================================================ scenes


@dataclass
class Scene:
    sar_db: np.ndarray
    optical: np.ndarray
    sar_tf: object
    opt_tf: object
    crs: str
    model: object
    """The simulator's misregistration: nominal optical map xy -> true map xy, in ``crs``."""


_SCENES: dict = {}


def scene_of(key: tuple[str, tuple[float, float]]) -> Scene:
    if key not in _SCENES:
        crs, origin = key
        arr = simulate_pair_arrays(SceneParams(size=SIZE, gsd=GSD, kind="suburban", seed=5),
                                   sar=SarParams(output="linear"), misreg=MisregParams(shift=SHIFT),
                                   crs=crs, origin=origin)
        _SCENES[key] = Scene(sar_to_output(arr.sar_sigma0, "db"), arr.optical, arr.sar_transform,
                             arr.optical_transform, crs, arr.model)
    return _SCENES[key]


def reprojected(arr: np.ndarray, tf, crs: str, dst_crs: str, nodata) -> tuple[np.ndarray, object]:
    """``arr`` ((bands,) H, W) reprojected onto ``dst_crs`` (as ``gdalwarp -t_srs`` would)."""
    a = arr if arr.ndim == 3 else arr[None]
    h, w = a.shape[1:]
    dst_tf, dw, dh = calculate_default_transform(crs, dst_crs, w, h, tf.c, tf.f + h * tf.e, tf.c + w * tf.a, tf.f)
    out = np.full((a.shape[0], dh, dw), nodata, a.dtype)
    for i in range(a.shape[0]):
        reproject(a[i], out[i], src_transform=tf, src_crs=crs, dst_transform=dst_tf, dst_crs=dst_crs,
                  resampling=Resampling.bilinear, dst_nodata=nodata)
    return (out if arr.ndim == 3 else out[0]), dst_tf


def build_inputs(case: Case, d: Path) -> tuple[str, str, Scene]:
    s = scene_of(case.scene)
    if case.sar_crs:
        a, tf = reprojected(s.sar_db, s.sar_tf, s.crs, case.sar_crs, np.nan)
        sar = write_geotiff(d / "sar.tif", a, tf, crs=case.sar_crs, nodata=np.nan)
    else:
        sar = write_geotiff(d / "sar.tif", s.sar_db, s.sar_tf, crs=s.crs)
    if case.opt_crs:
        a, tf = reprojected(s.optical, s.opt_tf, s.crs, case.opt_crs, 0)
        opt = write_geotiff(d / "opt.tif", a, tf, crs=case.opt_crs, nodata=0)
    else:
        opt = write_geotiff(d / "opt.tif", s.optical, s.opt_tf, crs=s.crs)
    return sar, opt, s


# ============================================================================ reading as QGIS does


@dataclass
class QgisGcps:
    crs_wkt: Optional[str]
    map_xy: np.ndarray
    source_xy: np.ndarray
    enabled: np.ndarray


def load_gcps_as_qgis(path: str) -> QgisGcps:
    """``QgsGCPList::loadGcps``: line 1 ``#CRS: <wkt>`` (then a header line), else line 1 is the
    header; each further line is ``mapX,mapY,sourceX,sourceY[,enable,...]``."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    crs = None
    if lines[0].startswith("#CRS: "):
        crs = lines[0][len("#CRS: "):]
        lines = lines[1:]
    assert lines[0].split(",")[:4] == ["mapX", "mapY", "sourceX", "sourceY"], lines[0]
    rows = [ln.split(",") for ln in lines[1:] if ln.strip()]
    assert all(len(r) >= 5 for r in rows)
    vals = np.array([[float(v) for v in r[:4]] for r in rows], float).reshape(-1, 4)
    return QgisGcps(crs, vals[:, :2], vals[:, 2:], np.array([int(r[4]) != 0 for r in rows], bool))


def source_pixels(gcps: QgisGcps, optical: str) -> tuple[np.ndarray, int, int]:
    """Each GCP's source coordinate as an optical (col, row) pixel, through the optical raster's
    inverse geotransform (what the Georeferencer fits with), and the raster's size."""
    with rasterio.open(optical) as ds:
        inv, w, h = ~ds.transform, ds.width, ds.height
    cols, rows = inv * (gcps.source_xy[:, 0], gcps.source_xy[:, 1])
    return np.column_stack([cols, rows]), w, h


def export_like_the_dock(gpkg: str, optical: str, points: str) -> int:
    """The dock's *Export GCPs* (``plugin.export.export_gcps``) on the run's tie points."""
    load_plugin_package()
    export = importlib.import_module(f"{PLUGIN_PKG}.plugin.export")
    n, _vrt = export.export_gcps(read_tiepoints_gpkg(gpkg), optical, points)
    return n


# ============================================================================ the test


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_points_file_source_coordinates_are_in_the_optical_crs(case, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt, s = build_inputs(case, d)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli_main(["match", "--sar", sar, "--optical", opt, "--out", str(out), "--quiet",
                       "--n-target", "40", "--transform", "shift", "--no-corrected", "--no-checkerboard"])
    assert rc == 0, capsys.readouterr().err
    run_points = out / "opt.tif.points"
    ties = read_tiepoints_gpkg(out / "tie_points.gpkg")
    assert sum(p.status == "inlier" for p in ties.points) >= 8

    gcps = load_gcps_as_qgis(str(run_points))
    assert len(gcps.map_xy) == len(ties.points)
    assert gcps.crs_wkt and CRS.from_wkt(gcps.crs_wkt).to_epsg() == case.grid_epsg

    # Every GCP lies on the optical raster, exactly at its tie point's optical pixel.
    pix, w, h = source_pixels(gcps, opt)
    assert np.all((pix[:, 0] >= 0) & (pix[:, 0] <= w) & (pix[:, 1] >= 0) & (pix[:, 1] <= h)), (pix.min(0), pix.max(0))
    by_map = {(round(p.sar_x, 6), round(p.sar_y, 6)): p for p in ties.points}
    for (mx, my), (c, r) in zip(gcps.map_xy, pix):
        p = by_map[(round(mx, 6), round(my, 6))]
        assert (c, r) == pytest.approx((p.opt_col, p.opt_row), abs=1e-6)

    # ...and pairs that optical content with its true position: the simulated misregistration
    # applied to the source point's nominal position (in the scene's CRS) is the map point.
    with rasterio.open(opt) as ds:
        opt_crs = ds.crs
    nx, ny = warp_transform(opt_crs, s.crs, list(gcps.source_xy[:, 0]), list(gcps.source_xy[:, 1]))
    truth = s.model.true_xy(np.column_stack([nx, ny]))
    mx, my = warp_transform(CRS.from_wkt(gcps.crs_wkt), s.crs, list(gcps.map_xy[:, 0]), list(gcps.map_xy[:, 1]))
    err_px = np.hypot(truth[:, 0] - np.array(mx), truth[:, 1] - np.array(my))[gcps.enabled] / GSD
    assert np.median(err_px) < 4.0 and err_px.max() < TRUTH_TOL_PX, err_px

    # The dock's Export GCPs writes the same file.
    exported = tmp_path / "export.points"
    assert export_like_the_dock(str(out / "tie_points.gpkg"), opt, str(exported)) == len(ties.points)
    dock = load_gcps_as_qgis(str(exported))
    assert CRS.from_wkt(dock.crs_wkt) == CRS.from_wkt(gcps.crs_wkt)
    np.testing.assert_allclose(dock.map_xy, gcps.map_xy, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dock.source_xy, gcps.source_xy, rtol=0, atol=1e-9 * np.abs(gcps.source_xy).max())
    np.testing.assert_array_equal(dock.enabled, gcps.enabled)


def test_one_writer_whatever_form_the_optical_georeference_is_given_in(tmp_path):
    """``write_optical_points`` takes the optical raster's path (the dock), its rasterio transform
    (``write_results``) or a GDAL geotransform: the same file; a raster GDAL cannot open is an
    ``InputError``, not a file in the wrong CRS."""
    s = scene_of(EUROPE_UTM)
    a, tf = reprojected(s.optical, s.opt_tf, s.crs, "EPSG:4326", 0)
    opt = write_geotiff(tmp_path / "opt.tif", a, tf, crs="EPSG:4326", nodata=0)
    ties = TieSet(points=[TiePoint(id=1, opt_col=10.5, opt_row=20.25, opt_x=s.opt_tf.c, opt_y=s.opt_tf.f,
                                   sar_col=11.0, sar_row=20.0, sar_x=s.opt_tf.c + 15, sar_y=s.opt_tf.f - 10)],
                  crs_wkt=CRS.from_user_input(s.crs).to_wkt(), pixel_size=GSD)
    files = []
    for i, optical in enumerate([opt, Path(opt), tf, tf.to_gdal()]):
        assert write_optical_points(tmp_path / f"{i}.points", ties, optical) == 1
        files.append((tmp_path / f"{i}.points").read_bytes())
    assert len(set(files)) == 1
    gcps = load_gcps_as_qgis(str(tmp_path / "0.points"))
    np.testing.assert_allclose(gcps.source_xy, [tf * (10.5, 20.25)], rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="Cannot open the optical raster"):
        write_optical_points(tmp_path / "x.points", ties, tmp_path / "missing.tif")
    assert not (tmp_path / "x.points").exists()
