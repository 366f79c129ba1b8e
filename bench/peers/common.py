"""What every peer method hands back, so the tables treat peers and our matchers alike."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

NAN_OFFSET: tuple[float, float] = (math.nan, math.nan)


@dataclass
class PeerPatchResult:
    """One patch pair: predicted (drow, dcol) or NaN with the reason the peer gave none."""

    offset: tuple[float, float] = NAN_OFFSET
    n_matches: int = 0
    """Correspondences the peer's own filter kept (SIFT RANSAC inliers; 1 for AROSICS)."""
    quality: float = math.nan
    """The peer's own confidence (inlier count for SIFT, AROSICS's reliability in %)."""
    error: str = ""


@dataclass
class PeerSceneResult:
    """One whole scene: tie points in grid pixel coordinates (col, row) after the peer's filtering."""

    opt_cr: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Nominal position (optical as georeferenced now) of each kept tie point, grid (col, row)."""
    sar_cr: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Where the SAR says that content really is, grid (col, row)."""
    n_raw: int = 0
    """Correspondences before the peer's filtering."""
    error: str = ""
    seconds: float = math.nan

    @property
    def n_kept(self) -> int:
        return int(len(self.opt_cr))


def fail_message(exc: BaseException, limit: int = 300) -> str:
    """Short one-line error text for the report (peers fail on SAR-optical; we report, not drop)."""
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def optional_float(v: Optional[float]) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
