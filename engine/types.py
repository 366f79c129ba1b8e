"""Plain data shared by the pipeline stages.

Coordinate conventions used everywhere in the engine (and relied on by tests):

* Pixel coordinates are continuous ``(col, row)`` with ``(0, 0)`` at the upper-left *corner* of the
  upper-left pixel, so the centre of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``. This is GDAL's
  GCP convention (GCPPixel, GCPLine) and rasterio's ``transform * (col, row)`` convention.
* Patch offsets are ``(drow, dcol)``: the optical content whose template is centred at grid
  position ``(r0, c0)`` is found in the SAR image at ``(r0 + drow, c0 + dcol)``.
* The SAR georeference is taken as truth (SAR is located to about a metre); the optical
  georeference is the one being corrected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NAN = math.nan


@dataclass
class PatchMatch:
    """Result of matching one optical template inside one SAR search window."""

    heatmap: np.ndarray
    """Similarity over integer offsets, shape (2R+1, 2R+1); index [i, j] is offset (i-R, j-R)."""
    peak: tuple[int, int]
    """Integer (drow, dcol) of the best offset."""
    offset: tuple[float, float]
    """Sub-pixel (drow, dcol) of the best offset."""
    score: float
    """Similarity at the peak (method specific scale)."""
    quality: float
    """Peak distinctiveness, e.g. ratio of the best to the second-best peak (>1 is better)."""
    cov: tuple[float, float, float] = (NAN, NAN, NAN)
    """Offset covariance (var_row, cov_rowcol, var_col) in px², estimated from the peak shape."""
    reliability: float = NAN
    """Deep pipeline: the ORN's probability that this peak is a correct match (NaN otherwise)."""
    goodness: float = NAN
    """Deep pipeline: fused scene goodness at the candidate (NaN otherwise)."""
    alternatives: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    """(k, 2) further (drow, dcol) hypotheses from secondary peaks, best first (Uss et al.)."""


@dataclass
class TiePoint:
    """One SAR–optical correspondence with everything the outputs and the review need."""

    id: int
    opt_col: float
    """Position in the optical raster's own pixel grid."""
    opt_row: float
    opt_x: float
    """Map coordinate of that optical pixel under the optical raster's current georeference."""
    opt_y: float
    sar_col: float
    """Position in the SAR raster's own pixel grid."""
    sar_row: float
    sar_x: float
    """Map coordinate of the matched SAR position (treated as the true location)."""
    sar_y: float
    score: float = NAN
    quality: float = NAN
    goodness: float = NAN
    orn_prob: float = NAN
    cov: tuple[float, float, float] = (NAN, NAN, NAN)
    status: str = "inlier"
    """'inlier' or 'flagged'."""
    flag_reason: str = ""
    residual_px: float = NAN
    """Distance between the fitted transform's prediction and ``sar_x, sar_y``, in SAR pixels."""

    @property
    def dx(self) -> float:
        return self.sar_x - self.opt_x

    @property
    def dy(self) -> float:
        return self.sar_y - self.opt_y


@dataclass
class TieSet:
    """Tie points plus the CRS (WKT) their map coordinates are in and the SAR pixel size."""

    points: list[TiePoint] = field(default_factory=list)
    crs_wkt: str = ""
    pixel_size: float = 1.0
    """SAR grid pixel size in map units; converts map residuals to pixels."""

    def src_dst(self, only_inliers: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(optical map xy, SAR map xy) arrays of shape (N, 2) for transform fitting."""
        pts = [p for p in self.points if p.status == "inlier" or not only_inliers]
        src = np.array([[p.opt_x, p.opt_y] for p in pts], dtype=float).reshape(-1, 2)
        dst = np.array([[p.sar_x, p.sar_y] for p in pts], dtype=float).reshape(-1, 2)
        return src, dst
