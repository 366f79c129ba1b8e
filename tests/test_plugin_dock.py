"""The dock with two simulated layers: widgets, options → MatchParams, AOI choices, settings, errors,
refusing a second run, and cancelling a run mid-way without leaving files behind."""
from __future__ import annotations

import glob
import os

import pytest
from qgis.core import Qgis, QgsFeature, QgsGeometry, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt

from conftest import ROOT
from plugin_helpers import (
    add_raster,
    clear_project,
    open_plugin,
    reset_settings,
    scene,
    wait_until,
)

from engine.params import TRANSFORMS


@pytest.fixture
def plugin(qgis_iface):
    reset_settings()
    qgis_iface.messageBar().clear_messages()
    p = open_plugin(qgis_iface)
    yield p
    p.unload()
    clear_project()


@pytest.fixture
def dock(plugin, tmp_path):
    sc = scene()
    d = plugin.dock
    sar = add_raster(sc.sar, "SAR")
    opt = add_raster(sc.optical, "Optical")
    d.sar_combo.setLayer(sar)
    d.opt_combo.setLayer(opt)
    d.out_dir.setFilePath(str(tmp_path / "out"))
    return d


def test_dock_lists_raster_layers_bands_and_options(dock):
    d = dock
    assert d.sar_combo.currentLayer().name() == "SAR" and d.opt_combo.currentLayer().name() == "Optical"
    assert d.sar_band.currentBand() == 1
    assert [d.opt_band.itemText(i) for i in range(d.opt_band.count())][0] == "Bands 1–3 as grey"
    assert d.opt_band.count() == 4                        # "not set" + the optical's 3 bands
    assert d.opt_band.currentBand() == -1
    assert [d.transform.itemData(i) for i in range(d.transform.count())] == list(TRANSFORMS)
    # The deep method and its options are offered but disabled until models/*.onnx exist and the
    # engine's pipeline accepts the 'deep' method; the tooltip says which of the two is missing.
    from engine.params import METHODS

    has_models = bool(glob.glob(str(ROOT / "models" / "*.onnx")))
    usable = has_models and "deep" in METHODS
    deep = d.method.model().item(d.method.findData("deep"))
    assert deep.isEnabled() == usable
    if not usable:
        why = "models not installed" if not has_models else "deep scene pipeline not in this version yet"
        assert deep.toolTip() == why
        assert not d.orn_threshold.isEnabled() and d.orn_threshold.toolTip() == why
        assert not d.goodness.isEnabled() and not d.device.isEnabled()
    # Raster combos offer raster layers only.
    poly = QgsVectorLayer("Polygon?crs=EPSG:32633", "polys", "memory")
    QgsProject.instance().addMapLayer(poly)
    assert d.sar_combo.count() == 3 and d.opt_combo.count() == 3     # an empty entry + the two rasters


def test_widgets_become_match_params(dock):
    d = dock
    d.max_offset.setValue(50.0)                           # metres; the simulated SAR has 2.5 m pixels
    d._select(d.max_offset_unit, "m")
    d._select(d.transform, "poly2")
    d._select(d.method, "ncc")
    d.n_target.setValue(120)
    d.opt_band.setBand(2)
    p = d.current_params()
    assert p.max_offset_px == pytest.approx(20.0)
    assert (p.transform, p.method, p.n_target, p.opt_bands, p.sar_band) == ("poly2", "ncc", 120, [2], 1)
    assert p.aoi is None and p.aoi_crs is None
    assert p.effective_search_size() == max(256, 128 + 2 * 20 + 2)
    d._select(d.max_offset_unit, "px")
    assert d.current_params().max_offset_px == pytest.approx(50.0)
    d.max_offset.setValue(0)                              # "Automatic": the engine's own search window
    assert d.current_params().max_offset_px is None


def test_model_set_choice_lists_installed_sets_and_reaches_the_engine(dock):
    """The dock offers the default plus every installed model set, labelled with what it was trained on."""
    from engine.runtime.registry import available_sizes, default_set

    d = dock
    values = [d.model_set.itemData(i) for i in range(d.model_set.count())]
    sets = available_sizes()
    if not sets:
        assert values == [""] and d.model_set.itemText(0) == "Not installed"
        return
    assert values == [""] + sets
    assert d.model_set.itemText(0) == f"Default ({default_set()})"
    for i, s in enumerate(sets, start=1):
        assert d.model_set.itemText(i).startswith(s + ": ")
        assert ("Sentinel-1/2" in d.model_set.itemText(i)) == ("-s1s2" in s)
    assert d.current_params().model_size is None         # default set: the engine decides
    d._select(d.model_set, sets[-1])
    assert d.current_params().model_size == sets[-1]
    assert d.collect_settings().model_set == sets[-1]


