"""Scene goodness: where both modalities are likely to match, and the candidates picked from it.

Thesis 3.3.2: each goodness network maps its image at stride 32 (cell (i, j) judges the 128 px
square starting at pixel (32 i, 32 j)); the two maps are fused per cell with ``min`` (both must be
good: precision, the default) or ``max`` (either: recall); a 3x3 soft non-maximum suppression
``exp(G) / sum_3x3 exp(G)`` turns the map into local peakiness, and local maxima whose goodness is
above a threshold become candidates (cell centre = pixel (32 i + 64, 32 j + 64)).

Spread: peaks are ranked by goodness inside a coarse grid of ``n_target`` spread cells and taken
round-robin (best of every spread cell first), so the tie points cover the scene instead of piling
up in its best-textured corner.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage

STRIDE = 32
FIELD = 128
FUSIONS = ("min", "max")


def cell_centres(n: int) -> np.ndarray:
    """Pixel centre (along one axis) of goodness cells 0..n-1 of an image starting at pixel 0."""
    return STRIDE * np.arange(n) + FIELD // 2


def fuse(g_sar: np.ndarray, g_opt: np.ndarray, how: str = "min") -> np.ndarray:
    if how not in FUSIONS:
        raise ValueError(f"goodness fusion must be one of {FUSIONS}, got {how!r}")
    return np.minimum(g_sar, g_opt) if how == "min" else np.maximum(g_sar, g_opt)


def soft_nms(g: np.ndarray) -> np.ndarray:
    """exp(G) / sum over the 3x3 window of exp(G) (borders: the window inside the map)."""
    e = np.exp(np.asarray(g, np.float64))
    s = ndimage.uniform_filter(e, 3, mode="constant") * 9.0
    n = ndimage.uniform_filter(np.ones_like(e), 3, mode="constant") * 9.0
    return (e / s) * (n / 9.0)


def peaks(g: np.ndarray, threshold: float, usable: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, 2) cells that are 3x3 maxima of the soft-NMS map with goodness >= threshold (and usable)."""
    s = soft_nms(g)
    m = (s >= ndimage.maximum_filter(s, 3, mode="constant", cval=-np.inf)) & (g >= threshold)
    if usable is not None:
        m &= usable
    return np.argwhere(m)


