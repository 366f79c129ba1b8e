"""One matching run: open → scene statistics → tiles (candidates, matching) → geometry.

Each stage is a plain function over arrays and dataclasses so it can be tested alone; ``match_pair``
only strings them together, reports progress and honours the cancel token between units of work
(every tile, every candidate). The scene is processed tile by tile (``engine.tiling``), so memory
is bounded by the tile size rather than the scene size, with the same results as a whole-scene run.
The whole-array stages (``preprocess_pair``, ``find_candidates``, ``match_candidates``) remain for
callers that hold a small scene in memory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from rasterio.warp import transform as warp_transform

from . import candidates as cand
from . import preprocess
from .errors import InputError, TooFewPointsError
from .geometry import consistency, robust
from .matchers import get_matcher
from .params import MatchParams
from .preprocess import Stretch
from .progress import CancelToken, ProgressCallback, StageReporter
from .raster_io import GridPair, PairSource, open_pair
from .tiling import (DESCRIPTOR_BLOCK, DESCRIPTOR_SUPPORT, TileArrays, TileMatcher, TileRun, TilingOptions,
                     find_candidates_tiled, grid_spacing_for, match_tiles, scene_stretch, tiles_for)
from .types import PatchMatch, TiePoint, TieSet
from .verdict import EDGE_REASON, result_warnings
from .version import __version__

STAGES = (("Reading rasters", 1.0), ("Finding candidates", 1.0), ("Matching", 8.0), ("Fitting geometry", 0.5))
DEEP_STAGES = (("Loading models", 0.5),) + STAGES
"""Stage names and progress-bar weights. Tile reads and preprocessing happen inside the candidate
and matching stages; "Reading rasters" opens the inputs and reads the decimated statistics sample."""
CUDA_FALLBACK = "CUDA was requested but is not usable here; running the models on the CPU"


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
    n_tiles: int = 1
    """Tiles the scene was processed in."""
    n_edge: int = 0
    """Matches flagged because their peak lay on the search window's edge (``verdict.EDGE_REASON``)."""
    candidate_coverage: float = math.nan
    """Fraction of the matched area covered by the convex hull of all matched candidates (where tie points
    could be found at all: nodata and the search window's margin leave the rest out)."""


@dataclass
class MatchResult:
    tieset: TieSet
    transform: object
    stats: MatchStats
    params: MatchParams
    pair: PairSource
    """The inputs and the common grid (no pixels: the run never holds the whole scene)."""
    stretch: Stretch
    """The scene-wide SAR scale and stretch ranges the tiles were preprocessed with."""
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    version: str = __version__
    models: Optional[dict] = None
    """Deep method: size, provider and versions of the networks used."""

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
            "shift_px": list(s.shift_px), "coverage": s.coverage, "tiles": s.n_tiles,
            "stretch": self.stretch.to_dict(),
            "transform": self.transform.to_dict() if self.transform is not None else None,
            "timings_s": self.timings, "warnings": self.warnings, "models": self.models,
        }


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------

