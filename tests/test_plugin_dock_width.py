"""Issue 15 (2): the dock fits its default width (~300 px) with nothing cut off: every visible control
of both tabs lies inside the scroll area's viewport, which never scrolls sideways. The test also saves
docs/img/dock_300px.png (both tabs, after a run) for a look."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtGui import QColor, QPainter, QPixmap
from qgis.PyQt.QtWidgets import QAbstractButton, QApplication, QComboBox, QLabel, QLineEdit, QScrollBar, QWidget

from conftest import ROOT
from plugin_helpers import add_raster, clear_project, open_plugin, process_events, reset_settings, scene, wait_until

WIDTH = 300
SHOT = (ROOT / "docs" / "img" / "dock_300px.png" if os.environ.get("SOM_WRITE_SCREENSHOTS")
        else Path(tempfile.gettempdir()) / "som_dock_300px.png")
"""The committed picture is refreshed with SOM_WRITE_SCREENSHOTS=1; otherwise the test writes (and checks) a
temporary copy, so a test run leaves the working tree clean."""


def _outside(sa) -> list[str]:
    vp = sa.viewport()
    bad = []
    for w in sa.widget().findChildren(QWidget):
        if not w.isVisibleTo(sa) or isinstance(w, QScrollBar) or w.width() <= 0:
            continue
        if w.parent() is not None and isinstance(w.parent(), QComboBox):
            continue                                     # a combo's internal line edit/frame
        left = w.mapTo(vp, QPoint(0, 0)).x()
        right = w.mapTo(vp, QPoint(w.width(), 0)).x()
        if left < 0 or right > vp.width():
            text = w.text() if isinstance(w, (QAbstractButton, QLabel, QLineEdit)) else w.objectName()
            bad.append(f"{type(w).__name__} '{text}' spans {left}..{right} (viewport {vp.width()})")
    return bad


@pytest.fixture
def narrow(qgis_iface, tmp_path):
    # QGIS's default interface font is 10 pt (Settings ▸ Options ▸ General); the offscreen platform
    # would use 12 pt, which no real profile shows.
    app = QApplication.instance()
    font = app.font()
    small = app.font()
    small.setPointSize(10)
    app.setFont(small)
    reset_settings()
    plugin = open_plugin(qgis_iface)
    d = plugin.dock
    sc = scene()
    sar = add_raster(sc.sar, "Sentinel-1 VV (simulated)")
    opt = add_raster(sc.optical, "WorldView optical (misregistered)")
    d.out_dir.setFilePath(str(tmp_path / "results_folder_with_a_long_name"))
    d.setFloating(True)
    d.resize(WIDTH, 900)
    d.show()
    process_events(0.05)
    yield d
    plugin.unload()
    del sar, opt
    clear_project()
    app.setFont(font)


def test_dock_fits_300_px_and_screenshot(narrow):
    d = narrow
    assert d.width() == WIDTH
    d.advanced.setCollapsed(False)
    d.deep_group.setCollapsed(False)
    process_events(0.05)
    shots = []
    for tab in (0, 1):
        if tab == 1:
            assert d.run_match() is not None
            wait_until(lambda: not d.busy, 120)
            assert d.session is not None
            d.session.ties.selectByIds([next(d.session.ties.getFeatures()).id()])
        d.tabs.setCurrentIndex(tab)
        process_events(0.1)
        sa = d.tabs.currentWidget()
        assert sa.widgetResizable()
        assert sa.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        assert sa.widget().width() <= sa.viewport().width()          # nothing scrolled out to the right
        assert _outside(sa) == [], f"tab {tab}"
        sa.verticalScrollBar().setValue(0)
        process_events(0.05)
        shots.append(d.grab())
    # The controls below the tabs (Match layers, Cancel, progress) fit too.
    for w in (d.match_button, d.cancel_button, d.progress, d.stage):
        assert w.mapTo(d, QPoint(w.width(), 0)).x() <= d.width()
    os.makedirs(SHOT.parent, exist_ok=True)
    gap = 12
    img = QPixmap(sum(s.width() for s in shots) + gap, max(s.height() for s in shots))
    img.fill(QColor("white"))
    p = QPainter(img)
    p.drawPixmap(0, 0, shots[0])
    p.drawPixmap(shots[0].width() + gap, 0, shots[1])
    p.end()
    assert img.save(str(SHOT))
    assert SHOT.stat().st_size > 10_000
