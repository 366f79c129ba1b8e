#!/usr/bin/env python3
"""Build a folder of wheels for installing the plugin's optional dependencies offline.

The plugin's *Install dependencies* dialog (plugin/deps.py) installs onnxruntime-gpu (Deep matching) and
Dask (Batch match) from the package index, or, offline, from a folder made by this script. Run it on a
connected machine with the same OS, CPU architecture and QGIS Python version as the offline one
(wheels are platform-specific): by default it downloads for the Python given by --python
(default: /usr/bin/python3, QGIS's Python on Debian/Ubuntu). Only binary wheels are taken, under the
project's constraints.txt (numpy<2, ...). Already downloaded files are kept, so re-runs are quick.

Usage: python3 scripts/wheelhouse.py [--out wheelhouse] [--python /usr/bin/python3] [--feature deep|batch ...]
       (or: make wheelhouse)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements(features: list[str]) -> list[str]:
    sys.path.insert(0, str(ROOT))
    try:
        from plugin.deps import FEATURES
    finally:
        sys.path.pop(0)
    return [r for f in features for r in FEATURES[f].requirements]


def command(python: str, out: Path, reqs: list[str], constraints: Path = ROOT / "constraints.txt") -> list[str]:
    return [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--only-binary=:all:", "--dest", str(out), "--constraint", str(constraints), *reqs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="wheelhouse", help="folder of wheels (default: wheelhouse)")
    ap.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                    help="the Python the wheels are for: QGIS's (default: /usr/bin/python3)")
    ap.add_argument("--feature", action="append", choices=("deep", "batch"),
                    help="what to download for (default: both)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = command(a.python, out, requirements(a.feature or ["deep", "batch"]))
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        n = len(list(out.glob("*.whl")))
        size = sum(p.stat().st_size for p in out.glob("*.whl")) / 2**20
        print(f"{out}: {n} wheels, {size:.0f} MiB. In QGIS: Raster ▸ SAR-Optical Matcher ▸ Install dependencies…, "
              f"'Install from a folder of wheels (offline)', choose this folder.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
