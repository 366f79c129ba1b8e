"""The Processing algorithms through ``processing.run``, as a model or a script would call them."""
from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback

from plugin_helpers import clear_project, open_plugin, reset_settings, scene

from engine.params import TRANSFORMS


@pytest.fixture(scope="module")
def plugin(qgis_iface, qgis_processing):
    reset_settings()
    p = open_plugin(qgis_iface)
    yield p
    p.unload()
    clear_project()


@pytest.fixture(scope="module")
def matched(plugin, tmp_path_factory):
    import processing

    sc = scene()
    tmp = tmp_path_factory.mktemp("proc")
    res = processing.run("sar_optical_matcher:match", {
        "SAR": sc.sar, "OPTICAL": sc.optical, "TRANSFORM": TRANSFORMS.index("shift"),
        "OUTPUT_FOLDER": str(tmp / "match"), "CORRECTED": str(tmp / "corrected.tif"),
    })
    return sc, tmp, res


def _inliers(gpkg: str):
    ds = ogr.Open(gpkg)
    rows = [(f.GetField("opt_x"), f.GetField("opt_y"), f.GetField("sar_x"), f.GetField("sar_y"))
            for f in ds.GetLayerByName("tie_points") if f.GetField("status") == "inlier"]
    ds = None
    return np.array(rows, float)


def _corners(gt, w=640, h=640) -> np.ndarray:
    pts = np.array([[0, 0], [w, 0], [0, h], [w, h]], float)
    return np.column_stack([gt[0] + pts[:, 0] * gt[1] + pts[:, 1] * gt[2],
                            gt[3] + pts[:, 0] * gt[4] + pts[:, 1] * gt[5]])


def test_algorithms_are_registered(plugin):
    provider = QgsApplication.processingRegistry().providerById("sar_optical_matcher")
    algs = {a.id(): a.displayName() for a in provider.algorithms()}
    assert algs == {"sar_optical_matcher:match": "Match SAR and optical rasters",
                    "sar_optical_matcher:warp": "Warp raster with tie points",
                    "sar_optical_matcher:batch": "Batch match (manifest)"}


def test_match_algorithm_outputs(matched):
    sc, tmp, res = matched
    summary = json.load(open(res["SUMMARY"], encoding="utf-8"))
    gpkg = res["TIE_POINTS"].split("|")[0]
    inl = _inliers(gpkg)
    assert res["N_INLIERS"] == summary["inliers"] == len(inl) >= 8
    assert res["N_MATCHED"] == summary["matched"] == res["N_INLIERS"] + res["N_FLAGGED"]
    assert res["RMSE_PX"] == pytest.approx(summary["rmse_px"])
    assert (res["SHIFT_X_M"], res["SHIFT_Y_M"]) == pytest.approx(tuple(np.median(inl[:, 2:] - inl[:, :2], axis=0)))
    assert res["POINTS_FILE"].endswith(".points") and res["OUTPUT_FOLDER"] == str(tmp / "match")
    # The corrected raster: a shift only moves the geotransform origin, by the fitted shift.
    t = summary["transform"]
    assert t["kind"] == "shift"
    gt0 = gdal.Open(sc.optical).GetGeoTransform()
    gt1 = gdal.Open(res["CORRECTED"]).GetGeoTransform()
    assert gt1 == pytest.approx((gt0[0] + t["dx"], gt0[1], gt0[2], gt0[3] + t["dy"], gt0[4], gt0[5]))


def test_warp_algorithm_from_layer_and_from_points_file(matched):
    import processing

    sc, tmp, res = matched
    inl = _inliers(res["TIE_POINTS"].split("|")[0])
    # Independent affine fit of the inliers (numpy), to check both routes against.
    c = inl[:, :2].mean(axis=0)
    A = np.column_stack([np.ones(len(inl)), inl[:, :2] - c])
    coef, *_ = np.linalg.lstsq(A, inl[:, 2:], rcond=None)
    gt0 = gdal.Open(sc.optical).GetGeoTransform()
    nominal = _corners(gt0)
    expect = np.column_stack([np.ones(4), nominal - c]) @ coef
    affine = TRANSFORMS.index("affine")
    a = processing.run("sar_optical_matcher:warp", {"INPUT": sc.optical, "TIE_POINTS": res["TIE_POINTS"],
                                                     "TRANSFORM": affine, "OUTPUT": str(tmp / "from_layer.tif")})
    b = processing.run("sar_optical_matcher:warp", {"INPUT": sc.optical, "POINTS_FILE": res["POINTS_FILE"],
                                                     "TRANSFORM": affine, "OUTPUT": str(tmp / "from_points.tif")})
    for out in (a["OUTPUT"], b["OUTPUT"]):
        ds = gdal.Open(out)
        assert _corners(ds.GetGeoTransform()) == pytest.approx(expect, abs=1e-4)
        assert ds.RasterCount == 3
        ds = None


def test_engine_errors_become_processing_errors(plugin, tmp_path):
    import processing

    sc = scene()
    with pytest.raises(QgsProcessingException, match="outside the overlap"):
        processing.run("sar_optical_matcher:match", {
            "SAR": sc.sar, "OPTICAL": sc.optical, "EXTENT": "600000,601000,6000000,6001000 [EPSG:32633]",
            "OUTPUT_FOLDER": str(tmp_path / "none")}, feedback=QgsProcessingFeedback())
    with pytest.raises(QgsProcessingException, match="tie-point layer or a .points file"):
        processing.run("sar_optical_matcher:warp", {"INPUT": sc.optical, "OUTPUT": str(tmp_path / "x.tif")})


def test_batch_algorithm_runs_a_manifest_on_a_local_cluster(plugin, tmp_path):
    """A thin adapter over engine.batch: outputs per pair, a failing pair reported, re-runs skip."""
    import csv

    import processing

    pytest.importorskip("distributed")
    sc = scene()
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"name,sar,optical,transform,n_target\nok,{sc.sar},{sc.optical},shift,40\n"
                        f"broken,{tmp_path / 'missing.tif'},{sc.optical},shift,40\n")
    params = {"MANIFEST": str(manifest), "WORKERS": 1, "OUTPUT_FOLDER": str(tmp_path / "batch")}
    res = processing.run("sar_optical_matcher:batch", params)
    assert (res["N_DONE"], res["N_FAILED"], res["N_SKIPPED"]) == (1, 1, 0)
    rows = list(csv.DictReader(open(res["SUMMARY"], encoding="utf-8")))
    assert [(r["name"], r["status"]) for r in rows] == [("ok", "done"), ("broken", "failed")]
    assert "missing.tif" in rows[1]["error"]
    summary = json.load(open(tmp_path / "batch" / "ok" / "summary.json", encoding="utf-8"))
    assert summary["inliers"] == int(rows[0]["inliers"]) >= 8
    assert res["FOOTPRINTS"].endswith("|layername=pairs")
    again = processing.run("sar_optical_matcher:batch", params)
    assert (again["N_DONE"], again["N_FAILED"], again["N_SKIPPED"]) == (0, 1, 1)