def test_settings_persist_between_sessions(plugin, qgis_iface, tmp_path):
    d = plugin.dock
    d._select(d.transform, "tps")
    d._select(d.method, "mi")
    d.max_offset.setValue(75)
    d._select(d.max_offset_unit, "px")
    d.n_target.setValue(444)
    d.ransac.setValue(3.5)
    d._select(d.aoi_mode, "canvas")
    d.out_dir.setFilePath(str(tmp_path / "elsewhere"))
    d.vrt_check.setChecked(True)
    plugin.unload()                                       # QGIS closes: settings are saved
    again = open_plugin(qgis_iface)
    try:
        e = again.dock
        assert e.transform.currentData() == "tps" and e.method.currentData() == "mi"
        assert e.max_offset.value() == 75 and e.max_offset_unit.currentData() == "px"
        assert e.n_target.value() == 444 and e.ransac.value() == 3.5
        assert e.aoi_mode.currentData() == "canvas"
        assert e.out_dir.filePath() == str(tmp_path / "elsewhere")
        assert e.vrt_check.isChecked()
    finally:
        again.unload()


def test_aoi_choices(dock, qgis_iface):
    d = dock
    sar = d.sar_combo.currentLayer()
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(sar.crs())
    canvas.resize(400, 400)
    ext = sar.extent()
    canvas.setExtent(ext)

    d._select(d.aoi_mode, "overlap")
    assert d.current_params().aoi is None

    d._select(d.aoi_mode, "canvas")
    c = canvas.extent()
    p = d.current_params()
    assert p.aoi == pytest.approx((c.xMinimum(), c.yMinimum(), c.xMaximum(), c.yMaximum()))
    assert p.aoi_crs == "EPSG:32633"

    d._select(d.aoi_mode, "layer")
    assert not d.aoi_layer.isHidden() and d.aoi_draw.isHidden()
    d.aoi_layer.setLayer(d.opt_combo.currentLayer())
    oe = d.opt_combo.currentLayer().extent()
    assert d.current_params().aoi == pytest.approx((oe.xMinimum(), oe.yMinimum(), oe.xMaximum(), oe.yMaximum()))

    # Polygon features: the selected ones when there is a selection, else all of them.
    polys = QgsVectorLayer("Polygon?crs=EPSG:32633", "areas", "memory")
    feats = []
    for x0 in (ext.xMinimum() + 100, ext.xMinimum() + 900):
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, ext.yMinimum() + 200, x0 + 500, ext.yMinimum() + 800)))
        feats.append(f)
    polys.dataProvider().addFeatures(feats)
    QgsProject.instance().addMapLayer(polys)
    d._select(d.aoi_mode, "polygons")
    d.aoi_layer.setLayer(polys)
    x0 = ext.xMinimum()
    assert d.current_params().aoi == pytest.approx((x0 + 100, ext.yMinimum() + 200, x0 + 1400, ext.yMinimum() + 800))
    polys.selectByIds([next(polys.getFeatures()).id()])
    assert d.current_params().aoi == pytest.approx((x0 + 100, ext.yMinimum() + 200, x0 + 600, ext.yMinimum() + 800))
    d.aoi_selected.setChecked(False)
    assert d.current_params().aoi[2] == pytest.approx(x0 + 1400)

    # A rectangle dragged on the canvas with the map tool.
    d._select(d.aoi_mode, "drawn")
    with pytest.raises(Exception, match="Draw the area of interest"):
        d.current_params()
    previous = canvas.mapTool()
    d.aoi_draw.click()
    tool = canvas.mapTool()
    assert tool is d.drawer.tool
    a, b = QPoint(50, 60), QPoint(300, 320)
    for kind, pt, button in ((QEvent.MouseButtonPress, a, Qt.LeftButton), (QEvent.MouseMove, b, Qt.NoButton),
                             (QEvent.MouseButtonRelease, b, Qt.LeftButton)):
        ev = QgsMapMouseEvent(canvas, kind, pt, button, Qt.LeftButton if kind == QEvent.MouseMove else button)
        {QEvent.MouseButtonPress: tool.canvasPressEvent, QEvent.MouseMove: tool.canvasMoveEvent,
         QEvent.MouseButtonRelease: tool.canvasReleaseEvent}[kind](ev)
    assert canvas.mapTool() is previous                   # the previous tool is restored
    tr = canvas.getCoordinateTransform()
    pa, pb = tr.toMapCoordinates(a), tr.toMapCoordinates(b)
    p = d.current_params()
    assert p.aoi == pytest.approx((min(pa.x(), pb.x()), min(pa.y(), pb.y()), max(pa.x(), pb.x()),
                                   max(pa.y(), pb.y())), abs=1e-6)
    assert p.aoi_crs == "EPSG:32633"
    assert d.drawer.band.isVisible()                      # the drawn AOI stays visible on the map


