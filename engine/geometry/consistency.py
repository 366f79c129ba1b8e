"""Local direction-consistency filter for tie-point displacements (after Sharma et al.).

Idea: misregistration between two rasters varies slowly over the image, so a correct match's
displacement points roughly the same way as its neighbours'. A match whose displacement
direction deviates from the circular mean of its k nearest neighbours' directions by more than
z neighbour standard deviations is flagged. This catches wrong matches that a global model with
a loose threshold would still accept (e.g. a reversed vector of the right length).

Two guards make it usable on real data:

* zero spread: when all neighbours point exactly the same way (synthetic shifts, a pure
  translation) the circular std is 0 and any round-off would be "infinitely" many sigmas off, so
  the std is floored at ``min_std_deg``;
* tiny displacements: the direction of a near-zero vector is noise. Points whose displacement is
  below ``min_displacement`` are never flagged by this filter and do not vote for their
  neighbours; a neighbourhood with no voters flags nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from ..errors import InputError
from .transforms import _as_xy


@dataclass
class DirectionConsistency:
    """Per-point outcome of the direction filter."""

    keep: np.ndarray
    """Boolean (N,): True where the direction agrees with the neighbourhood."""
    deviation: np.ndarray
    """(N,) |angle - neighbours' circular mean| in units of the (floored) neighbour std; 0 where undefined."""
    angle_deg: np.ndarray
    """(N,) displacement direction, degrees counter-clockwise from +x (map east)."""
    neighbour_mean_deg: np.ndarray
    """(N,) circular mean direction of the neighbours (NaN where no neighbour voted)."""
    neighbour_std_deg: np.ndarray
    """(N,) circular std of the neighbours' directions before flooring (NaN where undefined)."""

    def __iter__(self):
        """Unpacks as ``keep, deviation = direction_consistency(...)`` (the pipeline's usage)."""
        return iter((self.keep, self.deviation))


def direction_consistency(
    src: np.ndarray,
    dst: np.ndarray,
    k: int = 14,
    z: float = 1.5,
    min_std_deg: float = 3.0,
    min_displacement: Optional[float] = None,
) -> DirectionConsistency:
    """Flag tie points whose displacement direction disagrees with their ``k`` nearest neighbours.

    ``src``/``dst`` are (N, 2) optical-nominal and true positions; neighbours are searched among
    ``src``. ``min_displacement`` (coordinate units) defaults to 10 % of the median displacement
    length, so the guard scales with the data.
    """
    src = _as_xy(src, "src")
    dst = _as_xy(dst, "dst")
    if len(src) != len(dst):
        raise InputError(f"src and dst must have the same number of points, got {len(src)} and {len(dst)}")
    if int(k) < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if not (math.isfinite(z) and z > 0):
        raise InputError(f"z must be a positive number, got {z}")
    n = len(src)
    d = dst - src
    mag = np.hypot(d[:, 0], d[:, 1])
    ang = np.arctan2(d[:, 1], d[:, 0])
    if min_displacement is None:
        min_displacement = 0.1 * float(np.median(mag)) if n else 0.0
    valid = mag > float(min_displacement)

    keep = np.ones(n, dtype=bool)
    dev = np.zeros(n)
    mean_deg = np.full(n, np.nan)
    std_deg = np.full(n, np.nan)
    kk = min(int(k), n - 1)
    if kk < 1:
        return DirectionConsistency(keep, dev, np.degrees(ang), mean_deg, std_deg)

    _, nbr = cKDTree(src).query(src, k=kk + 1)
    nbr = nbr.reshape(n, kk + 1)
    # Exclude the point itself by index, not by "first column": with duplicated positions a twin
    # may come back before the point itself.
    self_idx = np.arange(n)[:, None]
    vote = valid[nbr] & (nbr != self_idx)
    c = np.where(vote, np.cos(ang[nbr]), 0.0).sum(axis=1)
    s = np.where(vote, np.sin(ang[nbr]), 0.0).sum(axis=1)
    m = vote.sum(axis=1)
    has = m > 0
    R = np.zeros(n)
    R[has] = np.hypot(c[has], s[has]) / m[has]
    mu = np.arctan2(s, c)
    # Circular standard deviation sqrt(-2 ln R) (Mardia); R -> 0 means no common direction.
    with np.errstate(divide="ignore"):
        sd = np.sqrt(-2.0 * np.log(np.clip(R, 1e-300, 1.0)))
    sd_floor = np.maximum(sd, math.radians(min_std_deg))
    diff = np.abs(np.angle(np.exp(1j * (ang - mu))))  # wrapped to [0, pi]
    defined = has & valid
    dev[defined] = diff[defined] / sd_floor[defined]
    keep[defined] = dev[defined] <= z
    mean_deg[has] = np.degrees(mu[has])
    std_deg[has] = np.degrees(sd[has])
    return DirectionConsistency(keep, dev, np.degrees(ang), mean_deg, std_deg)
