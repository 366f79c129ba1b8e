"""A full Match run from the dock (one per module, in a QgsTask), then everything done with its result:
summary, result layers and styles, the review table, status toggles with live residuals, Delete
flagged with undo, .points/VRT export, the corrected layer, and saving the edits."""
from __future__ import annotations

import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from qgis.core import Qgis, QgsProject
from qgis.PyQt.QtCore import QItemSelectionModel, Qt

from plugin_helpers import (
    add_raster,
    clear_project,
    open_plugin,
    process_events,
    reset_settings,
    scene,
    wait_until,
)

from engine.outputs.gpkg import FIELDS, read_tiepoints_gpkg
from engine.outputs.points_file import read_points

PIXEL = 2.5


def _md5(path: str) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def run(qgis_iface, tmp_path_factory):
    reset_settings()
    qgis_iface.messageBar().clear_messages()
    plugin = open_plugin(qgis_iface)
    sc = scene()
    d = plugin.dock
    sar, opt = add_raster(sc.sar, "SAR"), add_raster(sc.optical, "Optical")
    d.sar_combo.setLayer(sar)
    d.opt_combo.setLayer(opt)
    out = tmp_path_factory.mktemp("match") / "results"
    d.out_dir.setFilePath(str(out))
    hashes = {p: _md5(p) for p in (sc.sar, sc.optical)}
    task = d.run_match()
    assert task is not None
    gap = wait_until(lambda: not d.busy, 120)
    assert d.session is not None, qgis_iface.messageBar().get_messages(Qgis.Critical)
    ns = SimpleNamespace(plugin=plugin, dock=d, task=task, gap=gap, out=out, scene=sc, hashes=hashes,
                         sar_id=sar.id(), opt_id=opt.id(), iface=qgis_iface)
    del sar, opt
    yield ns
    plugin.unload()
    clear_project()


@pytest.fixture
def session(run):
    """The review session, with its edits rolled back after each test."""
    s = run.dock.session
    yield s
    if s.ties.isEditable():
        s.ties.rollBack()
    process_events(0.02)


def _affine_residuals(feats) -> np.ndarray:
    """Independent check of the live refit: least-squares affine on the inliers (numpy only)."""
    src = np.array([[f["opt_x"], f["opt_y"]] for f in feats], float)
    dst = np.array([[f["sar_x"], f["sar_y"]] for f in feats], float)
    inl = np.array([f["status"] == "inlier" for f in feats])
    c = src[inl].mean(axis=0)
    A = np.column_stack([np.ones(len(src)), src - c])
    coef, *_ = np.linalg.lstsq(A[inl], dst[inl], rcond=None)
    return np.hypot(*(A @ coef - dst).T) / PIXEL


def _gpkg_counts(gpkg: str) -> tuple[int, int]:
    """(tie points, arrows) in the GeoPackage on disk."""
    ds = ogr.Open(gpkg)
    out = ds.GetLayerByName("tie_points").GetFeatureCount(), ds.GetLayerByName("displacements").GetFeatureCount()
    ds = None
    return out


def _layer_residuals(layer) -> dict:
    return {f.id(): f["residual_px"] for f in layer.getFeatures()}