def test_input_errors_are_messages_not_tracebacks(dock, qgis_iface):
    d = dock
    d.opt_combo.setLayer(d.sar_combo.currentLayer())
    assert d.run_match() is None
    assert "same" in d.notice.text() and d.notice.level == Qgis.Critical
    assert any("same" in m for m in qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert not d.busy


def test_engine_error_is_shown_in_the_dock_and_message_bar(dock, qgis_iface, tmp_path):
    """An AOI outside the overlap makes the engine raise NoOverlapError inside the task."""
    d = dock
    ext = d.sar_combo.currentLayer().extent()
    d._select(d.aoi_mode, "drawn")
    d.drawer.set_rect(QgsRectangle(ext.xMaximum() + 5000, ext.yMaximum() + 5000,
                                   ext.xMaximum() + 6000, ext.yMaximum() + 6000),
                      d.sar_combo.currentLayer().crs())
    n_layers = len(QgsProject.instance().mapLayers())
    assert d.run_match() is not None
    wait_until(lambda: not d.busy, 60)
    critical = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert any("outside the overlap" in m for m in critical), critical
    assert not any("Traceback" in m for m in critical)
    assert "outside the overlap" in d.notice.text() and d.notice.level == Qgis.Critical
    assert d.stage.text() == "Failed."
    assert len(QgsProject.instance().mapLayers()) == n_layers
    assert not (tmp_path / "out").exists()
    assert d.match_button.isEnabled() and not d.cancel_button.isEnabled()


def test_second_click_is_refused_and_cancel_leaves_no_files(dock, qgis_iface, tmp_path):
    d = dock
    d.n_target.setValue(400)
    task = d.run_match()
    assert task is not None and d.busy
    assert not d.match_button.isEnabled() and d.cancel_button.isEnabled()
    assert d.run_match() is None                          # a second click while running is refused
    assert any("already in progress" in m for m in qgis_iface.messageBar().get_messages(Qgis.Warning))
    stages = []
    task.stageChanged.connect(stages.append)
    wait_until(lambda: d.progress.value() >= 20, 60)      # well into the matching stage
    d.cancel_button.click()
    wait_until(lambda: not d.busy, 60)
    assert any(s.startswith("Matching") for s in stages), stages
    assert d.stage.text() == "Cancelled."
    assert any("Cancelled" in m for m in qgis_iface.messageBar().get_messages(Qgis.Info))
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    assert sorted(lyr.name() for lyr in QgsProject.instance().mapLayers().values()) == ["Optical", "SAR"]
    assert d.session is None
    assert d.match_button.isEnabled()
    assert os.path.exists(d.sar_combo.currentLayer().source())


def test_unloading_during_a_run_cancels_it_cleanly(plugin, dock, tmp_path):
    from qgis.core import QgsApplication

    task = dock.run_match()
    assert task is not None
    wait_until(lambda: dock.progress.value() >= 5, 60)
    plugin.unload()                                       # QGIS closes / the plugin is reloaded mid-run
    assert plugin.dock is None
    wait_until(lambda: QgsApplication.taskManager().countActiveTasks() == 0, 60)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*"))
    assert len(QgsProject.instance().mapLayers()) == 2    # no result layers were added


def _tif(path, bands: int, dtype, like: str) -> str:
    """A small GeoTIFF with ``bands`` bands of ``dtype`` (a gdal type) on ``like``'s CRS and corner."""
    from osgeo import gdal

    src = gdal.Open(like)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 32, 32, bands, dtype)
    ds.SetGeoTransform(src.GetGeoTransform())
    ds.SetProjection(src.GetProjection())
    ds = src = None
    return str(path)


