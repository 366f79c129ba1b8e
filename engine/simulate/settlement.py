"""Urban and suburban layout: street grids, blocks, lots and buildings, written into a Canvas.

A zone is decided per street block (from the smooth "urbanness" field at the block centre), so zone
borders follow streets as in real towns. Urban blocks are perimeter blocks with courtyards, tower
blocks, large flat-roofed halls, parks, parking lots or dense old-town cells; suburban blocks are
rows of detached houses on lots (gable or flat roofs, L-shaped wings, driveways, pools), with
some parks, commercial halls and apartment slabs. Everything is vectorised over pixels: per-block
and per-lot attributes come from lookup tables indexed by block/lot id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .canvas import (ID_BLOCK, ID_LOT, ID_POOL, ID_ROAD, ID_SUBURB_BUILDING, ID_URBAN_BUILDING,
                     Canvas, Cells, Grid)
from .noise import object_keys, table_bits
from .params import LandCover as LC
from .params import Zone

URBAN_T = 0.66
SUBURB_T = 0.36
FLOOR_M = 3.2


def _block_zone(grid: Grid, canvas: Canvas, urb: np.ndarray) -> np.ndarray:
    """Zone of every block of ``grid`` from the urbanness at its centre."""
    bx, by = grid.block_centres_xy()
    c = np.clip((bx / canvas.gsd).astype(np.int64), 0, canvas.W - 1)
    r = np.clip((by / canvas.gsd).astype(np.int64), 0, canvas.H - 1)
    u = urb[r * canvas.W + c]
    z = np.full(u.shape, Zone.RURAL, np.uint8)
    z[u > SUBURB_T] = Zone.SUBURBAN
    z[u > URBAN_T] = Zone.URBAN
    return z


@dataclass
class _Parts:
    """A zone's pixels split once into roads, sidewalks/verges and block interiors."""

    all_idx: np.ndarray
    road_idx: np.ndarray
    road: Cells
    side_idx: np.ndarray
    side_block: np.ndarray
    inner_idx: np.ndarray
    inner: Cells


def _members(grid: Grid, canvas: Canvas, cand: np.ndarray, in_zone_blk: np.ndarray) -> _Parts:
    cells = grid.cells(canvas, cand)
    keep = in_zone_blk[cells.block]
    border = np.flatnonzero(cells.road & ~keep)
    if border.size:
        keep[border] = in_zone_blk[np.minimum(cells.subset(border).neighbour(), len(in_zone_blk) - 1)]
    road = keep & cells.road
    rest = keep & ~cells.road
    inner = rest & cells.inside
    side = rest & ~inner
    return _Parts(cand[keep], cand[road], cells.subset(road), cand[side], cells.block[side],
                  cand[inner], cells.subset(inner))


def _write(canvas: Canvas, idx, lc=None, height=None, obj=None, bid=None, trees=None, clutter=None,
           zone=None, tree_h=None):
    """Set the given Canvas layers at flat indices ``idx``; layers left as None are not touched."""
    for layer, value in (("landcover", lc), ("height", height), ("object_id", obj), ("building_id", bid),
                         ("tree_density", trees), ("clutter_density", clutter), ("zone", zone),
                         ("tree_height", tree_h)):
        if value is not None:
            getattr(canvas, layer)[idx] = value


def _roads(canvas: Canvas, rng, grid: Grid, ridx, cells: Cells, zone: int, cars: float, p_bridge: float):
    line = grid.line_id(cells)
    bridge_lut = rng.random(200001) < p_bridge
    _write(canvas, ridx, lc=LC.ROAD, height=0.0, obj=ID_ROAD + (line % 1_000_000), bid=0,
           trees=0.0, clutter=cars, zone=zone)
    canvas.bridge_ok[ridx] = bridge_lut[np.minimum(line, 200000)]


