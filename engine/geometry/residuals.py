"""Residual statistics and tie-point spread, for the run report and the accept/reject decision.

The convex-hull coverage tells the analyst whether the tie points constrain the whole image: an
affine fitted on points bunched in one corner extrapolates badly elsewhere even with a tiny RMSE.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ..errors import InputError
from .transforms import Transform, _as_xy


def residual_vectors(transform: Transform, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``dst - transform(src)``, shape (N, 2), in coordinate units."""
    return transform.residuals(src, dst)


def residual_norms(transform: Transform, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Length of each residual vector, shape (N,)."""
    r = residual_vectors(transform, src, dst)
    return np.hypot(r[:, 0], r[:, 1])


def rmse(residuals: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Root-mean-square of residual lengths; accepts (N, 2) vectors or (N,) norms. NaN if empty."""
    r = np.asarray(residuals, dtype=float)
    norms = np.hypot(r[:, 0], r[:, 1]) if r.ndim == 2 else r.reshape(-1)
    if mask is not None:
        norms = norms[np.asarray(mask, dtype=bool)]
    if norms.size == 0:
        return math.nan
    return float(np.sqrt(np.mean(norms**2)))


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the points' convex hull; 0 for fewer than 3 points or collinear/duplicated ones."""
    p = _as_xy(points, "points")
    if len(np.unique(p, axis=0)) < 3:
        return 0.0
    poly = _hull_polygon(p)
    return _polygon_area(poly) if poly is not None else 0.0


def coverage_fraction(points: np.ndarray, rect: Sequence[float]) -> float:
    """Fraction of ``rect = (xmin, ymin, xmax, ymax)`` covered by the points' convex hull (0..1).

    The hull is clipped to the rectangle first, so points outside it do not inflate the figure.
    Degenerate inputs (fewer than 3 distinct points, all collinear) cover nothing: 0.0.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in rect)
    if not (xmax > xmin and ymax > ymin) or not all(map(math.isfinite, (xmin, ymin, xmax, ymax))):
        raise InputError(f"coverage rectangle must have xmax > xmin and ymax > ymin, got {tuple(rect)}")
    p = _as_xy(points, "points")
    if len(np.unique(p, axis=0)) < 3:
        return 0.0
    poly = _hull_polygon(p)
    if poly is None:
        return 0.0
    clipped = _clip_to_rect(poly, xmin, ymin, xmax, ymax)
    if len(clipped) < 3:
        return 0.0
    frac = _polygon_area(clipped) / ((xmax - xmin) * (ymax - ymin))
    return float(min(max(frac, 0.0), 1.0))


hull_coverage = coverage_fraction
"""Alias used by the pipeline."""


def _hull_polygon(p: np.ndarray) -> Optional[np.ndarray]:
    """Hull vertices in counter-clockwise order, or None when Qhull finds no 2-D hull."""
    # Qhull works in floating point relative to the data; centring avoids losing digits with
    # UTM-sized coordinates (it restores the offset afterwards).
    c = p.mean(axis=0)
    try:
        hull = ConvexHull(p - c)
    except (QhullError, ValueError):
        return None
    return p[hull.vertices]


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0] - poly[:, 0].mean(), poly[:, 1] - poly[:, 1].mean()
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _clip_to_rect(poly: np.ndarray, xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
    """Sutherland–Hodgman clipping of a convex polygon against an axis-aligned rectangle."""
    edges = ((0, xmin, 1.0), (0, xmax, -1.0), (1, ymin, 1.0), (1, ymax, -1.0))
    out = [tuple(v) for v in poly]
    for axis, bound, sign in edges:
        if not out:
            break
        inp, out = out, []
        for i, cur in enumerate(inp):
            prev = inp[i - 1]
            cur_in = sign * (cur[axis] - bound) >= 0
            prev_in = sign * (prev[axis] - bound) >= 0
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                out.append(cur)
    return np.array(out, dtype=float).reshape(-1, 2)
