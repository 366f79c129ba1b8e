"""AROSICS (Scheffler et al. 2017) as a peer: phase correlation in moving windows + its own filtering.

Why this peer: it is the open-source co-registration tool remote-sensing users actually run, and its
local mode (``COREG_LOCAL``) does what our pipeline does (a grid of windows, per-window shifts,
tie-point filtering, a correcting transform). Its authors target optical-optical pairs and expect
failure on SAR-optical; failures are reported with AROSICS's own message, never dropped.

* Patch pairs: ``COREG`` with the SAR search window as reference and the optical template as target,
  georeferenced so the template sits nominally at the window centre; the 128 px matching window is
  the whole template (the same input our matchers get). AROSICS reports the target's shift (x =
  columns, y = rows) which is our (drow, dcol) = (y_shift_px, x_shift_px); verified on shifted copies.
* Scenes: ``COREG_LOCAL`` on the very GeoTIFFs our pipeline reads, tie-point filter level 3
  (reliability, MSSIM, RANSAC), band 1 of each image, explicit nodata (AROSICS guesses otherwise
  and the Debian GDAL 3.6 build needs it stated).

AROSICS 1.10.2 is the last release that runs with GDAL < 3.8 (see bench/requirements-nodeps.txt).
"""
from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from typing import Optional

import numpy as np

from .common import PeerPatchResult, PeerSceneResult, fail_message

NAME = "arosics"
_X0, _Y0 = 500_000.0, 5_000_000.0
"""Arbitrary UTM origin for in-memory patches (geoarray rejects a geotransform with origin 0)."""


def available() -> tuple[bool, str]:
    try:
        import arosics
    except Exception as exc:  # pragma: no cover - depends on the environment
        return False, fail_message(exc)
    return True, f"arosics {arosics.__version__}"


@contextlib.contextmanager
def _quiet():
    """AROSICS prints and warns a lot even with q=True; keep the bench log readable."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


_WKT: Optional[str] = None


def _utm_wkt() -> str:
    global _WKT
    if _WKT is None:
        from osgeo import osr

        s = osr.SpatialReference()
        s.ImportFromEPSG(32633)
        _WKT = s.ExportToWkt()
    return _WKT


def _as_data(a: np.ndarray) -> np.ndarray:
    """[0,1] → 1..1001 float32 so 0 can be the explicit nodata value."""
    return (np.nan_to_num(np.asarray(a, np.float32), nan=-0.001) * 1000.0 + 1.0).astype(np.float32)


def match_patch(search: np.ndarray, template: np.ndarray, max_shift: int = 64) -> PeerPatchResult:
    """(drow, dcol) of the template inside the search window, from AROSICS's global COREG."""
    try:
        from arosics import COREG
        from geoarray import GeoArray

        s, t = search.shape[0], template.shape[0]
        off = (s - t) // 2
        ref = GeoArray(_as_data(search), geotransform=(_X0, 1.0, 0.0, _Y0, 0.0, -1.0),
                       projection=_utm_wkt(), nodata=0)
        tgt = GeoArray(_as_data(template), geotransform=(_X0 + off, 1.0, 0.0, _Y0 - off, 0.0, -1.0),
                       projection=_utm_wkt(), nodata=0)
        with _quiet():
            cr = COREG(ref, tgt, ws=(t, t), max_shift=max_shift, nodata=(0, 0), q=True, ignore_errors=False)
            cr.calculate_spatial_shifts()
        if not cr.success:
            return PeerPatchResult(error="AROSICS: no match (success=False)")
        return PeerPatchResult(offset=(float(cr.y_shift_px), float(cr.x_shift_px)), n_matches=1,
                               quality=float(cr.shift_reliability if cr.shift_reliability is not None else math.nan))
    except Exception as exc:
        return PeerPatchResult(error="AROSICS: " + fail_message(exc))


def match_scene(sar_path: str, opt_path: str, grid, n_target: int = 300, window: int = 128,
                max_shift: int = 64, sar_nodata: float = -9999.0, opt_nodata: float = 0.0) -> PeerSceneResult:
    """COREG_LOCAL tie points (after its level-3 filter) expressed in the engine's common grid (col, row).

    ``grid`` is the engine's common grid (``GridPair.grid``) so peers and our pipeline are scored on
    the same check points; AROSICS's map coordinates are converted with its inverse geotransform.
    """
    t0 = time.perf_counter()
    try:
        from arosics import COREG_LOCAL

        step = max(32, int(math.sqrt(grid.width * grid.height / max(n_target, 1))))
        with _quiet():
            cr = COREG_LOCAL(sar_path, opt_path, grid_res=step, window_size=(window, window),
                             max_shift=max_shift, nodata=(sar_nodata, opt_nodata), tieP_filter_level=3,
                             CPUs=1, q=True, ignore_errors=True, progress=False)
            tab = cr.CoRegPoints_table
        x_shift = tab["X_SHIFT_M"].to_numpy(float)
        ok = np.isfinite(x_shift) & (x_shift != -9999)   # windows that produced a shift at all
        n_raw = int(ok.sum())
        if "OUTLIER" in tab:
            ok &= ~tab["OUTLIER"].fillna(True).astype(bool).to_numpy()
        x = tab["X_MAP"].to_numpy(float)[ok]
        y = tab["Y_MAP"].to_numpy(float)[ok]
        # Corrected georeference = nominal + shift (AROSICS moves the target by +shift).
        tx = x + x_shift[ok]
        ty = y + tab["Y_SHIFT_M"].to_numpy(float)[ok]
        inv = ~grid.transform
        oc = np.array([inv * (a, b) for a, b in zip(x, y)], float).reshape(-1, 2)
        sc = np.array([inv * (a, b) for a, b in zip(tx, ty)], float).reshape(-1, 2)
        return PeerSceneResult(opt_cr=oc, sar_cr=sc, n_raw=n_raw,
                               error="" if ok.sum() >= 3 else f"only {int(ok.sum())} tie points kept",
                               seconds=time.perf_counter() - t0)
    except Exception as exc:
        return PeerSceneResult(error="AROSICS: " + fail_message(exc), seconds=time.perf_counter() - t0)


MIN_RELIABILITY = 60.0
"""COREG_LOCAL's default ``min_reliability``: the same bar applied to single patches."""


def patch_keep(r: PeerPatchResult) -> bool:
    return bool(r.quality >= MIN_RELIABILITY)
