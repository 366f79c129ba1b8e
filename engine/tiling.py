"""Tiled processing: the scene is read, preprocessed and matched one tile at a time.

Why: holding the whole area of interest in memory costs about 60 bytes per grid pixel (raw bands,
unit images, masks, filter temporaries), 15 GB for a 16384² pair. Here memory is bounded by the tile
size instead, and results do not depend on the tiling:

1. **Scene statistics without a full read** (``scene_stretch``): the SAR scale and the robust
   1–99 % stretch of both images come from a point-sampled decimation of the common grid (at most
   ``TilingOptions.stats_max_pixels``, every ``f``-th pixel, ``f`` odd so samples are exact grid
   pixels) plus a few full-resolution SAR chips for the scale detector's speckle test. Every tile is
   then stretched with these fixed ranges, so a pixel's unit value does not depend on its tile.
   Scenes up to that size are read whole, exactly as a whole-scene run would.
2. **Tiles** (``plan_tiles``): the grid is cut into square *cores* that partition it; each tile is
   read over its core plus a margin (``tile_margin``) wide enough that everything computed for a
   position in the core (its candidate score, its search window, the structural descriptor block
   around it) sees exactly the pixels a whole-scene computation would.
3. **Two passes**. Pass 1 (``CandidateAccumulator``) computes, tile by tile, the raw candidate
   score ingredients of the core (a map at 1/``step``² of the pixels) and the window-validity test;
   the spread-out selection then runs once over the stitched scene-wide map, so candidates are the
   same as without tiling, unique, and spread over the whole scene. Pass 2 (``match_tiles``) reads
   the tiles again and hands each one, with the candidates its core owns, to a ``TileMatcher``;
   only the small per-match results are kept. The last tile of pass 1 is reused as the first of
   pass 2, so a one-tile scene is read once.

A ``TileMatcher`` is any function ``(TileArrays, local points, MatchParams, report) -> PatchMatch
list``: the classical matchers are one (``pipeline.classical_tile_matcher``), a learned matcher can
be another, reusing the same tiling.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional, Protocol

import numpy as np
from rasterio.enums import Resampling

from . import candidates as cand
from .errors import InputError
from .params import MatchParams
from .preprocess import Stretch, apply_stretch, estimate_stretch
from .raster_io import Grid, GridPair, PairSource, _read_onto, read_pair
from .types import PatchMatch

DESCRIPTOR_BLOCK = 1024
"""Side of the square blocks over which structural descriptors are computed once and shared by all
candidates inside; bounds memory (about 36 bytes per pixel of a padded block) independently of the
scene size. Tile cores are multiples of it so blocks never straddle a tile."""

DESCRIPTOR_SUPPORT = 16
"""Pixels beyond a search window that the structural descriptor filters reach."""

TILE_CORE = 2048
"""Default tile core side (px). A tile is read over (core + 2 x margin)², about 2336² px with the
default 256 px search window: a few hundred MB at the pipeline's ~60 bytes per pixel."""

STATS_MAX_PIXELS = 2_000_000
"""Largest sample (grid pixels) the scene statistics are computed from; scenes up to this size are
read whole for them (and give exactly the statistics of a whole-scene run)."""

TEXTURE_CHIPS = 4
TEXTURE_CHIP = 256
"""The SAR scale detector's speckle test needs neighbouring full-resolution pixels, which a
decimated sample lacks: it gets TEXTURE_CHIPS² chips of TEXTURE_CHIP² px spread over the scene."""


@dataclass(frozen=True)
class TilingOptions:
    """How ``match_pair`` tiles a scene (defaults suit any scene size)."""

    core: int = TILE_CORE
    """Tile core side in px; rounded up to a multiple of ``block``."""
    block: int = DESCRIPTOR_BLOCK
    """Structural descriptor block side in px (see ``DESCRIPTOR_BLOCK``)."""
    stats_max_pixels: int = STATS_MAX_PIXELS

    def core_size(self) -> int:
        b = max(int(self.block), 1)
        return max(b, int(math.ceil(max(int(self.core), 1) / b)) * b)


