"""Is a finished run's result to be trusted? Warnings for results that look fine but may be wrong.

A run that fits a transform is not necessarily right: with a misregistration larger than the search
range, the few matches whose true offset still lies inside the window agree with one another, the
robust fit accepts them and reports a small RMSE, and the recovered shift is short of the truth
(the GF-3/WorldView pair in ``../shared/realdata``: 5 of 124 matches inliers, hull 7 % of the area,
shift -61 px where the truth is about -70 px). Nothing failed, so the run must say that it is
doubtful and what to do. ``result_warnings`` is the one place these rules live; the CLI, the
summary, the dock and the Processing log all show its strings (``MatchResult.warnings``).

The thresholds (``VerdictThresholds``) were set from healthy runs: the demo scene, the tests'
simulated scenes and ten Sentinel-1/2 pairs of ``s1s2_volkov`` (inlier share 0.29-0.74, inliers' hull 0.55-0.99
of the candidates' hull, at most 3 % of the matches at the window edge) against the failing GF-3 run
(0.04, 0.14, 73 %).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

EDGE_REASON = "peak at search window edge"
"""The flag reason ``pipeline.flag_weak`` gives a match whose peak lies on the search window's edge."""

N_PARAMETERS = {"shift": 2, "shift_mean": 2, "affine": 6, "poly1": 6, "poly2": 12, "poly3": 20,
                "projective": 8, "tps": 6}
"""Parameters each transform takes from the tie points' 2 n coordinates. A thin-plate spline passes
through every point (its own residuals are 0 by construction); the evidence it has is its affine
part, which the robust consensus is found with, so it counts as an affine here."""


@dataclass(frozen=True)
class VerdictThresholds:
    """When ``result_warnings`` warns. Each limit says why it is where it is."""

    min_inlier_share: float = 0.15
    """Warn when fewer than this share of the matched candidates are inliers of the fit. Healthy runs
    keep 0.29-0.74 (real Sentinel-1/2) and about half (the demo); a share of a few percent means most
    matches disagree with the transform, which then rests on a handful of points that agree by chance
    or because they are the few the search window could still reach."""
    min_hull_share: float = 0.25
    """Warn when the inliers' convex hull covers less than this share of the hull of all matched
    candidates. Measured against where tie points could lie at all, not the whole grid, so nodata,
    a small area of interest or a big search window (whose margin holds no candidate) are not held
    against the run. Healthy runs: 0.55-0.99; the GF-3 run's 0.14 means the correction is
    extrapolated over most of the scene from a corner."""
    edge_margin: float = 0.10
    """Warn when the recovered shift lies within this fraction of the search radius from it: the true
    offset may lie beyond the window, and only the matches it still reaches (biased inwards) survive."""
    max_edge_share: float = 0.25
    """Warn, with the same advice, when at least this share of the matches peaked at the window's
    edge (healthy runs: at most 3 %): the offset is larger than the search range for most of them."""
    min_residual_dof: int = 1
    """Warn when the fit has fewer residual degrees of freedom (2 n coordinates minus the transform's
    parameters) than this: with none, the transform passes through every inlier, so its RMSE is 0 by
    construction and checks nothing (a TPS or an affine on 3 points reports 'RMSE 0.00 px')."""


DEFAULT_THRESHOLDS = VerdictThresholds()


def search_radius_px(params) -> int:
    """Largest offset (grid pixels, along rows or columns) the search window can recover."""
    return (params.effective_search_size() - params.template_size) // 2


def suggested_max_offset(radius: int, shift_px: float = 0.0) -> int:
    """A ``--max-offset`` that covers twice the current radius (and 1.5 times the shift), in steps of 8 px."""
    want = max(2 * radius, 1.5 * shift_px)
    return int(8 * math.ceil(want / 8))