def preprocess_pair(pair: GridPair, params: MatchParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAR → [0,1] via dB and a clip; optical → grey → [0,1]. Returns (sar, opt, valid).

    For a pair held in memory whole; ``match_pair`` does the same per tile with the stretch of the
    scene (``tiling.scene_stretch``), which for scenes up to 2 Mpx is exactly this one."""
    stretch = preprocess.estimate_stretch(pair.sar, pair.sar_valid, pair.optical, pair.opt_valid,
                                          scale=params.sar_scale, clip=params.sar_clip)
    sar_unit, opt_unit, valid = preprocess.apply_stretch(pair.sar, pair.sar_valid, pair.optical, pair.opt_valid,
                                                         stretch)
    if valid.mean() < 0.01:
        raise InputError("Less than 1 % of the area of interest holds valid pixels in both rasters "
                         "(nodata, NaN or zero-filled borders); choose an area where both have data.")
    return sar_unit, opt_unit, valid


def find_candidates(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray, params: MatchParams) -> np.ndarray:
    """(N, 2) integer (row, col) template centres whose windows lie on valid pixels (whole images;
    ``tiling.CandidateAccumulator`` gives the same positions tile by tile)."""
    margin = params.effective_search_size() // 2
    mode = params.candidate_mode()
    if mode == "grid":
        spacing = params.grid_spacing or grid_spacing_for(valid.shape, margin, params.n_target)
        pts = cand.grid_candidates(valid.shape, spacing, margin, valid_mask=valid)
    elif mode == "structure":
        pts, _scores = cand.structure_candidates(opt, sar, params.n_target, margin, valid)
    else:
        raise InputError(f"Candidate mode '{mode}' needs the tiled pipeline (match_pair); use 'structure' or 'grid'.")
    return np.asarray(pts, dtype=int).reshape(-1, 2)


def match_candidates(sar: np.ndarray, opt: np.ndarray, points: np.ndarray, params: MatchParams,
                     report=None, valid: Optional[np.ndarray] = None,
                     block: int = DESCRIPTOR_BLOCK, origin: tuple[int, int] = (0, 0)) -> list[PatchMatch]:
    """Template matching at each candidate with the chosen classical similarity.

    The structural method computes its descriptors once per padded block rather than once per
    window: overlapping search windows share the work, and descriptors no longer suffer from
    window-border effects. ``origin`` is the grid position of the arrays' pixel [0, 0] when they
    are a tile: blocks are laid on the grid, not on the tile, so a tile that contains a block's
    padded window gives its candidates exactly the whole-scene result.
    """
    valid = np.ones(sar.shape, bool) if valid is None else valid
    if params.method == "structural":
        return _match_structural_blocks(sar, opt, valid, points, params, report, block, origin)
    matcher = get_matcher(params.method)
    t2, s2 = params.template_size // 2, params.effective_search_size() // 2
    out: list[PatchMatch] = []
    for k, (r, c) in enumerate(points):
        if report is not None:
            report(k / max(len(points), 1))
        out.append(matcher(sar[r - s2:r + s2, c - s2:c + s2], opt[r - t2:r + t2, c - t2:c + t2],
                           valid[r - s2:r + s2, c - s2:c + s2], valid[r - t2:r + t2, c - t2:c + t2]))
    return out


def _match_structural_blocks(sar, opt, valid, points, params, report, block, origin=(0, 0),
                             describe=None) -> list[PatchMatch]:
    """``describe(img, modality, mask)`` -> (C, H, W) features: the structural descriptor by default, or
    a learned stride-1 network with the same contract (CorrASL-SP, ``engine.runtime.sp``)."""
    from .matchers.structural import dense_descriptor, match_descriptors

    describe = describe or dense_descriptor

    t2, s2 = params.template_size // 2, params.effective_search_size() // 2
    halo = s2 + DESCRIPTOR_SUPPORT  # window half-size plus the descriptor filters' support
    h, w = sar.shape
    o_r, o_c = int(origin[0]), int(origin[1])
    points = np.asarray(points, dtype=int).reshape(-1, 2)
    out: list[Optional[PatchMatch]] = [None] * len(points)
    if len(points) == 0:
        return []
    blocks = (points + np.array([o_r, o_c])) // block  # block (row, col) on the grid
    uniq, inverse = np.unique(blocks, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    done = 0
    for b, (bi, bj) in enumerate(uniq):
        idx = np.nonzero(inverse == b)[0]
        br, bc = int(bi) * block - o_r, int(bj) * block - o_c  # block corner in array coordinates
        r0, c0 = max(br - halo, 0), max(bc - halo, 0)
        r1, c1 = min(br + block + halo, h), min(bc + block + halo, w)
        vb = valid[r0:r1, c0:c1]
        ds = describe(sar[r0:r1, c0:c1], "sar", mask=vb)
        dt = describe(opt[r0:r1, c0:c1], "optical", mask=vb)
        for i in idx:
            if report is not None:
                report(done / max(len(points), 1))
            r, c = points[i, 0] - r0, points[i, 1] - c0
            out[i] = match_descriptors(ds[:, r - s2:r + s2, c - s2:c + s2], dt[:, r - t2:r + t2, c - t2:c + t2],
                                       vb[r - s2:r + s2, c - s2:c + s2], vb[r - t2:r + t2, c - t2:c + t2])
            done += 1
        del ds, dt
    return out  # type: ignore[return-value]


def classical_tile_matcher(block: int = DESCRIPTOR_BLOCK) -> TileMatcher:
    """The ``TileMatcher`` of the classical methods (``params.method``): ``match_candidates`` on the
    tile's arrays, with descriptor blocks laid on the grid."""

    def run(tile: TileArrays, points: np.ndarray, params: MatchParams,
            report: Optional[Callable[[float], None]] = None) -> list[PatchMatch]:
        return match_candidates(tile.sar, tile.opt, points, params, report=report, valid=tile.valid,
                                block=block, origin=tile.origin)

    return run


def build_tieset(pair: PairSource | GridPair, points: np.ndarray, matches: list[PatchMatch]) -> TieSet:
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
            goodness=float(m.goodness), orn_prob=float(m.reliability),
        ))
    return TieSet(points=pts, crs_wkt=grid.crs.to_wkt(), pixel_size=grid.res)


