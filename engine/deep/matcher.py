"""CorrASL + ORN as a ``tiling.TileMatcher``: one batched network pass per chunk of candidates.

For each candidate the SAR search window (``params.effective_search_size()``, 256 px by default) and
the 128 px optical template centred on it are cut from the tile, the heatmaps computed in batches,
and each heatmap turned into pixels: sub-pixel peak (quadratic fit over the 3x3 cells around the
maximum), covariance from the peak shape (scaled by the 2 px cell), the next best peaks as
alternative hypotheses, and the ORN's reliability (``PatchMatch.reliability``).

Cell -> pixel mapping for a search window of S px: heatmap cell k (per axis) places the template's
top-left at 2 k px in the window, so the offset of the template centre from the window centre is
``2 k - (S - 128) / 2`` px (k = 32 -> 0 for S = 256), verified on simulated shifts in the tests.
For S > 256 the heatmap is larger than the ORN's 65x65 input; the ORN then sees the 65x65 crop
centred on the peak.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..matchers.subpixel import heatmap_center, refine_peak, top_peaks
from ..params import MatchParams
from ..types import PatchMatch

CHUNK = 32
ORN_SIZE = 65
TEMPLATE = 128


def cell_to_offset(cell: np.ndarray, search: int) -> np.ndarray:
    """Absolute heatmap cell (row, col) -> (drow, dcol) px of the template centre from the window centre."""
    return 2.0 * np.asarray(cell, float) - (search - TEMPLATE) / 2.0


def heatmap_to_match(h: np.ndarray, search: int, alternatives: int = 3,
                     correction: tuple[float, float] = (0.0, 0.0)) -> PatchMatch:
    """One raw CorrASL heatmap -> PatchMatch in pixels (peak = integer px of the best cell).

    ``correction``: the model's measured systematic offset (``DeepModels.offset_correction``),
    subtracted from the sub-pixel offset and the alternatives."""
    r = refine_peak(h, exclusion_radius=2.0)
    centre = np.array(heatmap_center(h.shape), float)
    off = cell_to_offset(np.array(r.offset) + centre, search) - np.asarray(correction, float)
    peak = cell_to_offset(np.array(r.peak) + centre, search)
    offs, _ = top_peaks(h, alternatives + 1, min_distance=2.0)
    alt = cell_to_offset(offs[1:] + centre, search) - np.asarray(correction, float) if len(offs) > 1 \
        else np.empty((0, 2))
    c = r.cov
    return PatchMatch(heatmap=np.zeros((0, 0), np.float32), peak=(int(round(peak[0])), int(round(peak[1]))),
                      offset=(float(off[0]), float(off[1])), score=float(r.score), quality=float(r.quality),
                      cov=(4.0 * c[0], 4.0 * c[1], 4.0 * c[2]), alternatives=alt)


def orn_crop(h: np.ndarray) -> np.ndarray:
    """The ORN's 65x65 input: the heatmap itself, or the crop centred on its peak when larger."""
    if h.shape == (ORN_SIZE, ORN_SIZE):
        return h
    i, j = np.unravel_index(int(np.argmax(h)), h.shape)
    r0 = int(np.clip(i - ORN_SIZE // 2, 0, h.shape[0] - ORN_SIZE))
    c0 = int(np.clip(j - ORN_SIZE // 2, 0, h.shape[1] - ORN_SIZE))
    return h[r0:r0 + ORN_SIZE, c0:c0 + ORN_SIZE]


def deep_tile_matcher(models, chunk: int = CHUNK, cancel_check: Optional[Callable[[], None]] = None):
    """A ``TileMatcher`` running CorrASL and the ORN (``models``: ``engine.runtime.deep.DeepModels``)."""

    def run(tile, points: np.ndarray, params: MatchParams,
            report: Optional[Callable[[float], None]] = None) -> list[PatchMatch]:
        S = params.effective_search_size()
        s2, t2 = S // 2, TEMPLATE // 2
        out: list[PatchMatch] = []
        for start in range(0, len(points), chunk):
            pts = points[start:start + chunk]
            wins = np.stack([tile.sar[r - s2:r + s2, c - s2:c + s2] for r, c in pts])
            tpls = np.stack([tile.opt[r - t2:r + t2, c - t2:c + t2] for r, c in pts])
            heat = models.heatmaps(wins, tpls)
            rel = models.reliability(np.stack([orn_crop(h) for h in heat]))
            for h, p in zip(heat, rel):
                m = heatmap_to_match(h, S, correction=models.offset_correction)
                m.reliability = float(p)
                out.append(m)
            if report:
                report(min(1.0, (start + len(pts)) / max(len(points), 1)))
        return out

    return run


def sp_tile_matcher(models, block: int):
    """A ``TileMatcher`` for CorrASL-SP model sets: the network's stride-1 features computed once per
    descriptor block (``pipeline._match_structural_blocks`` with the network as the descriptor), the ZNCC
    heatmap at 1 px cells, and the set's ORN on the 65 x 65 cells around each peak (raw ZNCC values)."""
    from ..pipeline import _match_structural_blocks

    def run(tile, points: np.ndarray, params: MatchParams,
            report: Optional[Callable[[float], None]] = None) -> list[PatchMatch]:
        out = _match_structural_blocks(tile.sar, tile.opt, tile.valid, points, params, report, block,
                                       tile.origin, describe=models.sp.describe)
        if out:
            crops = []
            for m in out:
                h = np.asarray(m.heatmap, np.float32)
                h = np.where(np.isfinite(h), h, np.nanmin(h) if np.isfinite(h).any() else 0.0)
                crops.append(orn_crop(h))
            for m, p in zip(out, models.reliability(np.stack(crops))):
                m.reliability = float(p)
        return out

    return run


SP_BLOCK = 512
"""Descriptor block side (px) for CorrASL-SP features. Why smaller than the structural matcher's 1024: the
network keeps 32-channel activations of the whole padded block; one 1324² padded block (1024 px) peaks at
1.6 GB, one 812² block (512 px) at 0.74 GB (measured, onnxruntime without arena), for about 50 % more feature
pixels computed (halo). A divisor of the tiling block, so blocks never straddle a tile border (768 px blocks
did, and were computed twice: matching took 116 s instead of 60 s on a 4096² scene)."""


def tile_matcher_for(models, block: int):
    """The deep ``TileMatcher`` the loaded set calls for: CorrASL-SP (features once per block of at most
    ``SP_BLOCK`` px, a divisor of ``block``) or the published CorrASL (windows in batches); the kind comes from the models' metadata.
    Local runs and batch tasks both come here, so their blocks (and tie points) are the same."""
    if getattr(models, "kind", "corrasl") == "sp":
        return sp_tile_matcher(models, SP_BLOCK if block % SP_BLOCK == 0 else block)
    return deep_tile_matcher(models)