def result_warnings(stats, params, thresholds: Optional[VerdictThresholds] = None) -> list[str]:
    """Warnings (plain sentences, each saying what to do) for a result that may be wrong.

    ``stats`` is the run's ``pipeline.MatchStats`` (``n_matched``, ``n_inliers``, ``coverage``,
    ``candidate_coverage``, ``shift_px``, ``rmse_px``, ``n_edge``), ``params`` its ``MatchParams``.
    Empty for a healthy run.
    """
    t = thresholds or DEFAULT_THRESHOLDS
    out: list[str] = []
    n_m, n_i = int(stats.n_matched), int(stats.n_inliers)
    radius = search_radius_px(params)

    # 1. The search range: the shift is near its edge, or many matches peaked on it.
    sx, sy = (float(v) for v in stats.shift_px)
    shift = max(abs(sx), abs(sy)) if math.isfinite(sx) and math.isfinite(sy) else math.nan
    n_edge = int(getattr(stats, "n_edge", 0) or 0)
    why = []
    if math.isfinite(shift) and radius > 0 and shift >= (1.0 - t.edge_margin) * radius:
        why.append(f"the recovered shift ({shift:.0f} px) is within {_pct(t.edge_margin)} of the search radius "
                   f"({radius} px)")
    if n_m > 0 and n_edge / n_m >= t.max_edge_share:
        why.append(f"{n_edge} of {n_m} matches ({_pct(n_edge / n_m)}) peaked at the edge of the search window "
                   f"(±{radius} px)")
    if why:
        lead = " and ".join(why)
        sugg = suggested_max_offset(radius, shift if math.isfinite(shift) else 0.0)
        out.append(f"{lead[0].upper()}{lead[1:]}: the misregistration may be larger than the search range and the "
                   f"result wrong; rerun with --max-offset {sugg} (pixels; the dock's Max offset).")

    # 2. The inlier share.
    if n_m > 0 and n_i / n_m < t.min_inlier_share:
        out.append(f"Only {n_i} of {n_m} matches ({_pct(n_i / n_m)}) are inliers of the fitted transform: most "
                   "matches disagree with it, so it rests on a few points and may be wrong; check the tie points "
                   "(the Review tab or tie_points.gpkg) and rerun with a larger --max-offset, another --method "
                   "or a simpler --transform.")

    # 3. The hull of the inliers, against the hull of all matched candidates (where tie points can lie).
    cov = float(stats.coverage)
    reach = float(getattr(stats, "candidate_coverage", math.nan))
    if math.isfinite(cov) and math.isfinite(reach) and reach > 0 and cov / reach < t.min_hull_share:
        simpler = "" if params.transform in ("shift", "shift_mean") else " or a simpler --transform (shift)"
        out.append(f"The inliers' convex hull covers only {_pct(cov)} of the area ({_pct(min(cov / reach, 1.0))} of "
                   f"the candidates' hull): the {params.transform} correction is extrapolated over the rest; "
                   f"check the result away from the tie points, and use more candidates (--n-target){simpler}.")

    # 4. Residual degrees of freedom.
    n_par = N_PARAMETERS.get(params.transform)
    if n_par is not None and n_i > 0 and 2 * n_i - n_par < t.min_residual_dof:
        rmse = float(stats.rmse_px)
        shown = f"its residual RMSE ({rmse:.2f} px)" if math.isfinite(rmse) else "its residual RMSE"
        simpler = "" if params.transform in ("shift", "shift_mean") else " or use a simpler --transform (shift)"
        inliers = f"{n_i} inliers give" if n_i != 1 else "1 inlier gives"
        out.append(f"The {params.transform} transform has no residual degrees of freedom ({inliers} "
                   f"{2 * n_i} coordinates for {n_par} parameters): it passes through every tie point, so {shown} "
                   f"is 0 by construction and checks nothing; add tie points (a larger area, --n-target){simpler}.")
    return out


def _pct(share: float) -> str:
    return f"{100.0 * share:.0f} %"
