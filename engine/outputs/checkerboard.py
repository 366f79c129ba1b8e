"""Checkerboard mosaics of two co-registered images: the quickest visual check of a correction.

Edges (roads, field borders, coastlines) that run straight across tile borders mean the two images
agree; steps at the borders show the residual misregistration. Each image is stretched on its
own (2–98 percentile) because SAR backscatter and optical reflectance have unrelated scales.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from osgeo import gdal

from ..errors import InputError
from ._gdal import fail, gdal_errors
from .atomic import PathLike, atomic_path, check_output_path


def stretch_to_uint8(a: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Linear stretch of the ``low``..``high`` percentiles (finite values only) to 0..255.

    Non-finite pixels become 0; a constant image becomes mid-grey rather than dividing by zero.
    """
    a = np.asarray(a, dtype=float)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.uint8)
    if not finite.any():
        return out
    lo, hi = np.percentile(a[finite], [low, high])
    if not hi > lo:
        out[finite] = 128
        return out
    scaled = (a[finite] - lo) / (hi - lo) * 255.0
    out[finite] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 64) -> np.ndarray:
    """uint8 image showing ``a`` on even tiles ((row//tile + col//tile) even, top-left included) and ``b`` on odd ones."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise InputError(f"checkerboard needs two 2-D images, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise InputError(f"checkerboard images must be on the same grid, got shapes {a.shape} and {b.shape}")
    if int(tile) < 1:
        raise InputError(f"tile must be >= 1, got {tile}")
    tile = int(tile)
    sa, sb = stretch_to_uint8(a), stretch_to_uint8(b)
    rows = (np.arange(a.shape[0]) // tile)[:, None]
    cols = (np.arange(a.shape[1]) // tile)[None, :]
    use_a = (rows + cols) % 2 == 0
    return np.where(use_a, sa, sb)


def write_checkerboard_png(path: PathLike, a: np.ndarray, b: np.ndarray, tile: int = 64,
                           inputs: Optional[list] = None) -> np.ndarray:
    """Write ``checkerboard(a, b, tile)`` as an 8-bit greyscale PNG (atomically); returns the image.

    The PNG driver can only CreateCopy, so the image goes through an in-memory (MEM) dataset.
    """
    out = check_output_path(path, inputs or [])
    img = checkerboard(a, b, tile)
    mem = gdal.GetDriverByName("MEM").Create("", img.shape[1], img.shape[0], 1, gdal.GDT_Byte)
    mem.GetRasterBand(1).WriteArray(img)
    with atomic_path(out) as tmp, gdal_errors() as errs:
        ds = gdal.GetDriverByName("PNG").CreateCopy(tmp, mem, 0)
        if ds is None:
            fail("Writing the checkerboard PNG", errs)
        ds.FlushCache()
        ds = None
    return img
