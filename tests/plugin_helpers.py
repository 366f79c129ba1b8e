"""Shared helpers of the plugin tests (tests/test_plugin_*.py): a simulated scene, waiting for tasks,
and project cleanup that never leaves a raster layer alive at exitQgis (which segfaults)."""
from __future__ import annotations

import atexit
import gc
import shutil
import tempfile
import time

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication

_SCENES: dict = {}
_ROOT = tempfile.mkdtemp(prefix="som_plugin_tests_")
atexit.register(shutil.rmtree, _ROOT, True)

SCENE_SIZE = 640
SCENE_SHIFT_PX = (6.5, -4.0)
"""Simulated misregistration (optical pixels, 2.5 m): about 19 m on the ground."""


def scene(size: int = SCENE_SIZE, seed: int = 1, kind: str = "suburban"):
    """A simulated SAR + optical GeoTIFF pair (PairPaths), made once per test session."""
    key = (size, seed, kind)
    if key not in _SCENES:
        from engine.simulate.pair import simulate_pair
        from engine.simulate.params import MisregParams, SceneParams

        _SCENES[key] = simulate_pair(f"{_ROOT}/scene_{size}_{seed}_{kind}", "scene",
                                     scene=SceneParams(size=size, seed=seed, kind=kind),
                                     misreg=MisregParams(shift=SCENE_SHIFT_PX))
    return _SCENES[key]


def process_events(seconds: float = 0.0) -> None:
    end = time.monotonic() + seconds
    while True:
        QCoreApplication.processEvents()
        if time.monotonic() >= end:
            break
        time.sleep(0.005)


def wait_until(predicate, timeout: float = 60.0, step: float = 0.01) -> float:
    """Process Qt events until ``predicate()`` is true; returns the longest gap between two event-loop
    turns (a measure of how responsive the GUI thread stayed). Fails the test on timeout."""
    t0 = last = time.monotonic()
    gap = 0.0
    while not predicate():
        QCoreApplication.processEvents()
        now = time.monotonic()
        gap = max(gap, now - last)
        last = now
        if now - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
    QCoreApplication.processEvents()
    return gap


def wait_for_tasks(timeout: float = 60.0) -> None:
    wait_until(lambda: QgsApplication.taskManager().countActiveTasks() == 0, timeout)
    process_events(0.05)


def add_raster(path: str, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def clear_project() -> None:
    """Remove every layer (rolling back edits) and collect, so nothing outlives the test."""
    project = QgsProject.instance()
    for layer in list(project.mapLayers().values()):
        if hasattr(layer, "isEditable") and layer.isEditable():
            layer.rollBack()
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()
    process_events(0.02)
    gc.collect()


def reset_settings() -> None:
    """Forget the dock's persisted choices so every test starts from the defaults."""
    from qgis.core import QgsSettings

    QgsSettings().remove("SarOpticalMatcher")


def open_plugin(iface):
    """classFactory → initGui → open the dock, as a user does; returns the plugin object."""
    from conftest import load_plugin_package

    plugin = load_plugin_package().classFactory(iface)
    plugin.initGui()
    plugin.action.trigger()
    return plugin

