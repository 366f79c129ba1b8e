"""scripts/package.py: the install-from-ZIP archive holds exactly the plugin, and the plugin in it loads."""
from __future__ import annotations

import importlib.util
import posixpath
import re
import subprocess
import sys
import zipfile

import pytest

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


def test_archive_ships_what_the_readme_links(tmp_path):
    """Relative links of the README (and of the Markdown files shipped for it) go in at the same path;
    URLs, anchors and links inside code do not pull anything in; other docs stay out."""
    root = tmp_path / "repo"
    _touch(root / "metadata.txt", "[general]\nname=SAR-Optical Matcher\nversion=1.0\n")
    _touch(root / "README.md", "\n".join((
        "![pic](docs/img/a.png) and [bench](docs/B.md#speed 'Bench') and [card](models/MODEL_CARD.md)",
        "[web](https://example.org/x.md) [anchor](#install) [mail](mailto:a@b.c) `[code](docs/code.md)`",
        "```", "[fenced](docs/fenced.md)", "```", "<./docs/angle.md> [angle](<docs/angle.md>)")))
    _touch(root / "docs/B.md", "![](img/b.png) [back](../README.md)")
    for rel in ("__init__.py", "engine/__init__.py", "plugin/main.py", "resources/icon.svg", "models/MODEL_CARD.md",
                "docs/img/a.png", "docs/img/b.png", "docs/angle.md",
                # left out: nothing links them (only from code or not at all)
                "docs/code.md", "docs/fenced.md", "docs/img/unlinked.png", "docs/C.md"):
        _touch(root / rel)
    names = sorted(_build(root, tmp_path / "dist").namelist())
    assert names == sorted(f"sar_optical_matcher/{p}" for p in (
        "metadata.txt", "__init__.py", "README.md", "engine/__init__.py", "plugin/main.py", "resources/icon.svg",
        "models/MODEL_CARD.md", "docs/img/a.png", "docs/B.md", "docs/img/b.png", "docs/angle.md"))


@pytest.mark.parametrize("readme, why", [("[gone](docs/missing.md)", "not a file"),
                                         ("[up](../elsewhere/x.md)", "outside the plugin folder"),
                                         ("[dir](docs)", "not a file")])
def test_archive_refuses_a_readme_link_it_cannot_ship(tmp_path, readme, why):
    root = tmp_path / "repo"
    _touch(root / "metadata.txt", "[general]\nname=SAR-Optical Matcher\nversion=1.0\n")
    for rel in ("__init__.py", "engine/__init__.py", "plugin/main.py", "resources/icon.svg", "docs/x.md"):
        _touch(root / rel)
    _touch(root / "README.md", readme)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--out", str(tmp_path / "dist")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and why in proc.stderr, proc.stderr


_MD_LINK = re.compile(r"""!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*\)""")


def _relative_links(markdown: str) -> list[str]:
    """Relative link targets of a Markdown text: not http(s)/mailto/other schemes, not '#' anchors, not in code."""
    markdown = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1", "", markdown, flags=re.S | re.M)
    markdown = re.sub(r"`[^`\n]*`", "", markdown)
    return [t.split("#")[0] for t in _MD_LINK.findall(markdown)
            if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_readme_link_resolves_inside_the_real_zip(tmp_path):
    """The README that QGIS installs with the plugin must not link to files the ZIP leaves out (issue 15)."""
    zf = _build(ROOT, tmp_path / "dist")
    names = set(zf.namelist())
    readme = zf.read("sar_optical_matcher/README.md").decode("utf-8")
    links = _relative_links(readme)
    # The analyst's part links the dock and review screenshots and the benchmark pages; they must be there.
    for must in ("docs/img/dock_300px.png", "docs/img/review_arrows.png", "docs/BENCHMARKS.md"):
        assert must in links, must
    checked = {"README.md"}
    todo = [("README.md", links)]
    while todo:
        doc, targets = todo.pop()
        for target in targets:
            rel = posixpath.normpath(posixpath.join(posixpath.dirname(doc), target))
            assert f"sar_optical_matcher/{rel}" in names, f"{doc} links to {target}, which the ZIP lacks"
            if rel.endswith(".md") and rel not in checked:
                checked.add(rel)
                todo.append((rel, _relative_links(zf.read(f"sar_optical_matcher/{rel}").decode("utf-8"))))
    # Every image the README shows exists as a real PNG in the ZIP (not an empty placeholder).
    for target in links:
        if target.endswith(".png"):
            assert zf.read(f"sar_optical_matcher/{target}")[:8] == b"\x89PNG\r\n\x1a\n", target


def test_packaged_plugin_loads_in_qgis(tmp_path, qgis_iface):
    zf = _build(ROOT, tmp_path / "dist")
    names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"sar_optical_matcher"}
    for must in ("metadata.txt", "__init__.py", "engine/pipeline.py", "engine/outputs/warp.py", "plugin/dock.py",
                 "plugin/main.py", "resources/tie_points.qml", "resources/displacements.qml", "resources/icon.svg"):
        assert f"sar_optical_matcher/{must}" in names, must
    assert not [n for n in names if "/tests/" in n or "/bench/" in n or "__pycache__" in n
                or "/.venv/" in n or "/training/" in n]
    # docs/ only as far as the README links it (screenshots, benchmark pages), never the whole folder.
    linked = {posixpath.normpath(posixpath.join(posixpath.dirname(md[len("sar_optical_matcher/"):]), t))
              for md in names if md.endswith(".md") for t in _relative_links(zf.read(md).decode("utf-8"))}
    docs = {n.split("/", 1)[1] for n in names if n.startswith("sar_optical_matcher/docs/")}
    assert docs and docs <= linked, docs - linked
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
