"""Atomic writers: tiled DEFLATE GeoTIFFs and JSON, never leaving a half-written file in place.

Each file is written to a temporary name in the destination folder and moved over the final name
with ``os.replace`` (atomic on one filesystem), so readers see either nothing or a complete file.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import numpy as np


def _tmp_path(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def write_geotiff(path: str, array: np.ndarray, transform, crs, nodata: Optional[float] = None,
                  descriptions: Optional[list] = None, tags: Optional[dict] = None) -> str:
    """Write (H, W) or (bands, H, W) ``array`` as a tiled, DEFLATE-compressed GeoTIFF."""
    import rasterio

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    count, h, w = arr.shape
    is_float = np.issubdtype(arr.dtype, np.floating)
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=arr.dtype.name, crs=crs,
                   transform=transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=3 if is_float else 2, zlevel=1,
                   interleave="pixel" if count > 1 else "band", BIGTIFF="IF_SAFER")
    if count == 3 and arr.dtype == np.uint8:
        profile["photometric"] = "RGB"
    if nodata is not None:
        profile["nodata"] = nodata
    tmp = _tmp_path(path)
    try:
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(arr)
            if descriptions:
                for i, d in enumerate(descriptions[:count], start=1):
                    ds.set_band_description(i, d)
            if tags:
                ds.update_tags(**{k: str(v) for k, v in tags.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str, obj: Any) -> str:
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
