#!/usr/bin/env python3
"""Build the "Install from ZIP" archive of the QGIS plugin.

QGIS installs a plugin ZIP by extracting its single top-level folder into the profile's plugin folder,
and that folder name becomes the Python package name, so everything goes under
``sar_optical_matcher/``. Only what runs inside QGIS is shipped: the engine, the plugin adapter,
resources, the bundled models with their card, metadata, licence, readme and constraints.txt (the
pins the dependency installer gives pip). Tests, benchmarks, training code, docs and development
files stay out, except the files the shipped README (and the Markdown files it ships that way) links to
relatively, such as ``docs/img/dock_300px.png`` or ``docs/BENCHMARKS.md``: those go in at the same relative
path, so every relative link in the installed README resolves. The archive is reproducible (sorted entries,
fixed timestamps), so two builds of the same tree are byte-identical.

Usage: python3 scripts/package.py [--root REPO] [--out dist]   (stdlib only)
"""
from __future__ import annotations

import argparse
import configparser
import fnmatch
import os
import re
import sys
import zipfile
from pathlib import Path

PLUGIN_FOLDER = "sar_optical_matcher"
TOP_FILES = ("metadata.txt", "__init__.py")
TOP_OPTIONAL = ("LICENSE", "LICENSE.txt", "LICENSE.md", "README.md", "README.txt", "CHANGELOG.md",
                "constraints.txt")
"""constraints.txt: the pins plugin/deps.py hands to pip when it installs the optional dependencies."""
TREES = ("engine", "plugin", "resources")
MODEL_PATTERNS = ("*.onnx", "MODEL_CARD.md", "*.sha256", "checksums.json", "manifest.json")
EXCLUDE = ("__pycache__", "*.pyc", "*.pyo", ".*", "CONTEXT_PLACEHOLDER.md", "*.orig", "*.rej", "*~",
           "*.aux.xml", "training", "tests", "bench", "docs")
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in EXCLUDE)


_LINK = re.compile(r"""!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*\)""")
"""A Markdown inline link or image, ``[text](target)`` or ``![alt](target "title")``: group 1 is the target."""


def relative_links(markdown: str) -> list[str]:
    """The relative link targets of ``markdown`` (no URL scheme, no ``#`` anchor-only links, no absolute
    paths), without their ``#fragment`` or ``?query``, in order of appearance, each once."""
    out: list[str] = []
    markdown = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1", "", markdown, flags=re.S | re.M)   # fenced code
    markdown = re.sub(r"`[^`\n]*`", "", markdown)                                          # inline code
    for m in _LINK.finditer(markdown):
        target = m.group(1)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue
        target = target.split("#", 1)[0].split("?", 1)[0]
        if target and target not in out:
            out.append(target)
    return out


def linked_files(root: Path, shipped: set[str]) -> list[tuple[Path, str]]:
    """Files the shipped Markdown files link to relatively and that are not shipped yet, followed from
    the README through every Markdown file added this way. A link that leaves the repository or names a
    missing file or a folder is an error: the installed README would have a dead link."""
    extra: list[tuple[Path, str]] = []
    queue = [rel for rel in sorted(shipped) if rel in ("README.md", "README.txt")]
    seen = set(queue)
    while queue:
        rel = queue.pop(0)
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        base = Path(rel).parent
        for target in relative_links(text):
            target_rel = os.path.normpath((base / target).as_posix()).replace(os.sep, "/")
            if target_rel.startswith("../") or target_rel == "..":
                raise SystemExit(f"error: {rel} links to {target!r}, outside the plugin folder; the ZIP cannot "
                                 "ship it (link to it by an absolute URL, or name it without a link)")
            src = root / target_rel
            if not src.is_file():
                raise SystemExit(f"error: {rel} links to {target!r}, which is not a file in {root}")
            if target_rel not in shipped:
                shipped.add(target_rel)
                extra.append((src, target_rel))
            if target_rel.endswith(".md") and target_rel not in seen:
                seen.add(target_rel)
                queue.append(target_rel)
    return extra


def collect(root: Path) -> list[tuple[Path, str]]:
    """(file on disk, path inside the archive) pairs, sorted by archive path."""
    files: list[tuple[Path, str]] = []
    for name in TOP_FILES:
        if not (root / name).is_file():
            raise SystemExit(f"error: {root / name} is missing; is --root the plugin repository?")
        files.append((root / name, name))
    files += [(root / n, n) for n in TOP_OPTIONAL if (root / n).is_file()]
    for tree in TREES:
        base = root / tree
        if not base.is_dir():
            raise SystemExit(f"error: {base} is missing")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not _excluded(d))
            for fn in sorted(filenames):
                if not _excluded(fn):
                    p = Path(dirpath) / fn
                    files.append((p, p.relative_to(root).as_posix()))
    models = root / "models"
    if models.is_dir():
        for p in sorted(models.iterdir()):
            if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in MODEL_PATTERNS):
                files.append((p, f"models/{p.name}"))
    files += linked_files(root, {rel for _, rel in files})
    return sorted(files, key=lambda t: t[1])


def version(root: Path) -> str:
    cp = configparser.ConfigParser()
    cp.read(root / "metadata.txt", encoding="utf-8")
    return cp["general"]["version"].strip()


def build(root: Path, out_dir: Path) -> Path:
    root = root.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN_FOLDER}-{version(root)}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for src, rel in collect(root):
            info = zipfile.ZipInfo(f"{PLUGIN_FOLDER}/{rel}", ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if os.access(src, os.X_OK) else 0o644) << 16
            zf.writestr(info, src.read_bytes())
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="repository root")
    ap.add_argument("--out", default="dist", help="output folder (default: dist)")
    a = ap.parse_args(argv)
    path = build(Path(a.root), Path(a.out))
    with zipfile.ZipFile(path) as zf:
        n = len(zf.namelist())
    print(f"{path} ({n} files, {path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
