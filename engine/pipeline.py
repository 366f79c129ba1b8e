"""One matching run: read → preprocess → candidates → template matching → geometry.

Each stage is a plain function over arrays and dataclasses so it can be tested alone; ``match_pair``
only strings them together, reports progress and honours the cancel token between units of work.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from rasterio.warp import transform as warp_transform

from . import candidates as cand
from . import preprocess
from .errors import InputError, TooFewPointsError
from .geometry import consistency, robust
from .matchers import get_matcher
from .params import MatchParams
from .progress import CancelToken, ProgressCallback, StageReporter
from .raster_io import GridPair, load_pair
from .types import PatchMatch, TiePoint, TieSet
from .version import __version__

STAGES = (("Reading rasters", 1.0), ("Preprocessing", 0.5), ("Finding candidates", 0.5),
          ("Matching", 8.0), ("Fitting geometry", 0.5))


@dataclass
class MatchStats:
    n_candidates: int = 0
    n_matched: int = 0
    n_inliers: int = 0
    n_flagged: int = 0
    rmse_px: float = math.nan
    shift_m: tuple[float, float] = (math.nan, math.nan)
    """Median displacement (x east, y north) optical → SAR in map units."""
    shift_px: tuple[float, float] = (math.nan, math.nan)
    coverage: float = math.nan
    """Fraction of the matched area covered by the convex hull of the inliers."""


@dataclass
class MatchResult:
    tieset: TieSet
    transform: object
    stats: MatchStats
    params: MatchParams
    pair: GridPair
    sar_unit: np.ndarray
    opt_unit: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    version: str = __version__

    def summary(self) -> dict:
        s = self.stats
        return {
            "engine_version": self.version,
            "sar": self.pair.sar_info.path,
            "optical": self.pair.opt_info.path,
            "crs": self.pair.grid.crs.to_string(),
            "grid": {"width": self.pair.grid.width, "height": self.pair.grid.height,
                     "transform": list(self.pair.grid.transform)[:6]},
            "params": self.params.to_dict(),
            "candidates": s.n_candidates, "matched": s.n_matched, "inliers": s.n_inliers,
            "flagged": s.n_flagged, "rmse_px": s.rmse_px, "shift_m": list(s.shift_m),
            "shift_px": list(s.shift_px), "coverage": s.coverage,
            "transform": self.transform.to_dict() if self.transform is not None else None,
            "timings_s": self.timings, "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------

def preprocess_pair(pair: GridPair, params: MatchParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAR → [0,1] via dB and a clip; optical → grey → [0,1]. Returns (sar, opt, valid)."""
    clip = params.sar_clip
    if isinstance(clip, str) and clip != "robust":
        try:
            lo, hi = (float(v) for v in clip.split(","))
        except ValueError as exc:
            raise InputError(f"SAR clip must be 'robust' or 'lo,hi' in dB, got '{clip}'.") from exc
        clip = (lo, hi)
    sar_unit, sar_valid = preprocess.sar_to_unit(pair.sar, scale=params.sar_scale, clip=clip,
                                                 valid_mask=pair.sar_valid)
    gray = preprocess.optical_to_gray(pair.optical)
    opt_unit, opt_valid = preprocess.optical_to_unit(gray, pair.opt_valid)
    valid = sar_valid & opt_valid
    if valid.mean() < 0.01:
        raise InputError("Less than 1 % of the area of interest holds valid pixels in both rasters "
                         "(nodata, NaN or zero-filled borders); choose an area where both have data.")
    return sar_unit, opt_unit, valid


def find_candidates(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray, params: MatchParams) -> np.ndarray:
    """(N, 2) integer (row, col) template centres whose windows lie on valid pixels."""
    margin = params.effective_search_size() // 2
    if params.candidates == "grid":
        spacing = params.grid_spacing or _spacing_for(valid.shape, margin, params.n_target)
        pts = cand.grid_candidates(valid.shape, spacing, margin, valid_mask=valid)
    elif params.candidates == "structure":
        pts, _scores = cand.structure_candidates(opt, sar, params.n_target, margin, valid)
    else:
        raise InputError(f"Unknown candidate mode '{params.candidates}' (use 'structure' or 'grid').")
    return np.asarray(pts, dtype=int).reshape(-1, 2)


def _spacing_for(shape: tuple[int, int], margin: int, n: int) -> int:
    h, w = max(shape[0] - 2 * margin, 1), max(shape[1] - 2 * margin, 1)
    return max(16, int(math.sqrt(h * w / max(n, 1))))


DESCRIPTOR_BLOCK = 1024
"""Side of the square blocks over which structural descriptors are computed once and shared by all
candidates inside; bounds memory (about 36 bytes per pixel of a padded block) independently of the
scene size."""