def flag_weak(tieset: TieSet, matches: list[PatchMatch], params: MatchParams) -> None:
    """Flag peaks on the search border (offset beyond the window) or not distinct enough."""
    radius = (params.effective_search_size() - params.template_size) // 2
    deep = params.method == "deep"
    edge = radius - 1 if deep else radius  # the deep heatmap's outermost cell is 2 px wide
    for p, m in zip(tieset.points, matches):
        if max(abs(m.peak[0]), abs(m.peak[1])) >= edge:
            p.status, p.flag_reason = "flagged", EDGE_REASON
        elif deep and not (m.reliability >= params.orn_threshold):
            p.status, p.flag_reason = "flagged", f"ORN: unreliable ({m.reliability:.2f} < {params.orn_threshold:.2f})"
        elif not deep and not (m.quality >= params.min_quality):
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
                    n_flagged=len(tieset.points) - len(inl),
                    n_edge=sum(p.flag_reason == EDGE_REASON for p in tieset.points))
    if inl:
        res = np.array([p.residual_px for p in inl])
        st.rmse_px = float(np.sqrt(np.nanmean(res ** 2)))
        dx = float(np.median([p.dx for p in inl]))
        dy = float(np.median([p.dy for p in inl]))
        st.shift_m = (dx, dy)
        st.shift_px = (dx / tieset.pixel_size, -dy / tieset.pixel_size)
        st.coverage = float(hull_coverage(np.array([[p.sar_x, p.sar_y] for p in inl]), _grid_rect(grid)))
        st.candidate_coverage = float(hull_coverage(np.array([[p.opt_x, p.opt_y] for p in tieset.points]),
                                                    _grid_rect(grid)))
    return st


def _grid_rect(grid) -> tuple[float, float, float, float]:
    x0, y0 = grid.xy(np.array([0.0]), np.array([0.0]))
    x1, y1 = grid.xy(np.array([float(grid.width)]), np.array([float(grid.height)]))
    return float(min(x0[0], x1[0])), float(min(y0[0], y1[0])), float(max(x0[0], x1[0])), float(max(y0[0], y1[0]))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def match_pair(sar_path: str, opt_path: str, params: Optional[MatchParams] = None,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None, *,
               tiling: Optional[TilingOptions] = None, matcher: Optional[TileMatcher] = None,
               models=None) -> MatchResult:
    """Match an optical raster against a SAR raster and fit the correcting transform.

    The scene is processed in tiles (``tiling``; the defaults suit any size): peak memory is set by
    the tile size, not by the scene. ``matcher`` replaces the classical matching of each tile's
    candidates (see ``tiling.TileMatcher``); by default ``params.method`` is used. ``models``: loaded
    ``engine.runtime.deep.DeepModels`` to reuse across runs (the deep method loads them otherwise).
    """
    params = params or MatchParams()
    params.validate()
    tiling = tiling or TilingOptions()
    cancel = cancel or CancelToken()
    deep_needed = params.method == "deep" or params.candidate_mode() == "goodness"
    rep = StageReporter(DEEP_STAGES if deep_needed else STAGES, progress or (lambda f, s: None), cancel)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        rep.update(name, 0.0)
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - t0, 3)
        rep.update(name, 1.0)
        return out

    search = params.effective_search_size()

    def read_stats():
        src = open_pair(sar_path, opt_path, aoi=params.aoi, aoi_crs=params.aoi_crs, resolution=params.resolution,
                        sar_band=params.sar_band, opt_bands=params.opt_bands, min_size=search)
        return src, scene_stretch(src, params, tiling.stats_max_pixels)

    notes: list[str] = []
    if deep_needed and models is None:
        from .runtime.deep import DeepModels

        models = timed("Loading models", DeepModels, params.model_size, params.device)
    if deep_needed and params.device == "cuda" and getattr(models, "provider", "cuda") != "cuda":
        # The runtime also warns (Python warning); the result, summary.json and the dock say it too.
        notes.append(CUDA_FALLBACK)
    pair, stats = timed("Reading rasters", read_stats)
    stretch = stats.stretch
    run = TileRun(tiles=tiles_for(pair, params, tiling))
    n_tiles = len(run.tiles)

    def on_tile(i: int, n: int) -> None:
        rep.update("Finding candidates", i / n, f"Finding candidates (tile {i + 1}/{n})" if n > 1 else None)

    run.whole, stats.whole = stats.whole, None  # a small scene's statistics read is its only read
    acc = None
    if params.candidate_mode() == "goodness":
        from .deep.goodness import GoodnessAccumulator

        acc = GoodnessAccumulator(models, (pair.grid.height, pair.grid.width), params.goodness_fusion,
                                  params.goodness_threshold, params.effective_search_size() // 2, params.n_target)
    points = timed("Finding candidates", find_candidates_tiled, pair, stretch, params, run, on_tile, acc)
    if len(points) == 0:
        raise TooFewPointsError(_no_candidates_message(stats.valid_fraction, search, stretch.sar_scale))

    def on_match(done: int, total: int) -> None:
        rep.update("Matching", done / max(total, 1), f"Matching {done}/{total}")

    if matcher is None and params.method == "deep":
        from .deep.matcher import tile_matcher_for

        matcher = tile_matcher_for(models, tiling.block)
    matches = timed("Matching", match_tiles, pair, stretch, points, params, run,
                    matcher or classical_tile_matcher(tiling.block), on_match)
    if acc is not None and hasattr(acc, "scores"):
        for m, g in zip(matches, acc.scores):
            m.goodness = float(g)
    run.cached = None
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
                                + _too_few_advice(params, pair.warnings + notes)) from exc
    timings["Tile reads"] = round(run.read_s, 3)  # reading + preprocessing tiles, part of the stages above
    stats_out = compute_stats(tieset, len(points), pair.grid)
    stats_out.n_tiles = n_tiles
    rep.done("Matching finished")
    res = MatchResult(tieset=tieset, transform=transform, stats=stats_out, params=params, pair=pair,
                      stretch=stretch, timings=timings, warnings=list(pair.warnings) + notes)
    if models is not None:
        res.models = {"size": models.size, "provider": models.provider, "versions": models.versions}
        res.warnings += [w for w in getattr(models, "warnings", []) if w not in res.warnings]
    res.warnings += result_warnings(stats_out, params)
    return res