@dataclass(frozen=True)
class Tile:
    """One tile: its core (owned positions) and its read window, (row0, col0, row1, col1) half-open,
    in pixels of the common grid."""

    index: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    @property
    def origin(self) -> tuple[int, int]:
        """Grid (row, col) of pixel [0, 0] of the tile's arrays."""
        return self.read[0], self.read[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.read[2] - self.read[0], self.read[3] - self.read[1]

    def owns(self, points: np.ndarray) -> np.ndarray:
        """Bool (N,): which grid (row, col) positions lie in this tile's core."""
        p = np.asarray(points).reshape(-1, 2)
        r0, c0, r1, c1 = self.core
        return (p[:, 0] >= r0) & (p[:, 0] < r1) & (p[:, 1] >= c0) & (p[:, 1] < c1)


def plan_tiles(height: int, width: int, core: int, margin: int, snap: int = 1) -> list[Tile]:
    """Cores of ``core`` px partitioning the grid (row-major), read windows reaching ``margin`` px
    beyond them, clipped to the grid. Read windows start on multiples of ``snap`` (the candidate
    score stride), so a tile's score cells coincide with the scene's."""
    core, snap = max(int(core), 1), max(int(snap), 1)
    tiles = []
    for r0 in range(0, height, core):
        for c0 in range(0, width, core):
            r1, c1 = min(r0 + core, height), min(c0 + core, width)
            rr0 = max(((r0 - margin) // snap) * snap, 0)
            cc0 = max(((c0 - margin) // snap) * snap, 0)
            tiles.append(Tile(index=len(tiles), core=(r0, c0, r1, c1),
                              read=(rr0, cc0, min(r1 + margin, height), min(c1 + margin, width))))
    return tiles


def candidate_geometry(params: MatchParams) -> tuple[int, int, int]:
    """(margin, template, step) of the structure candidate detector as ``match_pair`` uses it: the
    margin is the search window half-size, the structure scale its default (the margin)."""
    margin = params.effective_search_size() // 2
    template, step = cand.structure_defaults(margin, None, None)
    return margin, template, step


def tile_margin(params: MatchParams) -> int:
    """Read margin around a tile core: the search window half-size plus the descriptor support (the
    structural block halo), and at least the candidate score's support; a multiple of the score
    step so score cells line up."""
    margin, template, step = candidate_geometry(params)
    need = max(margin + DESCRIPTOR_SUPPORT, cand.structure_support(template, step))
    return int(math.ceil(need / step)) * step


# --------------------------------------------------------------------------------------------
# Scene statistics from a decimated read
# --------------------------------------------------------------------------------------------

def decimation_factor(height: int, width: int, max_pixels: int = STATS_MAX_PIXELS) -> int:
    """Smallest odd f with (height/f)·(width/f) <= max_pixels (1 when the grid is that small).
    Odd, so the coarse pixel centres are fine pixel centres."""
    n = float(height) * float(width)
    if n <= max_pixels:
        return 1
    f = int(math.ceil(math.sqrt(n / max_pixels)))
    return f + 1 - f % 2


def texture_sample(src: PairSource, chips: int = TEXTURE_CHIPS, chip: int = TEXTURE_CHIP) -> np.ndarray:
    """A mosaic of ``chips``² full-resolution SAR chips spread evenly over the grid (NaN = invalid):
    a 2-D sample with real neighbouring pixels for the scale detector's speckle test."""
    g = src.grid
    ch, cw = min(chip, g.height), min(chip, g.width)
    out = np.full((chips * ch, chips * cw), np.nan, np.float32)
    for i in range(chips):
        r = int(min(max(round((i + 0.5) * g.height / chips - ch / 2), 0), g.height - ch))
        for j in range(chips):
            c = int(min(max(round((j + 0.5) * g.width / chips - cw / 2), 0), g.width - cw))
            arr, _valid = _read_onto(src.sar_info, [src.sar_band], g.window(r, c, ch, cw), Resampling.bilinear)
            out[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = arr[0]
    return out


@dataclass
class SceneStats:
    stretch: Stretch
    valid_fraction: float
    """Fraction of the (sampled) grid valid in both images."""
    factor: int
    """Decimation factor of the sample (1: the whole grid was read)."""
    whole: Optional[GridPair] = None
    """The raw whole-grid read when ``factor`` is 1, so a one-tile scene is not read again."""


def scene_stretch(src: PairSource, params: MatchParams, max_pixels: int = STATS_MAX_PIXELS) -> SceneStats:
    """The scene-wide ``Stretch`` (SAR scale, SAR and optical 1–99 % ranges) from a decimated read.

    Raises ``InputError`` when less than 1 % of the area holds valid pixels in both rasters."""
    g = src.grid
    f = decimation_factor(g.height, g.width, max_pixels)
    sample = read_pair(src, g.decimated(f) if f > 1 else g, point_sample=f > 1)
    texture = texture_sample(src) if (f > 1 and params.sar_scale == "auto") else None
    stretch = estimate_stretch(sample.sar, sample.sar_valid, sample.optical, sample.opt_valid,
                               scale=params.sar_scale, clip=params.sar_clip, texture=texture)
    _s, _o, valid = apply_stretch(sample.sar, sample.sar_valid, sample.optical, sample.opt_valid, stretch)
    frac = float(valid.mean())
    if frac < 0.01:
        raise InputError("Less than 1 % of the area of interest holds valid pixels in both rasters "
                         "(nodata, NaN or zero-filled borders); choose an area where both have data.")
    return SceneStats(stretch=stretch, valid_fraction=frac, factor=f, whole=sample if f == 1 else None)


# --------------------------------------------------------------------------------------------
# Tile reads
# --------------------------------------------------------------------------------------------

@dataclass
class TileArrays:
    """One tile on the common grid, preprocessed with the scene's stretch."""

    tile: Tile
    grid: Grid
    """The tile's own georeferenced grid (a window of the common grid)."""
    sar: np.ndarray
    """(h, w) float32 SAR in [0, 1] (0 where invalid)."""
    opt: np.ndarray
    """(h, w) float32 optical gray in [0, 1] (0 where invalid)."""
    valid: np.ndarray
    """(h, w) bool, valid in both images."""

    @property
    def origin(self) -> tuple[int, int]:
        return self.tile.origin


def read_tile(src: PairSource, tile: Tile, stretch: Stretch, raw: Optional[GridPair] = None) -> TileArrays:
    """Read one tile's window of both rasters onto the common grid and stretch it; the raw bands
    are dropped before returning. ``raw``: the window's pixels when already read."""
    r0, c0, r1, c1 = tile.read
    grid = src.grid.window(r0, c0, r1 - r0, c1 - c0)
    raw = read_pair(src, grid) if raw is None else raw
    sar, opt, valid = apply_stretch(raw.sar, raw.sar_valid, raw.optical, raw.opt_valid, stretch)
    return TileArrays(tile=tile, grid=grid, sar=sar, opt=opt, valid=valid)


# --------------------------------------------------------------------------------------------
# Pass 1: candidates
# --------------------------------------------------------------------------------------------

def grid_spacing_for(shape: tuple[int, int], margin: int, n: int) -> int:
    """Grid candidate spacing giving about ``n`` positions in the usable area."""
    h, w = max(shape[0] - 2 * margin, 1), max(shape[1] - 2 * margin, 1)
    return max(16, int(math.sqrt(h * w / max(n, 1))))


@dataclass
class CandidateAccumulator:
    """Collects, tile by tile, what the candidate selection needs, then selects once for the scene.

    'structure' mode keeps the raw score ingredients and the window test on the score grid (17
    bytes per ``step``² px); 'grid' mode keeps the regular positions whose window is valid."""

    params: MatchParams
    shape: tuple[int, int]
    margin: int = 0
    template: int = 0
    step: int = 1
    lam: Optional[np.ndarray] = None
    energy: Optional[np.ndarray] = None
    ok: Optional[np.ndarray] = None
    grid_rows: Optional[np.ndarray] = None
    grid_cols: Optional[np.ndarray] = None
    grid_kept: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.margin, self.template, self.step = candidate_geometry(self.params)
        h, w = self.shape
        mode = self.params.candidate_mode()
        if mode == "structure":
            cells = (h // self.step, w // self.step)
            self.lam = np.zeros(cells)
            self.energy = np.zeros(cells)
            self.ok = np.zeros(cells, bool)
        elif mode == "grid":
            spacing = self.params.grid_spacing or grid_spacing_for(self.shape, self.margin, self.params.n_target)
            self.grid_rows, self.grid_cols = cand.grid_positions(self.shape, spacing, self.margin)
        else:
            raise InputError(f"Unknown candidate mode '{self.params.candidates}' (use 'structure' or 'grid').")

    def add(self, t: TileArrays) -> None:
        """Take one tile's contribution for the positions its core owns."""
        if not t.valid.any():
            return  # nothing valid within the tile's reach: its cells stay 0 / not usable
        r0, c0, r1, c1 = t.tile.core
        o_r, o_c = t.origin
        if self.params.candidate_mode() == "grid":
            rows = self.grid_rows[(self.grid_rows >= r0) & (self.grid_rows < r1)]
            cols = self.grid_cols[(self.grid_cols >= c0) & (self.grid_cols < c1)]
            if len(rows) and len(cols):
                keep = cand.grid_windows_valid(t.valid, rows - o_r, cols - o_c, self.margin)
                rr, cc = np.nonzero(keep)
                self.grid_kept.append(np.stack([rows[rr], cols[cc]], axis=1))
            return
        s = self.step
        if o_r % s or o_c % s:
            raise ValueError("tile read windows must start on multiples of the score step")
        lam, energy = cand.structure_score_parts(t.opt, t.sar, self.template, s, t.valid)
        ok = cand.windows_ok_map(t.valid, lam.shape, s, self.margin, origin=t.origin, full_shape=self.shape)
        # Global cells whose centre lies in the core, and where they sit in the tile's map.
        g_r = np.arange(self.lam.shape[0])
        g_c = np.arange(self.lam.shape[1])
        sel_r = g_r[(cand.cell_centres(len(g_r), s) >= r0) & (cand.cell_centres(len(g_r), s) < r1)]
        sel_c = g_c[(cand.cell_centres(len(g_c), s) >= c0) & (cand.cell_centres(len(g_c), s) < c1)]
        if not len(sel_r) or not len(sel_c):
            return
        l_r, l_c = sel_r - o_r // s, sel_c - o_c // s
        if l_r[-1] >= lam.shape[0] or l_c[-1] >= lam.shape[1]:
            raise ValueError("tile margin too small for the candidate score")
        gi, li = np.ix_(sel_r, sel_c), np.ix_(l_r, l_c)
        self.lam[gi] = lam[li]
        self.energy[gi] = energy[li]
        self.ok[gi] = ok[li]

    def select(self) -> np.ndarray:
        """(N, 2) int (row, col) candidates of the whole scene, in the order matching uses."""
        if self.params.candidate_mode() == "grid":
            if not self.grid_kept:
                return np.zeros((0, 2), int)
            pts = np.concatenate(self.grid_kept)
            return pts[np.lexsort((pts[:, 1], pts[:, 0]))].astype(int)  # row-major, as grid_candidates
        score = cand.combine_structure_parts(self.lam, self.energy)
        pts, _scores = cand.select_structure_candidates(score, self.step, self.shape, self.margin,
                                                        self.params.n_target, win_ok=self.ok,
                                                        template=self.template)
        return np.asarray(pts, dtype=int).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# Pass 2: matching
# --------------------------------------------------------------------------------------------

class TileMatcher(Protocol):
    """Matches the candidates of one tile.

    ``points`` are (N, 2) int (row, col) in the tile's arrays (each with its whole search window
    inside them); ``report(fraction)`` may be called with the fraction of ``points`` done. Returns
    one ``PatchMatch`` per point, offsets in grid pixels."""

    def __call__(self, tile: TileArrays, points: np.ndarray, params: MatchParams,
                 report: Optional[Callable[[float], None]] = None) -> list[PatchMatch]: ...


def compact(m: PatchMatch) -> PatchMatch:
    """The match without its similarity surface: nothing downstream reads it, and hundreds of
    (2R+1)² float surfaces would grow with the number of candidates."""
    return replace(m, heatmap=np.zeros((0, 0), np.float32))


@dataclass
class TileRun:
    """One tiled run: its tiles, the pixels handed from one stage to the next, and read timings.

    The hand-overs live here rather than in the caller's variables so that each is dropped the
    moment it has been used: a tile that outlived its turn would double the peak memory."""

    tiles: list[Tile]
    whole: Optional[GridPair] = None
    """The raw whole grid when the statistics read already read it (scenes up to 2 Mpx)."""
    cached: Optional[TileArrays] = None
    """The last tile of pass 1, reused as the first tile of pass 2."""
    read_s: float = 0.0
    reads: int = 0


def load_tile(src: PairSource, tile: Tile, stretch: Stretch, run: TileRun,
              raw: Optional[GridPair] = None) -> TileArrays:
    t0 = time.perf_counter()
    arrays = read_tile(src, tile, stretch, raw)
    run.read_s += time.perf_counter() - t0
    run.reads += 1
    return arrays


def find_candidates_tiled(src: PairSource, stretch: Stretch, params: MatchParams, run: TileRun,
                          on_tile: Callable[[int, int], None], acc=None) -> np.ndarray:
    """Pass 1: the scene's candidates, (N, 2) int grid (row, col). Leaves the last tile in
    ``run.cached`` for pass 2 and uses ``run.whole`` for a tile spanning the grid.
    ``on_tile(i, n)`` is called before each tile (progress and the cancel check)."""
    if acc is None:  # any object with add(TileArrays) and select() works (e.g. the goodness one)
        acc = CandidateAccumulator(params, (src.grid.height, src.grid.width))
    full = (0, 0, src.grid.height, src.grid.width)
    for i, tile in enumerate(run.tiles):
        on_tile(i, len(run.tiles))
        run.cached = None  # free the previous tile before reading the next
        raw, run.whole = (run.whole if tile.read == full else None), None
        run.cached = load_tile(src, tile, stretch, run, raw)
        del raw
        acc.add(run.cached)
    return acc.select()


def match_tiles(src: PairSource, stretch: Stretch, points: np.ndarray, params: MatchParams, run: TileRun,
                matcher: TileMatcher, on_progress: Callable[[int, int], None]) -> list[PatchMatch]:
    """Pass 2: each tile with candidates is read (or taken from ``run.cached``), matched, and freed.

    Returns the compacted matches in the order of ``points``. ``on_progress(done, total)`` is called
    before each tile and as matches complete (progress and the cancel check)."""
    out: list[Optional[PatchMatch]] = [None] * len(points)
    done = 0
    for tile in reversed(run.tiles):  # the last tile of pass 1 first: it is still in memory
        idx = np.flatnonzero(tile.owns(points))
        if run.cached is not None and run.cached.tile != tile:
            run.cached = None
        if len(idx) == 0:
            continue
        on_progress(done, len(points))
        arrays, run.cached = run.cached, None
        if arrays is None:
            arrays = load_tile(src, tile, stretch, run)
        local = points[idx] - np.asarray(tile.origin)
        base = done
        ms = matcher(arrays, local, params,
                     lambda f, base=base, n=len(idx): on_progress(base + int(f * n), len(points)))
        if len(ms) != len(idx):
            raise ValueError(f"the tile matcher returned {len(ms)} matches for {len(idx)} points")
        for i, m in zip(idx, ms):
            out[i] = compact(m)
        done += len(idx)
        del arrays
    return out  # type: ignore[return-value]


def tiles_for(src: PairSource, params: MatchParams, options: TilingOptions) -> list[Tile]:
    """The tiles of ``src``'s grid for a run with ``params`` (read windows snapped to the candidate
    score step, and to the goodness networks' 32 px stride when they pick the candidates)."""
    _m, _t, step = candidate_geometry(params)
    if params.candidate_mode() == "goodness":
        step = step * 32 // math.gcd(step, 32)
    margin = int(math.ceil(tile_margin(params) / step)) * step
    return plan_tiles(src.grid.height, src.grid.width, options.core_size(), margin, snap=step)


def points_in_tiles(points: np.ndarray, tiles: Iterable[Tile]) -> np.ndarray:
    """Index of the tile whose core owns each point (-1: none); for tests and diagnostics."""
    owner = np.full(len(points), -1)
    for t in tiles:
        owner[t.owns(points)] = t.index
    return owner