def match_candidates(sar: np.ndarray, opt: np.ndarray, points: np.ndarray, params: MatchParams,
                     report=None, valid: Optional[np.ndarray] = None,
                     block: int = DESCRIPTOR_BLOCK) -> list[PatchMatch]:
    """Template matching at each candidate with the chosen classical similarity.

    The structural method computes its descriptors once per padded block rather than once per
    window: overlapping search windows share the work, and descriptors no longer suffer from
    window-border effects.
    """
    valid = np.ones(sar.shape, bool) if valid is None else valid
    if params.method == "structural":
        return _match_structural_blocks(sar, opt, valid, points, params, report, block)
    matcher = get_matcher(params.method)
    t2, s2 = params.template_size // 2, params.effective_search_size() // 2
    out: list[PatchMatch] = []
    for k, (r, c) in enumerate(points):
        if report is not None:
            report(k / max(len(points), 1))
        out.append(matcher(sar[r - s2:r + s2, c - s2:c + s2], opt[r - t2:r + t2, c - t2:c + t2],
                           valid[r - s2:r + s2, c - s2:c + s2], valid[r - t2:r + t2, c - t2:c + t2]))
    return out


def _match_structural_blocks(sar, opt, valid, points, params, report, block) -> list[PatchMatch]:
    from .matchers.structural import dense_descriptor, match_descriptors

    t2, s2 = params.template_size // 2, params.effective_search_size() // 2
    halo = s2 + 16  # window half-size plus the descriptor filters' support
    h, w = sar.shape
    keys = (points[:, 0] // block) * (w // block + 1) + points[:, 1] // block
    out: list[Optional[PatchMatch]] = [None] * len(points)
    done = 0
    for key in np.unique(keys):
        idx = np.nonzero(keys == key)[0]
        br, bc = (points[idx[0], 0] // block) * block, (points[idx[0], 1] // block) * block
        r0, c0 = max(br - halo, 0), max(bc - halo, 0)
        r1, c1 = min(br + block + halo, h), min(bc + block + halo, w)
        vb = valid[r0:r1, c0:c1]
        ds = dense_descriptor(sar[r0:r1, c0:c1], "sar", mask=vb)
        dt = dense_descriptor(opt[r0:r1, c0:c1], "optical", mask=vb)
        for i in idx:
            if report is not None:
                report(done / max(len(points), 1))
            r, c = points[i, 0] - r0, points[i, 1] - c0
            out[i] = match_descriptors(ds[:, r - s2:r + s2, c - s2:c + s2], dt[:, r - t2:r + t2, c - t2:c + t2],
                                       vb[r - s2:r + s2, c - s2:c + s2], vb[r - t2:r + t2, c - t2:c + t2])
            done += 1
    return out  # type: ignore[return-value]


def build_tieset(pair: GridPair, points: np.ndarray, matches: list[PatchMatch]) -> TieSet:
    """Turn grid positions + offsets into tie points carrying optical-pixel and map coordinates."""
    grid = pair.grid
    rows = points[:, 0].astype(float)
    cols = points[:, 1].astype(float)
    dr = np.array([m.offset[0] for m in matches], float)
    dc = np.array([m.offset[1] for m in matches], float)
    ox, oy = grid.xy(cols, rows)              # nominal (optical georeference) position
    sx, sy = grid.xy(cols + dc, rows + dr)    # where the SAR says that content really is
    # Optical raster pixel of the template centre (through its own CRS and geotransform).
    oi = pair.opt_info
    if oi.crs != grid.crs:
        oxx, oyy = warp_transform(grid.crs, oi.crs, list(ox), list(oy))
    else:
        oxx, oyy = ox, oy
    inv = ~oi.transform
    si = pair.sar_info
    if si.crs != grid.crs:
        sxx, syy = warp_transform(grid.crs, si.crs, list(sx), list(sy))
    else:
        sxx, syy = sx, sy
    sinv = ~si.transform
    pts: list[TiePoint] = []
    for i, m in enumerate(matches):
        opt_col, opt_row = inv * (oxx[i], oyy[i])
        sar_col, sar_row = sinv * (sxx[i], syy[i])
        pts.append(TiePoint(
            id=i + 1, opt_col=float(opt_col), opt_row=float(opt_row), opt_x=float(ox[i]), opt_y=float(oy[i]),
            sar_col=float(sar_col), sar_row=float(sar_row), sar_x=float(sx[i]), sar_y=float(sy[i]),
            score=float(m.score), quality=float(m.quality), cov=tuple(float(v) for v in m.cov),
        ))
    return TieSet(points=pts, crs_wkt=grid.crs.to_wkt(), pixel_size=grid.res)


def flag_weak(tieset: TieSet, matches: list[PatchMatch], params: MatchParams) -> None:
    """Flag peaks on the search border (offset beyond the window) or not distinct enough."""
    radius = (params.effective_search_size() - params.template_size) // 2
    for p, m in zip(tieset.points, matches):
        if max(abs(m.peak[0]), abs(m.peak[1])) >= radius:
            p.status, p.flag_reason = "flagged", "peak at search window edge"
        elif not (m.quality >= params.min_quality):
            p.status, p.flag_reason = "flagged", f"weak peak (quality {m.quality:.2f})"


def flag_inconsistent(tieset: TieSet, params: MatchParams) -> None:
    """Sharma et al.'s direction-consistency filter over the still-unflagged points."""
    idx = [i for i, p in enumerate(tieset.points) if p.status == "inlier"]
    if len(idx) <= params.consistency_k:
        return
    src, dst = tieset.src_dst(only_inliers=True)
    keep, _dev = consistency.direction_consistency(src, dst, k=params.consistency_k, z=params.consistency_z)
    for j, i in enumerate(idx):
        if not keep[j]:
            tieset.points[i].status = "flagged"
            tieset.points[i].flag_reason = "direction inconsistent with neighbours"


def fit_geometry(tieset: TieSet, params: MatchParams):
    """Robust fit on unflagged points; flags outliers; sets residuals (px) on every point."""
    idx = [i for i, p in enumerate(tieset.points) if p.status == "inlier"]
    src, dst = tieset.src_dst(only_inliers=True)
    fit = robust.robust_fit(params.transform, src, dst, threshold=params.ransac_threshold_px * tieset.pixel_size,
                            seed=params.seed)
    for j, i in enumerate(idx):
        if not fit.inliers[j]:
            tieset.points[i].status = "flagged"
            tieset.points[i].flag_reason = "robust fit outlier"
    all_src, all_dst = tieset.src_dst(only_inliers=False)
    if len(all_src):
        res = np.hypot(*(fit.transform.apply(all_src) - all_dst).T) / tieset.pixel_size
        for p, r in zip(tieset.points, res):
            p.residual_px = float(r)
    return fit.transform


def compute_stats(tieset: TieSet, n_candidates: int, grid) -> MatchStats:
    from .geometry.residuals import hull_coverage

    inl = [p for p in tieset.points if p.status == "inlier"]
    st = MatchStats(n_candidates=n_candidates, n_matched=len(tieset.points), n_inliers=len(inl),
                    n_flagged=len(tieset.points) - len(inl))
    if inl:
        res = np.array([p.residual_px for p in inl])
        st.rmse_px = float(np.sqrt(np.nanmean(res ** 2)))
        dx = float(np.median([p.dx for p in inl]))
        dy = float(np.median([p.dy for p in inl]))
        st.shift_m = (dx, dy)
        st.shift_px = (dx / tieset.pixel_size, -dy / tieset.pixel_size)
        st.coverage = float(hull_coverage(np.array([[p.sar_x, p.sar_y] for p in inl]), _grid_rect(grid)))
    return st


def _grid_rect(grid) -> tuple[float, float, float, float]:
    x0, y0 = grid.xy(np.array([0.0]), np.array([0.0]))
    x1, y1 = grid.xy(np.array([float(grid.width)]), np.array([float(grid.height)]))
    return float(min(x0[0], x1[0])), float(min(y0[0], y1[0])), float(max(x0[0], x1[0])), float(max(y0[0], y1[0]))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def match_pair(sar_path: str, opt_path: str, params: Optional[MatchParams] = None,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> MatchResult:
    """Match an optical raster against a SAR raster and fit the correcting transform."""
    params = params or MatchParams()
    params.validate()
    cancel = cancel or CancelToken()
    rep = StageReporter(STAGES, progress or (lambda f, s: None), cancel)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        rep.update(name, 0.0)
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t0, 3)
        rep.update(name, 1.0)
        return out

    search = params.effective_search_size()
    pair = timed("Reading rasters", load_pair, sar_path, opt_path, aoi=params.aoi, aoi_crs=params.aoi_crs,
                 resolution=params.resolution, sar_band=params.sar_band, opt_bands=params.opt_bands,
                 min_size=search)
    sar, opt, valid = timed("Preprocessing", preprocess_pair, pair, params)
    # Later stages work on the [0, 1] images; drop the raw pixels (16 bytes per grid pixel) now
    # rather than keeping them alive in the result until the caller lets go of it.
    pair.sar = pair.optical = None
    points = timed("Finding candidates", find_candidates, sar, opt, valid, params)
    if len(points) == 0:
        raise TooFewPointsError(
            "No candidate location has a complete search window on valid pixels in both rasters; "
            "choose a larger area of interest or a smaller search window."
        )
    matches = timed("Matching", match_candidates, sar, opt, points, params,
                    report=lambda f: rep.update("Matching", f, f"Matching {int(f * len(points))}/{len(points)}"),
                    valid=valid)
    tieset = build_tieset(pair, points, matches)

    def geometry():
        flag_weak(tieset, matches, params)
        flag_inconsistent(tieset, params)
        return fit_geometry(tieset, params)

    try:
        transform = timed("Fitting geometry", geometry)
    except TooFewPointsError as exc:
        n_ok = sum(p.status == "inlier" for p in tieset.points)
        raise TooFewPointsError(f"{exc} ({len(points)} candidates, {n_ok} reliable matches). "
                                "Try a larger area, more candidates (--n-target), or the 'shift' transform.") from exc
    stats = compute_stats(tieset, len(points), pair.grid)
    rep.done("Matching finished")
    return MatchResult(tieset=tieset, transform=transform, stats=stats, params=params, pair=pair,
                       sar_unit=sar, opt_unit=opt, timings=timings, warnings=list(pair.warnings))