def _too_few_advice(params: MatchParams, notes: list[str]) -> str:
    """What to try when too few tie points survive, for this run's transform, plus the run's warnings
    (an extreme resolution ratio, for instance, is often the reason)."""
    more = "Try a larger area, more candidates (--n-target)"
    if params.transform == "shift":
        advice = f"{more}, a larger search window (--max-offset) or a larger --ransac-threshold."
    else:
        simpler = "'shift'" if params.transform in ("affine", "poly1") else "'affine' or 'shift'"
        advice = f"{more}, or a simpler transform ({simpler})."
    # The threshold that flags weak matches is the method's own: the ORN's for deep, the peak quality's else.
    advice += (" A lower --orn-threshold keeps more of the matches the ORN rates unreliable." if params.method == "deep"
               else " A lower --min-quality keeps more of the less distinct matches.")
    return advice + "".join(f" Note: {n}" for n in notes)


def _no_candidates_message(valid_fraction: float, search: int, sar_scale: str = "") -> str:
    """Why no candidate exists: too little valid area, or invalid pixels scattered through it.
    ``sar_scale``: the run's SAR scale; on 'linear' and 'amplitude' zero and negative values are invalid too."""
    head = (f"No candidate location has a complete search window ({search} px) on valid pixels in both "
            "rasters: ")
    if valid_fraction >= 0.5 and sar_scale in ("linear", "amplitude"):
        return head + (f"{valid_fraction:.1%} of the area is valid, but invalid pixels are spread through it so that "
                       f"no {search} px window is free of them (nodata, NaN or Inf, or zero or negative SAR values, "
                       f"which have no dB value on the SAR's '{sar_scale}' scale); fill them (e.g. declare 0 as "
                       "nodata, then gdal_fillnodata.py) or choose an area without them.")
    if valid_fraction >= 0.5:
        return head + (f"{valid_fraction:.1%} of the area is valid, but invalid pixels (nodata, NaN or Inf) are "
                       f"spread through it so that no {search} px window is free of them; fill them (e.g. "
                       "gdal_fillnodata.py) or choose an area without them.")
    return head + (f"only {valid_fraction:.1%} of the area holds valid pixels in both rasters; choose a larger "
                   "area of interest where both have data, or a smaller search window.")
