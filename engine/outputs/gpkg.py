"""Tie points as a GeoPackage: the analyst's review layer in QGIS, and a lossless round trip.

Two layers:

* ``tie_points`` (POINT at the SAR/true position) with every attribute of ``TiePoint`` plus the
  derived displacement (dx_m, dy_m, disp_m, disp_px), so QGIS can style/filter by status, score or
  residual without any plugin code;
* ``displacements`` (LINESTRING from the optical's nominal position to the SAR position), which
  draws the misregistration field as arrows.

Written with OGR (Debian's GDAL, the same library QGIS uses) through ``atomic_path`` so a cancel
or crash never leaves a half-written GeoPackage. NaN attributes are stored as NULL (SQLite has no
NaN) and read back as NaN. The SAR pixel size, which the TieSet needs to convert metres to pixels,
is kept as layer metadata.
"""
from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Optional

from osgeo import ogr, osr

from ..errors import InputError, OutputError
from ..types import TieSet, TiePoint
from ._gdal import gdal_errors
from .atomic import PathLike, atomic_path, check_output_path

_REAL_FIELDS = (
    "opt_col", "opt_row", "opt_x", "opt_y", "sar_col", "sar_row", "sar_x", "sar_y",
    "dx_m", "dy_m", "disp_m", "disp_px", "score", "quality", "goodness", "orn_prob",
    "cov_rr", "cov_rc", "cov_cc",
)
FIELDS = ("id",) + _REAL_FIELDS + ("status", "flag_reason", "residual_px")
"""Attribute names of the ``tie_points`` layer, in order."""

_META_PIXEL_SIZE = "SARMATCHER_PIXEL_SIZE"


def _srs(wkt: str) -> Optional[osr.SpatialReference]:
    if not wkt:
        return None
    srs = osr.SpatialReference()
    with gdal_errors():
        ok = srs.SetFromUserInput(wkt)
    if ok != 0:
        raise InputError("The tie set's CRS (WKT) is not understood by GDAL/OSR.")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _attrs(p: TiePoint, pixel_size: float) -> dict:
    dx, dy = p.dx, p.dy
    disp = math.hypot(dx, dy)
    return {
        "id": int(p.id),
        "opt_col": p.opt_col, "opt_row": p.opt_row, "opt_x": p.opt_x, "opt_y": p.opt_y,
        "sar_col": p.sar_col, "sar_row": p.sar_row, "sar_x": p.sar_x, "sar_y": p.sar_y,
        "dx_m": dx, "dy_m": dy, "disp_m": disp,
        "disp_px": disp / pixel_size if pixel_size and math.isfinite(pixel_size) else math.nan,
        "score": p.score, "quality": p.quality, "goodness": p.goodness, "orn_prob": p.orn_prob,
        "cov_rr": p.cov[0], "cov_rc": p.cov[1], "cov_cc": p.cov[2],
        "status": p.status, "flag_reason": p.flag_reason, "residual_px": p.residual_px,
    }


