"""The ground-truth sidecar ``<name>_truth.json`` of a simulated pair, and its loader."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from .misregistration import CheckPoints, MisregModel

TRUTH_FORMAT = "sar-optical-sim-truth/1"


@dataclass
class Truth:
    """Loaded truth: CRS, both rasters (paths, GDAL geotransforms, shapes), parameters, f, points."""

    crs_wkt: str
    sar_path: str
    optical_path: str
    sar_geotransform: Tuple[float, ...]
    optical_geotransform: Tuple[float, ...]
    sar_shape: Tuple[int, int]
    optical_shape: Tuple[int, int]
    params: Dict
    model: MisregModel
    check_points: CheckPoints
    raw: Dict

    def true_xy(self, nominal_xy) -> np.ndarray:
        """(N, 2) nominal optical map xy -> (N, 2) true map xy."""
        return self.model.true_xy(nominal_xy)

    def optical_px_to_true_xy(self, colrow) -> np.ndarray:
        """(N, 2) optical pixel (col, row), corner convention -> true map xy."""
        cr = np.asarray(colrow, float).reshape(-1, 2)
        gt = self.optical_geotransform
        x = gt[0] + cr[:, 0] * gt[1] + cr[:, 1] * gt[2]
        y = gt[3] + cr[:, 0] * gt[4] + cr[:, 1] * gt[5]
        return self.true_xy(np.column_stack([x, y]))

    def xy_to_sar_px(self, xy) -> np.ndarray:
        """(N, 2) map xy -> SAR pixel (col, row), corner convention."""
        p = np.asarray(xy, float).reshape(-1, 2)
        gt = self.sar_geotransform
        return np.column_stack([(p[:, 0] - gt[0]) / gt[1], (p[:, 1] - gt[3]) / gt[5]])


def load_truth(path: str) -> Truth:
    with open(path, "r", encoding="utf-8") as f:
        d = json.load(f)
    if d.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path}: not a simulator truth file (format {d.get('format')!r})")
    folder = os.path.dirname(os.path.abspath(path))

    def resolve(entry: Dict) -> str:
        local = os.path.join(folder, entry["file"])
        return local if os.path.exists(local) or not entry.get("path") else entry["path"]

    return Truth(crs_wkt=d["crs_wkt"], sar_path=resolve(d["sar"]), optical_path=resolve(d["optical"]),
                 sar_geotransform=tuple(d["sar"]["geotransform"]),
                 optical_geotransform=tuple(d["optical"]["geotransform"]),
                 sar_shape=tuple(d["sar"]["shape"]), optical_shape=tuple(d["optical"]["shape"]),
                 params=d["params"], model=MisregModel.from_dict(d["misregistration"]),
                 check_points=CheckPoints.from_list(d["check_points"]), raw=d)