def test_full_run_summary_matches_the_engine(run):
    d, task = run.dock, run.task
    assert run.gap < 0.5, f"the GUI thread was blocked for {run.gap:.2f} s during the run"
    summary = json.load(open(task.paths.summary, encoding="utf-8"))
    assert os.path.dirname(task.paths.gpkg) == task.run_dir and task.run_dir.startswith(str(run.out))
    assert d.summary["candidates"].text() == str(summary["candidates"])
    assert d.summary["matched"].text() == str(summary["matched"])
    assert d.summary["inliers"].text() == str(summary["inliers"])
    assert d.summary["flagged"].text() == str(summary["flagged"])
    assert summary["matched"] >= 20 and summary["inliers"] >= 8
    assert d.summary["rmse"].text() == f"{summary['rmse_px']:.2f} px"
    dx, dy = summary["shift_m"]
    assert d.summary["shift"].text().startswith(f"{np.hypot(dx, dy):.1f} m = ")
    assert d.summary["shift"].text().endswith(f"(E {dx:.1f}, N {dy:.1f} m)")
    assert d.summary["time"].text().endswith(" s") and d.stage.text().startswith("Done in")
    assert d.tabs.currentIndex() == 1                     # switched to the review tab
    # The simulated misregistration is (6.5, -4) px = 16 m east, 10 m north; the engine must see it.
    assert 8 < dx < 35 and 4 < dy < 16
    ok = run.iface.messageBar().get_messages(Qgis.Success)
    assert any(f"{summary['inliers']} inliers" in m for m in ok)
    # Both checkerboard quick-looks are written (as by the CLI); the corrected raster is left to
    # "Create corrected layer". The .points file is named for the Georeferencer: <optical file>.points.
    assert sorted(os.listdir(task.run_dir)) == sorted(
        ["tie_points.gpkg", "summary.json", "checkerboard_before.png", "checkerboard_after.png",
         os.path.basename(run.scene.optical) + ".points"])
    before, after = (gdal.Open(os.path.join(task.run_dir, f"checkerboard_{k}.png")).ReadAsArray().astype(float)
                     for k in ("before", "after"))
    assert before.shape == after.shape and not np.array_equal(before, after)
    assert summary["corrected_crs_differs"] is False and summary["notes"] == []


def test_result_layers_attributes_and_styles(run, session):
    ties, arrows, res = session.ties, session.arrows, run.task.result
    root = QgsProject.instance().layerTreeRoot()
    group = root.children()[0]
    assert group.name() == "SAR-Optical Matcher – Optical"
    assert [n.layer() for n in group.children()] == [arrows, ties]   # arrowheads drawn over the markers
    assert ties.source().startswith(run.task.paths.gpkg) and "layername=tie_points" in ties.source()
    assert set(FIELDS) <= set(ties.fields().names())
    assert ties.featureCount() == res.stats.n_matched == len(res.tieset.points)
    engine = {p.id: p for p in res.tieset.points}
    for f in ties.getFeatures():
        p = engine[f["id"]]
        assert f["status"] == p.status and f["flag_reason"] == p.flag_reason
        assert f["sar_x"] == pytest.approx(p.sar_x) and f["opt_row"] == pytest.approx(p.opt_row)
        assert f["residual_px"] == pytest.approx(p.residual_px)
        assert f["disp_m"] == pytest.approx(np.hypot(p.dx, p.dy))
        assert f.geometry().asPoint().x() == pytest.approx(p.sar_x)
    r = ties.renderer()
    assert r.type() == "categorizedSymbol" and r.classAttribute() == "status"
    colours = {c.value(): c.symbol().color().name() for c in r.categories()}
    assert colours == {"inlier": "#1a9641", "flagged": "#d7191c"}
    a = arrows.renderer()
    assert a.classAttribute() == "status"
    # The arrows are drawn k times their length (head on the tie point), k stated in the layer name.
    assert {c.symbol().symbolLayer(0).layerType() for c in a.categories()} == {"GeometryGenerator"}
    assert {c.symbol().symbolLayer(0).subSymbol().symbolLayer(0).layerType() for c in a.categories()} == {"ArrowLine"}
    from qgis.core import QgsExpressionContextUtils

    k = QgsExpressionContextUtils.layerScope(arrows).variable("som_arrow_scale")
    assert int(k) == 5 and arrows.name() == "Displacements ×5 (optical → SAR)"
    assert arrows.providerType() == "virtual"             # derived from the tie points, never out of step
    assert arrows.featureCount() == ties.featureCount()
    for f in arrows.getFeatures():
        p = engine[f["id"]]
        line = f.geometry().asPolyline()
        ends = (line[0].x(), line[0].y(), line[1].x(), line[1].y())
        assert ends == pytest.approx((p.opt_x, p.opt_y, p.sar_x, p.sar_y))
        assert f["status"] == p.status