def _set(feat: ogr.Feature, name: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        feat.SetFieldNull(name)
    else:
        feat.SetField(name, value)


def write_tiepoints_gpkg(path: PathLike, tieset: TieSet, layer: str = "tie_points",
                         lines_layer: str = "displacements") -> Path:
    """Write the tie points (and their displacement lines) to a new GeoPackage at ``path``."""
    out = check_output_path(path)
    srs = _srs(tieset.crs_wkt)
    drv = ogr.GetDriverByName("GPKG")
    if drv is None:  # pragma: no cover - Debian GDAL always has it
        raise OutputError("GDAL was built without the GeoPackage driver.")
    with atomic_path(out) as tmp, gdal_errors() as errs:
        ds = drv.CreateDataSource(tmp)
        if ds is None:
            raise OutputError(f"Cannot create GeoPackage {out}: {errs.text()}")
        try:
            _fill(ds, tieset, srs, layer, lines_layer, errs, out)
        except BaseException as exc:
            # The traceback's frames hold the dataset: drop them so it closes here, inside the error
            # capture, and GDAL does not print its close-time errors (a full disk) on stderr later.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            # Close (flush) before atomic_path renames the file. Layer handles were local to
            # _fill, so nothing keeps the dataset alive (GDAL 3.6 layers do not own it).
            ds = None
    return out


def _fill(ds, tieset: TieSet, srs, layer: str, lines_layer: str, errs, out: Path) -> None:
    pts = ds.CreateLayer(layer, srs, ogr.wkbPoint, ["FID=fid", "GEOMETRY_NAME=geom"])
    lns = ds.CreateLayer(lines_layer, srs, ogr.wkbLineString, ["FID=fid", "GEOMETRY_NAME=geom"])
    if pts is None or lns is None:
        raise OutputError(f"Cannot create layers in {out}: {errs.text()}")
    pts.CreateField(ogr.FieldDefn("id", ogr.OFTInteger64))
    for name in _REAL_FIELDS:
        pts.CreateField(ogr.FieldDefn(name, ogr.OFTReal))
    pts.CreateField(ogr.FieldDefn("status", ogr.OFTString))
    pts.CreateField(ogr.FieldDefn("flag_reason", ogr.OFTString))
    pts.CreateField(ogr.FieldDefn("residual_px", ogr.OFTReal))
    for name, kind in (("id", ogr.OFTInteger64), ("status", ogr.OFTString),
                       ("disp_m", ogr.OFTReal), ("residual_px", ogr.OFTReal)):
        lns.CreateField(ogr.FieldDefn(name, kind))
    pts.SetMetadataItem(_META_PIXEL_SIZE, repr(float(tieset.pixel_size)))

    ds.StartTransaction()  # one transaction: orders of magnitude faster than per-feature commits
    pdefn, ldefn = pts.GetLayerDefn(), lns.GetLayerDefn()
    for p in tieset.points:
        a = _attrs(p, tieset.pixel_size)
        f = ogr.Feature(pdefn)
        for name in FIELDS:
            _set(f, name, a[name])
        if math.isfinite(p.sar_x) and math.isfinite(p.sar_y):
            g = ogr.Geometry(ogr.wkbPoint)
            g.AddPoint_2D(p.sar_x, p.sar_y)
            f.SetGeometry(g)
        if pts.CreateFeature(f) != 0:
            raise OutputError(f"Cannot write tie point {p.id} to {out}: {errs.text()}")
        if all(map(math.isfinite, (p.opt_x, p.opt_y, p.sar_x, p.sar_y))):
            lf = ogr.Feature(ldefn)
            for name in ("id", "status", "disp_m", "residual_px"):
                _set(lf, name, a[name])
            g = ogr.Geometry(ogr.wkbLineString)
            g.AddPoint_2D(p.opt_x, p.opt_y)
            g.AddPoint_2D(p.sar_x, p.sar_y)
            lf.SetGeometry(g)
            if lns.CreateFeature(lf) != 0:
                raise OutputError(f"Cannot write displacement {p.id} to {out}: {errs.text()}")
    if ds.CommitTransaction() != 0:
        raise OutputError(f"Cannot commit {out}: {errs.text()}")


def read_tiepoints_gpkg(path: PathLike, layer: str = "tie_points") -> TieSet:
    """Read a GeoPackage written by ``write_tiepoints_gpkg`` back into a ``TieSet``.

    Attributes are authoritative (the geometry is derived from sar_x/sar_y). The CRS comes back as
    OSR's WKT export, equivalent to but not necessarily textually identical with the original.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"GeoPackage not found: {p}")
    with gdal_errors() as errs:
        ds = ogr.Open(str(p), 0)
        if ds is None:
            raise InputError(f"Cannot open {p} as a GeoPackage: {errs.text()}")
        lyr = ds.GetLayerByName(layer)
        if lyr is None:
            raise InputError(f"{p.name} has no layer named {layer!r}")
        defn = lyr.GetLayerDefn()
        names = {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
        missing = [n for n in FIELDS if n not in names]
        if missing:
            raise InputError(f"Layer {layer!r} of {p.name} lacks the fields {', '.join(missing)}")
        srs = lyr.GetSpatialRef()
        crs = srs.ExportToWkt() if srs is not None else ""
        try:
            pixel_size = float(lyr.GetMetadataItem(_META_PIXEL_SIZE) or 1.0)
        except ValueError:
            pixel_size = 1.0

        def real(f: ogr.Feature, name: str) -> float:
            return math.nan if f.IsFieldNull(name) else float(f.GetFieldAsDouble(name))

        points = []
        lyr.ResetReading()
        for f in lyr:
            points.append(TiePoint(
                id=int(f.GetFieldAsInteger64("id")),
                opt_col=real(f, "opt_col"), opt_row=real(f, "opt_row"),
                opt_x=real(f, "opt_x"), opt_y=real(f, "opt_y"),
                sar_col=real(f, "sar_col"), sar_row=real(f, "sar_row"),
                sar_x=real(f, "sar_x"), sar_y=real(f, "sar_y"),
                score=real(f, "score"), quality=real(f, "quality"), goodness=real(f, "goodness"),
                orn_prob=real(f, "orn_prob"),
                cov=(real(f, "cov_rr"), real(f, "cov_rc"), real(f, "cov_cc")),
                status=f.GetFieldAsString("status") or "inlier",
                flag_reason=f.GetFieldAsString("flag_reason") or "",
                residual_px=real(f, "residual_px"),
            ))
        lyr = None
        ds = None
    return TieSet(points=points, crs_wkt=crs, pixel_size=pixel_size)
