"""Raster input: open, validate, find the overlap, and bring both layers onto one grid.

Opening (``open_pair``) reads no pixels: it validates both files and fixes the common grid. Pixels
are then read onto that grid, or onto any window or coarse version of it (``read_pair``), with
windowed reads (GDAL's warper reads just the source blocks it needs), so the caller decides how much
is in memory: ``load_pair`` reads the whole area of interest, the pipeline reads one tile at a time.
The SAR grid is the reference because the SAR georeference is the trusted one: the optical layer is
resampled onto it using its current (possibly wrong) georeference, which is exactly what lets a
template match measure the error.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import rasterio
import rasterio._err
import rasterio.errors
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from .errors import InputError, NoOverlapError

Bounds = tuple[float, float, float, float]


@dataclass
class RasterInfo:
    """What we need to know about an input raster without reading its pixels."""

    path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: Optional[float]

    @property
    def bounds(self) -> Bounds:
        xs, ys = [], []
        for c, r in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            x, y = self.transform * (c, r)
            xs.append(x)
            ys.append(y)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def res(self) -> float:
        """Mean pixel size in CRS units (handles rotated geotransforms)."""
        t = self.transform
        return float(math.sqrt(abs(t.a * t.e - t.b * t.d)))

    @property
    def north_up(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    @property
    def is_complex(self) -> bool:
        return any(d.startswith("complex") for d in self.dtypes)


@dataclass
class Grid:
    """A north-up pixel grid: the common frame both images are matched on."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> float:
        return float(self.transform.a)

    def xy(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coords (corner convention) → map coords."""
        t = self.transform
        cols = np.asarray(cols, float)
        rows = np.asarray(rows, float)
        return t.c + cols * t.a + rows * t.b, t.f + cols * t.d + rows * t.e

    def window(self, row0: int, col0: int, height: int, width: int) -> "Grid":
        """The sub-grid of ``height`` x ``width`` pixels starting at pixel (row0, col0): same pixels,
        so a tile read onto it holds exactly the values a whole-grid read would have there."""
        return Grid(crs=self.crs, transform=self.transform * Affine.translation(col0, row0),
                    width=int(width), height=int(height))

    def decimated(self, factor: int) -> "Grid":
        """A coarse grid whose pixel i covers fine pixels [i*factor, (i+1)*factor). With an odd
        ``factor`` its pixel centres are fine pixel centres (i*factor + factor // 2), so a
        point-sampled read of it (``read_pair(..., point_sample=True)``) picks exact grid pixels."""
        f = int(factor)
        return Grid(crs=self.crs, transform=self.transform * Affine.scale(f),
                    width=max(self.width // f, 1), height=max(self.height // f, 1))


@dataclass
class GridPair:
    """Both images on the common grid, with validity masks and the source descriptions."""

    sar: Optional[np.ndarray]
    """(H, W) float32, SAR values as stored (linear, dB or DN); invalid pixels are NaN.
    ``match_pair`` releases it (None) once the preprocessed image exists."""
    optical: Optional[np.ndarray]
    """(B, H, W) float32, optical bands resampled with the optical's current georeference
    (released like ``sar``)."""
    sar_valid: np.ndarray
    opt_valid: np.ndarray
    grid: Grid
    sar_info: RasterInfo
    opt_info: RasterInfo
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        return self.sar_valid & self.opt_valid


def open_raster(path: str, role: str) -> RasterInfo:
    """Open and validate one input; ``role`` ('SAR'/'optical') makes messages specific.

    GDAL paths (``/vsicurl/...``, ``/vsis3/...``, ``/vsizip/...``, ``NETCDF:...``) are left to GDAL."""
    gdal_path = is_gdal_path(path)
    if not path or (not gdal_path and not os.path.exists(path)):
        raise InputError(f"The {role} raster '{path}' does not exist.")
    if os.path.isdir(path) and not path.lower().endswith((".safe", ".zarr")):
        raise InputError(f"The {role} raster '{path}' is a folder, not a raster file.")
    try:
        with rasterio.open(path) as ds:
            info = RasterInfo(
                path=str(path), crs=ds.crs, transform=ds.transform, width=ds.width,
                height=ds.height, count=ds.count, dtypes=tuple(ds.dtypes), nodata=ds.nodata,
            )
            gcps = ds.gcps[0] if ds.crs is None and ds.transform == Affine.identity() else []
            # Touch one block: catches truncated files early instead of mid-run.
            ds.read(1, window=Window(0, 0, min(64, ds.width), min(64, ds.height)))
    except rasterio.errors.RasterioIOError as exc:
        if gdal_path:
            raise InputError(f"The {role} raster '{path}' does not exist or GDAL cannot open it ({exc}).") from exc
        raise InputError(f"The {role} file '{path}' is not a readable raster ({exc}).") from exc
    except Exception as exc:  # GDAL raises CPLE_* subclasses on truncated data
        raise InputError(f"The {role} raster '{path}' could not be read; the file may be truncated or corrupt ({exc}).") from exc
    if gcps:
        raise InputError(
            f"The {role} raster '{path}' is georeferenced by ground control points (GCPs) only ({len(gcps)} "
            "GCPs, no geotransform), which the matcher cannot use; warp it onto a map grid first, e.g. "
            f"gdalwarp -r bilinear -tps '{path}' warped.tif (QGIS: Raster ▸ Projections ▸ Warp)."
        )
    if info.crs is None:
        raise InputError(
            f"The {role} raster '{path}' has no coordinate reference system; assign one "
            "(Raster ▸ Projections ▸ Assign Projection, or gdal_edit.py -a_srs) and try again."
        )
    if info.transform == Affine.identity():
        raise InputError(f"The {role} raster '{path}' has no geotransform (it is not georeferenced).")
    return info


def is_gdal_path(path) -> bool:
    """A GDAL virtual file system path (``/vsi...``) or a driver-prefixed name (``NETCDF:"f.nc":var``):
    GDAL decides whether it exists, not ``os.path``."""
    s = str(path or "")
    return s.startswith("/vsi") or (re.match(r"^[A-Za-z0-9_]{2,}:", s) is not None and not os.path.exists(s))


def same_file(a: str, b: str) -> bool:
    """Whether two input paths are one file: the same real path, or one file under two names (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # a GDAL path, or a file that vanished
        return False


def _lonlat(info: RasterInfo) -> Optional[Bounds]:
    try:
        b = transform_bounds(info.crs, "EPSG:4326", *info.bounds, densify_pts=21)
    except Exception:  # a CRS without a path to lon/lat
        return None
    return b if all(math.isfinite(v) for v in b) else None


def working_crs(sar: RasterInfo) -> CRS:
    """The CRS matching happens in: the SAR's, unless it is geographic (then its UTM zone)."""
    if not sar.crs.is_geographic:
        return sar.crs
    x0, y0, x1, y1 = transform_bounds(sar.crs, "EPSG:4326", *sar.bounds)
    lon, lat = (x0 + x1) / 2, (y0 + y1) / 2
    zone = int((lon + 180) // 6) + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _intersect(a: Bounds, b: Bounds) -> Optional[Bounds]:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def common_grid(
    sar: RasterInfo,
    opt: RasterInfo,
    aoi: Optional[Bounds] = None,
    aoi_crs: Optional[str | CRS] = None,
    resolution: Optional[float] = None,
    min_size: int = 0,
) -> Grid:
    """The SAR-aligned grid over SAR ∩ optical ∩ AOI, at the SAR (or a chosen) resolution."""
    crs = working_crs(sar)
    sar_b = transform_bounds(sar.crs, crs, *sar.bounds) if sar.crs != crs else sar.bounds
    opt_b = transform_bounds(opt.crs, crs, *opt.bounds, densify_pts=21)
    area = _intersect(sar_b, opt_b)
    if area is None:
        sar_ll, opt_ll = _lonlat(sar), _lonlat(opt)
        if sar_ll is not None and opt_ll is not None:  # each in lon/lat: meaningful wherever the rasters are
            where = f"SAR extent lon/lat {_fmt(sar_ll)}, optical extent lon/lat {_fmt(opt_ll)}"
        else:
            where = f"SAR extent {_fmt(sar_b)}, optical extent {_fmt(opt_b)} in {crs.to_string()}"
        raise NoOverlapError(f"The SAR raster and the optical raster do not overlap ({where}).")
    if aoi is not None:
        aoi = _check_aoi(aoi)
        try:
            src_crs = CRS.from_user_input(aoi_crs) if aoi_crs is not None else sar.crs
        except rasterio.errors.CRSError as exc:
            raise InputError(f"The AOI CRS '{aoi_crs}' is not a coordinate reference system GDAL knows "
                             "(use e.g. 'EPSG:4326' or a WKT string).") from exc
        aoi_b = _aoi_bounds(aoi, src_crs, crs)
        area2 = _intersect(area, aoi_b)
        if area2 is None:
            raise NoOverlapError(
                f"The area of interest {_fmt(aoi_b)} lies outside the overlap of the two rasters "
                f"{_fmt(area)} ({crs.to_string()})."
            )
        area = area2

    native = sar.north_up and sar.crs == crs
    res = float(resolution) if resolution else (sar.res if sar.crs == crs else _res_in(sar, crs))
    if native and not resolution:
        # Snap to the SAR's own pixels so the SAR is read without resampling.
        win = from_bounds(*area, transform=sar.transform).round_offsets(op="ceil").round_lengths(op="floor")
        col0, row0 = max(int(win.col_off), 0), max(int(win.row_off), 0)
        w = min(int(win.width), sar.width - col0)
        h = min(int(win.height), sar.height - row0)
        transform = sar.transform * Affine.translation(col0, row0)
    else:
        transform = Affine(res, 0, area[0], 0, -res, area[3])
        w = int(math.floor((area[2] - area[0]) / res))
        h = int(math.floor((area[3] - area[1]) / res))
    if w <= 0 or h <= 0 or min(w, h) < min_size:
        raise NoOverlapError(
            f"The overlap of the SAR and optical rasters (and the AOI) is only {max(w, 0)}×{max(h, 0)} "
            f"pixels, smaller than one search window ({min_size} px). Choose a larger area or a smaller "
            "search window."
        )
    return Grid(crs=crs, transform=transform, width=w, height=h)


def _check_aoi(aoi) -> Bounds:
    try:
        vals = tuple(float(v) for v in aoi)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals) or vals[0] >= vals[2] or vals[1] >= vals[3]:
        raise InputError(f"The area of interest {tuple(aoi) if vals else aoi!r} is not 'xmin, ymin, xmax, ymax' "
                         "with finite values, xmin < xmax and ymin < ymax.")
    return vals  # type: ignore[return-value]


def _aoi_bounds(aoi: Bounds, src_crs: CRS, crs: CRS) -> Bounds:
    """The AOI in ``crs``; InputError when its coordinates make no sense in ``src_crs``."""
    name = src_crs.to_string() or "the AOI CRS"
    if src_crs.is_geographic and not (-180.0 <= aoi[0] and aoi[2] <= 360.0 and -90.0 <= aoi[1] and aoi[3] <= 90.0):
        out = None
    else:
        try:
            out = transform_bounds(src_crs, crs, *aoi, densify_pts=21)
        except Exception:  # PROJ refuses the coordinates
            out = None
    if out is None or not all(math.isfinite(v) for v in out):
        raise InputError(
            f"The area of interest {_fmt(aoi)} is not valid in {name} (it cannot be transformed to "
            f"{crs.to_string()}): are the coordinates in the CRS --aoi-crs names? EPSG:4326 is "
            "longitude,latitude in degrees; without --aoi-crs the AOI is in the SAR raster's CRS."
        )
    return out


def _res_in(info: RasterInfo, crs: CRS) -> float:
    b = transform_bounds(info.crs, crs, *info.bounds)
    return float(math.sqrt((b[2] - b[0]) * (b[3] - b[1]) / (info.width * info.height)))


def _fmt(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _read_onto(info: RasterInfo, bands: Sequence[int], grid: Grid, resampling: Resampling,
               point_sample: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of ``info`` onto ``grid``; GDAL read errors become a specific InputError.

    ``point_sample``: when ``grid`` is coarser than the source, evaluate the resampling kernel at
    each pixel centre at source scale (GDAL warp options XSCALE = YSCALE = 1) instead of widening
    it to the coarse pixel (GDAL's default, which averages). Statistics of a point-sampled coarse
    read are those of the full-resolution image (speckle is not smoothed away)."""
    try:
        rows = _strip_rows(info, grid)
        if rows >= grid.height:
            return _read_onto_unchecked(info, bands, grid, resampling, point_sample)
        out = np.empty((len(bands), grid.height, grid.width), dtype=np.float32)
        valid = np.empty((grid.height, grid.width), dtype=bool)
        for r in range(0, grid.height, rows):
            n = min(rows, grid.height - r)
            out[:, r:r + n], valid[r:r + n] = _read_onto_unchecked(info, bands, grid.window(r, 0, n, grid.width),
                                                                   resampling, point_sample)
        return out, valid
    except (rasterio.errors.RasterioError, rasterio.errors.RasterioIOError, rasterio._err.CPLE_BaseError) as exc:
        raise InputError(
            f"Reading '{info.path}' failed; the file may be truncated or corrupt ({exc})."
        ) from exc


STRIP_SOURCE_ROWS = 1024
"""A read onto a grid much coarser than the source goes in strips of about this many source rows,
each with the file opened afresh: GDAL keeps every block it decoded in its block cache (up to 5 % of
the RAM) until the dataset is closed, so one whole-file decimated read would hold as much of the
file as the cache allows."""


def _strip_rows(info: RasterInfo, grid: Grid) -> int:
    """Rows of ``grid`` per read so that each read spans about STRIP_SOURCE_ROWS source rows."""
    src_res = info.res if info.crs == grid.crs else _res_in(info, grid.crs)
    ratio = grid.res / src_res if src_res > 0 else 1.0
    if ratio <= 2.0:
        return grid.height
    return max(1, int(STRIP_SOURCE_ROWS / ratio))


def _read_onto_unchecked(info: RasterInfo, bands: Sequence[int], grid: Grid,
                         resampling: Resampling, point_sample: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A window read when the raster is aligned with ``grid``, GDAL warping otherwise."""
    out = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
    valid = np.zeros((grid.height, grid.width), dtype=bool)
    with rasterio.open(info.path) as ds:
        aligned = (
            ds.crs == grid.crs and info.north_up
            and abs(ds.transform.a - grid.transform.a) < 1e-9 * abs(grid.transform.a)
            and abs(ds.transform.e - grid.transform.e) < 1e-9 * abs(grid.transform.a)
        )
        if aligned:
            col = (grid.transform.c - ds.transform.c) / ds.transform.a
            row = (grid.transform.f - ds.transform.f) / ds.transform.e
            aligned = abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
        if aligned:
            win = Window(int(round(col)), int(round(row)), grid.width, grid.height)
            data = ds.read(list(bands), window=win, boundless=True, fill_value=0, masked=True)
            out[:] = np.ma.filled(data.astype(np.float32), np.nan)
            valid = ~np.ma.getmaskarray(data).any(axis=0)
            valid &= np.all(np.isfinite(out), axis=0)
        else:
            src_nodata = ds.nodata
            extra = {"XSCALE": 1, "YSCALE": 1} if point_sample else {}
            for i, b in enumerate(bands):
                reproject(
                    source=rasterio.band(ds, b), destination=out[i],
                    src_nodata=src_nodata, dst_nodata=np.nan,
                    dst_transform=grid.transform, dst_crs=grid.crs, resampling=resampling,
                    init_dest_nodata=True, **extra,
                )
            valid = np.all(np.isfinite(out), axis=0)
    if info.nodata is not None and not (isinstance(info.nodata, float) and math.isnan(info.nodata)):
        valid &= ~np.any(out == info.nodata, axis=0)
    out[:, ~valid] = np.nan
    return out, valid


@dataclass
class PairSource:
    """Both inputs opened and validated, the common grid fixed, no pixels read.

    Everything a later read needs (bands, the optical resampling) is decided here once, so every
    window or coarse read of the pair is consistent with every other one."""

    sar_info: RasterInfo
    opt_info: RasterInfo
    grid: Grid
    sar_band: int = 1
    opt_bands: tuple[int, ...] = (1,)
    opt_resampling: Resampling = Resampling.bilinear
    warnings: list[str] = field(default_factory=list)


def open_pair(
    sar_path: str,
    opt_path: str,
    aoi: Optional[Bounds] = None,
    aoi_crs: Optional[str] = None,
    resolution: Optional[float] = None,
    sar_band: int = 1,
    opt_bands: Optional[Sequence[int]] = None,
    min_size: int = 256,
) -> PairSource:
    """Validate both rasters and fix the common (SAR-aligned) grid over their overlap ∩ AOI."""
    sar = open_raster(sar_path, "SAR")
    opt = open_raster(opt_path, "optical")
    if same_file(sar_path, opt_path):
        raise InputError("The SAR and the optical inputs are the same file.")
    if sar.is_complex:
        raise InputError(
            f"The SAR raster '{sar_path}' holds complex values (SLC): complex SAR is not supported; "
            "detect it first (intensity or amplitude, e.g. SNAP 'Calibrate' + 'Multilook' or "
            "gdal_translate with the 'abs' pixel function)."
        )
    if opt.is_complex:
        raise InputError(f"The optical raster '{opt_path}' holds complex values, which are not supported; "
                         "convert it to real-valued bands first.")
    if not 1 <= sar_band <= sar.count:
        raise InputError(f"SAR band {sar_band} does not exist (the SAR raster has {sar.count} band(s)).")
    if opt_bands is None:
        opt_bands = list(range(1, min(opt.count, 3) + 1))
    for b in opt_bands:
        if not 1 <= b <= opt.count:
            raise InputError(f"Optical band {b} does not exist (the optical raster has {opt.count} band(s)).")

    notes: list[str] = []
    grid = common_grid(sar, opt, aoi, aoi_crs, resolution, min_size=min_size)
    ratio = _res_in(opt, grid.crs) / grid.res
    if ratio > 4 or ratio < 0.25:
        notes.append(
            f"The optical pixel size is {ratio:.1f}× the matching grid's ({grid.res:.3g} "
            f"{grid.crs.linear_units or 'units'}); expect weaker matches. Consider --resolution."
        )
    for n in notes:
        warnings.warn(n)
    return PairSource(sar_info=sar, opt_info=opt, grid=grid, sar_band=int(sar_band),
                      opt_bands=tuple(int(b) for b in opt_bands),
                      opt_resampling=Resampling.average if ratio < 0.5 else Resampling.bilinear,
                      warnings=notes)


def read_pair(src: PairSource, grid: Optional[Grid] = None, point_sample: bool = False) -> GridPair:
    """Read both rasters onto ``grid`` (default: the whole common grid; a ``Grid.window`` for a tile,
    a ``Grid.decimated`` one for statistics with ``point_sample=True``)."""
    grid = src.grid if grid is None else grid
    opt_resampling = src.opt_resampling
    if point_sample and opt_resampling == Resampling.average:
        # Averaging onto a coarse grid would average over the coarse pixel, far more than the
        # matching grid does; bilinear point samples of the (finer) optical are the closer proxy.
        opt_resampling = Resampling.bilinear
    sar_arr, sar_valid = _read_onto(src.sar_info, [src.sar_band], grid, Resampling.bilinear, point_sample)
    opt_arr, opt_valid = _read_onto(src.opt_info, list(src.opt_bands), grid, opt_resampling, point_sample)
    return GridPair(
        sar=sar_arr[0], optical=opt_arr, sar_valid=sar_valid, opt_valid=opt_valid, grid=grid,
        sar_info=src.sar_info, opt_info=src.opt_info, warnings=list(src.warnings),
    )


def load_pair(
    sar_path: str,
    opt_path: str,
    aoi: Optional[Bounds] = None,
    aoi_crs: Optional[str] = None,
    resolution: Optional[float] = None,
    sar_band: int = 1,
    opt_bands: Optional[Sequence[int]] = None,
    min_size: int = 256,
) -> GridPair:
    """Read the AOI of both rasters onto the common (SAR-aligned) grid, all at once.

    Memory grows with the AOI (about 18 bytes per grid pixel for a 3-band optical); the matching
    pipeline reads tile by tile instead (``open_pair`` + ``read_pair`` on windows)."""
    return read_pair(open_pair(sar_path, opt_path, aoi=aoi, aoi_crs=aoi_crs, resolution=resolution,
                               sar_band=sar_band, opt_bands=opt_bands, min_size=min_size))
