"""What runs on a Dask worker. Plain functions of small, picklable arguments (paths, windows,
parameters, per-tile score pieces and matches): image pixels are read by the worker from the input
paths and never travel through the scheduler.

A pair is either one task (``prepare`` matches and writes a small pair itself, exactly as
``python -m engine match`` does), or, above the pixel threshold, the two passes of
``engine.tiling`` split into tasks over the same tile plan:

    prepare (scene statistics, tile plan)
      -> candidate_tile x N   (pass 1: the tile's pieces of the scene-wide candidate score map)
      -> select_candidates    (the one global selection, as CandidateAccumulator.select)
      -> match_tile x N       (pass 2: the candidates each tile's core owns)
      -> finish               (ONE geometry fit for the pair, stats, write_results)

Every tile computes exactly what the single-process run computes for it (same stretch, same tile
windows, descriptor blocks laid on the grid), so the tie points are the same.

User-fixable problems (``MatcherError``) are returned as ``Failed`` values rather than raised, so
Dask's retries are kept for real crashes (a killed worker, a lost connection).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import MatcherError, TooFewPointsError
from .manifest import PairJob

_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()
MODEL_LOADS = {"count": 0}
"""How many times this process loaded models (tests check it stays at one per worker)."""


def get_models(size: Optional[str], device: str):
    """The deep models of this worker process, loaded on first use and kept (one per size/device)."""
    key = (size, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from ..runtime.deep import DeepModels

            _MODELS[key] = DeepModels(size, device)
            MODEL_LOADS["count"] += 1
        return _MODELS[key]


def _needs_models(params) -> bool:
    return params.method == "deep" or params.candidate_mode() == "goodness"


def _models_info(models) -> Optional[dict]:
    """What the pair's summary records about the networks a task used (so the final task need not load them)."""
    if models is None:
        return None
    return {"size": models.size, "provider": models.provider, "versions": models.versions,
            "warnings": list(getattr(models, "warnings", []))}


@dataclass
class Failed:
    """A task's user-facing failure, carried to the pair's outcome."""

    message: str
    kind: str = "MatcherError"


@dataclass
class PairOutcome:
    """What the batch records for one pair."""

    name: str
    status: str  # done | failed | skipped | cancelled
    summary: Optional[dict] = None
    """The pair's summary.json content (done/skipped)."""
    error: str = ""
    seconds: float = 0.0
    """Sum of the pair's task durations (worker seconds)."""
    tasks: int = 1
    tiles: int = 1
    megapixels: float = float("nan")
    worker: str = ""
    wall_s: float = float("nan")
    """Seconds from the pair's submission to its outcome (the client's clock)."""


@dataclass
class TilePlan:
    """A large pair split into tiles (returned by ``prepare``)."""

    job: PairJob
    tiles: list
    stretch: Any
    valid_fraction: float
    shape: tuple[int, int]
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    block: int = 1024
    """Structural descriptor block side (``TilingOptions.block``) of the run."""


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # not on a Dask worker (tests call the tasks directly)
        return f"pid {os.getpid()}"


def _open(job: PairJob):
    from ..raster_io import open_pair

    p = job.params
    return open_pair(job.sar, job.optical, aoi=p.aoi, aoi_crs=p.aoi_crs, resolution=p.resolution,
                     sar_band=p.sar_band, opt_bands=p.opt_bands, min_size=p.effective_search_size())


def _failure(job: PairJob, exc: BaseException, seconds: float, **kw) -> PairOutcome:
    if isinstance(exc, MemoryError):
        msg = "out of memory; choose a smaller area of interest or a coarser resolution"
    else:
        msg = str(exc) or type(exc).__name__
    return PairOutcome(job.name, "failed", error=msg, seconds=seconds, worker=_worker_name(), **kw)


def _remove_empty(out_dir: str, made: bool) -> None:
    if made and os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)  # like the CLI: a failed pair leaves no empty folder behind


