"""QGIS Georeferencer ``.points`` files: write our tie points as GCPs, and read them back.

What QGIS does (read from the QGIS sources, src/app/georeferencer/):

* ``QgsGCPList::saveGcps`` writes ``#CRS: <WKT of the target CRS>`` on line 1, then the header
  ``mapX,mapY,sourceX,sourceY,enable,dX,dY,residual``, then one comma-separated row per GCP with
  ``mapX,mapY`` = the destination point in that CRS, ``sourceX,sourceY`` = the GCP's
  *source-layer coordinate*, ``enable`` = 1/0 and the residual (dX, dY, length), which QGIS
  recomputes itself after loading. This is the rework of QGIS PR #47141 (Feb 2022, "ALWAYS use
  source coordinates when saving/loading gcp points files"), merged in master and, per the PR
  discussion, backported to the 3.22 LTR because 3.22 mis-handled georeferenced rasters
  (issue #46901: errors "the size of the UTM coordinates themselves"). Before
  it, ``QgsGeoreferencerMainWindow::saveGCPs`` wrote ``mapX,mapY,pixelX,pixelY,...`` with *pixel*
  coordinates ``(col, -row)`` (via ``QgsRasterChangeCoords::toColumnLine``, whose line is negative
  because the geotransform's y pixel size is) for every raster.
* ``QgsGCPList::loadGcps`` / ``loadGCPs``: if line 1 contains ``#CRS: `` the rest of it is the
  destination CRS and the next line is skipped as the header; otherwise line 1 *is* the header and
  the project CRS is used. Rows are split on ``,`` (on TAB for the pre-3.0 format); fewer than 4
  fields is "Malformed content at line N"; field 5, when present, is the enable flag.
* What "source coordinate" means: it is a coordinate in the source layer as QGIS displays it.
  ``QgsRasterChangeCoords`` (georeferencer) treats a raster as georeferenced when GDAL returns a
  geotransform; then the source coordinates are *map coordinates of the source raster in its own
  CRS*, converted to pixels with its geotransform only when fitting. For a raster without
  georeference QGIS's GDAL provider substitutes the geotransform (0, 1, 0, 0, 0, -1)
  ("a pixel size of (1,-1)", qgsgdalprovider.cpp), so the source coordinates are
  ``(col, -row)`` with the pixel-corner origin: pixel centre [r, c] is (c + 0.5, -(r + 0.5)).

So for our optical raster, which *is* georeferenced (just wrongly), ``sourceX/sourceY`` are the
optical's current map coordinates *in the optical raster's own CRS* (its geotransform applied to
``TiePoint.opt_col/opt_row``; ``TiePoint.opt_x/opt_y`` are in the matching grid's CRS and equal
them only when the optical is stored in that CRS) and ``mapX/mapY`` the true SAR positions in the
CRS the ``#CRS:`` line names (the tie set's, i.e. the SAR working CRS); for a non-georeferenced
copy, or for QGIS releases older than that rework (3.20 and the first 3.22 point releases), they
are ``(opt_col, -opt_row)`` (``source_georeferenced=False``).

Every front end (the CLI, batch, Processing and the dock's run through ``write_results``, the
dock's *Export GCPs*) writes the file with ``write_optical_points``, so the files agree whatever the
two rasters' CRSs.

Flagged tie points are written with ``enable=0``: QGIS shows them in the GCP table (the analyst can
see why the run rejected them and re-enable one) but excludes them from its transform.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from ..types import TieSet
from .atomic import PathLike, atomic_path, check_output_path

HEADER = "mapX,mapY,sourceX,sourceY,enable,dX,dY,residual"

GeoTransform = Sequence[float]
OptTransform = Union[GeoTransform, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]


@dataclass
class PointsFile:
    """Contents of a ``.points`` file."""

    crs_wkt: Optional[str]
    """Destination CRS from the ``#CRS:`` line, or None when the file has none (QGIS then uses the project CRS)."""
    map_xy: np.ndarray
    """(N, 2) destination coordinates (mapX, mapY)."""
    source_xy: np.ndarray
    """(N, 2) source-layer coordinates (sourceX/pixelX, sourceY/pixelY)."""
    enabled: np.ndarray
    """(N,) bool."""
    residual: np.ndarray
    """(N,) residual length as stored (NaN where absent)."""
    dxdy: np.ndarray
    """(N, 2) stored residual components (NaN where absent)."""

    def source_pixels(self, geotransform: Optional[GeoTransform] = None) -> np.ndarray:
        """Source coordinates as (col, row) pixels: via ``geotransform`` if the source raster is
        georeferenced, else QGIS's (col, -row) convention is undone."""
        if geotransform is None:
            return np.column_stack([self.source_xy[:, 0], -self.source_xy[:, 1]])
        gt = [float(v) for v in geotransform]
        m = np.array([[gt[1], gt[2]], [gt[4], gt[5]]])
        return np.linalg.solve(m, (self.source_xy - [gt[0], gt[3]]).T).T

    def __len__(self) -> int:
        return len(self.map_xy)


