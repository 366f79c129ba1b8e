"""Outlier-robust transform fitting: MSAC with local optimisation (LO-RANSAC style).

Why MSAC rather than plain RANSAC: MSAC scores a hypothesis by the truncated squared residual
``sum(min(r², t²))`` instead of an inlier count, so among hypotheses with the same number of
inliers it prefers the one that fits them best; with tie points on a regular grid, many
hypotheses tie on the count. Why the local optimisation: a model from a minimal sample carries
the noise of 3 points; refitting on the whole consensus set and re-selecting inliers until the
set stops changing recovers the precision of a least-squares fit.

Everything is deterministic for a given ``seed`` (numpy ``default_rng``), so a rerun of the same
job flags the same points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError, MatcherError, TooFewPointsError
from .transforms import MIN_POINTS, Transform, _check_inputs, _check_kind, fit_transform


@dataclass
class RobustFit:
    """Result of ``robust_fit``."""

    transform: Transform
    """Final model, refitted (weighted) on the inliers only."""
    inliers: np.ndarray
    """Boolean (N,) consensus mask."""
    residuals: np.ndarray
    """(N,) residual norms ``|dst - transform(src)|`` of all points, in coordinate units."""
    rmse: float
    """Root-mean-square residual norm over the inliers."""
    iterations: int
    """Number of random hypotheses drawn."""

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())


def robust_fit(
    kind: str,
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float,
    weights: Optional[np.ndarray] = None,
    max_iter: int = 2000,
    seed: int = 0,
    *,
    confidence: float = 0.999,
    tps_robust_kind: str = "affine",
    smoothing: float = 0.0,
    max_lo_rounds: int = 10,
    min_inliers: Optional[int] = None,
) -> RobustFit:
    """Fit ``kind`` robustly; points with residual > ``threshold`` (coordinate units) are outliers.

    For ``tps`` (which can pass through any point, so it cannot vote on outliers) the consensus is
    found with ``tps_robust_kind`` (affine by default) and the spline is then fitted on the inliers.
    The number of hypotheses adapts to the observed inlier ratio (stops once ``confidence`` is
    reached) but never exceeds ``max_iter``.

    ``min_inliers`` defaults to one more than the minimal sample (when there are more points than
    that): a model supported only by the points it was computed from has not been checked by
    anything, so it is no evidence of a consensus.
    """
    kind, src, dst, w = _check_inputs(kind, src, dst, weights)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError) as exc:
        raise InputError(f"robust threshold must be a positive number, got {threshold!r}") from exc
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"robust threshold must be a positive number, got {threshold!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    rkind = _check_kind(tps_robust_kind) if kind == "tps" else kind
    if rkind == "tps":
        raise InputError("tps_robust_kind cannot be 'tps'")

    n = len(src)
    usable = np.flatnonzero(w > 0)
    # One plain fit up front lets fit_transform word "too few" / "collinear" / "duplicated" errors
    # (with their suggestions) instead of failing later as "no consensus".
    fit_transform(rkind, src[usable], dst[usable], w[usable])
    if kind != rkind and len(usable) < MIN_POINTS[kind]:
        fit_transform(kind, src[usable], dst[usable], w[usable], smoothing=smoothing)

    t2 = float(threshold) ** 2
    rng = np.random.default_rng(seed)
    s = MIN_POINTS[rkind]

    def sq_res(model: Transform) -> np.ndarray:
        r = dst - model.apply(src)
        r2 = np.einsum("ij,ij->i", r, r)
        r2[~np.isfinite(r2)] = np.inf
        return r2

    best_cost = math.inf
    best_inl: Optional[np.ndarray] = None
    n_needed = max_iter
    it = 0
    if len(usable) == s:
        # No redundancy: the only hypothesis is the full set.
        model = fit_transform(rkind, src[usable], dst[usable], w[usable])
        best_inl = (sq_res(model) <= t2) & (w > 0)
        it = 1
    else:
        while it < min(n_needed, max_iter):
            it += 1
            idx = rng.choice(usable, size=s, replace=False)
            try:
                model = fit_transform(rkind, src[idx], dst[idx])
            except MatcherError:
                continue  # degenerate sample (collinear/duplicated): just draw another
            r2 = sq_res(model)
            r2u = r2[usable]
            cost = float(np.minimum(r2u, t2).sum())
            if cost < best_cost:
                best_cost = cost
                best_inl = (r2 <= t2) & (w > 0)
                ratio = best_inl.sum() / len(usable)
                n_needed = _n_iterations(ratio, s, confidence)

    n_usable = len(usable)
    need_inl = min(s + 1, n_usable) if min_inliers is None else max(int(min_inliers), s)
    if best_inl is None or best_inl.sum() < need_inl:
        got = 0 if best_inl is None else int(best_inl.sum())
        raise TooFewPointsError(
            f"no {rkind} model is supported by at least {need_inl} tie points within {threshold:g} map "
            f"units (best: {got} of {n_usable}); raise the residual threshold"
            + (" or use 'shift'" if rkind != "shift" else "")
        )

    # Local optimisation: least squares on the consensus, re-select, until stable.
    inl = best_inl
    model = _fit_or_none(rkind, src, dst, w, inl)
    for _ in range(max_lo_rounds):
        if model is None:
            break
        new_inl = (sq_res(model) <= t2) & (w > 0)
        if new_inl.sum() < s or np.array_equal(new_inl, inl):
            break
        new_model = _fit_or_none(rkind, src, dst, w, new_inl)
        if new_model is None:
            break
        inl, model = new_inl, new_model
    if model is None:  # pragma: no cover - consensus of a valid sample is always fittable
        raise TooFewPointsError(f"{rkind} could not be fitted on the consensus set")

    if inl.sum() < MIN_POINTS[kind]:
        raise TooFewPointsError(
            f"only {int(inl.sum())} of {n} tie points agree within {threshold:g} map units, "
            f"{kind} needs {MIN_POINTS[kind]}; raise the threshold" + (" or use 'shift'" if kind != "shift" else "")
        )
    final = model if kind == rkind else fit_transform(kind, src[inl], dst[inl], w[inl], smoothing=smoothing)
    res = np.hypot(*(dst - final.apply(src)).T)
    rmse = float(np.sqrt(np.mean(res[inl] ** 2))) if inl.any() else math.nan
    return RobustFit(final, inl, res, rmse, it)


def _fit_or_none(kind: str, src: np.ndarray, dst: np.ndarray, w: np.ndarray, mask: np.ndarray) -> Optional[Transform]:
    try:
        return fit_transform(kind, src[mask], dst[mask], w[mask])
    except MatcherError:
        return None


def _n_iterations(inlier_ratio: float, sample_size: int, confidence: float) -> int:
    """Standard RANSAC bound: draws needed to hit one all-inlier sample with ``confidence``."""
    p_good = inlier_ratio**sample_size
    if p_good >= 1.0:
        return 1
    if p_good <= 0.0:
        return 10**9
    return int(math.ceil(math.log(1.0 - confidence) / math.log(1.0 - p_good)))
