"""Patch-matching metrics of Hughes' thesis (chapter 5), so our numbers sit beside the published ones.

Every metric is computed from the L2 error (px) between a method's predicted offset and the true
offset of each test pair. A pair the method gave no answer for (e.g. SIFT found no consistent
keypoints, AROSICS raised) has error NaN: it counts as a miss in every "within t px" percentage
(the denominator is always the number of pairs tried), and it is left out of the mean/median error,
whose own count (``n_answered``) is reported next to it.

Definitions
-----------
* accuracy: % of pairs with error <= 1 px (the thesis's headline number).
* within_2px / within_3px: same with 2 and 3 px (looser labels, e.g. the ±3 px Sentinel pairs).
* mean_l2 / median_l2: over answered pairs, outliers included (they are what a user suffers).
* mAP ("mean average precision" in the thesis, really a mean *spread*, lower is better): for every
  integer threshold t = 1..32 px take the errors <= t and compute their standard deviation
  (population, ddof=0); average over t.

  **Empty threshold rule** (the thesis leaves it open): when *no* match lies within t, the
  precision at t is set to t/2, the largest standard deviation a set of values in [0, t] can have.
  That way a method never gains from having nothing close enough, and the value stays finite so
  methods can be averaged and compared. A single match within t has spread 0 (as in the thesis);
  that is why the count within each threshold matters and accuracy is always shown beside mAP.
* kept: when a filter (e.g. a peak-quality threshold) removes matches, metrics are recomputed on
  the kept pairs only and ``n_kept`` / ``kept_frac`` say how many survived; accuracy is then the
  precision of the surviving matches, which is what a tie-point filter is for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

MAP_THRESHOLDS: tuple[int, ...] = tuple(range(1, 33))
"""Thresholds (px) of the thesis's mAP: 1, 2, ..., 32."""


@dataclass
class PatchMetrics:
    """Summary of one method on one set of pairs (percentages in 0..100, errors in px)."""

    n: int
    """Pairs considered (after the filter, if any)."""
    n_answered: int
    """Pairs for which the method returned an offset."""
    accuracy: float
    within_2px: float
    within_3px: float
    mean_l2: float
    median_l2: float
    mAP: float
    n_kept: Optional[int] = None
    kept_frac: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)


def l2_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) between predicted and true (drow, dcol) offsets; NaN where pred is NaN."""
    pred = np.asarray(pred, dtype=float).reshape(-1, 2)
    truth = np.asarray(truth, dtype=float).reshape(-1, 2)
    return np.hypot(pred[:, 0] - truth[:, 0], pred[:, 1] - truth[:, 1])


def within(errors: np.ndarray, t: float) -> float:
    """% of all pairs (NaN = miss) whose error is <= t px."""
    e = np.asarray(errors, dtype=float)
    if e.size == 0:
        return float("nan")
    return float(100.0 * np.mean(np.where(np.isfinite(e), e <= t, False)))


def precision_at(errors: np.ndarray, t: float) -> float:
    """Standard deviation of the errors <= t (the thesis's precision); t/2 when none is (see module doc)."""
    e = np.asarray(errors, dtype=float)
    sel = e[np.isfinite(e) & (e <= t)]
    if sel.size == 0:
        return t / 2.0
    return float(np.std(sel))


def mean_average_precision(errors: np.ndarray, thresholds: Sequence[float] = MAP_THRESHOLDS) -> float:
    """Mean of ``precision_at`` over the thresholds (1..32 px by default). Lower is better."""
    return float(np.mean([precision_at(errors, t) for t in thresholds]))


def patch_metrics(errors: np.ndarray, keep: Optional[np.ndarray] = None) -> PatchMetrics:
    """All thesis metrics for one method; ``keep`` (bool per pair) applies a match filter first."""
    e = np.asarray(errors, dtype=float).ravel()
    n_total = e.size
    n_kept = kept_frac = None
    if keep is not None:
        keep = np.asarray(keep, dtype=bool).ravel()
        if keep.shape != e.shape:
            raise ValueError(f"keep mask has {keep.size} entries for {e.size} errors")
        e = e[keep]
        n_kept = int(keep.sum())
        kept_frac = float(n_kept / n_total) if n_total else float("nan")
    fin = e[np.isfinite(e)]
    return PatchMetrics(
        n=int(e.size),
        n_answered=int(fin.size),
        accuracy=within(e, 1.0),
        within_2px=within(e, 2.0),
        within_3px=within(e, 3.0),
        mean_l2=float(fin.mean()) if fin.size else float("nan"),
        median_l2=float(np.median(fin)) if fin.size else float("nan"),
        mAP=mean_average_precision(e) if e.size else float("nan"),
        n_kept=n_kept,
        kept_frac=kept_frac,
    )