def optical_geotransform(optical: Union[PathLike, GeoTransform]) -> tuple[float, ...]:
    """The GDAL geotransform of the optical raster, as QGIS sees it: from its path (read with GDAL),
    a rasterio ``Affine`` or a 6-value GDAL geotransform. ``InputError`` when it has none."""
    to_gdal = getattr(optical, "to_gdal", None)
    if callable(to_gdal):                       # rasterio / affine Affine
        return tuple(float(v) for v in to_gdal())
    if not isinstance(optical, (str, os.PathLike)):
        gt = tuple(float(v) for v in optical)
        if len(gt) != 6:
            raise InputError(f"A geotransform has 6 values, got {len(gt)}")
        return gt
    from osgeo import gdal

    from ._gdal import gdal_errors

    with gdal_errors():
        ds = gdal.Open(str(optical))
    if ds is None:
        raise InputError(f"Cannot open the optical raster '{optical}'.")
    gt = ds.GetGeoTransform(can_return_null=True)
    ds = None
    if gt is None:
        raise InputError(f"The optical raster '{optical}' has no geotransform.")
    return tuple(float(v) for v in gt)


def write_optical_points(
    path: PathLike,
    tieset: TieSet,
    optical: Union[PathLike, GeoTransform],
    *,
    include_flagged: bool = True,
) -> int:
    """The ``.points`` file of a run for the QGIS Georeferencer: the one writer every front end uses.

    ``sourceX/sourceY`` are the optical raster's map coordinates in *its own* CRS (``optical``: its
    path, or its geotransform, see ``optical_geotransform``), ``mapX/mapY`` the SAR positions in
    ``tieset.crs_wkt``, the CRS the ``#CRS:`` line names. Returns the number of rows written.
    """
    return write_points(path, tieset, source_georeferenced=True, opt_transform=optical_geotransform(optical),
                        include_flagged=include_flagged)


def write_points(
    path: PathLike,
    tieset: TieSet,
    source_georeferenced: bool = True,
    opt_transform: Optional[OptTransform] = None,
    *,
    include_flagged: bool = True,
) -> int:
    """Write ``tieset`` as a QGIS ``.points`` file (atomically); returns the number of rows written.

    ``mapX/mapY`` are the SAR (true) positions in ``tieset.crs_wkt``. The source coordinates are
    the optical pixel's position as QGIS will see the optical raster:

    * ``source_georeferenced=True``: ``opt_x/opt_y``, unless ``opt_transform`` is given, which maps
      ``(opt_col, opt_row)`` to the optical raster's *own* CRS, either as a GDAL geotransform
      6-tuple or a callable ``(cols, rows) -> (xs, ys)``. ``opt_x/opt_y`` are right only when the
      optical raster is stored in the tie set's CRS (QGIS expects source coordinates in the source
      layer's CRS): a run's file is written with ``write_optical_points``, which always passes it.
    * ``source_georeferenced=False``: ``(opt_col, -opt_row)``, QGIS's convention for rasters
      without georeference.

    Flagged points get ``enable=0`` (or are left out with ``include_flagged=False``). ``dX``/``dY``
    are written as 0 and ``residual`` carries ``TiePoint.residual_px``: QGIS recomputes residuals
    for its own transform on load, so these are informative only. Rows with non-finite
    coordinates cannot be placed in QGIS and are skipped.
    """
    out = check_output_path(path)
    pts = [p for p in tieset.points if include_flagged or p.status == "inlier"]
    cols = np.array([p.opt_col for p in pts], dtype=float)
    rows = np.array([p.opt_row for p in pts], dtype=float)
    if not source_georeferenced:
        sx, sy = cols, -rows
    elif opt_transform is None:
        sx = np.array([p.opt_x for p in pts], dtype=float)
        sy = np.array([p.opt_y for p in pts], dtype=float)
    elif callable(opt_transform):
        sx, sy = (np.asarray(v, dtype=float).reshape(-1) for v in opt_transform(cols, rows))
    else:
        gt = [float(v) for v in opt_transform]
        if len(gt) != 6:
            raise InputError(f"opt_transform must be a 6-value GDAL geotransform, got {len(gt)} values")
        sx = gt[0] + cols * gt[1] + rows * gt[2]
        sy = gt[3] + cols * gt[4] + rows * gt[5]

    lines = []
    crs = " ".join((tieset.crs_wkt or "").split())  # QGIS reads the CRS from one line
    if crs:
        lines.append(f"#CRS: {crs}")
    lines.append(HEADER)
    n = 0
    for p, x, y in zip(pts, sx, sy):
        vals = (p.sar_x, p.sar_y, float(x), float(y))
        if not all(math.isfinite(v) for v in vals):
            continue
        res = p.residual_px if math.isfinite(p.residual_px) else 0.0
        enable = 1 if p.status == "inlier" else 0
        lines.append(",".join(_fmt(v) for v in vals) + f",{enable},0,0,{_fmt(res)}")
        n += 1
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(lines) + "\n")
    return n


