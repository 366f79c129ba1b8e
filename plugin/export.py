"""GCP exports of the reviewed tie points: a Georeferencer ``.points`` file and a GDAL VRT with GCPs.

Both are written by the engine's writers; this module only turns the review state into their inputs.
The ``.points`` file is written by ``write_optical_points``, the writer of the run's own file too: the
source coordinates come from the optical raster's own geotransform (not the matching grid), which is
what the Georeferencer expects even when the optical raster is stored in another CRS than the SAR.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from ..engine.errors import TooFewPointsError
from ..engine.outputs.points_file import write_optical_points
from ..engine.outputs.warp import write_gcp_vrt
from ..engine.types import TieSet
from ..engine.write_results import points_name

__all__ = ["export_gcps", "gcp_vrt_name", "inlier_gcps", "points_name"]


def gcp_vrt_name(points_path: str, opt_path: str) -> str:
    """The VRT written beside ``points_path``: ``wv_opt.tiff.points`` → ``wv_opt_gcps.vrt``."""
    base = points_path[:-len(".points")] if points_path.endswith(".points") else os.path.splitext(points_path)[0]
    ext = os.path.splitext(opt_path)[1]
    if ext and base.lower().endswith(ext.lower()):
        base = base[:-len(ext)]
    return base + "_gcps.vrt"


def inlier_gcps(tieset: TieSet) -> list[tuple[float, float, float, float]]:
    """(optical pixel col, row, true x, true y) of the enabled tie points."""
    out = []
    for p in tieset.points:
        vals = (p.opt_col, p.opt_row, p.sar_x, p.sar_y)
        if p.status == "inlier" and all(map(math.isfinite, vals)):
            out.append(vals)
    return out


def export_gcps(tieset: TieSet, opt_path: str, points_path: str, vrt_path: Optional[str] = None,
                include_flagged: bool = True) -> tuple[int, Optional[str]]:
    """Write ``points_path`` (and the VRT if asked); returns (rows written, vrt path or None)."""
    if not any(p.status == "inlier" for p in tieset.points):
        raise TooFewPointsError("There is no enabled (inlier) tie point to export.")
    os.makedirs(os.path.dirname(os.path.abspath(points_path)), exist_ok=True)
    n = write_optical_points(points_path, tieset, opt_path, include_flagged=include_flagged)
    vrt = None
    if vrt_path:
        vrt = str(write_gcp_vrt(opt_path, vrt_path, inlier_gcps(tieset), tieset.crs_wkt))
    return n, vrt
