"""Fast random fields and filters used by the scene generator and both renderers.

The simulator must make a 2048x2048 pair in a few seconds on one core, so these helpers avoid the
slow paths of ``scipy.ndimage`` on large float32 arrays: low-frequency noise is a cubic B-spline
surface evaluated with two small matrix products, Gaussian blur runs its row pass through
``correlate1d`` and its column pass as shifted-slice sums (scipy's column pass is ~6x slower), and
interval lookups use a table instead of ``searchsorted``.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy import ndimage as ndi


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Uniform cubic B-spline kernel (support [-2, 2], C2-smooth, partition of unity)."""
    a = np.abs(t)
    out = np.zeros_like(a)
    m1 = a < 1
    m2 = (a >= 1) & (a < 2)
    out[m1] = 2.0 / 3.0 - a[m1] ** 2 + 0.5 * a[m1] ** 3
    out[m2] = (2.0 - a[m2]) ** 3 / 6.0
    return out


def _spline_matrix(n: int, scale: float) -> np.ndarray:
    """(n, k) matrix that evaluates a cubic B-spline with knots every ``scale`` samples."""
    k = int(math.ceil(n / scale)) + 4
    t = (np.arange(n, dtype=np.float64) + 0.5) / scale + 1.5
    m = _bspline3(t[:, None] - np.arange(k)[None, :])
    return m.astype(np.float32)


def _spline_noise(rng: np.random.Generator, shape: Tuple[int, int], scale_px: float) -> np.ndarray:
    """One octave: cubic B-spline surface with knots every ``scale_px`` (two small matmuls)."""
    h, w = shape
    my, mx = _spline_matrix(h, scale_px), _spline_matrix(w, scale_px)
    c = rng.standard_normal((my.shape[1], mx.shape[1])).astype(np.float32)
    out = my @ c @ mx.T
    out *= np.float32(2.0)   # 2-D cubic B-spline weights: sum of squares ~ 0.25
    return out


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], scale_px: float,
                 octaves: int = 1, persistence: float = 0.5) -> np.ndarray:
    """Zero-mean, roughly unit-std smooth random field with features about ``scale_px`` wide.

    With ``octaves`` > 1 finer octaves (scale/2, /4, ...) are added with weights
    ``persistence**i`` (fractal noise). Octaves wider than ~40 px are cubic B-spline surfaces
    (two matrix products, cost grows with 1/scale); finer ones are bilinear-upsampled smoothed
    white noise, whose cost does not depend on the scale.
    """
    out = None
    amp, total = 1.0, 0.0
    for o in range(max(int(octaves), 1)):
        s = max(float(scale_px) / 2 ** o, 2.0)
        f = _spline_noise(rng, shape, s) if s >= 40.0 else _fine_noise(rng, shape, s)
        if out is None:
            out = f if amp == 1.0 else f * np.float32(amp)
        else:
            out += f * np.float32(amp)
        total += amp * amp
        amp *= persistence
    if total != 1.0:
        out *= np.float32(1.0 / math.sqrt(total))
    return out


def upsample_linear(coarse: np.ndarray, shape: Tuple[int, int], scale: float) -> np.ndarray:
    """Bilinear upsampling: output pixel centre i + 0.5 sits at coarse coordinate (i + 0.5) / scale."""
    h, w = shape

    def axis(n, m):
        p = (np.arange(n) + 0.5) / scale
        i0 = np.minimum(np.floor(p).astype(np.int64), m - 2)
        return i0, (p - i0).astype(np.float32)

    r0, tr = axis(h, coarse.shape[0])
    c0, tc = axis(w, coarse.shape[1])
    # Interpolate along columns on the small coarse grid first; the full-size pass then only
    # gathers whole rows (contiguous copies).
    cols = coarse[:, c0] * (1 - tc)[None, :] + coarse[:, c0 + 1] * tc[None, :]   # (k, w)
    out = cols[r0]
    out *= (1 - tr)[:, None]
    out += cols[r0 + 1] * tr[:, None]
    return out


