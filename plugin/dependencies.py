"""Checks the engine's third-party dependencies inside the user's QGIS Python, without importing them
at plugin load, so a missing package becomes a message with the exact install command."""
from __future__ import annotations

import importlib.util
import sys

REQUIRED = {"numpy": "numpy", "scipy": "scipy", "rasterio": "rasterio"}


def missing_packages() -> list[str]:
    return [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]


def install_hint(missing: list[str]) -> str:
    pkgs = " ".join(missing)
    return (
        f"SAR-Optical Matcher needs the Python package(s) {', '.join(missing)} in QGIS's Python "
        f"({sys.executable}). On Debian/Ubuntu: sudo apt install "
        + " ".join(f"python3-{p}" for p in missing)
        + f" ; elsewhere, from the OSGeo4W shell or a terminal: python3 -m pip install --user {pkgs}"
    )


def deep_models(plugin_dir: str) -> list[str]:
    """The bundled ONNX models of the deep pipeline (empty until they are installed in models/)."""
    import glob
    import os

    return sorted(glob.glob(os.path.join(plugin_dir, "models", "*.onnx")))
