"""Ray casting over a height grid (sun / radar shadows, occluded walls) and point splatting.

``occluder_height`` answers, for every pixel p, "how high does the terrain+objects along the ray from
p towards the light source rise above a ray that leaves p at the given elevation?" in O(N log K):
the grid is sheared so the ray direction becomes a row, and the running maximum over 1..K steps is
built by doubling (max over 1..2k = max(max over 1..k, shifted max over 1..k)). The shear rounds
each column's offset, so rays deviate from straight lines by under one pixel.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

NEG = np.float32(-1e9)


def direction_colrow(azimuth_deg: float) -> Tuple[float, float]:
    """Unit (dcol, drow) of a map azimuth (clockwise from north = up): 90 -> (1, 0), 0 -> (0, -1)."""
    a = math.radians(azimuth_deg)
    return math.sin(a), -math.cos(a)


def _running_max_rows(a: np.ndarray, rise: float, k_max: int) -> np.ndarray:
    """out[:, c] = max_{1<=k<=K} a[:, c+k] - (k - 1/2)*rise, with K >= k_max (a power of two).

    Occluders are cells, not points: the near edge of the cell k steps away is only k - 1/2 steps
    away, so the ray is half a step lower there (this removes a half-pixel shadow-length bias).
    """
    h, w = a.shape
    out = np.full_like(a, NEG)
    if w > 1:
        np.subtract(a[:, 1:], np.float32(0.5 * rise), out=out[:, :-1])
    k = 1
    while k < k_max and k < w:
        tmp = out[:, k:] - np.float32(k * rise)
        np.maximum(out[:, :-k], tmp, out=out[:, :-k])
        k *= 2
    return out


def _runs(off: np.ndarray):
    """(start, stop, offset) of the runs of equal values in a monotonic offset array."""
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(off)) + 1, [len(off)]])
    return [(int(a), int(b), int(off[a])) for a, b in zip(cuts[:-1], cuts[1:])]


def occluder_height(dsm: np.ndarray, azimuth_deg: float, elevation_deg: float, gsd: float,
                    max_height: float) -> np.ndarray:
    """M[p] = max over ground distance d>0 along ``azimuth`` of dsm(p + d) - d*tan(elevation).

    p is hidden from a source at (azimuth, elevation) where M[p] > dsm[p]. ``max_height`` bounds
    how far rays are followed (the tallest relief above its surroundings), which sets the cost.
    """
    dsm = np.asarray(dsm, np.float32)
    h, w = dsm.shape
    dc, dr = direction_colrow(azimuth_deg)
    tan_e = math.tan(math.radians(elevation_deg))
    transpose = abs(dr) > abs(dc)
    a = dsm.T if transpose else dsm
    if transpose:
        dc, dr = dr, dc
    flip = dc < 0
    if flip:
        a = a[:, ::-1]
    a = np.ascontiguousarray(a)
    hh, ww = a.shape
    m = dr / abs(dc)                       # rows per column step
    step_len = math.hypot(1.0, m)          # pixels of ground distance per column step
    rise = step_len * gsd * tan_e          # metres the ray climbs per column step
    k_max = max(1, int(math.ceil(max(max_height, 0.0) / max(rise, 1e-6))) + 1)
    off = np.rint(m * np.arange(ww)).astype(np.int64)     # row offset of each column
    omin, omax = int(off.min()), int(off.max())
    hs = hh + (omax - omin)
    # sheared[r', c] = a[r' + off[c] + omin... ]: a horizontal line in sheared space follows the ray.
    runs = _runs(off)
    if len(runs) == 1:
        sheared = a
    else:
        sheared = np.full((hs, ww), NEG, np.float32)
        for c0, c1, o in runs:
            sheared[omax - o: omax - o + hh, c0:c1] = a[:, c0:c1]
    run = _running_max_rows(sheared, rise, k_max)
    # Unshear: original (r, c) sits at sheared row r - off[c] + omax.
    if len(runs) == 1:
        res = run
    else:
        res = np.empty((hh, ww), np.float32)
        for c0, c1, o in runs:
            res[:, c0:c1] = run[omax - o: omax - o + hh, c0:c1]
    if flip:
        res = res[:, ::-1]
    if transpose:
        res = res.T
    return np.ascontiguousarray(res)


def shadow_mask(dsm: np.ndarray, azimuth_deg: float, elevation_deg: float, gsd: float,
                max_height: float, tol: float = 0.3) -> np.ndarray:
    """True where the surface is hidden from a source at (azimuth, elevation)."""
    occ = occluder_height(dsm, azimuth_deg, elevation_deg, gsd, max_height)
    return occ > dsm + np.float32(tol)


def splat(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Sum ``values`` at fractional pixel-index positions (rows, cols) with bilinear weights.

    One ``bincount`` over all taps into a one-pixel padded grid (no per-tap bounds checks); when
    all row positions are integral (axis-aligned displacements) only the two column taps are used.
    """
    h, w = shape
    wp = w + 2
    rf = np.floor(rows)
    cf = np.floor(cols)
    fr = (rows - rf).astype(np.float32)
    fc = (cols - cf).astype(np.float32)
    ok = (rf >= -1) & (rf < h) & (cf >= -1) & (cf < w)
    if not ok.all():
        rf, cf, fr, fc, values = rf[ok], cf[ok], fr[ok], fc[ok], values[ok]
    base = (rf.astype(np.int64) + 1) * wp + (cf.astype(np.int64) + 1)
    v = values.astype(np.float32)
    if not np.any(fr):
        idx = np.concatenate([base, base + 1])
        wts = np.concatenate([v * (1 - fc), v * fc])
    elif not np.any(fc):
        idx = np.concatenate([base, base + wp])
        wts = np.concatenate([v * (1 - fr), v * fr])
    else:
        a = v * (1 - fr)
        b = v * fr
        idx = np.concatenate([base, base + 1, base + wp, base + wp + 1])
        wts = np.concatenate([a * (1 - fc), a * fc, b * (1 - fc), b * fc])
    out = np.bincount(idx, weights=wts, minlength=(h + 2) * wp)
    return out.reshape(h + 2, wp)[1:-1, 1:-1].astype(np.float32)


def _minmod_gradient(a: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Slope from the smaller of the one-sided differences (0 where they disagree in sign), so
    pixels on either side of a wall keep the slope of their own surface, not the wall's."""
    d = np.diff(a, axis=axis) * np.float32(1.0 / step)
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 1)
    d = np.pad(d, pad)
    lo = d[:-1] if axis == 0 else d[:, :-1]
    hi = d[1:] if axis == 0 else d[:, 1:]
    out = np.where(lo * hi > 0, np.where(np.abs(lo) < np.abs(hi), lo, hi), np.float32(0))
    return out.astype(np.float32)


def surface_normals(dsm: np.ndarray, gsd: float, max_slope: float = 3.0):
    """Unit surface normals (east, north, up) of a north-up height grid (slopes clipped)."""
    a = np.asarray(dsm, np.float32)
    gy = _minmod_gradient(a, 0, gsd)      # d/drow (south)
    gx = _minmod_gradient(a, 1, gsd)      # d/dcol (east)
    np.clip(gx, -max_slope, max_slope, out=gx)
    np.clip(gy, -max_slope, max_slope, out=gy)
    inv = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    return -gx * inv, gy * inv, inv
