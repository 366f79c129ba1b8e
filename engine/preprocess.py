"""Bring SAR and optical rasters onto a common [0, 1] float32 footing for the matchers.

SAR arrives as linear intensity (sigma0/beta0), amplitude, dB or integer display values; optical as
1..N bands of reflectance or DN. The matchers want one band each, log-scaled for SAR (speckle is
multiplicative, so in dB it becomes roughly additive and edges have comparable contrast in
bright and dark areas), scaled robustly to [0, 1], plus a validity mask so NaN/nodata areas are
never matched.

Scale detection (``detect_sar_scale``) is a heuristic on the value distribution of the valid
pixels, documented at the function. Note what it can and cannot tell apart: linear intensity and
amplitude have identically *shaped* dB distributions (20 log10 a == 10 log10 a^2), so they differ
only by a factor 2 in dB, which the default robust (percentile) clip removes entirely. Only fixed
dB clips (e.g. ``clip=(-25, 5)`` for calibrated sigma0) depend on getting that right, so pass
``scale=`` explicitly when using them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

SarScale = Literal["linear", "amplitude", "db", "dn"]
ClipSpec = Union[str, Tuple[float, float]]

ROBUST_PERCENTILES = (1.0, 99.0)
"""Percentiles of the valid pixels mapped to 0 and 1 by the robust normalisation."""

_MAX_STATS_SAMPLES = 2_000_000
"""Percentiles are computed on at most this many (evenly strided) valid pixels: exact enough for a
1-99 % stretch and keeps whole-scene preprocessing fast."""

LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)
"""ITU-R BT.709 luminance weights for R, G, B."""

_COMPLEX_MSG = "complex SAR (SLC) is not supported: detect/multilook it first (e.g. SNAP, GDAL 'abs')"


def _sample(values: np.ndarray) -> np.ndarray:
    """Evenly strided subsample (1-D) for percentile statistics."""
    step = max(1, values.size // _MAX_STATS_SAMPLES)
    return values[::step]


def _skew_ratio(v: np.ndarray) -> float:
    """(p99 - p50) / (p50 - p1): ~1 for symmetric data, < 1 left-skewed, >> 1 heavy right tail."""
    p1, p50, p99 = np.percentile(v, [1, 50, 99])
    lower = p50 - p1
    upper = p99 - p50
    if lower <= 0:
        return np.inf if upper > 0 else 1.0
    return float(upper / lower)


def _local_skew_per_cv(a: np.ndarray, block: int = 8, max_blocks: int = 20000) -> Optional[float]:
    """Median over 8x8 blocks of (sample skewness / coefficient of variation), or None.

    Fully developed speckle makes this a fingerprint of the scale, whatever the number of looks:
    gamma-distributed intensity has skewness exactly 2 x CV, its square root (Nakagami amplitude)
    about 1.2 x CV or less. Small blocks keep scene texture (which blurs the distinction) out.
    Sample estimates from 64 pixels are biased low: simulated intensity gives 1.67-2.05,
    amplitude 0.9-1.6 (up to 1.9 for strongly textured >= 4-look amplitude, where it fails).
    """
    if a.ndim != 2:
        return None
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    if h == 0 or w == 0:
        return None
    blk = a[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2).reshape(-1, block * block)
    blk = blk[:: max(1, len(blk) // max_blocks)].astype(np.float64)
    blk = blk[np.isfinite(blk).all(axis=1)]
    m = blk.mean(axis=1)
    sd = blk.std(axis=1)
    ok = (m > 0) & (sd > 0)
    if ok.sum() < 32:
        return None
    blk, m, sd = blk[ok], m[ok], sd[ok]
    skew = ((blk - m[:, None]) ** 3).mean(axis=1) / sd**3
    return float(np.median(skew / (sd / m)))


def detect_sar_scale(arr: np.ndarray, dtype=None, texture: Optional[np.ndarray] = None) -> SarScale:
    """Guess how SAR values are scaled: 'linear' intensity, 'amplitude', 'db' or 'dn'.

    ``dtype`` is the *source* raster's data type when ``arr`` was read/cast differently (e.g. the
    rasterio band dtype); defaults to ``arr.dtype``. ``texture`` is a 2-D full-resolution sample
    for the local speckle test when ``arr`` is not one (a decimated read has no neighbouring
    pixels left); defaults to ``arr``. Heuristics, on finite pixels:

    * complex -> ``InputError`` (SLC data must be detected first).
    * integer (8/16/32-bit) -> 'dn' (display values, treated as already log-like), *unless* the
      distribution has a heavy right tail (skew ratio (p99-p50)/(p50-p1) >= 1.6), which is what
      magnitude products stored as integers look like (e.g. Sentinel-1 GRD uint16 DN are
      amplitudes) -> 'amplitude'.
    * float with negative values (>= 1 % of pixels) and a plausible dB range (p1 >= -80,
      p99 <= 40) -> 'db'; other signed floats -> 'dn' (unknown log-like scaling).
    * float >= 0: a symmetric or left-skewed distribution (global skew ratio < 1.4) is already
      log-like -> 'dn'. Otherwise: speckled intensity (gamma speckle times scene texture) has a
      very heavy tail, its square root a moderate one, so a global skew ratio >= 3.15 means
      'linear' (simulated L = 1..10 intensity: 3.4-12; amplitude: 1.7-3.0 with moderate
      texture), else 'amplitude'. Strong scene texture makes amplitude look heavy-tailed too,
      so a 2-D ``arr`` is also checked for the local speckle fingerprint (median skewness/CV
      over 8x8 blocks, see ``_local_skew_per_cv``): below 1.45 it is confidently 'amplitude'.
      Absolute values are deliberately not used: calibrated sigma0 (median ~0.01-0.2) and
      amplitude (median ~0.1-0.45) overlap, and uncalibrated products can have any offset.
      Very strongly textured multi-look amplitude can still be called 'linear' (ambiguous by
      nature); this only matters for fixed dB clips.
    """
    a = np.asarray(arr)
    dt = np.dtype(dtype) if dtype is not None else a.dtype
    if np.issubdtype(dt, np.complexfloating) or np.issubdtype(a.dtype, np.complexfloating):
        raise InputError(_COMPLEX_MSG)
    v = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a.ravel()
    if v.size == 0:
        raise InputError("the SAR image has no valid (finite) pixels")
    v = _sample(v.astype(np.float64, copy=False))
    if v.min() == v.max():  # say "constant" (and why a zero image happens), not "cannot infer its scale"
        hint = (" An all-zero SAR is usually an empty or failed product, or zero should be declared as "
                "nodata." if v[0] == 0 else "")
        raise InputError(f"the SAR image is constant (value {v[0]:g}); nothing to match.{hint}")
    if np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.bool_):
        pos = v[v > 0]
        if pos.size and v.min() >= 0 and _skew_ratio(pos) >= 1.6:
            return "amplitude"
        return "dn"
    if (v < 0).mean() >= 0.01:
        p1, p99 = np.percentile(v, [1, 99])
        return "db" if (p1 >= -80.0 and p99 <= 40.0) else "dn"
    pos = v[v > 0]
    if pos.size == 0:
        raise InputError("the SAR image has no positive values; cannot infer its scale")
    r = _skew_ratio(pos)
    if r < 1.4:
        return "dn"
    t = a if texture is None else np.asarray(texture)
    local = _local_skew_per_cv(np.where(np.isfinite(t), t, np.nan)) if t.ndim == 2 else None
    if local is not None and local < 1.45:
        return "amplitude"
    return "linear" if r >= 3.15 else "amplitude"


def _valid_mask(a: np.ndarray, valid_mask: Optional[np.ndarray], nodata: Optional[float]) -> np.ndarray:
    m = np.isfinite(a)
    if nodata is not None and np.isfinite(nodata):
        m &= a != nodata
    if valid_mask is not None:
        vm = np.asarray(valid_mask, dtype=bool)
        if vm.shape != a.shape:
            raise InputError(f"valid_mask shape {vm.shape} does not match image shape {a.shape}")
        m &= vm
    return m


def robust_range(x: np.ndarray, mask: np.ndarray, what: str) -> tuple[float, float]:
    """The robust stretch range of ``x`` over ``mask``: its 1st and 99th percentiles.

    Computed on at most ``_MAX_STATS_SAMPLES`` evenly strided valid values. Falls back to the full
    range when more than 98 % of the pixels are identical; raises for an empty or constant image.
    """
    if not mask.any():
        raise InputError(f"the {what} image has no valid pixels (all NaN, nodata or masked)")
    vals = x[mask]
    lo, hi = (float(q) for q in np.percentile(_sample(vals), ROBUST_PERCENTILES))
    if hi <= lo:  # >98 % of pixels identical: fall back to the full range
        lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        raise InputError(f"the {what} image is constant (value {lo:g}); nothing to match")
    return lo, hi


def _normalise(
    x: np.ndarray, mask: np.ndarray, lo: Optional[float], hi: Optional[float], what: str
) -> np.ndarray:
    """Map [lo, hi] (robust percentiles where None) to [0, 1], clip, zero-fill invalid pixels.

    A fixed range needs no data: an image without valid pixels then comes back all zero (a tile
    over a nodata collar), whereas the robust range has nothing to be computed from and raises.
    """
    if lo is None or hi is None:
        lo, hi = robust_range(x, mask, what)
    elif hi <= lo:
        raise InputError(f"invalid clip range ({lo}, {hi}) for the {what} image")
    out = np.zeros(x.shape, dtype=np.float32)
    out[mask] = np.clip((x[mask] - lo) / (hi - lo), 0.0, 1.0)
    return out


def _sar_db(a: np.ndarray, mask: np.ndarray, scale: str) -> np.ndarray:
    """SAR values (float64) on the dB-like scale the stretch works on; updates ``mask`` in place
    (non-positive values are invalid for the log scales)."""
    if scale not in ("linear", "amplitude", "db", "dn"):
        raise InputError(f"unknown SAR scale {scale!r}; use 'auto', 'linear', 'amplitude', 'db' or 'dn'")
    if scale in ("linear", "amplitude"):
        mask &= a > 0
        factor = 10.0 if scale == "linear" else 20.0
        x = np.zeros_like(a)
        x[mask] = factor * np.log10(a[mask])
        return x
    return a


def sar_to_unit(
    arr: np.ndarray,
    scale: Union[str, SarScale] = "auto",
    clip: ClipSpec = "robust",
    valid_mask: Optional[np.ndarray] = None,
    nodata: Optional[float] = None,
    dtype=None,
) -> tuple[np.ndarray, np.ndarray]:
    """SAR band -> (float32 image in [0, 1], bool validity mask).

    Steps: convert to dB ('linear': 10 log10, 'amplitude': 20 log10; values <= 0 are invalid
    there; 'db' as is; 'dn' as is, i.e. integer display values are assumed to be log-like already),
    then clip and stretch to [0, 1]: ``clip="robust"`` uses the 1st-99th percentiles of the valid
    pixels (works for any calibration), ``clip=(lo_db, hi_db)`` a fixed dB window, e.g. (-25, 5)
    for calibrated sigma0 (a fixed window on 'dn' data is applied to the raw values). Invalid
    pixels (NaN/Inf, ``nodata``, ``valid_mask`` False, non-positive for log conversion) are 0 in
    the image and False in the mask.
    """
    a = np.asarray(arr)
    if a.ndim != 2:
        raise InputError(f"SAR image must be a single band (2-D), got shape {a.shape}")
    src_complex = dtype is not None and np.issubdtype(np.dtype(dtype), np.complexfloating)
    if np.issubdtype(a.dtype, np.complexfloating) or src_complex:
        raise InputError(_COMPLEX_MSG)
    src_dtype = np.dtype(dtype) if dtype is not None else a.dtype
    a = a.astype(np.float64, copy=False)
    mask = _valid_mask(a, valid_mask, nodata)
    if not mask.any():
        raise InputError("the SAR image has no valid pixels (all NaN, nodata or masked)")
    if scale == "auto":
        scale = detect_sar_scale(np.where(mask, a, np.nan), src_dtype)
    x = _sar_db(a, mask, scale)
    if isinstance(clip, str):
        if clip != "robust":
            raise InputError(f"clip must be 'robust' or a (low_db, high_db) pair, got {clip!r}")
        lo = hi = None
    else:
        lo, hi = (float(c) for c in clip)
    return _normalise(x, mask, lo, hi, "SAR"), mask


def optical_to_gray(arr: np.ndarray, weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Optical raster (bands, H, W) or (H, W) -> one float32 band (NaN stays NaN).

    1 band: as is. 3 bands: BT.709 luminance assuming R, G, B order. 4+ bands: the first three
    as R, G, B (typical RGB(+NIR) products) unless ``weights`` (one per band) are given, e.g. to
    pick other bands of a multispectral stack. 2 bands: their mean. Weights are used as given (not
    renormalised), since the result is stretched afterwards anyway.
    """
    a = np.asarray(arr)
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputError("complex optical data is not supported")
    if a.ndim == 2:
        if weights is not None and len(weights) != 1:
            raise InputError(f"{len(weights)} weights given for a single-band image")
        return a.astype(np.float32, copy=False)
    if a.ndim != 3:
        raise InputError(f"optical image must be (bands, H, W) or (H, W), got shape {a.shape}")
    nb = a.shape[0]
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (nb,):
            raise InputError(f"{w.size} weights given for {nb} bands")
    elif nb == 1:
        w = np.array([1.0])
    elif nb == 2:
        w = np.array([0.5, 0.5])
    else:
        w = np.zeros(nb)
        w[:3] = LUMA_WEIGHTS
    used = np.flatnonzero(w)
    gray = np.tensordot(w[used], a[used].astype(np.float64), axes=(0, 0))
    return gray.astype(np.float32)


