"""The plugin loads in QGIS the way QGIS loads it, and unloads cleanly, repeatedly."""
from __future__ import annotations

import configparser

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtWidgets import QLabel

from conftest import ROOT, load_plugin_package

PROVIDER = "sar_optical_matcher"


def test_metadata_has_required_fields():
    cp = configparser.ConfigParser()
    cp.read(ROOT / "metadata.txt", encoding="utf-8")
    g = cp["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker"):
        assert g.get(key, "").strip(), key
    assert g["name"] == "SAR-Optical Matcher"
    assert g["qgisMinimumVersion"] == "3.22"
    assert g["hasProcessingProvider"] == "yes"
    assert (ROOT / g["icon"]).exists()


def test_engine_imports_inside_the_plugin_package():
    pkg = load_plugin_package()
    import importlib

    pipeline = importlib.import_module(f"{pkg.__name__}.engine.pipeline")
    assert pipeline.match_pair.__module__ == f"{pkg.__name__}.engine.pipeline"


def test_plugin_uses_only_qgis_pyqt_and_relative_engine_imports():
    """Qt6-ready QGIS plugins import Qt through qgis.PyQt, and the engine relatively (as a sub-package)."""
    for path in (ROOT / "plugin").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "from PyQt5" not in text and "import PyQt5" not in text, path.name
        assert "from engine" not in text and "import engine" not in text, path.name


def test_class_factory_init_gui_unload_repeatedly(qgis_iface):
    pkg = load_plugin_package()
    registry = QgsApplication.processingRegistry()
    for _ in range(3):
        plugin = pkg.classFactory(qgis_iface)
        plugin.initGui()
        assert plugin.action is not None and plugin.action.text() == "SAR-Optical Matcher"
        provider = registry.providerById(PROVIDER)
        assert provider is not None
        assert {a.name() for a in provider.algorithms()} == {"match", "warp", "batch"}
        plugin.action.trigger()           # opens the dock
        assert plugin.dock is not None and not plugin.dock.isHidden()
        assert plugin.dock.windowTitle() == "SAR-Optical Matcher"
        assert plugin.dock.match_button.text() == "Match layers"
        plugin.action.trigger()           # and closes it again
        assert plugin.dock.isHidden()
        plugin.action.trigger()           # closing it with its own [x] unticks the action
        plugin.dock.close()
        assert not plugin.action.isChecked()
        plugin.unload()
        assert plugin.action is None and plugin.dock is None
        assert registry.providerById(PROVIDER) is None


def test_missing_dependencies_show_the_install_command(qgis_iface, monkeypatch):
    pkg = load_plugin_package()
    import importlib

    main = importlib.import_module(f"{pkg.__name__}.plugin.main")
    monkeypatch.setattr(main, "missing_packages", lambda: ["rasterio", "scipy"])
    qgis_iface.messageBar().clear_messages()
    plugin = pkg.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert QgsApplication.processingRegistry().providerById(PROVIDER) is None
        plugin.action.trigger()
        text = plugin.dock.findChild(QLabel, "installHint").text()
        assert "python3 -m pip install --user rasterio scipy" in text
        assert "sudo apt install python3-rasterio python3-scipy" in text
        assert not hasattr(plugin.dock, "match_button")   # the engine UI is not built without its packages
        warnings = qgis_iface.messageBar().get_messages(Qgis.Warning)
        assert any("pip install --user rasterio scipy" in m for m in warnings)
    finally:
        plugin.unload()
