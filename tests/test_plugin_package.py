"""scripts/package.py: the install-from-ZIP archive holds exactly the plugin, and the plugin in it loads."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile

from conftest import ROOT

from plugin_helpers import reset_settings

SCRIPT = ROOT / "scripts" / "package.py"


def _build(root, out) -> zipfile.ZipFile:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    path = proc.stdout.split(" (")[0]
    return zipfile.ZipFile(path)


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_archive_includes_models_and_excludes_development_files(tmp_path):
    root = tmp_path / "repo"
    _touch(root / "metadata.txt", "[general]\nname=SAR-Optical Matcher\nversion=9.8.7\n")
    for rel in ("__init__.py", "LICENSE", "README.md", "engine/__init__.py", "engine/pipeline.py",
                "engine/sub/mod.py", "plugin/main.py", "resources/tie_points.qml", "resources/icon.svg",
                "models/goodness.onnx", "models/MODEL_CARD.md",
                # left out:
                "engine/__pycache__/pipeline.cpython-311.pyc", "engine/CONTEXT_PLACEHOLDER.md",
                "models/training/train.py", "models/notes.txt", "tests/test_x.py", "bench/run.py",
                "docs/img/plugin_screenshot.png", ".venv/bin/python", "Makefile", "scripts/package.py",
                "plugin/.hidden", "resources/x.tif.aux.xml"):
        _touch(root / rel)
    zf = _build(root, tmp_path / "dist")
    assert zf.filename.endswith("sar_optical_matcher-9.8.7.zip")
    names = sorted(zf.namelist())
    assert names == sorted(f"sar_optical_matcher/{p}" for p in (
        "metadata.txt", "__init__.py", "LICENSE", "README.md", "engine/__init__.py", "engine/pipeline.py",
        "engine/sub/mod.py", "plugin/main.py", "resources/tie_points.qml", "resources/icon.svg",
        "models/goodness.onnx", "models/MODEL_CARD.md"))
    # Reproducible: a second build is byte-identical.
    first = open(zf.filename, "rb").read()
    again = _build(root, tmp_path / "dist")
    assert open(again.filename, "rb").read() == first


def test_packaged_plugin_loads_in_qgis(tmp_path, qgis_iface):
    zf = _build(ROOT, tmp_path / "dist")
    names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"sar_optical_matcher"}
    for must in ("metadata.txt", "__init__.py", "engine/pipeline.py", "engine/outputs/warp.py", "plugin/dock.py",
                 "plugin/main.py", "resources/tie_points.qml", "resources/displacements.qml", "resources/icon.svg"):
        assert f"sar_optical_matcher/{must}" in names, must
    assert not [n for n in names if "/tests/" in n or "/bench/" in n or "__pycache__" in n or "/docs/" in n
                or "/.venv/" in n or "/training/" in n]
    zf.extractall(tmp_path / "plugins")
    folder = tmp_path / "plugins" / "sar_optical_matcher"
    # Import it under another name so it cannot pick up the repository's copy.
    spec = importlib.util.spec_from_file_location("som_from_zip", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["som_from_zip"] = mod
    try:
        spec.loader.exec_module(mod)
        reset_settings()
        plugin = mod.classFactory(qgis_iface)
        plugin.initGui()
        plugin.action.trigger()
        assert type(plugin.dock).__module__ == "som_from_zip.plugin.dock"
        assert plugin.dock.match_button.text() == "Match layers"
        plugin.unload()
    finally:
        for name in [n for n in sys.modules if n == "som_from_zip" or n.startswith("som_from_zip.")]:
            del sys.modules[name]
