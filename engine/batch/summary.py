"""The batch summary table: one row per pair (CSV), and the pairs' footprints (GeoPackage, EPSG:4326)."""
from __future__ import annotations

import csv
import math
import os
from typing import Optional

COLUMNS = ("name", "status", "sar", "optical", "out_dir", "method", "transform", "candidates", "matched",
           "inliers", "flagged", "rmse_px", "shift_x_m", "shift_y_m", "shift_col_px", "shift_row_px", "coverage",
           "tiles", "tasks", "megapixels", "wall_s", "task_s", "worker", "error")


def _num(v, nd: int = 4):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if not math.isfinite(f) else round(f, nd)


def summary_row(outcome, job) -> dict:
    s = outcome.summary or {}
    p = s.get("params") or job.params.to_dict()
    shift_m = s.get("shift_m") or [None, None]
    shift_px = s.get("shift_px") or [None, None]
    grid = s.get("grid") or {}
    mp = outcome.megapixels
    if grid and not (isinstance(mp, float) and math.isfinite(mp)):
        mp = grid.get("width", 0) * grid.get("height", 0) / 1e6
    timings = s.get("timings_s") or {}
    task_s = outcome.seconds if outcome.status != "skipped" else sum(
        v for k, v in timings.items() if k != "Tile reads")
    return {
        "name": outcome.name, "status": outcome.status, "sar": job.sar, "optical": job.optical,
        "out_dir": job.out_dir, "method": p.get("method"), "transform": p.get("transform"),
        "candidates": s.get("candidates", ""), "matched": s.get("matched", ""), "inliers": s.get("inliers", ""),
        "flagged": s.get("flagged", ""), "rmse_px": _num(s.get("rmse_px")),
        "shift_x_m": _num(shift_m[0]), "shift_y_m": _num(shift_m[1]),
        "shift_col_px": _num(shift_px[0]), "shift_row_px": _num(shift_px[1]), "coverage": _num(s.get("coverage")),
        "tiles": s.get("tiles", outcome.tiles), "tasks": outcome.tasks, "megapixels": _num(mp, 3),
        "wall_s": _num(outcome.wall_s, 2), "task_s": _num(task_s, 2), "worker": outcome.worker,
        "error": (outcome.error or "").replace("\n", " "),
    }


def footprint_lonlat(summary: dict) -> Optional[list[tuple[float, float]]]:
    """The matched grid's outline (ring of lon/lat points) from a pair's summary.json, or None."""
    grid, crs = summary.get("grid"), summary.get("crs")
    if not grid or not crs:
        return None
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import transform as warp

    a = Affine(*grid["transform"][:6])
    w, h = grid["width"], grid["height"]
    n = 8  # points per edge, so a reprojected outline stays close to the true one
    edge = [(w * i / n, 0) for i in range(n)] + [(w, h * i / n) for i in range(n)] \
        + [(w - w * i / n, h) for i in range(n)] + [(0, h - h * i / n) for i in range(n)]
    xs, ys = zip(*[a * (c, r) for c, r in edge])
    lon, lat = warp(CRS.from_string(crs), CRS.from_epsg(4326), list(xs), list(ys))
    ring = list(zip(lon, lat))
    return ring + [ring[0]]


def write_summary(outcomes: list, jobs: list, out_dir: str, final: bool = True) -> tuple[str, Optional[str]]:
    """``batch_summary.csv`` (always) and, when ``final``, ``batch_summary.gpkg`` (footprints of the
    pairs with results; attributes as the CSV). Both written under a temporary name, then renamed."""
    by_name = {j.name: j for j in jobs}
    rows = [summary_row(o, by_name[o.name]) for o in outcomes]
    path = os.path.join(out_dir, "batch_summary.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    gpkg = None
    if final:
        try:
            gpkg = _write_gpkg(outcomes, rows, os.path.join(out_dir, "batch_summary.gpkg"))
        except Exception:  # pragma: no cover - the CSV is the table of record; footprints are a bonus
            gpkg = None
    return path, gpkg


def _write_gpkg(outcomes, rows, path: str) -> str:
    from osgeo import ogr, osr

    tmp = path[:-5] + ".tmp.gpkg"
    drv = ogr.GetDriverByName("GPKG")
    if os.path.exists(tmp):
        drv.DeleteDataSource(tmp)
    ds = drv.CreateDataSource(tmp)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lyr = ds.CreateLayer("pairs", srs, ogr.wkbPolygon)
    kinds = {"candidates": ogr.OFTInteger, "matched": ogr.OFTInteger, "inliers": ogr.OFTInteger,
             "flagged": ogr.OFTInteger, "tiles": ogr.OFTInteger, "tasks": ogr.OFTInteger}
    for c in COLUMNS:
        if c in kinds:
            t = kinds[c]
        elif c in ("rmse_px", "shift_x_m", "shift_y_m", "shift_col_px", "shift_row_px", "coverage", "megapixels",
                   "wall_s", "task_s"):
            t = ogr.OFTReal
        else:
            t = ogr.OFTString
        lyr.CreateField(ogr.FieldDefn(c, t))
    for o, row in zip(outcomes, rows):
        f = ogr.Feature(lyr.GetLayerDefn())
        for c in COLUMNS:
            v = row[c]
            if v != "" and v is not None:
                f.SetField(c, v)
        ring_pts = footprint_lonlat(o.summary) if o.summary else None
        if ring_pts:
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in ring_pts:
                ring.AddPoint_2D(float(x), float(y))
            poly = ogr.Geometry(ogr.wkbPolygon)
            poly.AddGeometry(ring)
            f.SetGeometry(poly)
        lyr.CreateFeature(f)
    ds = None
    os.replace(tmp, path)
    return path