def write_pair(result, job: PairJob) -> dict:
    """``write_results`` exactly as the single-pair CLI calls it; returns the summary.json content."""
    import json

    from ..write_results import write_results

    # The batch holds the lock of the folder above and cleaned the pair's folder when it started.
    paths = write_results(result, job.out_dir, corrected=job.corrected, checkerboard=job.checkerboard,
                          extra_summary={}, lock=False)
    with open(paths.summary, encoding="utf-8") as fh:
        return json.load(fh)


def prepare(job: PairJob, max_pixels: int, tiling=None):
    """Small pair (grid <= ``max_pixels`` or a single tile): match and write it, return its
    ``PairOutcome``. Large pair: the scene statistics and the tile plan (``TilePlan``)."""
    from ..pipeline import match_pair
    from ..tiling import TilingOptions, scene_stretch, tiles_for
    from ..write_results import ensure_writable_dir

    t0 = time.perf_counter()
    tiling = tiling or TilingOptions()
    made = not os.path.exists(job.out_dir)
    try:
        src = _open(job)
        g = src.grid
        mp = g.width * g.height / 1e6
        tiles = tiles_for(src, job.params, tiling)
        if g.width * g.height <= max_pixels or len(tiles) <= 1:
            ensure_writable_dir(job.out_dir)
            models = get_models(job.params.model_size, job.params.device) if _needs_models(job.params) else None
            result = match_pair(job.sar, job.optical, job.params, tiling=tiling, models=models)
            summary = write_pair(result, job)
            return PairOutcome(job.name, "done", summary=summary, seconds=time.perf_counter() - t0,
                               tiles=result.stats.n_tiles, megapixels=mp, worker=_worker_name())
        t1 = time.perf_counter()
        stats = scene_stretch(src, job.params, tiling.stats_max_pixels)
        timings = {"Reading rasters": round(time.perf_counter() - t1, 3)}
        return TilePlan(job=job, tiles=tiles, stretch=stats.stretch, valid_fraction=stats.valid_fraction,
                        shape=(g.height, g.width), timings=timings, notes=list(src.warnings),
                        seconds=time.perf_counter() - t0, block=tiling.block)
    except (MatcherError, MemoryError) as exc:
        _remove_empty(job.out_dir, made)
        return _failure(job, exc, time.perf_counter() - t0, megapixels=float("nan"))


# --------------------------------------------------------------------------------------------
# Pass 1: candidate score pieces
# --------------------------------------------------------------------------------------------

