"""Transform fitting, outlier rejection and residual statistics for tie points (numpy/scipy only)."""
from .consistency import DirectionConsistency, direction_consistency
from .residuals import convex_hull_area, coverage_fraction, hull_coverage, residual_norms, residual_vectors, rmse
from .robust import RobustFit, robust_fit
from .transforms import (
    KINDS,
    MIN_POINTS,
    DegenerateConfigurationError,
    Normalizer,
    PolynomialTransform,
    ProjectiveTransform,
    ShiftTransform,
    TPSTransform,
    Transform,
    fit_transform,
    suggest_kind,
    transform_from_dict,
)

__all__ = [
    "KINDS",
    "MIN_POINTS",
    "DegenerateConfigurationError",
    "DirectionConsistency",
    "Normalizer",
    "PolynomialTransform",
    "ProjectiveTransform",
    "RobustFit",
    "ShiftTransform",
    "TPSTransform",
    "Transform",
    "convex_hull_area",
    "coverage_fraction",
    "direction_consistency",
    "fit_transform",
    "hull_coverage",
    "residual_norms",
    "residual_vectors",
    "rmse",
    "robust_fit",
    "suggest_kind",
    "transform_from_dict",
]
