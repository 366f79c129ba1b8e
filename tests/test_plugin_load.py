"""The plugin loads in QGIS the way QGIS loads it, and unloads cleanly, repeatedly."""
from __future__ import annotations

import configparser

from conftest import ROOT, load_plugin_package


def test_metadata_has_required_fields():
    cp = configparser.ConfigParser()
    cp.read(ROOT / "metadata.txt", encoding="utf-8")
    g = cp["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker"):
        assert g.get(key, "").strip(), key
    assert g["name"] == "SAR-Optical Matcher"
    assert g["qgisMinimumVersion"] == "3.22"
    assert (ROOT / g["icon"]).exists()


def test_engine_imports_inside_the_plugin_package():
    pkg = load_plugin_package()
    import importlib

    pipeline = importlib.import_module(f"{pkg.__name__}.engine.pipeline")
    assert pipeline.match_pair.__module__ == f"{pkg.__name__}.engine.pipeline"


def test_class_factory_init_gui_unload_repeatedly(qgis_iface):
    pkg = load_plugin_package()
    for _ in range(3):
        plugin = pkg.classFactory(qgis_iface)
        plugin.initGui()
        assert plugin.action is not None and plugin.action.text() == "SAR-Optical Matcher"
        plugin.action.trigger()           # opens the dock
        assert plugin.dock is not None and not plugin.dock.isHidden()
        assert plugin.dock.windowTitle() == "SAR-Optical Matcher"
        plugin.action.trigger()           # and closes it again
        assert plugin.dock.isHidden()
        plugin.unload()
        assert plugin.action is None and plugin.dock is None