def test_review_table_lists_and_selects_points(run, session):
    d = run.dock
    assert d.model.rowCount() == session.ties.featureCount()
    shown = [d.proxy.index(i, 2).data(Qt.UserRole) for i in range(d.proxy.rowCount())]
    assert shown == sorted(shown, reverse=True)           # worst residual first
    d.table.selectionModel().select(d.proxy.index(0, 0), QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
    fid = d.model.fid(d.proxy.mapToSource(d.proxy.index(0, 0)).row())
    assert session.ties.selectedFeatureIds() == [fid]
    flagged = [r for r in d.model.rows if r["status"] == "flagged"]
    assert len(flagged) == run.task.result.stats.n_flagged and all(r["reason"] for r in flagged)


def test_toggle_recomputes_residuals_live_and_undo_restores(run, session):
    d, ties = run.dock, session.ties
    before = _layer_residuals(ties)
    rmse_before = d.summary["rmse"].text()
    feats = list(ties.getFeatures())
    inl = [f for f in feats if f["status"] == "inlier"]
    target = max(inl, key=lambda f: f["residual_px"])     # the reviewer distrusts the worst inlier
    assert d.toggle_selected([target.id()]) == 1
    process_events(0.05)
    assert ties.isEditable() and ties.isModified()         # through the edit buffer, nothing saved
    f = ties.getFeature(target.id())
    assert f["status"] == "flagged" and f["flag_reason"] == "flagged by reviewer"
    feats = list(ties.getFeatures())
    expect = _affine_residuals(feats)
    got = np.array([g["residual_px"] for g in feats], float)
    assert got == pytest.approx(expect, abs=1e-6)
    assert not np.allclose(got, [before[g.id()] for g in feats])
    inl_res = expect[[g["status"] == "inlier" for g in feats]]
    assert d.summary["rmse"].text() == f"{np.sqrt(np.mean(inl_res ** 2)):.2f} px" != rmse_before
    assert d.summary["inliers"].text() == str(len(inl) - 1)
    dx = np.median([g["dx_m"] for g in feats if g["status"] == "inlier"])
    dy = np.median([g["dy_m"] for g in feats if g["status"] == "inlier"])
    assert d.summary["shift"].text().endswith(f"(E {dx:.1f}, N {dy:.1f} m)")   # the shift follows the review
    assert session.arrows.getFeature(next(a.id() for a in session.arrows.getFeatures()
                                          if a["id"] == target["id"]))["status"] == "flagged"
    assert "unsaved edits" in d.review_label.text()
    # One undo reverts the status and every residual it changed.
    assert d.undo_button.isEnabled()
    d.undo_button.click()
    process_events(0.05)
    assert ties.getFeature(target.id())["status"] == "inlier"
    assert _layer_residuals(ties) == pytest.approx(before)
    assert d.summary["rmse"].text() == rmse_before
    # Re-enabling a flagged point refits with it included.
    flagged = next(g for g in ties.getFeatures() if g["status"] == "flagged")
    d.toggle_selected([flagged.id()])
    process_events(0.05)
    feats = list(ties.getFeatures())
    assert ties.getFeature(flagged.id())["status"] == "inlier"
    assert np.array([g["residual_px"] for g in feats], float) == pytest.approx(_affine_residuals(feats), abs=1e-6)


def test_delete_flagged_is_undoable_and_never_touches_inputs(run, session):
    d, ties, arrows = run.dock, session.ties, session.arrows
    n, n_flagged = ties.featureCount(), run.task.result.stats.n_flagged
    assert n_flagged > 0 and d.delete_button.isEnabled()
    d.delete_button.click()
    process_events(0.05)
    assert ties.featureCount() == n - n_flagged
    assert all(f["status"] == "inlier" for f in ties.getFeatures())
    assert arrows.featureCount() == n - n_flagged
    assert d.model.rowCount() == n - n_flagged and d.summary["flagged"].text() == "0"
    assert not d.delete_button.isEnabled()
    feats = list(ties.getFeatures())
    assert np.array([f["residual_px"] for f in feats], float) == pytest.approx(_affine_residuals(feats), abs=1e-6)
    # Nothing is written until the user saves: the GeoPackage on disk still has every point and every
    # arrow (quitting without saving leaves both tables whole and in step).
    assert len(read_tiepoints_gpkg(run.task.paths.gpkg).points) == n
    assert _gpkg_counts(run.task.paths.gpkg) == (n, n)
    d.undo()
    process_events(0.05)
    assert ties.featureCount() == n and arrows.featureCount() == n
    assert {p: _md5(p) for p in run.hashes} == run.hashes  # input rasters untouched


def test_export_gcps_reads_back_with_the_engine_reader(run, session, tmp_path):
    d, ties = run.dock, session.ties
    target = next(f for f in ties.getFeatures() if f["status"] == "inlier")
    d.toggle_selected([target.id()])                      # exports reflect the review edits
    process_events(0.05)
    path = d.export_gcps(str(tmp_path / "gcps.points"), vrt=True)
    assert path == str(tmp_path / "gcps.points")
    pf = read_points(path)
    key = lambda x, y: (round(x, 6), round(y, 6))  # noqa: E731
    feats = {key(f["sar_x"], f["sar_y"]): f for f in ties.getFeatures()}
    assert len(feats) == ties.featureCount()
    assert len(pf) == ties.featureCount()
    srs = osr.SpatialReference()
    srs.SetFromUserInput(pf.crs_wkt)
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == "32633"
    gt = gdal.Open(run.scene.optical).GetGeoTransform()
    pix = pf.source_pixels(gt)
    for (mx, my), (col, row), en in zip(pf.map_xy, pix, pf.enabled):
        f = feats[key(mx, my)]
        assert (col, row) == pytest.approx((f["opt_col"], f["opt_row"]), abs=1e-6)
        assert en == (f["status"] == "inlier")
    assert not pf.enabled[[key(x, y) == key(target["sar_x"], target["sar_y"]) for x, y in pf.map_xy]].any()
    vrt = gdal.Open(str(tmp_path / "gcps_gcps.vrt"))
    n_in = sum(f["status"] == "inlier" for f in ties.getFeatures())
    assert vrt.GetGCPCount() == n_in
    g = vrt.GetGCPs()[0]
    f = feats[key(g.GCPX, g.GCPY)]
    assert f["status"] == "inlier"
    assert (g.GCPPixel, g.GCPLine) == pytest.approx((f["opt_col"], f["opt_row"]))
    vrt = None
    assert any("gcps.points" in m for m in run.iface.messageBar().get_messages(Qgis.Success))


def test_corrected_layer_is_georeferenced_with_the_reviewed_transform(run, session, tmp_path):
    d = run.dock
    dst = str(tmp_path / "optical_corrected.tif")
    task = d.create_corrected(dst)
    assert task is not None
    wait_until(lambda: not d.busy, 120)
    layer = d.corrected_layer()
    assert layer is not None and layer.isValid() and layer.name() == "Optical (corrected)"
    # Placed directly above the original optical layer.
    root = QgsProject.instance().layerTreeRoot()
    order = [n.layerId() for n in root.children() if hasattr(n, "layerId")]
    assert order.index(layer.id()) + 1 == order.index(run.opt_id)
    # Affine → exact new geotransform: every corrected pixel lands where the transform sends it.
    src, out = gdal.Open(run.scene.optical), gdal.Open(dst)
    gt0, gt1 = src.GetGeoTransform(), out.GetGeoTransform()
    pts = np.array([[0, 0], [640, 0], [0, 640], [320, 200], [640, 640]], float)
    nominal = np.column_stack([gt0[0] + pts[:, 0] * gt0[1] + pts[:, 1] * gt0[2],
                               gt0[3] + pts[:, 0] * gt0[4] + pts[:, 1] * gt0[5]])
    corrected = np.column_stack([gt1[0] + pts[:, 0] * gt1[1] + pts[:, 1] * gt1[2],
                                 gt1[3] + pts[:, 0] * gt1[4] + pts[:, 1] * gt1[5]])
    assert corrected == pytest.approx(session.transform.apply(nominal), abs=1e-6)
    assert np.array_equal(src.ReadAsArray(), out.ReadAsArray())     # pixels copied, not resampled
    assert osr.SpatialReference(out.GetProjection()).GetAuthorityCode(None) == "32633"
    src = out = None
    # The correction brings the optical closer to the truth at the simulator's check points.
    truth = json.load(open(run.scene.truth, encoding="utf-8"))["check_points"]
    nom = np.array([[c["nominal_x"], c["nominal_y"]] for c in truth])
    true = np.array([[c["true_x"], c["true_y"]] for c in truth])
    before = np.sqrt(np.mean(np.sum((nom - true) ** 2, axis=1))) / PIXEL
    after = np.sqrt(np.mean(np.sum((session.transform.apply(nom) - true) ** 2, axis=1))) / PIXEL
    assert after < before, (before, after)
    # Before/after comparison: the slider drives the corrected layer's opacity.
    d.opacity.setValue(30)
    assert layer.renderer().opacity() == pytest.approx(0.3)
    # ... and the Before / after button flips the map between the two optical layers.
    assert d.flip_button.isEnabled()
    node = root.findLayer
    assert node(layer.id()).isVisible() and node(run.opt_id).isVisible()
    d.flip_button.click()
    assert not node(layer.id()).itemVisibilityChecked() and node(run.opt_id).itemVisibilityChecked()
    assert "before" in d.flip_button.text().split(":")[0]
    d.flip_button.click()
    assert node(layer.id()).itemVisibilityChecked() and not node(run.opt_id).itemVisibilityChecked()
    assert d.crs_note(layer, QgsProject.instance().mapLayer(run.opt_id)) == ""
    node(run.opt_id).setItemVisibilityChecked(True)
    assert {p: _md5(p) for p in run.hashes} == run.hashes


def test_saving_edits_writes_the_geopackage(run, session):
    d, ties = run.dock, session.ties
    target = next(f for f in ties.getFeatures() if f["status"] == "inlier")
    d.toggle_selected([target.id()])
    process_events(0.05)
    assert d.save_button.isEnabled()
    d.save_button.click()
    process_events(0.05)
    assert not ties.isEditable()
    saved = {p.id: p for p in read_tiepoints_gpkg(run.task.paths.gpkg).points}
    assert saved[target["id"]].status == "flagged"
    expect = {f["id"]: f["residual_px"] for f in ties.getFeatures()}
    assert {k: p.residual_px for k, p in saved.items()} == pytest.approx(expect)
    ds = ogr.Open(run.task.paths.gpkg)
    lines = {f.GetField("id"): f.GetField("status") for f in ds.GetLayerByName("displacements")}
    ds = None
    assert lines[target["id"]] == "flagged"


def test_delete_selected_then_rollback_or_save_keeps_points_and_arrows_together(run, session):
    d, ties, arrows, gpkg = run.dock, session.ties, session.arrows, run.task.paths.gpkg
    n = ties.featureCount()
    assert not d.delete_selected_button.isEnabled()
    picked = [f.id() for f in ties.getFeatures()][:3]
    ties.selectByIds(picked)                              # e.g. selected on the map
    process_events(0.02)
    assert d.delete_selected_button.isEnabled()
    ids = {ties.getFeature(fid)["id"] for fid in picked}
    d.delete_selected_button.click()
    process_events(0.05)
    assert ties.featureCount() == arrows.featureCount() == n - 3 == d.model.rowCount()
    assert not ids & {f["id"] for f in arrows.getFeatures()}
    assert _gpkg_counts(gpkg) == (n, n)                   # unsaved: nothing on disk changed
    ties.rollBack()                                       # "quit without saving"
    process_events(0.05)
    assert ties.featureCount() == arrows.featureCount() == n and _gpkg_counts(gpkg) == (n, n)
    # Delete flagged + Save: both tables lose the same rows.
    n_flagged = sum(f["status"] == "flagged" for f in ties.getFeatures())
    assert d.delete_flagged() == n_flagged > 0
    d.save_edits()
    process_events(0.05)
    assert _gpkg_counts(gpkg) == (n - n_flagged, n - n_flagged)
    ds = ogr.Open(gpkg)
    pts = {f.GetField("id") for f in ds.GetLayerByName("tie_points")}
    lines = {f.GetField("id") for f in ds.GetLayerByName("displacements")}
    ds = None
    assert pts == lines


def test_native_qgis_edits_refresh_the_residuals(run, session):
    """Deleting or moving a point with QGIS's own tools refreshes the dock; saving writes the residuals."""
    d, ties = run.dock, session.ties
    ties.startEditing()
    victim = next(f for f in ties.getFeatures() if f["status"] == "inlier")
    assert ties.deleteFeature(victim.id())                # the map's Delete Selected tool, no dock involved
    process_events(0.05)
    feats = list(ties.getFeatures())
    live = {r["fid"]: r["residual_px"] for r in d.model.rows}
    assert d.model.rowCount() == len(feats) and victim.id() not in live
    assert np.array([live[f.id()] for f in feats]) == pytest.approx(_affine_residuals(feats), abs=1e-6)
    # Moving a point 25 m (10 px) east on the map: its residual grows by about that much.
    moved = next(f for f in feats if f["status"] == "inlier")
    before = live[moved.id()]
    from qgis.core import QgsGeometry, QgsPointXY

    p = moved.geometry().asPoint()
    assert ties.changeGeometry(moved.id(), QgsGeometry.fromPointXY(QgsPointXY(p.x() + 25.0, p.y())))
    process_events(0.05)
    after = {r["fid"]: r["residual_px"] for r in d.model.rows}[moved.id()]
    assert 7.0 < after - before < 10.5
    assert session.arrows.getFeature(next(a.id() for a in session.arrows.getFeatures() if a["id"] == moved["id"])) \
        .geometry().asPolyline()[-1].x() == pytest.approx(p.x() + 25.0)
    assert ties.commitChanges()                           # QGIS's own Save Layer Edits
    process_events(0.05)
    saved = {q.id: q for q in read_tiepoints_gpkg(run.task.paths.gpkg).points}
    assert saved[moved["id"]].sar_x == pytest.approx(p.x() + 25.0)
    assert saved[moved["id"]].residual_px == pytest.approx(after, abs=1e-6)
    assert victim["id"] not in saved
    assert _gpkg_counts(run.task.paths.gpkg)[1] == len(saved)


def test_corrected_layer_in_another_crs_is_said_in_the_dock_and_summary(run, tmp_path):
    """The optical stored in EPSG:32632 (the SAR in 32633): the corrected raster comes out in the SAR's
    CRS; summary.json and the dock say so, as a note, not a warning."""
    d = run.dock
    src = str(tmp_path / "optical_32632.tif")
    gdal.Warp(src, run.scene.optical, dstSRS="EPSG:32632")
    opt = add_raster(src, "Optical 32632")
    d.opt_combo.setLayer(opt)
    d.sar_combo.setLayer(QgsProject.instance().mapLayer(run.sar_id))
    d.n_target.setValue(150)
    task = d.run_match()
    assert task is not None
    wait_until(lambda: not d.busy, 120)
    summary = json.load(open(task.paths.summary, encoding="utf-8"))
    assert summary["corrected_crs"] == "EPSG:32633" and summary["optical_crs"] == "EPSG:32632"
    assert summary["corrected_crs_differs"] is True and "reprojected" in summary["notes"][0]
    assert not any("reprojected" in w for w in summary["warnings"])
    assert d.create_corrected(str(tmp_path / "corr.tif")) is not None
    wait_until(lambda: not d.busy, 120)
    layer = d.corrected_layer()
    assert layer.crs().authid() == "EPSG:32633"
    assert "EPSG:32633" in d.notice.text() and "EPSG:32632" in d.notice.text() and d.notice.level == Qgis.Info
    assert any("reprojected" in m for m in run.iface.messageBar().get_messages(Qgis.Info))
    del opt, layer
