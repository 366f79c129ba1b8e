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
    """The bundled ONNX models of the deep pipeline, or [] when the deep method cannot run here."""
    import glob
    import os

    if deep_unavailable_reason(plugin_dir):
        return []
    return sorted(glob.glob(os.path.join(plugin_dir, "models", "*.onnx")))


def deep_unavailable_reason(plugin_dir: str) -> str:
    """'' when the deep method can be offered, else the short reason shown in the dock's tooltips.

    Why two conditions: the model files can be installed before the engine's pipeline accepts the
    'deep' method (the networks shipped one release before their scene pipeline)."""
    import glob
    import os

    from ..engine.params import METHODS

    if not glob.glob(os.path.join(plugin_dir, "models", "*.onnx")):
        return "models not installed"
    if "deep" not in METHODS:
        return "deep scene pipeline not in this version yet"
    return ""


def model_set_items() -> list[tuple[str, str]]:
    """(value, label) for the dock's model-set choice: the default first as '', then each installed set.

    Labels say what each set was trained on, so the analyst can pick the fine-tuned one for
    Sentinel-1/2-like data or the simulator-only one elsewhere (models/MODEL_CARD.md has the numbers)."""
    from ..engine.runtime.registry import available_sizes, default_set, load_manifest

    sets = available_sizes()
    if not sets:
        return [("", "Not installed")]
    default = default_set()
    man = load_manifest()
    items = [("", f"Default ({default})")]
    for s in sets:
        items.append((s, f"{s}: {set_description(man[('corrasl_sar', s)].metadata)}"))
    return items


def set_description(corrasl_meta: dict) -> str:
    """What a set's CorrASL was trained on, from its manifest record (not from the set's name)."""
    if corrasl_meta.get("similarity") == "zncc":
        return "structural prior + learned residual, real and simulated pairs"
    if "s1s2" in str(corrasl_meta.get("training", "")) or "fine-tuned" in str(corrasl_meta.get("training", "")):
        return "fine-tuned on real Sentinel-1/2 pairs"
    return "simulator-trained"
