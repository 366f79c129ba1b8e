"""Error of a fitted correction against simulator ground truth (check points)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CheckpointError:
    n: int
    before_px: float
    """RMSE (SAR pixels) of the uncorrected optical georeference at the check points."""
    after_px: float
    """RMSE (SAR pixels) after applying the fitted transform."""
    max_after_px: float


def checkpoint_error(transform, truth_path, pixel_size: float) -> CheckpointError:
    """``truth_path``: the truth JSON's path, or a ``Truth`` already loaded from it."""
    from .simulate.truth import Truth, load_truth

    cps = (truth_path if isinstance(truth_path, Truth) else load_truth(truth_path)).check_points
    nominal, true = np.asarray(cps.nominal_xy, float), np.asarray(cps.true_xy, float)
    before = np.hypot(*(nominal - true).T) / pixel_size
    after = np.hypot(*(transform.apply(nominal) - true).T) / pixel_size
    return CheckpointError(n=len(nominal), before_px=float(np.sqrt(np.mean(before ** 2))),
                           after_px=float(np.sqrt(np.mean(after ** 2))), max_after_px=float(after.max()))
