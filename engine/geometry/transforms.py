"""Transform models that map the optical raster's nominal map coordinates onto true (SAR) ones.

Every model is fitted by (weighted) least squares on *normalised* coordinates: UTM eastings and
northings are ~1e5..1e7, so a design matrix built from raw values (x, y, x², x·y, ...) would be
hopelessly ill-conditioned for poly2/poly3 and would even cost digits for an affine. Each side is
centred on its mean and scaled so the mean distance to the centre is sqrt(2) (Hartley's
normalisation, the standard pre-conditioning for DLT homographies), and the models store the
normalisers so ``apply`` works on raw coordinates.

Kinds (the strings users pick in the UI / CLI):

* ``shift``       one translation, the median of the displacements (Hughes' thesis uses the median
                  because it shrugs off the odd bad match); ``shift_mean`` uses the mean.
* ``affine``      6 parameters; identical to ``poly1`` (GDAL's polynomial order 1). Both names exist
                  because users know both; ``affine`` additionally guarantees an exact geotransform.
* ``poly2/poly3`` full bivariate polynomials of order 2/3 in GDAL's term order
                  (1, x, y, x², xy, y², x³, x²y, xy², y³), as used by GDAL's GCP transformer.
* ``projective``  8-parameter homography by the normalised DLT.
* ``tps``         thin-plate spline (scipy ``RBFInterpolator``) with an affine part and an
                  optional smoothing; smoothing 0 interpolates the tie points exactly.

Failures a user can act on raise ``TooFewPointsError`` (not enough points) or its subclass
``DegenerateConfigurationError`` (enough points, but collinear/duplicated so the model is not
determined); both carry a suggestion of what to do instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import InputError, TooFewPointsError

KINDS: tuple[str, ...] = ("shift", "shift_mean", "affine", "poly1", "poly2", "poly3", "projective", "tps")
"""All transform kinds understood by ``fit_transform``."""

MIN_POINTS: dict[str, int] = {
    "shift": 1,
    "shift_mean": 1,
    "affine": 3,
    "poly1": 3,
    "poly2": 6,
    "poly3": 10,
    "projective": 4,
    "tps": 3,
}
"""Minimum number of distinct tie points per kind (GDAL's counts for the polynomials)."""

_POLY_ORDER = {"affine": 1, "poly1": 1, "poly2": 2, "poly3": 3}

# Relative singular-value floor below which a system counts as rank deficient. Coordinates are
# normalised to O(1), so this separates "really collinear" from "merely badly spread" robustly.
_RANK_RTOL = 1e-9


class DegenerateConfigurationError(TooFewPointsError):
    """Enough tie points, but placed so that the model is undetermined (collinear, duplicated...).

    A subclass of ``TooFewPointsError`` because the remedy is the same: more (or better spread)
    points, or a simpler transform.
    """


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    """Similarity that maps coordinates to O(1) values: ``(xy - centre) / scale``."""

    centre: tuple[float, float]
    scale: float

    @classmethod
    def fit(cls, xy: np.ndarray) -> "Normalizer":
        c = xy.mean(axis=0) if len(xy) else np.zeros(2)
        d = np.hypot(*(xy - c).T) if len(xy) else np.zeros(0)
        mean_d = float(d.mean()) if len(d) else 0.0
        # All points identical (or a single point): any positive scale works; 1 keeps units.
        scale = mean_d / math.sqrt(2.0) if mean_d > 0 and np.isfinite(mean_d) else 1.0
        return cls((float(c[0]), float(c[1])), float(scale))

    def forward(self, xy: np.ndarray) -> np.ndarray:
        return (xy - np.asarray(self.centre)) / self.scale

    def inverse(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + np.asarray(self.centre)

    def to_dict(self) -> dict[str, Any]:
        return {"centre": [self.centre[0], self.centre[1]], "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        return cls((float(d["centre"][0]), float(d["centre"][1])), float(d["scale"]))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass
class Transform:
    """Base class: a fitted mapping from src (N, 2) to dst (N, 2) map coordinates."""

    kind: str
    min_points: int

    def apply(self, xy: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def residuals(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Residual vectors ``dst - apply(src)``, shape (N, 2)."""
        return _as_xy(dst, "dst") - self.apply(_as_xy(src, "src"))

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ShiftTransform(Transform):
    """A pure translation: what Hughes' thesis applies, exact as a geotransform edit."""

    dx: float = 0.0
    dy: float = 0.0
    estimator: str = "median"

    def apply(self, xy: np.ndarray) -> np.ndarray:
        xy = _as_xy(xy, "xy")
        return xy + np.array([self.dx, self.dy])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dx": float(self.dx), "dy": float(self.dy), "estimator": self.estimator}


@dataclass
class PolynomialTransform(Transform):
    """Bivariate polynomial (order 1..3) in normalised coordinates, GDAL term order."""

    order: int = 1
    src_norm: Normalizer = field(default_factory=lambda: Normalizer((0.0, 0.0), 1.0))
    dst_norm: Normalizer = field(default_factory=lambda: Normalizer((0.0, 0.0), 1.0))
    coef: np.ndarray = field(default_factory=lambda: np.zeros((3, 2)))
    """(n_terms, 2): column 0 gives normalised x', column 1 normalised y'."""

    def apply(self, xy: np.ndarray) -> np.ndarray:
        xy = _as_xy(xy, "xy")
        v = poly_terms(self.src_norm.forward(xy), self.order)
        return self.dst_norm.inverse(v @ self.coef)

    def affine_matrix(self) -> np.ndarray:
        """For order 1: the 2×3 matrix ``[[a, b, c], [d, e, f]]`` with x' = a + b·x + c·y, in raw units.

        Needed to write an exact (possibly rotated) geotransform instead of resampling.
        """
        if self.order != 1:
            raise ValueError("affine_matrix() is only defined for order-1 polynomials")
        k = self.dst_norm.scale / self.src_norm.scale
        lin = k * self.coef[1:3, :].T  # 2×2: rows x', y'; columns x, y
        sc = np.asarray(self.src_norm.centre)
        dc = np.asarray(self.dst_norm.centre)
        off = dc + self.dst_norm.scale * self.coef[0, :] - lin @ sc
        return np.column_stack([off, lin])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "order": int(self.order),
            "src_norm": self.src_norm.to_dict(),
            "dst_norm": self.dst_norm.to_dict(),
            "coef_normalised": self.coef.tolist(),
        }
        if self.order == 1:
            d["matrix"] = self.affine_matrix().tolist()
        return d


@dataclass
class ProjectiveTransform(Transform):
    """Homography; ``H`` acts on homogeneous normalised coordinates."""

    src_norm: Normalizer = field(default_factory=lambda: Normalizer((0.0, 0.0), 1.0))
    dst_norm: Normalizer = field(default_factory=lambda: Normalizer((0.0, 0.0), 1.0))
    H: np.ndarray = field(default_factory=lambda: np.eye(3))

    def apply(self, xy: np.ndarray) -> np.ndarray:
        xy = _as_xy(xy, "xy")
        p = self.src_norm.forward(xy)
        hom = np.column_stack([p, np.ones(len(p))]) @ self.H.T
        with np.errstate(divide="ignore", invalid="ignore"):
            q = hom[:, :2] / hom[:, 2:3]
        return self.dst_norm.inverse(q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "src_norm": self.src_norm.to_dict(),
            "dst_norm": self.dst_norm.to_dict(),
            "H_normalised": self.H.tolist(),
        }


@dataclass
class TPSTransform(Transform):
    """Thin-plate spline on the displacement field, with an affine trend (RBF degree 1).

    The spline models ``dst - src`` (small, smooth) rather than ``dst`` itself so the smoothing
    shrinks towards "no local distortion" instead of towards the affine trend of absolute
    coordinates. The fit is rebuilt from its nodes in ``from_dict`` (deterministic), so
    ``to_dict`` stores the inputs instead of scipy's private coefficients.
    """

    smoothing: float = 0.0
    src_norm: Normalizer = field(default_factory=lambda: Normalizer((0.0, 0.0), 1.0))
    nodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Raw src coordinates of the tie points the spline was fitted on."""
    targets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """Raw dst coordinates of the tie points."""
    weights: Optional[np.ndarray] = None
    _rbf: Any = field(default=None, repr=False, compare=False)

    def apply(self, xy: np.ndarray) -> np.ndarray:
        xy = _as_xy(xy, "xy")
        if len(xy) == 0:
            return xy.copy()
        return xy + self._rbf(self.src_norm.forward(xy)) * self.src_norm.scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "smoothing": float(self.smoothing),
            "src_norm": self.src_norm.to_dict(),
            "nodes": self.nodes.tolist(),
            "targets": self.targets.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
        }


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def fit_transform(
    kind: str,
    src: np.ndarray,
    dst: np.ndarray,
    weights: Optional[np.ndarray] = None,
    *,
    smoothing: float = 0.0,
    estimator: Optional[str] = None,
) -> Transform:
    """Fit a transform of ``kind`` mapping ``src`` → ``dst`` (both (N, 2)) by weighted least squares.

    ``weights`` (N,) are relative confidences (>= 0; 0 drops a point); they enter the normal
    equations as sqrt(w) row scalings, i.e. w is an inverse variance. ``smoothing`` applies to
    ``tps`` only (in normalised units; 0 = exact interpolation). ``estimator`` ('median'/'mean')
    overrides the shift estimator.
    """
    kind, src, dst, w = _check_inputs(kind, src, dst, weights)
    use = w > 0
    src_u, dst_u, w_u = src[use], dst[use], w[use]
    _require_points(kind, src_u)

    if kind in ("shift", "shift_mean"):
        est = estimator or ("mean" if kind == "shift_mean" else "median")
        if est not in ("median", "mean"):
            raise InputError(f"Unknown shift estimator {est!r}; use 'median' or 'mean'")
        return _fit_shift(kind, src_u, dst_u, w_u, est)
    if kind in _POLY_ORDER:
        return _fit_poly(kind, _POLY_ORDER[kind], src_u, dst_u, w_u)
    if kind == "projective":
        return _fit_projective(src_u, dst_u, w_u)
    return _fit_tps(src_u, dst_u, w_u if weights is not None else None, float(smoothing))


def transform_from_dict(d: dict[str, Any]) -> Transform:
    """Rebuild a transform from ``Transform.to_dict()`` output (e.g. from a run report)."""
    kind = _check_kind(str(d.get("kind")))
    if kind in ("shift", "shift_mean"):
        return ShiftTransform(kind, MIN_POINTS[kind], float(d["dx"]), float(d["dy"]), str(d.get("estimator", "median")))
    if kind in _POLY_ORDER:
        return PolynomialTransform(
            kind, MIN_POINTS[kind], int(d["order"]), Normalizer.from_dict(d["src_norm"]),
            Normalizer.from_dict(d["dst_norm"]), np.asarray(d["coef_normalised"], dtype=float),
        )
    if kind == "projective":
        return ProjectiveTransform(
            kind, MIN_POINTS[kind], Normalizer.from_dict(d["src_norm"]), Normalizer.from_dict(d["dst_norm"]),
            np.asarray(d["H_normalised"], dtype=float),
        )
    w = d.get("weights")
    return fit_transform(
        "tps", np.asarray(d["nodes"], dtype=float), np.asarray(d["targets"], dtype=float),
        None if w is None else np.asarray(w, dtype=float), smoothing=float(d.get("smoothing", 0.0)),
    )


def poly_terms(xy: np.ndarray, order: int) -> np.ndarray:
    """Monomials of normalised coordinates in GDAL's order: 1, x, y, x², xy, y², x³, x²y, xy², y³."""
    x, y = xy[:, 0], xy[:, 1]
    cols = []
    for total in range(order + 1):
        for j in range(total + 1):  # j = power of y
            cols.append(x ** (total - j) * y**j)
    return np.column_stack(cols)


def suggest_kind(n_points: int) -> str:
    """The most flexible model that ``n_points`` distinct points can determine (for messages)."""
    for kind in ("poly3", "poly2", "affine", "shift"):
        if n_points >= MIN_POINTS[kind]:
            return kind
    return "shift"


def _fit_shift(kind: str, src: np.ndarray, dst: np.ndarray, w: np.ndarray, est: str) -> ShiftTransform:
    d = dst - src
    if est == "mean":
        dx, dy = (np.average(d, axis=0, weights=w)).tolist()
    else:
        dx, dy = _weighted_median(d[:, 0], w), _weighted_median(d[:, 1], w)
    return ShiftTransform(kind, MIN_POINTS[kind], float(dx), float(dy), est)


def _weighted_median(v: np.ndarray, w: np.ndarray) -> float:
    """Weighted median that equals ``np.median`` when all weights are equal."""
    if np.all(w == w[0]):
        return float(np.median(v))
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    half = cw[-1] / 2.0
    i = int(np.searchsorted(cw, half))
    if i < len(v) - 1 and math.isclose(cw[i], half, rel_tol=1e-12, abs_tol=0.0):
        return float((v[i] + v[i + 1]) / 2.0)
    return float(v[min(i, len(v) - 1)])


def _fit_poly(kind: str, order: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> PolynomialTransform:
    sn, dn = Normalizer.fit(src), Normalizer.fit(dst)
    A = poly_terms(sn.forward(src), order)
    b = dn.forward(dst)
    sw = np.sqrt(w)[:, None]
    Aw, bw = A * sw, b * sw
    s = np.linalg.svd(Aw, compute_uv=False)
    if s[-1] <= _RANK_RTOL * s[0]:
        raise DegenerateConfigurationError(_degenerate_message(kind, src))
    coef, *_ = np.linalg.lstsq(Aw, bw, rcond=None)
    return PolynomialTransform(kind, MIN_POINTS[kind], order, sn, dn, coef)


def _fit_projective(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> ProjectiveTransform:
    sn, dn = Normalizer.fit(src), Normalizer.fit(dst)
    p, q = sn.forward(src), dn.forward(dst)
    n = len(p)
    one, zero = np.ones(n), np.zeros(n)
    x, y, u, v = p[:, 0], p[:, 1], q[:, 0], q[:, 1]
    rows_u = np.column_stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u])
    rows_v = np.column_stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v])
    sw = np.sqrt(w)[:, None]
    A = np.vstack([rows_u * sw, rows_v * sw])
    _, s, vt = np.linalg.svd(A, full_matrices=True)
    # A homography has 8 dof: the null space must be exactly one-dimensional, i.e. the 8th
    # singular value must be clearly non-zero (it is zero for collinear or 3-collinear quads).
    if len(s) < 8 or s[7] <= _RANK_RTOL * s[0]:
        raise DegenerateConfigurationError(_degenerate_message("projective", src))
    H = vt[-1].reshape(3, 3)
    if abs(H[2, 2]) > 1e-12:
        H = H / H[2, 2]
    return ProjectiveTransform("projective", MIN_POINTS["projective"], sn, dn, H)


def _fit_tps(src: np.ndarray, dst: np.ndarray, w: Optional[np.ndarray], smoothing: float) -> TPSTransform:
    from scipy.interpolate import RBFInterpolator

    if not np.isfinite(smoothing) or smoothing < 0:
        raise InputError(f"tps smoothing must be a finite number >= 0, got {smoothing}")
    sn = Normalizer.fit(src)
    p = sn.forward(src)
    # The affine trend of the spline must be determined on its own: collinear nodes make the
    # augmented system singular whatever the smoothing.
    trend = np.column_stack([np.ones(len(p)), p])
    s = np.linalg.svd(trend, compute_uv=False)
    if s[-1] <= _RANK_RTOL * s[0]:
        raise DegenerateConfigurationError(_degenerate_message("tps", src))
    if smoothing == 0 and _n_distinct(p) < len(p):
        raise DegenerateConfigurationError(
            "tps with smoothing 0 cannot interpolate duplicated tie points (same optical position "
            "twice); remove duplicates or use a smoothing > 0"
        )
    # Per-point smoothing = smoothing / weight: low-confidence points are followed less closely.
    sm: Any = smoothing
    if w is not None and smoothing > 0:
        sm = smoothing / np.maximum(w / w.max(), 1e-12)
    targets = (dst - src) / sn.scale
    try:
        rbf = RBFInterpolator(p, targets, kernel="thin_plate_spline", smoothing=sm, degree=1)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise DegenerateConfigurationError(
            f"tps could not be fitted to these tie points ({exc}); use smoothing > 0 or 'affine'"
        ) from exc
    return TPSTransform(
        "tps", MIN_POINTS["tps"], float(smoothing), sn, src.copy(), dst.copy(),
        None if w is None else w.copy(), rbf,
    )


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_inputs(kind: str, src: Any, dst: Any,
                  weights: Optional[np.ndarray]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Validated (kind, src, dst, weights) shared by every fitting entry point."""
    kind = _check_kind(kind)
    src = _as_xy(src, "src")
    dst = _as_xy(dst, "dst")
    if len(src) != len(dst):
        raise InputError(f"src and dst must have the same number of points, got {len(src)} and {len(dst)}")
    return kind, src, dst, _check_weights(weights, len(src))


def _check_kind(kind: str) -> str:
    k = str(kind).strip().lower()
    if k not in KINDS:
        raise InputError(f"Unknown transform kind {kind!r}; choose one of {', '.join(KINDS)}")
    return k


def _as_xy(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be an (N, 2) array of numbers") from exc
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{name} must have shape (N, 2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.all(np.isfinite(arr), axis=1))
        raise InputError(f"{name} has non-finite coordinates at rows {bad[:10].tolist()}")
    return arr


def _check_weights(weights: Optional[np.ndarray], n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    try:
        w = np.asarray(weights, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError("weights must be numbers") from exc
    if len(w) != n:
        raise InputError(f"weights must have one value per point ({n}), got {len(w)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("weights must be finite and >= 0")
    return w


def _n_distinct(p: np.ndarray) -> int:
    if len(p) == 0:
        return 0
    # Positions closer than ~1e-9 of the point spread are the same point for fitting purposes.
    return len(np.unique(np.round(p, 9), axis=0))


def _require_points(kind: str, src: np.ndarray) -> None:
    need = MIN_POINTS[kind]
    n = len(src)
    if n < need:
        noun = "tie point" if need == 1 else "tie points"
        raise TooFewPointsError(f"{kind} needs at least {need} {noun}, got {n}; {_remedy(kind, n)}")
    if need > 1:
        distinct = _n_distinct(Normalizer.fit(src).forward(src))
        if distinct < need:
            raise DegenerateConfigurationError(
                f"{kind} needs at least {need} distinct tie points, got {n} points at only {distinct} "
                f"distinct positions (duplicated points); {_remedy(kind, distinct)}"
            )


def _remedy(kind: str, n: int) -> str:
    # Method-neutral: the matching pipeline adds the advice of the run's method (ORN or peak quality).
    if n == 0:
        return "check that the rasters overlap and that matches survive the quality thresholds"
    alt = suggest_kind(n)
    if alt == kind or MIN_POINTS[alt] > n:
        alt = "shift"
    return f"use '{alt}'" if alt != kind else "keep more matches (a larger area or more candidates)"


def _degenerate_message(kind: str, src: np.ndarray) -> str:
    p = Normalizer.fit(src).forward(src)
    s = np.linalg.svd(p - p.mean(axis=0), compute_uv=False) if len(p) > 1 else np.zeros(2)
    collinear = len(s) < 2 or s[1] <= 1e-6 * max(s[0], 1e-300)
    if collinear:
        what = "the tie points are collinear (they all lie on one line)"
    elif kind == "projective":
        what = "too many tie points are collinear for a homography (at least 4 with no 3 on a line are needed)"
    else:
        what = "the tie points do not determine the model (they lie on a simple curve, e.g. a circle)"
    return f"{kind} cannot be fitted: {what}; use 'shift', a lower-order model, or tie points spread over the image"
