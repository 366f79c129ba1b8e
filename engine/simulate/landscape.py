"""Rural layout and the scene-wide features: urbanness, terrain, fields, forests, rivers, lakes,
arterial roads and farmsteads, written into a Canvas.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .canvas import ID_FARM_BUILDING, ID_FIELD, ID_FOREST, ID_ROAD, ID_WATER, Canvas, rotated_range
from .noise import interval_index, random_edges, smooth_noise, smooth_noise_1d
from .params import LandCover as LC
from .params import Zone


def _xy_axes(canvas: Canvas) -> Tuple[np.ndarray, np.ndarray]:
    xs = ((np.arange(canvas.W, dtype=np.float32) + 0.5) * canvas.gsd)[None, :]
    ys = ((np.arange(canvas.H, dtype=np.float32) + 0.5) * canvas.gsd)[:, None]
    return xs, ys


def urbanness(canvas: Canvas, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Smooth flat field: > 0.66 urban, > 0.36 suburban, else rural (decided per street block)."""
    g = canvas.gsd
    n1 = smooth_noise(rng, (canvas.H, canvas.W), 700.0 / g, octaves=2)
    xs, ys = _xy_axes(canvas)
    w_m, h_m = canvas.extent
    if kind == "urban":
        u = 0.92 + 0.2 * n1
    elif kind == "suburban":
        u = 0.52 + 0.14 * n1
        if rng.random() < 0.3:   # a small commercial centre
            cx, cy = rng.uniform(0.2, 0.8) * w_m, rng.uniform(0.2, 0.8) * h_m
            u = u + 0.35 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 250.0 ** 2))
    elif kind == "rural":
        u = -0.15 + 0.12 * n1
        if rng.random() < 0.6:   # a village
            cx, cy = rng.uniform(0.15, 0.85) * w_m, rng.uniform(0.15, 0.85) * h_m
            sig = rng.uniform(120, 280)
            u = u + 0.75 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sig ** 2))
    else:  # mixed: an urban core fading into suburbs and farmland
        cx, cy = rng.uniform(0.25, 0.75) * w_m, rng.uniform(0.25, 0.75) * h_m
        radius = rng.uniform(0.35, 0.65) * max(w_m, h_m)
        r = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        u = 1.1 - r / radius + 0.18 * n1
    return np.ascontiguousarray(u, dtype=np.float32).ravel()