def spread_select(cells: np.ndarray, score: np.ndarray, shape_px: tuple[int, int], n_target: int) -> np.ndarray:
    """Indices into ``cells`` (pixel centres ``cell_centres``) chosen round-robin over spread cells."""
    if len(cells) == 0 or n_target <= 0:
        return np.zeros(0, int)
    h, w = shape_px
    side = max(STRIDE, int(math.sqrt(h * w / max(n_target, 1))))
    rr = cell_centres(1)[0] + STRIDE * cells[:, 0]
    cc = cell_centres(1)[0] + STRIDE * cells[:, 1]
    bucket = (rr // side) * (w // side + 1) + cc // side
    order = np.lexsort((-score, bucket))
    b_sorted = bucket[order]
    first = np.r_[0, np.flatnonzero(np.diff(b_sorted)) + 1]
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    # round-robin: all rank-0 (best per bucket) by score, then rank 1, ...
    final = order[np.lexsort((-score[order], rank))]
    return final[:n_target]


def _window_sums(valid: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Valid-pixel counts of the windows [r0, r1) x [c0, c1) (outer product of the row and column
    ranges, clipped to the image) from one integral image."""
    v = np.asarray(valid, np.float64)
    ii = np.zeros((v.shape[0] + 1, v.shape[1] + 1))
    ii[1:, 1:] = v.cumsum(0).cumsum(1)
    r0, r1 = np.clip(r0, 0, v.shape[0]), np.clip(r1, 0, v.shape[0])
    c0, c1 = np.clip(c0, 0, v.shape[1]), np.clip(c1, 0, v.shape[1])
    return ii[np.ix_(r1, c1)] - ii[np.ix_(r0, c1)] - ii[np.ix_(r1, c0)] + ii[np.ix_(r0, c0)]


def valid_fraction_cells(valid: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Fraction of valid pixels in each goodness cell's 128 px field, (n_rows, n_cols)."""
    r0 = STRIDE * np.arange(n_rows)
    c0 = STRIDE * np.arange(n_cols)
    return _window_sums(valid, r0, r0 + FIELD, c0, c0 + FIELD) / float(FIELD * FIELD)


class GoodnessAccumulator:
    """Tile-by-tile scene goodness map (stride 32) and the candidate selection over it.

    Same interface as ``tiling.CandidateAccumulator`` (``add(tile)``, ``select()``). Tile read windows
    start on multiples of 32 (the tiles are planned with that snap), so a tile's cells coincide with
    the scene's; a cell belongs to the tile whose core contains its centre, and the tile margin (the
    search half-window, >= 128 px) exceeds the networks' reach, so the stitched map has no seams.
    """

    def __init__(self, models, shape: tuple[int, int], fusion: str, threshold: float, margin: int,
                 n_target: int, min_valid: float = 0.98) -> None:
        self.models = models
        self.shape = shape
        self.fusion = fusion
        self.threshold = threshold
        self.margin = margin
        self.n_target = n_target
        self.min_valid = min_valid
        n_r = max((shape[0] - FIELD) // STRIDE + 1, 0)
        n_c = max((shape[1] - FIELD) // STRIDE + 1, 0)
        self.good = np.full((n_r, n_c), np.nan, np.float32)
        self.g_sar = np.full((n_r, n_c), np.nan, np.float32)
        self.g_opt = np.full((n_r, n_c), np.nan, np.float32)
        self.usable = np.zeros((n_r, n_c), bool)
        self.scores = np.zeros(0)

    def add(self, t) -> None:
        o_r, o_c = t.origin
        if o_r % STRIDE or o_c % STRIDE:
            raise ValueError("tile read windows must start on multiples of the goodness stride (32 px)")
        if not t.valid.any() or min(t.sar.shape) < FIELD:
            return
        gs = self.models.goodness_map(t.sar, "sar")
        go = self.models.goodness_map(t.opt, "opt")
        n_r, n_c = gs.shape
        frac = valid_fraction_cells(t.valid, n_r, n_c)
        # scene cell index of tile cell (0, 0) and the cells whose centre lies in the core
        g_r0, g_c0 = o_r // STRIDE, o_c // STRIDE
        r0, c0, r1, c1 = t.tile.core
        rows = np.arange(n_r)
        cols = np.arange(n_c)
        cen_r = o_r + cell_centres(n_r)
        cen_c = o_c + cell_centres(n_c)
        rows = rows[(cen_r >= r0) & (cen_r < r1) & (g_r0 + rows < self.good.shape[0])]
        cols = cols[(cen_c >= c0) & (cen_c < c1) & (g_c0 + cols < self.good.shape[1])]
        if not len(rows) or not len(cols):
            return
        li = np.ix_(rows, cols)
        gi = np.ix_(g_r0 + rows, g_c0 + cols)
        self.g_sar[gi] = gs[li]
        self.g_opt[gi] = go[li]
        self.good[gi] = fuse(gs[li], go[li], self.fusion)
        # usable: every pixel of the search window around the cell centre is inside the scene and valid
        cr = (o_r + cell_centres(n_r))[rows]
        cc = (o_c + cell_centres(n_c))[cols]
        inside = ((cr[:, None] - self.margin >= 0) & (cr[:, None] + self.margin <= self.shape[0])
                  & (cc[None, :] - self.margin >= 0) & (cc[None, :] + self.margin <= self.shape[1]))
        win_ok = _windows_valid(t.valid, cr - o_r, cc - o_c, self.margin, self.min_valid)
        self.usable[gi] = inside & win_ok & (frac[li] >= self.min_valid)

    def select(self) -> np.ndarray:
        g = np.nan_to_num(self.good, nan=0.0)
        cells = peaks(g, self.threshold, self.usable)
        sc = g[cells[:, 0], cells[:, 1]] if len(cells) else np.zeros(0)
        keep = spread_select(cells, sc, self.shape, self.n_target)
        cells, sc = cells[keep], sc[keep]
        self.scores = sc
        self.cells = cells
        pts = np.stack([cell_centres(1)[0] + STRIDE * cells[:, 0], cell_centres(1)[0] + STRIDE * cells[:, 1]], 1)
        return pts.astype(int).reshape(-1, 2)


def _windows_valid(valid: np.ndarray, rows: np.ndarray, cols: np.ndarray, half: int, min_frac: float) -> np.ndarray:
    """(len(rows), len(cols)) bool: the (2 half)^2 window around each position is >= min_frac valid."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return _window_sums(valid, rows - half, rows + half, cols - half, cols + half) >= min_frac * (2 * half) ** 2