def optical_to_unit(
    gray: np.ndarray,
    valid_mask: Optional[np.ndarray] = None,
    nodata: Optional[float] = None,
    clip: Optional[Tuple[float, float]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gray optical band -> (float32 image in [0, 1] by a robust 1-99 % stretch, bool mask).

    Invalid pixels (NaN/Inf, ``nodata``, ``valid_mask`` False) are 0 and False in the mask. The
    percentiles are taken over valid pixels only, so black nodata collars do not eat the range.
    ``clip=(lo, hi)`` (gray values) replaces the percentiles with a fixed range: how a tile is
    stretched with the range of the whole scene, so all tiles share one scale.
    """
    a = np.asarray(gray)
    if a.ndim != 2:
        raise InputError(f"optical gray image must be 2-D, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    mask = _valid_mask(a, valid_mask, nodata)
    lo, hi = (None, None) if clip is None else (float(clip[0]), float(clip[1]))
    return _normalise(a, mask, lo, hi, "optical"), mask


# ------------------------------------------------------------------------------------------------
# One stretch for the whole scene, applied tile by tile
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stretch:
    """The scene-wide mapping of SAR and optical values to [0, 1].

    Estimated once (from the whole image or a decimated sample of it, ``estimate_stretch``) and then
    applied with fixed ranges to every tile (``apply_stretch``), so a tile boundary never changes a
    pixel's unit value and a tiled run sees the same images as a whole-scene one.
    """

    sar_scale: str
    """'linear', 'amplitude', 'db' or 'dn' (resolved, never 'auto')."""
    sar_lo: float
    """SAR value mapped to 0, in dB (or raw units for 'dn')."""
    sar_hi: float
    opt_lo: float
    """Optical gray value mapped to 0."""
    opt_hi: float

    def to_dict(self) -> dict:
        return asdict(self)


def parse_clip(clip: Union[ClipSpec, None]) -> ClipSpec:
    """'robust', (lo, hi) or the CLI/params string 'lo,hi' (dB) -> 'robust' or a (lo, hi) tuple."""
    if clip is None:
        return "robust"
    if isinstance(clip, str):
        if clip == "robust":
            return clip
        try:
            lo, hi = (float(v) for v in clip.split(","))
        except ValueError as exc:
            raise InputError(f"SAR clip must be 'robust' or 'lo,hi' in dB, got '{clip}'.") from exc
        return lo, hi
    lo, hi = (float(c) for c in clip)
    return lo, hi


def estimate_stretch(
    sar: np.ndarray,
    sar_valid: np.ndarray,
    optical: np.ndarray,
    opt_valid: np.ndarray,
    scale: Union[str, SarScale] = "auto",
    clip: ClipSpec = "robust",
    texture: Optional[np.ndarray] = None,
) -> Stretch:
    """The scene's ``Stretch`` from a sample of it (same-shape SAR band, optical bands, masks).

    The sample may be the whole image (then the result is exactly what ``sar_to_unit`` and
    ``optical_to_unit`` compute on their own) or a point-sampled decimation of it: percentiles of
    evenly spread single pixels estimate the scene's percentiles without smoothing speckle away.
    ``texture`` is a full-resolution SAR sample for the scale detector's local speckle test when the
    sample is decimated (see ``detect_sar_scale``).
    """
    a = np.asarray(sar)
    if a.ndim != 2:
        raise InputError(f"SAR image must be a single band (2-D), got shape {a.shape}")
    src_dtype = a.dtype
    a = a.astype(np.float64, copy=False)
    mask = _valid_mask(a, sar_valid, None)
    if not mask.any():
        raise InputError("the SAR image has no valid pixels (all NaN, nodata or masked)")
    if scale == "auto":
        scale = detect_sar_scale(np.where(mask, a, np.nan), src_dtype, texture=texture)
    x = _sar_db(a, mask, scale)
    clip = parse_clip(clip)
    if isinstance(clip, str):
        sar_lo, sar_hi = robust_range(x, mask, "SAR")
    else:
        sar_lo, sar_hi = clip
        if sar_hi <= sar_lo:
            raise InputError(f"invalid clip range ({sar_lo}, {sar_hi}) for the SAR image")
    gray = optical_to_gray(optical).astype(np.float64, copy=False)
    opt_lo, opt_hi = robust_range(gray, _valid_mask(gray, opt_valid, None), "optical")
    return Stretch(sar_scale=str(scale), sar_lo=sar_lo, sar_hi=sar_hi, opt_lo=opt_lo, opt_hi=opt_hi)


def apply_stretch(
    sar: np.ndarray,
    sar_valid: np.ndarray,
    optical: np.ndarray,
    opt_valid: np.ndarray,
    stretch: Stretch,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sar_unit, opt_unit, valid) of one image or tile with the scene's fixed ranges.

    Never raises for a tile without valid pixels (everything comes back 0 / False): a tile that
    lies on a nodata collar is simply skipped by the caller.
    """
    if not np.any(sar_valid):
        z = np.zeros(np.shape(sar), np.float32)
        return z, z.copy(), np.zeros(z.shape, bool)
    sar_unit, sv = sar_to_unit(sar, scale=stretch.sar_scale, clip=(stretch.sar_lo, stretch.sar_hi),
                               valid_mask=sar_valid)
    opt_unit, ov = optical_to_unit(optical_to_gray(optical), opt_valid, clip=(stretch.opt_lo, stretch.opt_hi))
    return sar_unit, opt_unit, sv & ov