def layout_settlements(canvas: Canvas, rng: np.random.Generator, urb: np.ndarray) -> np.ndarray:
    """Lay out urban then suburban zones; returns a flat bool mask of the pixels they took."""
    settled = np.zeros(canvas.n, bool)
    gsd = canvas.gsd

    # ---- urban: a near-regular grid (often north-aligned), wide avenues, sidewalks
    angle = 0.0 if rng.random() < 0.35 else rng.uniform(0, math.pi / 2)
    grid = Grid.random(rng, canvas, angle, su=(70, 150), sv=(70, 150), width=(9, 15),
                       major_width=(20, 32), p_major=0.18, sidewalk=3.0, warp_m=2.0)
    zb = _block_zone(grid, canvas, urb) >= Zone.URBAN
    cand = np.flatnonzero(urb > URBAN_T - 0.14)
    if cand.size and zb.any():
        parts = _members(grid, canvas, cand, zb)
        _urban(canvas, rng, grid, parts)
        settled[parts.all_idx] = True

    # ---- suburban: elongated blocks on a gently curving grid
    angle = rng.uniform(0, math.pi)
    grid = Grid.random(rng, canvas, angle, su=(110, 230), sv=(45, 80), width=(7, 9),
                       major_width=(12, 16), p_major=0.1, sidewalk=2.0, warp_m=18.0,
                       warp_scale_m=350.0)
    zb = _block_zone(grid, canvas, urb) >= Zone.SUBURBAN
    cand = np.flatnonzero((urb > SUBURB_T - 0.14) & ~settled)
    if cand.size and zb.any():
        parts = _members(grid, canvas, cand, zb)
        _suburban(canvas, rng, grid, parts)
        settled[parts.all_idx] = True
    return settled


