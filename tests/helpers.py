"""Small shared helpers for tests (importable because pytest.ini puts tests/ on the path)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def write_geotiff(path, array, transform, crs="EPSG:32633", nodata=None, dtype=None):
    """Small GeoTIFF writer for tests (2-D or (bands, H, W) arrays)."""
    import rasterio

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
        dtype=dtype or arr.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as ds:
        ds.write(arr.astype(dtype or arr.dtype))
    return str(path)


def files_under(folder: Path) -> list[str]:
    """Every file (hidden ones included) under ``folder``, relative; [] when it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """{file: (sha256, mtime_ns)} of every file under ``folder``."""
    out = {}
    for rel in files_under(folder):
        p = folder / rel
        out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out