def _fine_noise(rng: np.random.Generator, shape: Tuple[int, int], scale_px: float) -> np.ndarray:
    """Cheap smooth noise for small feature sizes: smoothed coarse white noise, bilinear upsampled."""
    h, w = shape
    step = max(scale_px / 2.0, 1.0)
    c = rng.standard_normal((int(h / step) + 3, int(w / step) + 3)).astype(np.float32)
    c = 0.25 * (2 * c + np.roll(c, 1, 0) + np.roll(c, -1, 0)) if c.shape[0] > 2 else c
    c = 0.25 * (2 * c + np.roll(c, 1, 1) + np.roll(c, -1, 1)) if c.shape[1] > 2 else c
    c *= np.float32(1.0 / max(float(c.std()), 1e-6))
    return upsample_linear(c, shape, step) * np.float32(1.0 / 0.8)


def smooth_noise_1d(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """1-D smooth unit-std noise of length ``n`` with features about ``scale`` samples wide."""
    m = _spline_matrix(n, max(scale, 2.0))
    return (m @ rng.standard_normal(m.shape[1]).astype(np.float32)) / 0.7


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(a: np.ndarray, sigma: float, sigma_cols: float | None = None) -> np.ndarray:
    """Separable Gaussian blur (edge-replicating) of a 2-D float32 array; sigma in pixels.

    ``sigma_cols`` gives a different sigma along columns (x) if set. Returns a new array.
    """
    a = np.asarray(a, dtype=np.float32)
    sr = float(sigma)
    sc = float(sigma if sigma_cols is None else sigma_cols)
    out = a
    if sc > 0.05:
        out = ndi.correlate1d(out, gaussian_kernel(sc), axis=1, mode="nearest")
    if sr > 0.05:
        k = gaussian_kernel(sr)
        r = len(k) // 2
        h = out.shape[0]
        p = np.concatenate([np.repeat(out[:1], r, 0), out, np.repeat(out[-1:], r, 0)], axis=0)
        res = p[0:h] * k[0]
        for i in range(1, len(k)):
            res += p[i: i + h] * k[i]
        out = res
    if out is a:
        out = a.copy()
    return out


def interval_index(values: np.ndarray, edges: np.ndarray, resolution: float = 1.0) -> np.ndarray:
    """For sorted ``edges``, the index i with edges[i] <= v < edges[i+1] (clipped to 0..len-2).

    Same as ``searchsorted(edges, v, 'right') - 1`` but via a lookup table with ``resolution``
    spacing, ~4x faster on millions of values. Edges must be at least ``resolution`` apart.
    """
    edges = np.asarray(edges, dtype=np.float64)
    lo = edges[0]
    n = int(math.ceil((edges[-1] - lo) / resolution)) + 2
    grid = lo + np.arange(n) * resolution
    table = (np.searchsorted(edges, grid, side="right") - 1).clip(0, len(edges) - 2).astype(np.int32)
    q = ((values - lo) * (1.0 / resolution)).astype(np.int32)
    np.clip(q, 0, n - 1, out=q)
    idx = table[q]
    # The table gives the interval of the bin's lower bound; a value may have passed the next edge.
    nxt = edges.astype(np.float32)[np.minimum(idx + 1, len(edges) - 1)]
    idx += (values >= nxt) & (idx < len(edges) - 2)
    return idx


def random_edges(rng: np.random.Generator, lo: float, hi: float, min_step: float, max_step: float) -> np.ndarray:
    """Sorted positions from below ``lo`` to above ``hi`` with uniformly random spacings."""
    start = lo - rng.uniform(0.0, max_step)
    steps = rng.uniform(min_step, max_step, int((hi - lo) / min_step) + 4)
    e = start + np.concatenate([[0.0], np.cumsum(steps)])
    last = int(np.searchsorted(e, hi)) + 2
    return e[: min(last, len(e))]


def hash_uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer id (splitmix64 finaliser), vectorised."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & 0xFFFFFFFF)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def table_bits(n_pixels: int) -> int:
    """Size (log2) of per-object random lookup tables: large enough that distinct objects rarely
    share an entry, small enough that drawing the table is cheap for small patches."""
    return int(min(20, max(10, math.ceil(math.log2(max(n_pixels, 2))) - 3)))


def object_keys(ids: np.ndarray, bits: int) -> np.ndarray:
    """Hash integer ids into [0, 2**bits) (Knuth multiplicative hash on 32 bits)."""
    prod = ids.astype(np.uint32) * np.uint32(2654435761)
    return (prod >> np.uint32(32 - bits)).astype(np.int32)
