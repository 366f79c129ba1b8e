"""Write the corrected optical raster: exact geotransform edits where possible, GDAL warps otherwise.

Three routes, from cheapest/most faithful to most general:

1. ``shift_georeference``: a pure translation only changes the geotransform origin. Pixels are
   copied untouched (no resampling blur, bit-exact values), which is exactly what Hughes' shift
   correction needs.
2. An affine transform composed with the raster's affine geotransform is again affine, so it too
   is written as a new (possibly rotated) geotransform without resampling.
3. Everything else goes through GCPs: ``gdal.Translate`` attaches GCPs to an in-memory VRT
   (``/vsimem/``, no disk I/O) and ``gdal.Warp`` resamples with GDAL's polynomial (order 1..3) or
   thin-plate-spline GCP transformer. For our own fitted transforms the GCPs are a dense grid
   sampled from the transform, so GDAL reproduces it (exactly for poly2/poly3, which composed with
   the geotransform stay polynomials of the same order; closely for tps/projective).

All outputs are written through ``atomic_path``; a cancel (GDAL's progress callback returns 0)
deletes the partial file and raises ``CancelledError``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from osgeo import gdal, osr

from ..errors import InputError, TooFewPointsError
from ..geometry.transforms import PolynomialTransform, ShiftTransform, Transform
from ..progress import CancelToken, ProgressCallback
from ._gdal import fail, gdal_errors, make_gdal_callback, raise_if_cancelled, vsimem_path
from .atomic import PathLike, atomic_path, check_output_path

GCPTuple = tuple[float, float, float, float]
"""(pixel_col, line_row, map_x, map_y), pixel-corner convention (GDAL's GCPPixel/GCPLine)."""

DEFAULT_CREATION_OPTIONS = ("TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")

RESAMPLING = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")

WARP_METHODS = {"poly1": 1, "affine": 1, "poly2": 2, "poly3": 3, "tps": 0}
_MIN_GCPS = {1: 3, 2: 6, 3: 10, 0: 3}


def warp_with_gcps(
    src_path: PathLike,
    dst_path: PathLike,
    gcps: Sequence[GCPTuple],
    crs_wkt: str,
    method: str = "poly1",
    resampling: str = "bilinear",
    dst_res: Union[None, float, tuple[float, float]] = None,
    band_subset: Optional[Sequence[int]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    *,
    target_aligned_pixels: bool = False,
    dst_nodata: Optional[float] = None,
    dst_alpha: bool = False,
    error_threshold: float = 0.01,
    creation_options: Sequence[str] = DEFAULT_CREATION_OPTIONS,
) -> Path:
    """Georeference ``src_path`` from GCPs and resample it into a north-up GeoTIFF at ``dst_path``.

    ``method`` is a GDAL GCP transformer: ``poly1`` (alias ``affine``), ``poly2``, ``poly3`` or
    ``tps``. ``dst_res`` is the output pixel size (one value or (xres, yres), map units); by default
    GDAL keeps roughly the source resolution. ``target_aligned_pixels`` snaps the output grid to
    multiples of ``dst_res`` (needs ``dst_res``), so rasters from several runs stack exactly.
    ``band_subset`` lists 1-based band numbers to keep. Source nodata is honoured automatically;
    ``dst_nodata``/``dst_alpha`` control how the area outside the warped image is marked.
    ``error_threshold`` (pixels) bounds GDAL's linear approximation of the transformer; GDAL's own
    default of 0.125 px is too coarse for co-registration (measured ~0.09 px position errors on a
    mild poly2), 0.01 keeps them ~0.005 px at a moderate cost; 0 evaluates every pixel exactly.
    """
    out = check_output_path(dst_path, [str(src_path)])
    method = _check_method(method)
    order = WARP_METHODS[method]
    gcp_objs = _gcp_objects(gcps)
    if len(gcp_objs) < _MIN_GCPS[order]:
        raise TooFewPointsError(
            f"warping with {method} needs at least {_MIN_GCPS[order]} GCPs, got {len(gcp_objs)}; "
            "use a lower polynomial order"
        )
    resampling = _check_resampling(resampling)
    xres, yres = _resolution(dst_res)
    if target_aligned_pixels and xres is None:
        raise InputError("target_aligned_pixels needs an output resolution (dst_res)")
    srs_wkt = _srs_wkt(crs_wkt)
    raise_if_cancelled(cancel)

    src = _open_raster(src_path)
    vrt_path = vsimem_path(".vrt")
    with gdal_errors() as errs:
        vrt = gdal.Translate(vrt_path, src, format="VRT", GCPs=gcp_objs, outputSRS=srs_wkt,
                             bandList=list(band_subset) if band_subset else None)
        if vrt is None:
            fail("Attaching GCPs", errs, cancel)
        try:
            with atomic_path(out) as tmp:
                kwargs = dict(
                    format="GTiff", dstSRS=srs_wkt, resampleAlg=resampling, errorThreshold=float(error_threshold),
                    # NUM_THREADS parallelises the resampling kernel; multithread=True would move
                    # I/O to a second thread whose errors escape our thread-local error handler.
                    creationOptions=list(creation_options), warpOptions=["NUM_THREADS=ALL_CPUS"],
                    callback=make_gdal_callback(progress, cancel, "Warping optical raster"),
                )
                if order == 0:
                    kwargs.update(tps=True, transformerOptions=["METHOD=GCP_TPS"])
                else:
                    kwargs.update(polynomialOrder=order, transformerOptions=["METHOD=GCP_POLYNOMIAL"])
                if xres is not None:
                    kwargs.update(xRes=xres, yRes=yres, targetAlignedPixels=bool(target_aligned_pixels))
                if dst_nodata is not None:
                    kwargs["dstNodata"] = dst_nodata
                if dst_alpha:
                    kwargs["dstAlpha"] = True
                _finish(gdal.Warp(tmp, vrt, options=gdal.WarpOptions(**kwargs)), "Warping", errs, cancel)
        finally:
            vrt = None
            gdal.Unlink(vrt_path)
    return out


def shift_georeference(
    src_path: PathLike,
    dst_path: PathLike,
    dx: float,
    dy: float,
    *,
    crs_wkt: Optional[str] = None,
    band_subset: Optional[Sequence[int]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    creation_options: Sequence[str] = DEFAULT_CREATION_OPTIONS,
) -> Path:
    """Copy ``src_path`` to a GeoTIFF whose geotransform is translated by (dx, dy) map units.

    No resampling: pixel values are identical, only the georeference moves (exact for ``shift``).
    ``crs_wkt`` optionally replaces the CRS (default: keep the source's).
    """
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise InputError(f"shift must be finite, got ({dx}, {dy})")
    out = check_output_path(dst_path, [str(src_path)])
    src = _open_raster(src_path)
    gt = _geotransform(src, src_path)
    new_gt = (gt[0] + dx, gt[1], gt[2], gt[3] + dy, gt[4], gt[5])
    _copy_with_geotransform(src, out, new_gt, crs_wkt, band_subset, progress, cancel, creation_options)
    return out


def warp_with_transform(
    src_path: PathLike,
    dst_path: PathLike,
    transform: Transform,
    crs_wkt: Optional[str] = None,
    resampling: str = "bilinear",
    dst_res: Union[None, float, tuple[float, float]] = None,
    band_subset: Optional[Sequence[int]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    *,
    method: Optional[str] = None,
    grid_size: int = 21,
    allow_rotated_geotransform: bool = True,
    target_aligned_pixels: bool = False,
    dst_nodata: Optional[float] = None,
    error_threshold: float = 0.01,
    creation_options: Sequence[str] = DEFAULT_CREATION_OPTIONS,
) -> Path:
    """Apply a fitted ``Transform`` (optical nominal map xy → true map xy) to the optical raster.

    ``crs_wkt`` is the CRS the transform's coordinates live in (the tie set's); default: the
    raster's own. shift → ``shift_georeference``; affine/poly1 → an exact new geotransform (with
    rotation terms if needed; ``allow_rotated_geotransform=False`` resamples to north-up instead);
    poly2/poly3 → GDAL polynomial of the same order on a ``grid_size``² GCP grid; tps/projective →
    GDAL tps on that grid. ``method`` forces the GDAL method for the GCP route. If the raster is
    stored in another CRS than ``crs_wkt``, the grid is reprojected and the GCP route (tps) is used.
    """
    out = check_output_path(dst_path, [str(src_path)])
    src = _open_raster(src_path)
    gt = _geotransform(src, src_path)
    src_wkt = src.GetProjection() or ""
    target_wkt = _srs_wkt(crs_wkt) if crs_wkt else src_wkt
    if not target_wkt:
        raise InputError(f"{Path(str(src_path)).name} has no CRS and none was given")
    same_crs = (not src_wkt) or _same_crs(src_wkt, target_wkt)

    if same_crs and method is None:
        if isinstance(transform, ShiftTransform):
            _copy_with_geotransform(src, out, (gt[0] + transform.dx, gt[1], gt[2], gt[3] + transform.dy, gt[4], gt[5]),
                                    target_wkt, band_subset, progress, cancel, creation_options)
            return out
        if isinstance(transform, PolynomialTransform) and transform.order == 1:
            new_gt = compose_geotransform(transform.affine_matrix(), gt)
            rotated = abs(new_gt[2]) > 1e-9 * abs(new_gt[1]) or abs(new_gt[4]) > 1e-9 * abs(new_gt[5])
            if allow_rotated_geotransform or not rotated:
                _copy_with_geotransform(src, out, new_gt, target_wkt, band_subset, progress, cancel, creation_options)
                return out
    if method is None:
        if isinstance(transform, PolynomialTransform) and same_crs:
            method = f"poly{transform.order}"
        elif isinstance(transform, ShiftTransform) and same_crs:
            method = "poly1"
        else:
            method = "tps"
    gcps = transform_gcps(transform, gt, src.RasterXSize, src.RasterYSize, grid_size,
                          src_wkt=src_wkt if not same_crs else None, target_wkt=target_wkt)
    src = None
    return warp_with_gcps(src_path, out, gcps, target_wkt, method=method, resampling=resampling,
                          dst_res=dst_res, band_subset=band_subset, progress=progress, cancel=cancel,
                          target_aligned_pixels=target_aligned_pixels, dst_nodata=dst_nodata,
                          error_threshold=error_threshold, creation_options=creation_options)


def write_gcp_vrt(src_path: PathLike, vrt_path: PathLike, gcps: Sequence[GCPTuple], crs_wkt: str) -> Path:
    """Write a VRT that references ``src_path`` and carries ``gcps`` (no pixel copy).

    QGIS and GDAL open it as a GCP-georeferenced raster (on-the-fly warp), handy for checking the
    tie points visually or for running ``gdalwarp`` by hand with other options.
    """
    out = check_output_path(vrt_path, [str(src_path)])
    gcp_objs = _gcp_objects(gcps)
    if not gcp_objs:
        raise TooFewPointsError("a GCP VRT needs at least one GCP")
    srs_wkt = _srs_wkt(crs_wkt)
    src = _open_raster(src_path)
    with atomic_path(out) as tmp, gdal_errors() as errs:
        vrt = gdal.Translate(tmp, src, format="VRT", GCPs=gcp_objs, outputSRS=srs_wkt)
        if vrt is None:
            fail("Writing the GCP VRT", errs)
        vrt.FlushCache()
        vrt = None
    return out


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def compose_geotransform(affine: np.ndarray, gt: Sequence[float]) -> tuple[float, ...]:
    """Geotransform of ``pixel → gt → affine``; ``affine`` is 2×3 ``[[c, a, b], [f, d, e]]``
    meaning x' = c + a·x + b·y, y' = f + d·x + e·y (``PolynomialTransform.affine_matrix``)."""
    m = np.asarray(affine, dtype=float)
    off, lin = m[:, 0], m[:, 1:]
    g = np.array([[gt[1], gt[2]], [gt[4], gt[5]]])
    lin2 = lin @ g
    o = off + lin @ np.array([gt[0], gt[3]])
    return (float(o[0]), float(lin2[0, 0]), float(lin2[0, 1]), float(o[1]), float(lin2[1, 0]), float(lin2[1, 1]))


def transform_gcps(
    transform: Transform, gt: Sequence[float], width: int, height: int, grid_size: int = 21,
    *, src_wkt: Optional[str] = None, target_wkt: Optional[str] = None,
) -> list[GCPTuple]:
    """A ``grid_size``² grid of GCPs (edges included) mapping raster pixels to corrected map xy.

    Pixel (col, row) → raster geotransform → [reprojected from ``src_wkt`` to ``target_wkt`` if
    given] → ``transform`` → true xy.
    """
    n = max(int(grid_size), 2)
    cols, rows = np.meshgrid(np.linspace(0.0, width, n), np.linspace(0.0, height, n))
    cols, rows = cols.ravel(), rows.ravel()
    x = gt[0] + cols * gt[1] + rows * gt[2]
    y = gt[3] + cols * gt[4] + rows * gt[5]
    xy = np.column_stack([x, y])
    if src_wkt and target_wkt:
        xy = _reproject(xy, src_wkt, target_wkt)
    ok = np.all(np.isfinite(xy), axis=1)
    true = np.full_like(xy, np.nan)
    if ok.any():
        true[ok] = transform.apply(xy[ok])
    ok &= np.all(np.isfinite(true), axis=1)
    return [(float(c), float(r), float(tx), float(ty)) for c, r, (tx, ty) in zip(cols[ok], rows[ok], true[ok])]


def _copy_with_geotransform(src, out: Path, gt: Sequence[float], crs_wkt: Optional[str],
                            band_subset, progress, cancel, creation_options) -> None:
    """Copy pixels verbatim into a GeoTIFF with a replaced geotransform (via an in-memory VRT)."""
    raise_if_cancelled(cancel)
    vrt_path = vsimem_path(".vrt")
    with gdal_errors() as errs:
        vrt = gdal.Translate(vrt_path, src, format="VRT", bandList=list(band_subset) if band_subset else None)
        if vrt is None:
            fail("Preparing the copy", errs, cancel)
        try:
            vrt.SetGeoTransform(tuple(float(v) for v in gt))
            if crs_wkt:
                vrt.SetProjection(crs_wkt)
            with atomic_path(out) as tmp:
                _finish(gdal.Translate(tmp, vrt, format="GTiff", creationOptions=list(creation_options),
                                       callback=make_gdal_callback(progress, cancel, "Writing corrected raster")),
                        "Writing the corrected raster", errs, cancel)
        finally:
            vrt = None
            gdal.Unlink(vrt_path)


def _finish(res, what: str, errs, cancel) -> None:
    """Close a GDAL output written inside ``atomic_path``: a failure or a cancel raises, so the
    temporary file is removed instead of being renamed into place. Pass the dataset straight from
    the GDAL call (hold no other reference) so it is really closed before the rename."""
    if res is None:
        fail(what, errs, cancel)
    res.FlushCache()
    res = None
    raise_if_cancelled(cancel)


def _open_raster(path: PathLike):
    p = str(path)
    if not p.startswith("/vsi") and not os.path.exists(p):
        raise InputError(f"Raster not found: {p}")
    with gdal_errors() as errs:
        ds = gdal.Open(os.path.abspath(p) if not p.startswith("/vsi") else p, gdal.GA_ReadOnly)
    if ds is None:
        raise InputError(f"Cannot open {p} as a raster: {errs.text()}")
    return ds


def _geotransform(ds, path: PathLike) -> tuple[float, ...]:
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is None:
        raise InputError(f"{Path(str(path)).name} has no geotransform, so its georeference cannot be shifted; "
                         "use warp_with_gcps instead")
    return tuple(float(v) for v in gt)


def _gcp_objects(gcps: Sequence[GCPTuple]) -> list:
    out = []
    for i, g in enumerate(gcps):
        try:
            col, row, x, y = (float(v) for v in g)
        except (TypeError, ValueError) as exc:
            raise InputError(f"GCP {i} must be (pixel_col, line_row, map_x, map_y), got {g!r}") from exc
        if not all(map(math.isfinite, (col, row, x, y))):
            raise InputError(f"GCP {i} has non-finite values: {g!r}")
        out.append(gdal.GCP(x, y, 0.0, col, row))
    return out


def _check_method(method: str) -> str:
    m = str(method).lower()
    if m not in WARP_METHODS:
        raise InputError(f"Unknown warp method {method!r}; choose one of {', '.join(WARP_METHODS)}")
    return m


def _check_resampling(resampling: str) -> str:
    r = str(resampling).lower()
    if r not in RESAMPLING:
        raise InputError(f"Unknown resampling {resampling!r}; choose one of {', '.join(RESAMPLING)}")
    return r


def _resolution(dst_res) -> tuple[Optional[float], Optional[float]]:
    if dst_res is None:
        return None, None
    if isinstance(dst_res, (int, float)):
        xres = yres = float(dst_res)
    else:
        xres, yres = (float(v) for v in dst_res)
    if not (xres > 0 and yres > 0 and math.isfinite(xres) and math.isfinite(yres)):
        raise InputError(f"output resolution must be positive, got {dst_res!r}")
    return xres, yres


def _srs_wkt(crs: str) -> str:
    if not crs:
        raise InputError("An output CRS (WKT) is required")
    srs = osr.SpatialReference()
    with gdal_errors():
        ok = srs.SetFromUserInput(crs)
    if ok != 0:
        raise InputError("The output CRS is not understood by GDAL/OSR")
    return srs.ExportToWkt()


def _same_crs(a: str, b: str) -> bool:
    sa, sb = osr.SpatialReference(), osr.SpatialReference()
    with gdal_errors():
        if sa.SetFromUserInput(a) != 0 or sb.SetFromUserInput(b) != 0:
            return False
        return bool(sa.IsSame(sb))


def _reproject(xy: np.ndarray, src_wkt: str, dst_wkt: str) -> np.ndarray:
    s, d = osr.SpatialReference(), osr.SpatialReference()
    s.SetFromUserInput(src_wkt)
    d.SetFromUserInput(dst_wkt)
    for r in (s, d):
        r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(s, d)
    with gdal_errors():
        pts = ct.TransformPoints([(float(a), float(b)) for a, b in xy])
    return np.array([[p[0], p[1]] for p in pts], dtype=float)
