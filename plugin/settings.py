"""The dock's user choices, persisted with QgsSettings so a reopened QGIS starts where the user left.

Only options are stored, never layer ids (they are per project) or results. Values come back from
QSettings as strings on some platforms, so every read goes through a typed default.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from qgis.core import QgsSettings

PREFIX = "SarOpticalMatcher/"


@dataclass
class DockSettings:
    method: str = "structural"
    transform: str = "affine"
    max_offset: float = 0.0
    """0 means 'automatic' (the engine's default search window, about ±64 px)."""
    max_offset_unit: str = "m"
    """'m' (metres on the ground) or 'px' (SAR pixels)."""
    n_target: int = 300
    template_size: int = 128
    search_size: int = 256
    min_quality: float = 1.05
    ransac_threshold_px: float = 2.0
    aoi_mode: str = "overlap"
    output_folder: str = ""
    write_vrt: bool = False
    orn_threshold: float = 0.5
    goodness_fusion: str = "product"
    device: str = "cpu"

    @classmethod
    def load(cls, settings: QgsSettings | None = None) -> "DockSettings":
        s = settings or QgsSettings()
        out = cls()
        for f in fields(cls):
            default = getattr(out, f.name)
            raw = s.value(PREFIX + f.name, default)
            setattr(out, f.name, _coerce(raw, default))
        if not out.output_folder:
            out.output_folder = default_output_folder()
        return out

    def save(self, settings: QgsSettings | None = None) -> None:
        s = settings or QgsSettings()
        for k, v in asdict(self).items():
            s.setValue(PREFIX + k, v)


def default_output_folder() -> str:
    return os.path.join(os.path.expanduser("~"), "sar_optical_matcher")


def _coerce(raw, default):
    if raw is None:
        return default
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(float(raw))
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        return default