def _fmt(v: float) -> str:
    # repr() is the shortest string that round-trips the double exactly.
    r = repr(float(v))
    return "0" if r == "-0.0" else r


_X_NAMES = {"mapx": "map_x", "mapy": "map_y", "sourcex": "src_x", "sourcey": "src_y", "pixelx": "src_x",
            "pixely": "src_y", "enable": "enable", "dx": "dx", "dy": "dy", "residual": "residual"}
_COLUMN_NAMES = {"map_x": "mapX", "map_y": "mapY", "src_x": "sourceX", "src_y": "sourceY"}
"""How the columns are named in the file (and so in error messages)."""
_DEFAULT_COLS = {"map_x": 0, "map_y": 1, "src_x": 2, "src_y": 3, "enable": 4, "dx": 5, "dy": 6, "residual": 7}


def read_points(path: PathLike) -> PointsFile:
    """Parse a ``.points`` file as QGIS does, but tolerant of CRLF, blank lines, ``#`` comments,
    extra columns and a missing header or CRS line.

    A header (first non-comment line whose first field is not a number) is used to locate the
    columns by name, so reordered columns also work. Raises ``InputError`` naming the line for a
    data row with fewer than 4 fields or a non-numeric/non-finite coordinate or enable flag.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"GCP points file not found: {p}") from exc
    except OSError as exc:
        raise InputError(f"Cannot read GCP points file {p}: {exc.strerror or exc}") from exc
    text = raw.decode("utf-8-sig", errors="replace")

    crs: Optional[str] = None
    cols = dict(_DEFAULT_COLS)
    header_seen = False
    map_xy: list[tuple[float, float]] = []
    src_xy: list[tuple[float, float]] = []
    enabled: list[bool] = []
    residual: list[float] = []
    dxdy: list[tuple[float, float]] = []

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip().strip("\r").strip()
        if not line:
            continue
        if line.startswith("#"):
            if lineno == 1 or (not header_seen and not map_xy and crs is None):
                body = line[1:].strip()
                if body[:4].upper() == "CRS:":
                    crs = body[4:].strip() or None
            continue
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split("\t"))]
        if not header_seen and not map_xy and not _is_number(fields[0]):
            header_seen = True
            named = {_X_NAMES[f.lower()]: i for i, f in enumerate(fields) if f.lower() in _X_NAMES}
            if {"map_x", "map_y", "src_x", "src_y"} <= named.keys():
                cols = {k: named.get(k, -1) for k in _DEFAULT_COLS}
            continue
        header_seen = True
        need = max(cols["map_x"], cols["map_y"], cols["src_x"], cols["src_y"]) + 1
        if len(fields) < max(need, 4):
            raise InputError(
                f"{p.name}: malformed line {lineno}: expected at least {max(need, 4)} comma-separated "
                f"values (mapX,mapY,sourceX,sourceY[,enable,...]), got {len(fields)}"
            )
        coords = []
        for key in ("map_x", "map_y", "src_x", "src_y"):
            v = _to_float(fields[cols[key]])
            if v is None or not math.isfinite(v):
                raise InputError(f"{p.name}: malformed line {lineno}: {_COLUMN_NAMES[key]} value "
                                 f"{fields[cols[key]][:40]!r} is not a finite number")
            coords.append(v)
        en = True
        ie = cols["enable"]
        if 0 <= ie < len(fields) and fields[ie] != "":
            en_val = _to_bool(fields[ie])
            if en_val is None:
                raise InputError(f"{p.name}: malformed line {lineno}: enable value {fields[ie][:40]!r} is not 0/1")
            en = en_val
        map_xy.append((coords[0], coords[1]))
        src_xy.append((coords[2], coords[3]))
        enabled.append(en)
        residual.append(_optional(fields, cols["residual"]))
        dxdy.append((_optional(fields, cols["dx"]), _optional(fields, cols["dy"])))

    return PointsFile(
        crs,
        np.array(map_xy, dtype=float).reshape(-1, 2),
        np.array(src_xy, dtype=float).reshape(-1, 2),
        np.array(enabled, dtype=bool),
        np.array(residual, dtype=float),
        np.array(dxdy, dtype=float).reshape(-1, 2),
    )


def _to_float(s: str) -> Optional[float]:
    try:
        return float(s.replace("_", "#"))  # Python accepts "1_0"; QGIS does not
    except ValueError:
        return None


def _is_number(s: str) -> bool:
    return _to_float(s) is not None


def _to_bool(s: str) -> Optional[bool]:
    low = s.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    v = _to_float(s)
    if v is None or not math.isfinite(v):
        return None
    return v != 0


def _optional(fields: list[str], i: int) -> float:
    if i < 0 or i >= len(fields):
        return math.nan
    v = _to_float(fields[i])
    return math.nan if v is None else v