# ----------------------------------------------------------------------------------------------
def _urban(canvas: Canvas, rng, grid: Grid, parts: _Parts) -> None:
    nb = grid.n_blocks
    _roads(canvas, rng, grid, parts.road_idx, parts.road, Zone.URBAN, cars=0.004, p_bridge=0.6)
    # Sidewalks, with street trees along some blocks.
    street_trees = np.where(rng.random(nb) < 0.5, 0.04, 0.0).astype(np.float32)
    _write(canvas, parts.side_idx, lc=LC.PAVED, height=0.0, obj=ID_BLOCK + parts.side_block, bid=0,
           trees=street_trees[parts.side_block], clutter=0.002, zone=Zone.URBAN)
    idx, c = parts.inner_idx, parts.inner
    bits = min(18, table_bits(canvas.n))

    # Block types: 0 perimeter, 1 towers, 2 hall + parking, 3 park, 4 plaza/parking, 5 old town.
    btype = rng.choice(6, nb, p=[0.52, 0.1, 0.12, 0.1, 0.06, 0.1]).astype(np.uint8)
    depth = rng.uniform(10, 18, nb).astype(np.float32)
    segw = rng.uniform(14, 32, nb).astype(np.float32)
    floors_mu = rng.uniform(3, 8, nb).astype(np.float32)
    court_green = rng.random(nb) < 0.5
    bt = btype[c.block]
    bid_base = ID_URBAN_BUILDING + c.block.astype(np.int64) * 1024

    # Ground default for inner pixels.
    lc = np.full(idx.size, LC.PAVED, np.uint8)
    height = np.zeros(idx.size, np.float32)
    bid = np.zeros(idx.size, np.int64)
    trees = np.zeros(idx.size, np.float32)
    clutter = np.full(idx.size, 0.002, np.float32)
    obj = (ID_BLOCK + c.block).astype(np.int64)

    # 0: perimeter blocks with courtyards, varied segment heights.
    m = bt == 0
    if m.any():
        s, t, lu, lv, b = c.s[m], c.t[m], c.lu[m], c.lv[m], c.block[m]
        dmin = np.minimum(np.minimum(s, lu - s), np.minimum(t, lv - t))
        sw_ = segw[b]
        seg = (np.minimum(s // sw_, 31) * 32 + np.minimum(t // sw_, 31)).astype(np.int64)
        sid = bid_base[m] + seg
        hseg = _lut_uniform(rng, sid, 3, bits)
        fl = np.maximum(2.0, floors_mu[b] * (0.7 + 0.6 * hseg[0]))
        hgt = fl * FLOOR_M + 0.8
        tall = hseg[1] < 0.04
        hgt[tall] = 35 + 25 * hseg[2][tall]
        bld = (dmin < depth[b]) & (hseg[2] > 0.06) | (tall & (dmin < depth[b] * 1.6))
        green = court_green[b] & ~bld
        sub_lc = np.where(bld, LC.BUILDING, np.where(green, LC.GRASS, LC.PAVED)).astype(np.uint8)
        lc[m] = sub_lc
        height[m] = np.where(bld, hgt, 0)
        bid[m] = np.where(bld, sid, 0)
        trees[m] = np.where(green, 0.012, 0.0)
        clutter[m] = np.where(bld, 0.002, 0.003)

    # 1: towers on a plaza, one per quadrant with some probability.
    m = bt == 1
    if m.any():
        s, t, lu, lv, b = c.s[m], c.t[m], c.lu[m], c.lv[m], c.block[m]
        qi = (s >= lu / 2).astype(np.int64)
        qj = (t >= lv / 2).astype(np.int64)
        sid = bid_base[m] + qi * 2 + qj
        h = _lut_uniform(rng, sid, 4, bits)
        cx = (qi + 0.5) * lu / 2 + (h[0] - 0.5) * lu * 0.1
        cy = (qj + 0.5) * lv / 2 + (h[1] - 0.5) * lv * 0.1
        hx = lu / 4 * (0.45 + 0.35 * h[2])
        hy = lv / 4 * (0.45 + 0.35 * h[3])
        present = h[3] < 0.85
        bld = present & (np.abs(s - cx) < hx) & (np.abs(t - cy) < hy)
        lc[m] = np.where(bld, LC.BUILDING, LC.PAVED)
        height[m] = np.where(bld, 22 + 38 * h[1], 0)
        bid[m] = np.where(bld, sid, 0)
        trees[m] = np.where(bld, 0, 0.004)
        clutter[m] = np.where(bld, 0.001, 0.006)

    # 2: one large flat hall inset in the block, parking around it.
    m = bt == 2
    if m.any():
        s, t, lu, lv, b = c.s[m], c.t[m], c.lu[m], c.lv[m], c.block[m]
        sid = bid_base[m]
        h = _lut_uniform(rng, sid, 4, bits)
        bld = ((s > 3 + 12 * h[0]) & (s < lu - 3 - 12 * h[1]) & (t > 3 + 12 * h[2])
               & (t < lv - 3 - 12 * h[3]))
        lc[m] = np.where(bld, LC.BUILDING, LC.PAVED)
        height[m] = np.where(bld, 7 + 12 * h[0], 0)
        bid[m] = np.where(bld, sid, 0)
        clutter[m] = np.where(bld, 0.003, 0.03)

    # 3: park.
    m = bt == 3
    if m.any():
        lc[m] = LC.GRASS
        trees[m] = 0.025
        clutter[m] = 0.0

    # 4: plaza / parking.
    m = bt == 4
    if m.any():
        clutter[m] = 0.03
        trees[m] = 0.003

    # 5: old town: small cells with pitched roofs and narrow lanes.
    m = bt == 5
    if m.any():
        s, t, lu, lv, b = c.s[m], c.t[m], c.lu[m], c.lv[m], c.block[m]
        cw = (9 + 0.4 * segw[b]).astype(np.float32)
        ci = np.minimum(s // cw, 31)
        cj = np.minimum(t // cw, 31)
        sid = bid_base[m] + (ci * 32 + cj).astype(np.int64)
        h = _lut_uniform(rng, sid, 3, bits)
        a = s - ci * cw
        d = t - cj * cw
        gap = 1.5 + 2.0 * h[2]
        bld = (a > gap) & (d > gap) & (h[1] > 0.08)
        eave = (2 + np.floor(3 * h[0])) * FLOOR_M
        # Ridge along the longer local axis of the cell (here: along s), profile across t.
        prof = 1 - np.abs(2 * (d - (gap + cw) / 2) / np.maximum(cw - gap, 1))
        hgt = eave + 3.5 * np.clip(prof, 0, 1)
        lc[m] = np.where(bld, LC.BUILDING, LC.PAVED)
        height[m] = np.where(bld, hgt, 0)
        bid[m] = np.where(bld, sid, 0)

    # Rooftop equipment on flat urban roofs; tree height in urban courtyards is moderate.
    _write(canvas, idx, lc=lc, height=height, obj=np.where(bid > 0, bid, obj), bid=bid,
           trees=trees, clutter=clutter, zone=Zone.URBAN)


# ----------------------------------------------------------------------------------------------
def _suburban(canvas: Canvas, rng, grid: Grid, parts: _Parts) -> None:
    nb = grid.n_blocks
    _roads(canvas, rng, grid, parts.road_idx, parts.road, Zone.SUBURBAN, cars=0.0015, p_bridge=0.35)
    street_trees = np.where(rng.random(nb) < 0.55, 0.03, 0.0).astype(np.float32)
    _write(canvas, parts.side_idx, lc=LC.GRASS, height=0.0, obj=ID_BLOCK + parts.side_block, bid=0,
           trees=street_trees[parts.side_block], clutter=0.0, zone=Zone.SUBURBAN)
    idx, c = parts.inner_idx, parts.inner
    bits = min(18, table_bits(canvas.n))

    # Block types: 0 houses, 1 park, 2 commercial hall + parking, 3 apartment slabs.
    btype = rng.choice(4, nb, p=[0.8, 0.06, 0.07, 0.07]).astype(np.uint8)
    lotw = rng.uniform(13, 24, nb).astype(np.float32)
    bt = btype[c.block]
    n = idx.size
    lc = np.full(n, LC.GRASS, np.uint8)
    height = np.zeros(n, np.float32)
    bid = np.zeros(n, np.int64)
    obj = (ID_BLOCK + c.block).astype(np.int64)
    trees = np.zeros(n, np.float32)
    clutter = np.zeros(n, np.float32)

    along_u = c.lu >= c.lv
    a_long = np.where(along_u, c.s, c.t)
    b_short = np.where(along_u, c.t, c.s)
    l_long = np.where(along_u, c.lu, c.lv)
    l_short = np.where(along_u, c.lv, c.lu)

    # 0: detached houses, two rows of lots back to back (one row on thin blocks).
    m = bt == 0
    if m.any():
        al, bs, ll, ls, b = a_long[m], b_short[m], l_long[m], l_short[m], c.block[m]
        lw = lotw[b]
        k = np.minimum(al // lw, 63)
        two_rows = ls >= 34
        row = (two_rows & (bs >= ls / 2)).astype(np.int64)
        lot = c.block[m].astype(np.int64) * 128 + k.astype(np.int64) * 2 + row
        a = al - k * lw
        lw_eff = np.minimum(lw, ll - k * lw)
        d = np.where(row == 1, ls - bs, bs)
        depth_avail = np.where(two_rows, ls / 2, ls)
        h = _lut_uniform(rng, lot, 8, bits)
        has = (h[0] < 0.9) & (lw_eff > 9)
        hw = np.maximum(lw_eff * (0.45 + 0.3 * h[1]), 6.0)
        ac = lw_eff / 2 + (h[2] - 0.5) * (lw_eff - hw) * 0.8
        sb = 3.5 + 5 * h[3]
        hd = np.minimum(8 + 6 * h[4], depth_avail - sb - 2)
        in_main = has & (np.abs(a - ac) < hw / 2) & (d > sb) & (d < sb + hd)
        wing = has & (h[5] < 0.3)
        ww = hw * 0.45
        in_wing = wing & (a > ac - hw / 2) & (a < ac - hw / 2 + ww) & (d >= sb + hd) & (d < sb + hd + 5)
        eave = np.where(h[6] < 0.12, 2 * FLOOR_M, 1 * FLOOR_M + 1.2 + 2.0 * h[6]).astype(np.float32)
        flat = h[7] < 0.18
        ridge_along_street = h[7] > 0.55
        prof_d = 1 - np.abs(2 * (d - (sb + hd / 2)) / np.maximum(hd, 1))
        prof_a = 1 - np.abs(2 * (a - ac) / np.maximum(hw, 1))
        prof = np.where(ridge_along_street, prof_d, prof_a)
        roof = np.where(flat, 0.4, np.clip(prof, 0, 1) * (0.35 * np.where(ridge_along_street, hd, hw)))
        hgt = np.where(in_main, eave + roof, eave * 0.8)
        bld = in_main | in_wing
        drive = (h[1] < 0.75) & (a > ac + hw / 2 + 0.7) & (a < ac + hw / 2 + 3.7) & (d < sb + hd) & has
        pool_ok = (h[2] < 0.14) & has & (depth_avail > sb + hd + 12)
        pool = pool_ok & (np.abs(a - ac) < 2.2) & (d > sb + hd + 5.5) & (d < sb + hd + 10)
        sub_lc = np.where(bld, LC.BUILDING, np.where(drive, LC.PAVED, np.where(pool, LC.WATER, LC.GRASS)))
        lc[m] = sub_lc
        height[m] = np.where(bld, hgt, 0)
        bid[m] = np.where(bld, ID_SUBURB_BUILDING + lot, 0)
        obj[m] = np.where(bld, ID_SUBURB_BUILDING + lot, np.where(pool, ID_POOL + lot % 1_000_000,
                                                                     ID_LOT + lot))
        trees[m] = np.where(bld | drive | pool, 0.0, 0.007 + 0.01 * (h[4] < 0.3))
        clutter[m] = np.where(drive, 0.03, np.where(bld, 0.001, 0.0))

    # 1: park.
    m = bt == 1
    if m.any():
        trees[m] = 0.02

    # 2: commercial hall with parking.
    m = bt == 2
    if m.any():
        s, t, lu, lv = c.s[m], c.t[m], c.lu[m], c.lv[m]
        sid = ID_SUBURB_BUILDING + c.block[m].astype(np.int64) * 128 + 127
        h = _lut_uniform(rng, sid, 3, bits)
        mx = np.maximum(6, lu * (0.12 + 0.15 * h[0]))
        my = np.maximum(6, lv * (0.15 + 0.1 * h[1]))
        bld = (s > mx) & (s < lu - mx * 0.6) & (t > my) & (t < lv - my * 0.6)
        lc[m] = np.where(bld, LC.BUILDING, LC.PAVED)
        height[m] = np.where(bld, 6 + 6 * h[2], 0)
        bid[m] = np.where(bld, sid, 0)
        obj[m] = np.where(bld, sid, obj[m])
        clutter[m] = np.where(bld, 0.003, 0.035)

    # 3: apartment slabs parallel to the long axis, lawns between.
    m = bt == 3
    if m.any():
        al, bs, ls = a_long[m], b_short[m], l_short[m]
        period = 30.0
        slab = np.minimum(bs // period, 15)
        seglen = 45.0
        seg = np.minimum(al // seglen, 15)
        sid = ID_SUBURB_BUILDING + c.block[m].astype(np.int64) * 128 + 64 + (slab * 4 + seg % 4).astype(np.int64)
        h = _lut_uniform(rng, sid, 2, bits)
        bld = ((bs - slab * period) > 8) & ((bs - slab * period) < 20) & ((al - seg * seglen) > 6) \
            & (bs < ls - 6) & (h[1] < 0.85)
        lc[m] = np.where(bld, LC.BUILDING, LC.GRASS)
        height[m] = np.where(bld, (3 + np.floor(4 * h[0])) * FLOOR_M + 0.6, 0)
        bid[m] = np.where(bld, sid, 0)
        obj[m] = np.where(bld, sid, obj[m])
        trees[m] = np.where(bld, 0, 0.008)
        clutter[m] = np.where(bld, 0.001, 0.003)

    _write(canvas, idx, lc=lc, height=height, obj=obj, bid=bid, trees=trees, clutter=clutter,
           zone=Zone.SUBURBAN)


def _lut_uniform(rng: np.random.Generator, ids: np.ndarray, k: int, bits: int = 18) -> list:
    """``k`` independent uniform [0,1) float32 values per id, via random tables (ids hashed to 2^bits).

    Collisions only make two far-apart objects share attributes, which is harmless here.
    """
    key = object_keys(ids, bits)
    tabs = rng.random((k, 1 << bits), dtype=np.float32)
    return [tabs[i][key] for i in range(k)]