def test_default_layers_are_the_likely_sar_and_optical_never_the_same(plugin, tmp_path):
    """Issue 15 (3): the dock guesses the pair instead of putting the top layer in both combos."""
    from osgeo import gdal

    d, sc = plugin.dock, scene()
    opt = add_raster(sc.optical, "Optical")               # 3 bands
    assert d.sar_combo.currentLayer() is None and d.opt_combo.currentLayer() is opt
    sar = add_raster(sc.sar, "scene")                     # single float band, added last: the top layer
    assert (d.sar_combo.currentLayer(), d.opt_combo.currentLayer()) == (sar, opt)
    assert d.current_params().opt_bands is None and d.sar_combo.count() == 3   # empty + two rasters
    # Without it, a single-band integer raster named like Sentinel-1 beats a single-band float 'elevation'.
    QgsProject.instance().removeMapLayer(sar.id())
    dem = add_raster(_tif(tmp_path / "elevation.tif", 1, gdal.GDT_Float32, sc.sar), "elevation")
    s1 = add_raster(_tif(tmp_path / "S1A_IW_GRDH_VV.tif", 1, gdal.GDT_UInt16, sc.sar), "S1A_IW_GRDH_VV")
    assert (d.sar_combo.currentLayer(), d.opt_combo.currentLayer()) == (s1, opt)
    # Once the user picks a layer, adding more layers no longer changes the choice.
    d.sar_combo.setLayer(dem)
    d.sar_combo.activated.emit(d.sar_combo.currentIndex())
    add_raster(_tif(tmp_path / "vh_db.tif", 1, gdal.GDT_Float32, sc.sar), "vh_db")
    assert d.sar_combo.currentLayer() is dem
    del opt, dem, s1


def test_only_one_raster_is_never_both_sar_and_optical(plugin):
    d = plugin.dock
    sar = add_raster(scene().sar, "SAR")
    assert d.sar_combo.currentLayer() is sar and d.opt_combo.currentLayer() is None
    del sar


def test_band_choice_only_when_it_applies_and_offset_in_pixels(plugin, tmp_path):
    from osgeo import gdal

    d, sc = plugin.dock, scene()
    d.show()
    assert d.max_offset_unit.currentData() == "px" and d.max_offset_unit.itemData(0) == "px"
    assert d.max_offset.specialValueText() == "Auto (±64 px)"
    one = add_raster(_tif(tmp_path / "pan.tif", 1, gdal.GDT_Byte, sc.optical), "pan")
    two = add_raster(_tif(tmp_path / "nir_red.tif", 2, gdal.GDT_Byte, sc.optical), "nir_red")
    rgb = add_raster(sc.optical, "rgb")
    d.opt_combo.setLayer(one)
    assert not d.opt_band.isVisibleTo(d) and d.opt_band.currentBand() == 1
    assert d.opt_band.findText("Bands 1–3 as grey") < 0
    d.opt_combo.setLayer(two)
    assert d.opt_band.isVisibleTo(d) and d.opt_band.itemText(0) == "Bands 1–2 as grey"
    d.opt_combo.setLayer(rgb)
    assert d.opt_band.itemText(0) == "Bands 1–3 as grey" and d.opt_band.currentBand() == -1
    d.sar_combo.setLayer(one)                             # single-band SAR: no band row either
    assert not d.sar_band.isVisibleTo(d)
    d.sar_combo.setLayer(rgb)
    assert d.sar_band.isVisibleTo(d)
    del one, two, rgb


def test_toolbar_icon_on_the_plugins_toolbar_and_raster_menu(qgis_iface):
    from unittest import mock

    from conftest import load_plugin_package

    reset_settings()
    plugin = load_plugin_package().classFactory(qgis_iface)
    with mock.patch.object(qgis_iface, "addToolBarIcon") as tb, \
            mock.patch.object(qgis_iface, "addRasterToolBarIcon", create=True) as raster_tb, \
            mock.patch.object(qgis_iface, "addPluginToRasterMenu", create=True) as menu:
        plugin.initGui()
    tb.assert_called_once_with(plugin.action)
    raster_tb.assert_not_called()
    assert mock.call("&SAR-Optical Matcher", plugin.action) in menu.call_args_list
    with mock.patch.object(qgis_iface, "removeToolBarIcon") as rm:
        plugin.unload()
    rm.assert_called_once()


def test_an_error_banner_goes_away_with_the_next_successful_run(dock, qgis_iface, monkeypatch, tmp_path):
    from qgis.gui import QgsMessageBar

    d = dock
    bar = QgsMessageBar()                                 # a real bar: errors stay until dismissed
    monkeypatch.setattr(qgis_iface, "messageBar", lambda: bar)
    d.out_dir.setFilePath("")
    assert d.run_match() is None
    errors = [i for i in bar.items() if i.level() == Qgis.Critical]
    assert len(errors) == 1 and "output folder" in errors[0].text() and d.notice.level == Qgis.Critical
    d.out_dir.setFilePath(str(tmp_path / "out"))
    d.n_target.setValue(60)
    assert d.run_match() is not None
    wait_until(lambda: not d.busy, 120)
    assert d.session is not None
    assert not [i for i in bar.items() if i.level() == Qgis.Critical]
    assert d.notice.level != Qgis.Critical