def _accumulator(plan: TilePlan, models=None):
    from ..tiling import CandidateAccumulator

    p = plan.job.params
    if p.candidate_mode() == "goodness":
        from ..deep.goodness import GoodnessAccumulator

        return GoodnessAccumulator(models, plan.shape, p.goodness_fusion, p.goodness_threshold,
                                   p.effective_search_size() // 2, p.n_target)
    return CandidateAccumulator(p, plan.shape)


def _piece_fields(acc) -> tuple[tuple[str, ...], Any]:
    """The accumulator's per-cell arrays and the pixel centre of its cells (None: grid mode)."""
    from .. import candidates as cand
    from ..deep import goodness

    if isinstance(acc, goodness.GoodnessAccumulator):
        return ("good", "g_sar", "g_opt", "usable"), goodness.cell_centres
    if acc.params.candidate_mode() == "grid":
        return (), None
    return ("lam", "energy", "ok"), (lambda n, s=acc.step: cand.cell_centres(n, s))


def _owned(centres_fn, n: int, lo: int, hi: int) -> slice:
    c = centres_fn(n)
    idx = np.flatnonzero((c >= lo) & (c < hi))
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


def candidate_tile(plan: TilePlan, index: int):
    """Pass 1 for one tile: the accumulator cells its core owns (a rectangle of the score map), as
    ``{field: array}`` with their slices, or the grid positions kept (grid mode)."""
    from ..tiling import TileRun, load_tile

    t0 = time.perf_counter()
    try:
        tile = plan.tiles[index]
        p = plan.job.params
        models = get_models(p.model_size, p.device) if _needs_models(p) else None
        acc = _accumulator(plan, models)
        run = TileRun(tiles=[tile])
        arrays = load_tile(_open(plan.job), tile, plan.stretch, run)
        acc.add(arrays)
        del arrays
        names, centres = _piece_fields(acc)
        if centres is None:
            piece = {"grid_kept": list(acc.grid_kept)}
            rs = cs = slice(0, 0)
        else:
            first = getattr(acc, names[0])
            r0, c0, r1, c1 = tile.core
            rs, cs = _owned(centres, first.shape[0], r0, r1), _owned(centres, first.shape[1], c0, c1)
            piece = {n: np.array(getattr(acc, n)[rs, cs]) for n in names}
        return {"index": index, "rows": rs, "cols": cs, "piece": piece, "read_s": run.read_s,
                "seconds": time.perf_counter() - t0, "models": _models_info(models)}
    except (MatcherError, MemoryError) as exc:
        return Failed(str(exc) or type(exc).__name__)


def select_candidates(plan: TilePlan, *pieces):
    """The scene's candidates from the stitched pieces: the single selection of an untiled run.
    Returns ``{"points", "scores", "seconds", "read_s"}``."""
    t0 = time.perf_counter()
    for pc in pieces:
        if isinstance(pc, Failed):
            return pc
    try:
        p = plan.job.params
        acc = _accumulator(plan, models=None)  # select() needs no network
        names, centres = _piece_fields(acc)
        for pc in sorted(pieces, key=lambda d: d["index"]):
            if centres is None:
                acc.grid_kept.extend(pc["piece"]["grid_kept"])
            else:
                for n in names:
                    getattr(acc, n)[pc["rows"], pc["cols"]] = pc["piece"][n]
        points = acc.select()
        scores = np.asarray(getattr(acc, "scores", np.zeros(0)), float) if p.candidate_mode() == "goodness" else None
        if len(points) == 0:
            from ..pipeline import _no_candidates_message

            return Failed(_no_candidates_message(plan.valid_fraction, p.effective_search_size(),
                                                 getattr(plan.stretch, "sar_scale", "")), "TooFewPointsError")
        sec = sum(pc["seconds"] for pc in pieces) + (time.perf_counter() - t0)
        return {"points": np.asarray(points, int), "scores": scores, "seconds": sec,
                "read_s": sum(pc["read_s"] for pc in pieces),
                "models": next((pc["models"] for pc in pieces if pc.get("models")), None)}
    except (MatcherError, MemoryError) as exc:
        return Failed(str(exc) or type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Pass 2: matching
# --------------------------------------------------------------------------------------------

def match_tile(plan: TilePlan, index: int, selection):
    """Pass 2 for one tile: match the candidates its core owns (none: nothing is read).
    Returns ``{"idx", "matches", "seconds", "read_s"}``."""
    from ..pipeline import classical_tile_matcher
    from ..tiling import TileRun, compact, load_tile

    if isinstance(selection, Failed):
        return selection
    t0 = time.perf_counter()
    try:
        tile = plan.tiles[index]
        points = selection["points"]
        idx = np.flatnonzero(tile.owns(points))
        if len(idx) == 0:
            return {"idx": idx, "matches": [], "seconds": 0.0, "read_s": 0.0, "models": None}
        p = plan.job.params
        models = None
        if p.method == "deep":
            from ..deep.matcher import tile_matcher_for

            models = get_models(p.model_size, p.device)
            matcher = tile_matcher_for(models, plan.block)
        else:
            matcher = classical_tile_matcher(plan.block)
        run = TileRun(tiles=[tile])
        arrays = load_tile(_open(plan.job), tile, plan.stretch, run)
        local = points[idx] - np.asarray(tile.origin)
        ms = matcher(arrays, local, p, None)
        if len(ms) != len(idx):
            raise ValueError(f"the tile matcher returned {len(ms)} matches for {len(idx)} points")
        return {"idx": idx, "matches": [compact(m) for m in ms], "seconds": time.perf_counter() - t0,
                "read_s": run.read_s, "models": _models_info(models)}
    except (MatcherError, MemoryError) as exc:
        return Failed(str(exc) or type(exc).__name__)


def finish(plan: TilePlan, selection, *matched) -> PairOutcome:
    """One geometry fit for the whole pair (as ``match_pair``), then ``write_results``."""
    from ..pipeline import (CUDA_FALLBACK, MatchResult, _too_few_advice, build_tieset, compute_stats,
                            fit_geometry, flag_inconsistent, flag_weak)
    from ..verdict import result_warnings
    from ..write_results import ensure_writable_dir

    job = plan.job
    t0 = time.perf_counter()
    n_tasks = 2 * len(plan.tiles) + 3
    g_h, g_w = plan.shape
    common = dict(tasks=n_tasks, tiles=len(plan.tiles), megapixels=g_h * g_w / 1e6)
    made = not os.path.exists(job.out_dir)
    task_s = plan.seconds
    try:
        for x in (selection,) + matched:
            if isinstance(x, Failed):
                return PairOutcome(job.name, "failed", error=x.message, seconds=task_s, worker=_worker_name(),
                                   **common)
        p = job.params
        points = selection["points"]
        matches: list = [None] * len(points)
        for m in matched:
            for i, pm in zip(m["idx"], m["matches"]):
                matches[int(i)] = pm
        if any(m is None for m in matches):
            raise RuntimeError("a candidate was not matched by any tile")
        if selection["scores"] is not None:
            for m, g in zip(matches, selection["scores"]):
                m.goodness = float(g)
        match_s = sum(m["seconds"] for m in matched)
        task_s += selection["seconds"] + match_s
        src = _open(job)
        tieset = build_tieset(src, points, matches)
        t1 = time.perf_counter()
        flag_weak(tieset, matches, p)
        flag_inconsistent(tieset, p)
        try:
            transform = fit_geometry(tieset, p)
        except TooFewPointsError as exc:
            n_ok = sum(pt.status == "inlier" for pt in tieset.points)
            raise TooFewPointsError(f"{exc} ({len(points)} candidates, {n_ok} reliable matches). "
                                    + _too_few_advice(p, plan.notes)) from exc
        timings = dict(plan.timings)
        timings["Finding candidates"] = round(selection["seconds"], 3)
        timings["Matching"] = round(match_s, 3)
        timings["Fitting geometry"] = round(time.perf_counter() - t1, 3)
        timings["Tile reads"] = round(selection["read_s"] + sum(m["read_s"] for m in matched), 3)
        stats = compute_stats(tieset, len(points), src.grid)
        stats.n_tiles = len(plan.tiles)
        notes = list(plan.notes)
        result = MatchResult(tieset=tieset, transform=transform, stats=stats, params=p, pair=src,
                             stretch=plan.stretch, timings=timings, warnings=notes)
        infos = [selection.get("models")] + [m.get("models") for m in matched]
        info = next((i for i in infos if i), None)
        if _needs_models(p) and info is None:  # no task needed the networks (cannot happen with candidates)
            info = _models_info(get_models(p.model_size, p.device))
        if info is not None:
            if p.device == "cuda" and info["provider"] != "cuda":
                result.warnings.append(CUDA_FALLBACK)
            result.models = {k: info[k] for k in ("size", "provider", "versions")}
            for i in infos:
                for w in (i or {}).get("warnings", []):
                    if w not in result.warnings:
                        result.warnings.append(w)
        result.warnings += result_warnings(stats, p)
        ensure_writable_dir(job.out_dir)
        summary = write_pair(result, job)
        return PairOutcome(job.name, "done", summary=summary, seconds=task_s + time.perf_counter() - t0,
                           worker=_worker_name(), **common)
    except (MatcherError, MemoryError) as exc:
        _remove_empty(job.out_dir, made)
        return _failure(job, exc, task_s + time.perf_counter() - t0, **common)
