"""The dock's user choices, persisted with QgsSettings so a reopened QGIS starts where the user left.

Only options are stored, never layer ids (they are per project) or results. Values come back from
QSettings as strings on some platforms, so every read goes through a typed default.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

from qgis.core import QgsSettings

from ..engine.params import MatchParams

PREFIX = "SarOpticalMatcher/"
_ENGINE = MatchParams()
"""The engine's defaults, so the dock starts from the same options as the CLI and Processing."""


@dataclass
class DockSettings:
    method: str = _ENGINE.method
    transform: str = _ENGINE.transform
    max_offset: float = 0.0
    """0 means 'automatic' (the engine's default search window, about ±64 px)."""
    max_offset_unit: str = "px"
    """'px' (SAR pixels, the unit of the automatic ±64 px) or 'm' (metres on the ground)."""
    n_target: int = _ENGINE.n_target
    template_size: int = _ENGINE.template_size
    search_size: int = _ENGINE.search_size
    min_quality: float = _ENGINE.min_quality
    ransac_threshold_px: float = _ENGINE.ransac_threshold_px
    aoi_mode: str = "overlap"
    output_folder: str = ""
    write_vrt: bool = False
    orn_threshold: float = _ENGINE.orn_threshold
    goodness_fusion: str = _ENGINE.goodness_fusion
    device: str = _ENGINE.device
    model_set: str = ""
    """'' = the manifest's default model set (engine.runtime.default_set)."""

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
