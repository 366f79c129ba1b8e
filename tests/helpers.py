"""Small shared helpers for tests (importable because pytest.ini puts tests/ on the path)."""
from __future__ import annotations

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
