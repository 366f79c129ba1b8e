"""Screenshot of the plugin in a real QGIS window: simulate a scene, match it from the dock, save a PNG.

Run headless (QGIS executes this file after its main window is up):

    xvfb-run -a -s "-screen 0 1600x1000x24" qgis --nologo --noversioncheck \
        --profiles-path /tmp/som_profile --code scripts/plugin_screenshot.py

Environment: SOM_SHOT (output PNG, default docs/img/plugin_screenshot.png), SOM_SIZE (scene size,
default 1024), SOM_WORK (scratch folder), SOM_TAB (dock tab shown: 0 Match, 1 Review).
QGIS quits when the PNG is written.
"""
import importlib.util
import os
import sys
import tempfile
import traceback

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.utils import iface

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__ if "__file__" in globals() else sys.argv[-1])))
if not os.path.exists(os.path.join(ROOT, "metadata.txt")):
    ROOT = os.getcwd()
OUT = os.environ.get("SOM_SHOT", os.path.join(ROOT, "docs", "img", "plugin_screenshot.png"))
SIZE = int(os.environ.get("SOM_SIZE", "1024"))
WORK = os.environ.get("SOM_WORK") or tempfile.mkdtemp(prefix="som_shot_")
STATE = {}
sys.path.insert(0, ROOT)  # the engine's simulator is imported top-level below


def fail(msg):
    sys.stderr.write(msg + "\n")
    QgsApplication.exit(1)


def load_plugin():
    spec = importlib.util.spec_from_file_location("sar_optical_matcher", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sar_optical_matcher"] = mod
    spec.loader.exec_module(mod)
    return mod


def start():
    try:
        from engine.simulate.pair import simulate_pair
        from engine.simulate.params import MisregParams, SceneParams

        mw = iface.mainWindow()
        mw.resize(1600, 1000)
        mw.showMaximized()
        pair = simulate_pair(os.path.join(WORK, "scene"), "scene",
                             scene=SceneParams(size=SIZE, seed=3, kind="suburban"),
                             misreg=MisregParams(shift=(9.0, -6.0)))
        sar = QgsRasterLayer(pair.sar, "SAR (simulated)")
        opt = QgsRasterLayer(pair.optical, "Optical (misregistered)")
        project = QgsProject.instance()
        root = project.layerTreeRoot()
        for layer in (sar, opt):                 # optical drawn over the SAR, half transparent
            project.addMapLayer(layer, False)
            root.insertLayer(0, layer).setExpanded(False)
        opt.renderer().setOpacity(0.5)
        plugin = load_plugin().classFactory(iface)
        plugin.initGui()
        plugin.action.trigger()
        dock = plugin.dock
        mw.resizeDocks([dock], [430], Qt.Horizontal)
        dock.sar_combo.setLayer(sar)
        dock.opt_combo.setLayer(opt)
        dock._select(dock.transform, "affine")
        dock.out_dir.setFilePath(os.path.join(WORK, "results"))
        STATE.update(plugin=plugin, dock=dock, sar=sar)
        iface.mapCanvas().setExtent(sar.extent())
        if dock.run_match() is None:
            return fail("match did not start")
        QTimer.singleShot(500, poll)
    except Exception:  # noqa: BLE001
        fail(traceback.format_exc())


def poll():
    dock = STATE["dock"]
    if dock.busy:
        QTimer.singleShot(300, poll)
        return
    if dock.session is None:
        return fail("match failed: " + dock.stage.text())
    # Select a few of the worst points in the table, as a reviewer would.
    dock.table.selectRow(0)
    dock.tabs.setCurrentIndex(int(os.environ.get("SOM_TAB", "1")))
    canvas = iface.mapCanvas()
    ext = STATE["sar"].extent()
    ext.scale(1.02)
    canvas.setExtent(ext)
    canvas.refreshAllLayers()
    QTimer.singleShot(2500, shoot)


def shoot():
    try:
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        iface.mainWindow().grab().save(OUT, "PNG", 0)  # 0: smallest lossless file
        print("wrote", OUT)
    except Exception:  # noqa: BLE001
        return fail(traceback.format_exc())
    STATE["plugin"].unload()
    QgsProject.instance().removeAllMapLayers()
    QTimer.singleShot(200, lambda: QgsApplication.exit(0))


QTimer.singleShot(1500, start)