def terrain(canvas: Canvas, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Gentle DTM (H, W): a base altitude, low-frequency relief of a few to ~20 m and a slight tilt."""
    amp = {"urban": 3.0, "suburban": 6.0, "rural": 12.0, "mixed": 8.0}[kind] * rng.uniform(0.5, 1.5)
    relief = smooth_noise(rng, (canvas.H, canvas.W), 1800.0 / canvas.gsd, octaves=3)
    xs, ys = _xy_axes(canvas)
    gx, gy = rng.normal(0, 0.002, 2)
    dtm = rng.uniform(80, 400) + amp * relief + gx * xs + gy * ys
    return dtm.astype(np.float32)


def layout_fields(canvas: Canvas, rng: np.random.Generator, idx: np.ndarray) -> None:
    """Agricultural patchwork on the given (rural) pixels: strips split into fields of random type."""
    if idx.size == 0:
        return
    g = canvas.gsd
    angle = rng.uniform(0, math.pi)
    warp_amp = rng.uniform(4, 16)
    wu = (warp_amp * smooth_noise(rng, (canvas.H, canvas.W), 500.0 / g)).ravel()[idx]
    wv = (warp_amp * smooth_noise(rng, (canvas.H, canvas.W), 500.0 / g)).ravel()[idx]
    x, y = canvas.xy(idx)
    c, s = math.cos(angle), math.sin(angle)
    u = x * c + y * s + wu
    v = y * c - x * s + wv
    umin, umax, vmin, vmax = rotated_range(*canvas.extent, angle, 500.0)
    ue = random_edges(rng, umin, umax, 90.0, 380.0)
    i = interval_index(u, ue)
    n_strips = len(ue) - 1
    span = vmax - vmin
    big = span + 2000.0
    edges = []
    for k in range(n_strips):
        e = random_edges(rng, 0.0, span, 60.0, 420.0)
        edges.append(e + k * big)
    all_edges = np.concatenate(edges)
    # float32 is enough: keys stay below ~1e6 m, i.e. 6 cm resolution.
    key = v - np.float32(vmin)
    key += i.astype(np.float32) * np.float32(big)
    f = interval_index(key, all_edges, resolution=4.0)
    # Distance to the field's boundary (strip edges along u, field edges along v).
    ue32 = ue.astype(np.float32)
    du = np.minimum(u - ue32[i], ue32[i + 1] - u)
    ae = all_edges.astype(np.float32)
    dv = np.minimum(key - ae[f], ae[np.minimum(f + 1, len(ae) - 1)] - key)
    dist = np.minimum(du, np.abs(dv))

    # Per-field attributes as lookup tables, gathered once per pixel.
    nf = len(all_edges)
    ftype = rng.choice(np.array([LC.CROP, LC.GRASS, LC.BARE, LC.TREE], np.uint8), nf,
                       p=[0.55, 0.27, 0.11, 0.07])
    hedge = rng.random(nf) < 0.28
    track = rng.random(len(ue)) < 0.2
    row_axis = rng.random(nf) < 0.5
    jitter = rng.normal(0, 0.04, nf)
    period = np.where(ftype == LC.BARE, rng.uniform(3, 8, nf), rng.uniform(6, 20, nf))
    period = np.maximum(period, 2.6 * g)
    shrubby = (rng.random(nf) < 0.5) & (ftype == LC.GRASS)
    lc_lut = np.where(ftype == LC.TREE, LC.GRASS, ftype).astype(np.uint8)
    # Woodlots: dense trees; grass: a few trees, or many low bushes on shrubby pasture.
    trees_lut = np.select([ftype == LC.TREE, shrubby, ftype == LC.GRASS], [0.045, 0.003, 0.0006], 0.0).astype(np.float32)
    treeh_lut = np.where(shrubby, 2.5, 0.0).astype(np.float32)
    lc = lc_lut[f]
    trees = trees_lut[f]
    tree_h = treeh_lut[f]
    rows = np.zeros(idx.size, np.float32)
    # Row texture in field-aligned coordinates: rows parallel to one of the field's sides.
    rsel = np.flatnonzero((lc == LC.CROP) | (lc == LC.BARE))
    if rsel.size:
        ang = np.where(row_axis, 0.0, math.pi / 2) + jitter
        fr = f[rsel]
        ca = (np.cos(ang) * 2 * np.pi / period).astype(np.float32)
        sa = (np.sin(ang) * 2 * np.pi / period).astype(np.float32)
        rows[rsel] = np.sin(u[rsel] * ca[fr] + v[rsel] * sa[fr])
    hedge_px = np.flatnonzero(dist < 3.5)
    hedge_px = hedge_px[hedge[f[hedge_px]]]
    trees[hedge_px] = 0.05
    tree_h[hedge_px] = 8.0 + 4.0 * (f[hedge_px] % 3)
    near = np.flatnonzero(du < 2.0)
    ii = i[near]
    on_track = near[track[ii] | track[np.minimum(ii + 1, len(track) - 1)]]
    lc[on_track] = LC.BARE
    rows[on_track] = 0
    trees[on_track] = 0
    canvas.landcover[idx] = lc
    canvas.object_id[idx] = ID_FIELD + f
    canvas.row_texture[idx] = rows
    canvas.tree_density[idx] = trees
    canvas.tree_height[idx] = tree_h
    canvas.zone[idx] = Zone.RURAL


def add_forests(canvas: Canvas, rng: np.random.Generator, kind: str) -> None:
    """Irregular forest stands over rural land; dense tree impulses with a smooth stand height."""
    frac = {"rural": 0.22, "mixed": 0.15, "suburban": 0.08, "urban": 0.0}[kind] * rng.uniform(0.4, 1.5)
    g = canvas.gsd
    f = smooth_noise(rng, (canvas.H, canvas.W), 650.0 / g, octaves=3).ravel()
    if frac <= 0:
        return
    rural = canvas.zone == Zone.RURAL
    if not rural.any():
        return
    thr = np.quantile(f[::97], 1.0 - frac)
    m = rural & (f > thr) & (canvas.landcover != LC.WATER)
    idx = np.flatnonzero(m)
    canvas.landcover[idx] = LC.GRASS
    canvas.row_texture[idx] = 0
    canvas.object_id[idx] = ID_FOREST
    canvas.tree_density[idx] = 0.045


def stand_height(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Smooth forest stand height (flat), 13-28 m."""
    n = smooth_noise(rng, (canvas.H, canvas.W), 250.0 / canvas.gsd).ravel()
    return np.clip(20.0 + 4.5 * n, 12.0, 30.0).astype(np.float32)


def _curve(canvas: Canvas, rng: np.random.Generator, meander_m: float, scale_m: float,
           width_m: Tuple[float, float], width_var: float = 0.0, reach_m: float = 10.0):
    """Pixels near a random smooth curve crossing the scene.

    Returns (flat idx, perpendicular distance, local width) for pixels with distance < width/2 +
    ``reach_m``; only a band around the curve's mean course is evaluated.
    """
    psi = rng.uniform(0, math.pi)
    c, s = math.cos(psi), math.sin(psi)
    umin, umax, vmin, vmax = rotated_range(*canvas.extent, psi, 50.0)
    step = 2.0
    n = int((umax - umin) / step) + 2
    mid = rng.uniform(vmin + 0.25 * (vmax - vmin), vmax - 0.25 * (vmax - vmin))
    centre = mid + meander_m * smooth_noise_1d(rng, n, scale_m / step)
    width = rng.uniform(*width_m) * (1 + width_var * np.clip(smooth_noise_1d(rng, n, 800.0 / step), -2, 2))
    slope = np.gradient(centre, step)
    cosf = (1.0 / np.sqrt(1.0 + slope ** 2)).astype(np.float32)
    xs, ys = _xy_axes(canvas)
    b = ys * np.float32(c) - xs * np.float32(s)
    lo = float(centre.min() - width.max() / 2 - reach_m)
    hi = float(centre.max() + width.max() / 2 + reach_m)
    idx = np.flatnonzero(((b > lo) & (b < hi)).ravel())
    x, y = canvas.xy(idx)
    a = x * np.float32(c) + y * np.float32(s)
    bb = y * np.float32(c) - x * np.float32(s)
    ai = ((a - np.float32(umin)) * np.float32(1.0 / step)).astype(np.int32)
    np.clip(ai, 0, n - 1, out=ai)
    d = np.abs(bb - centre.astype(np.float32)[ai]) * cosf[ai]
    wd = width.astype(np.float32)[ai]
    keep = d < wd * 0.5 + reach_m
    return idx[keep], d[keep], wd[keep]


def add_water(canvas: Canvas, rng: np.random.Generator, kind: str, dtm: np.ndarray) -> None:
    """River (with banks, bridges where roads allow) and lakes; carves a shallow valley into ``dtm``."""
    g = canvas.gsd
    p_river = {"rural": 0.55, "mixed": 0.55, "suburban": 0.4, "urban": 0.4}[kind]
    if rng.random() < p_river:
        wide = (40.0, 130.0) if kind == "urban" else (14.0, 80.0)
        valley = 120.0
        idx, d, w = _curve(canvas, rng, meander_m=rng.uniform(40, 220), scale_m=rng.uniform(500, 1200),
                           width_m=wide, width_var=0.25, reach_m=valley)
        half = 0.5 * w
        water = d < half
        bank = (d < half + rng.uniform(6, 25)) & ~water
        lc = canvas.landcover[idx]
        road = lc == LC.ROAD
        bridge = water & road & canvas.bridge_ok[idx]
        wet = idx[water & ~bridge]
        canvas.landcover[wet] = LC.WATER
        canvas.height[wet] = 0
        canvas.building_id[wet] = 0
        canvas.object_id[wet] = ID_WATER + 1
        canvas.tree_density[wet] = 0
        canvas.clutter_density[wet] = 0
        canvas.row_texture[wet] = 0
        canvas.height[idx[bridge]] = 6.0
        # Banks: paved embankments in town, grass and riparian trees elsewhere.
        zone = canvas.zone[idx]
        urban_bank = idx[bank & (zone == Zone.URBAN) & ~road]
        green_bank = idx[bank & (zone != Zone.URBAN) & ~road]
        for m, lcv, tr in ((urban_bank, LC.PAVED, 0.01), (green_bank, LC.GRASS, 0.035)):
            canvas.landcover[m] = lcv
            canvas.height[m] = 0
            canvas.building_id[m] = 0
            canvas.object_id[m] = ID_WATER + 3
            canvas.tree_density[m] = tr
            canvas.tree_height[m] = 0
            canvas.row_texture[m] = 0
        depth = rng.uniform(2.0, 6.0)
        carve = np.clip(1.0 - d / (half + valley), 0, 1) ** 2 * depth
        dtm.ravel()[idx] -= carve
    if rng.random() < {"rural": 0.6, "mixed": 0.45, "suburban": 0.35, "urban": 0.15}[kind]:
        f = smooth_noise(rng, (canvas.H, canvas.W), 220.0 / g, octaves=2).ravel()
        cand = canvas.zone != Zone.URBAN
        thr = np.quantile(f[::89], 1.0 - rng.uniform(0.01, 0.04))
        near = np.flatnonzero(f > thr - 0.08)
        f = f[near]
        lcn = canvas.landcover[near]
        ok = cand[near] & (lcn != LC.ROAD) & (lcn != LC.BUILDING)
        lake = near[ok & (f > thr)]
        shore = near[ok & (f <= thr)]
        canvas.landcover[lake] = LC.WATER
        canvas.object_id[lake] = ID_WATER + 2
        canvas.tree_density[lake] = 0
        canvas.clutter_density[lake] = 0
        canvas.row_texture[lake] = 0
        canvas.landcover[shore] = np.where(rng.random() < 0.5, LC.GRASS, LC.BARE)
        canvas.row_texture[shore] = 0
        canvas.tree_density[shore] = 0.02
        canvas.tree_height[shore] = 0


def add_arterials(canvas: Canvas, rng: np.random.Generator, kind: str) -> None:
    """Long, gently curving roads (and sometimes a highway) crossing the whole scene."""
    n = {"rural": (2, 4), "mixed": (2, 4), "suburban": (1, 3), "urban": (0, 2)}[kind]
    for k in range(int(rng.integers(*n))):
        highway = rng.random() < 0.22
        width = (20.0, 30.0) if highway else (6.5, 10.0)
        idx, d, w = _curve(canvas, rng, meander_m=rng.uniform(10, 150), scale_m=rng.uniform(900, 2500),
                           width_m=width, reach_m=6.0)
        half = 0.5 * w
        zone = canvas.zone[idx]
        lc = canvas.landcover[idx]
        road = d < half
        if kind != "urban":
            road &= zone != Zone.URBAN
        clear = idx[(d < half + 5.0) & ~road & (lc == LC.BUILDING)]
        verge = idx[~road & (zone == Zone.RURAL) & (lc != LC.WATER) & (lc != LC.BUILDING)]
        r = idx[road]
        canvas.landcover[r] = LC.ROAD
        canvas.height[r] = 0.0
        canvas.bridge_ok[r] = True
        canvas.building_id[r] = 0
        canvas.object_id[r] = ID_ROAD + 900_000 + k
        canvas.tree_density[r] = 0
        canvas.row_texture[r] = 0
        canvas.clutter_density[r] = 0.003 if highway else 0.0015
        canvas.landcover[clear] = LC.GRASS
        canvas.height[clear] = 0
        canvas.building_id[clear] = 0
        alley = rng.random() < 0.35
        canvas.landcover[verge] = LC.GRASS
        canvas.row_texture[verge] = 0
        canvas.tree_density[verge] = 0.05 if alley else 0.002
        canvas.tree_height[verge] = 0


def add_farmsteads(canvas: Canvas, rng: np.random.Generator) -> None:
    """A few farm yards with barns and a house in rural areas (small windows, loop is cheap)."""
    g = canvas.gsd
    w_m, h_m = canvas.extent
    area_km2 = w_m * h_m / 1e6
    rural_frac = float(np.mean(canvas.zone[:: 53] == Zone.RURAL))
    n = rng.poisson(0.9 * area_km2 * rural_frac)
    bid = ID_FARM_BUILDING
    for _ in range(n):
        cx, cy = rng.uniform(0, w_m), rng.uniform(0, h_m)
        r0, c0 = int(cy / g), int(cx / g)
        if canvas.zone[r0 * canvas.W + c0] != Zone.RURAL or canvas.landcover[r0 * canvas.W + c0] == LC.WATER:
            continue
        ang = rng.uniform(0, math.pi)
        _rect(canvas, cx, cy, ang, rng.uniform(45, 80), rng.uniform(40, 70), LC.PAVED if rng.random() < 0.5
              else LC.BARE, 0.0, 0, obj=ID_FARM_BUILDING - 1, flat=True)
        for b in range(int(rng.integers(2, 6))):
            ox, oy = rng.uniform(-22, 22, 2)
            bx = cx + ox * math.cos(ang) - oy * math.sin(ang)
            by = cy + ox * math.sin(ang) + oy * math.cos(ang)
            big = b > 0
            L = rng.uniform(22, 50) if big else rng.uniform(10, 14)
            Wd = rng.uniform(10, 20) if big else rng.uniform(8, 11)
            eave = rng.uniform(4, 8) if big else 5.5
            bid += 1
            _rect(canvas, bx, by, ang, L, Wd, LC.BUILDING, eave, bid, obj=bid, ridge=0.3 * Wd)


def _rect(canvas: Canvas, cx, cy, ang, length, width, lc, eave, bid, obj, ridge=0.0, flat=False) -> None:
    g = canvas.gsd
    rad = 0.5 * math.hypot(length, width) + g
    c0 = max(int((cx - rad) / g), 0)
    c1 = min(int((cx + rad) / g) + 1, canvas.W)
    r0 = max(int((cy - rad) / g), 0)
    r1 = min(int((cy + rad) / g) + 1, canvas.H)
    if c1 <= c0 or r1 <= r0:
        return
    xs = (np.arange(c0, c1) + 0.5) * g - cx
    ys = (np.arange(r0, r1) + 0.5) * g - cy
    X, Y = np.meshgrid(xs, ys)
    a = X * math.cos(ang) + Y * math.sin(ang)
    b = -X * math.sin(ang) + Y * math.cos(ang)
    m = (np.abs(a) < length / 2) & (np.abs(b) < width / 2)
    rr, cc = np.nonzero(m)
    flat_idx = (rr + r0) * canvas.W + (cc + c0)
    if lc == LC.BUILDING:
        ok = (canvas.landcover[flat_idx] != LC.ROAD) & (canvas.landcover[flat_idx] != LC.WATER)
        flat_idx, bb = flat_idx[ok], b[m][ok]
        h = eave + ridge * np.clip(1 - np.abs(2 * bb / width), 0, 1)
        canvas.height[flat_idx] = h
        canvas.building_id[flat_idx] = bid
    else:
        ok = (canvas.landcover[flat_idx] != LC.ROAD) & (canvas.landcover[flat_idx] != LC.WATER) \
            & (canvas.landcover[flat_idx] != LC.BUILDING)
        flat_idx = flat_idx[ok]
        canvas.height[flat_idx] = 0
    canvas.landcover[flat_idx] = lc
    canvas.object_id[flat_idx] = obj
    canvas.row_texture[flat_idx] = 0
    canvas.tree_density[flat_idx] = 0.0 if lc == LC.BUILDING else 0.004
    canvas.clutter_density[flat_idx] = 0.002 if lc == LC.BUILDING else 0.01
