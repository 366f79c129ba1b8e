"""Dense structural descriptor (CFOG/HOPC-style) matching: the strong classical SAR-optical baseline.

SAR and optical brightness are not related by any fixed function (a roof can be dark in one and
bright in the other), but the *geometry of edges* is shared: building outlines, field borders,
roads and coastlines produce gradients with the same orientation in both images, possibly with
opposite sign. The descriptor therefore keeps, for every pixel, how much gradient energy lies in
each of ``n_orient`` unsigned orientation bins over [0, pi) (sign dropped -> invariant to contrast
reversal), aggregated over a small neighbourhood and normalised per pixel so that only the
*shape* of the local orientation distribution matters, not edge contrast (Ye et al. 2019, CFOG;
HOPC uses phase congruency for the same purpose).

Pipeline per image:

1. Gradients: derivative-of-Gaussian filters (smoothing scale ``grad_sigma_*``). The SAR input is
   already log-scaled ([0, 1] from dB), where speckle is roughly additive, so plain smoothed
   gradients work (``sar_gradient="plain"``). The default ``"roewa"`` uses the log-ratio of
   one-sided exponentially weighted means of the (pseudo-)linear intensity (ROEWA, Fjortoft et
   al. 1998), the speckle-robust SAR edge detector with a constant false-alarm rate; on simulated
   single-look data it gave ~20 % more correct 128/64 matches and higher peak quality than plain
   gradients, at ~10 ms extra per 256 x 256 window.
2. Orientation binning: the magnitude is split linearly between the two nearest (circular) bins.
3. Aggregation: Gaussian smoothing in space (``cell_sigma``) and a [1, 2, 1]/4 circular smoothing
   across orientation bins (tolerates small rotations/misregistration of edge directions).
4. Per-pixel L2 normalisation across channels with a soft floor ``eps = norm_eps * p90(norm)``
   so nearly flat pixels stay near zero instead of being blown up to unit-norm noise.

Similarity: zero-normalised cross-correlation of the whole descriptor volumes (per-channel zero
mean, channels summed before normalising; ``ncc.ncc_volume``), computed for all offsets with
channel-batched rFFTs and one inverse FFT. For per-pixel unit-norm descriptors this is equivalent
to CFOG's frequency-domain SSD up to the mean terms, but bounded in [-1, 1] like NCC.

For whole scenes, compute ``dense_descriptor`` once per tile and cut windows from it
(``match_descriptors``), which also removes window-border effects from the descriptors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..types import PatchMatch
from .ncc import NCCParams, check_pair, ncc_volume, template_pixels
from .subpixel import EXCLUSION_RADIUS, patch_match_from_heatmap


@dataclass
class DescriptorParams:
    n_orient: int = 9
    """Unsigned orientation bins over [0, pi)."""
    grad_sigma_optical: float = 1.0
    """Derivative-of-Gaussian scale (px) for optical gradients."""
    grad_sigma_sar: float = 1.5
    """Derivative-of-Gaussian scale (px) for SAR gradients with sar_gradient='plain' (larger than
    the optical one because of speckle)."""
    sar_gradient: str = "roewa"
    """'plain' (smoothed gradient of the log-scaled image) or 'roewa' (ratio of exponential means)."""
    roewa_alpha: float = 0.5
    """ROEWA exponential decay (1/px); the one-sided means extend ~2/alpha px."""
    roewa_span_db: float = 25.0
    """dB range assumed for the [0, 1] SAR input when undoing the log for ROEWA."""
    cell_sigma: float = 1.5
    """Spatial Gaussian aggregation (px) of the orientation channels."""
    orient_smooth: bool = True
    """[1, 2, 1]/4 smoothing across neighbouring orientation bins."""
    norm_eps: float = 0.1
    """Normalisation floor as a fraction of the 90th percentile of the channel-vector norm."""


@dataclass
class StructuralParams:
    descriptor: DescriptorParams = field(default_factory=DescriptorParams)
    eps: float = 1e-8
    """Per-pixel, per-channel descriptor variance below which a window counts as featureless."""
    min_overlap: float = 0.5
    exclusion_radius: float = EXCLUSION_RADIUS
    workers: Optional[int] = None


def _fill_invalid(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Replace masked pixels by a masked Gaussian average of valid neighbours so the gradient
    filters do not see a hard step at the mask border (remaining pixels are set to the mean)."""
    m = mask.astype(np.float64)
    s = max(sigma, 1.0) * 3.0
    num = ndimage.gaussian_filter(np.where(mask, img, 0.0), s)
    den = ndimage.gaussian_filter(m, s)
    fill = float(img[mask].mean()) if mask.any() else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(den > 1e-3, num / den, fill)
    return np.where(mask, img, smooth)


def _roewa_gradients(img: np.ndarray, p: DescriptorParams) -> tuple[np.ndarray, np.ndarray]:
    """(d/drow, d/dcol) as log-ratios of one-sided exponential means, in [0, 1]-dB units."""
    lin = np.power(10.0, img * (p.roewa_span_db / 10.0))  # pseudo-linear intensity
    k = max(2, int(np.ceil(5.0 / p.roewa_alpha)))
    d = np.arange(1, k + 1)
    w = np.exp(-p.roewa_alpha * d)
    w /= w.sum()
    ahead = np.concatenate([np.zeros(k + 1), w])  # taps at +1..+k (correlate1d: out[i] = sum w[j] x[i+j-k])
    behind = ahead[::-1].copy()  # taps at -k..-1
    sym = np.concatenate([w[::-1], [1.0 / k], w])
    sym /= sym.sum()
    out = []
    for axis in (0, 1):
        other = 1 - axis
        base = ndimage.correlate1d(lin, sym, axis=other, mode="reflect")
        m_after = ndimage.correlate1d(base, ahead, axis=axis, mode="reflect")
        m_before = ndimage.correlate1d(base, behind, axis=axis, mode="reflect")
        ratio = np.log(np.maximum(m_after, 1e-12) / np.maximum(m_before, 1e-12))
        # log-ratio (nepers) -> dB -> [0, 1] input units; the absolute scale is irrelevant after
        # the per-pixel normalisation, but keeps magnitudes comparable to plain gradients.
        out.append(ratio * (10.0 / np.log(10.0)) / p.roewa_span_db)
    return out[0], out[1]


def dense_descriptor(
    img: np.ndarray,
    modality: str = "sar",
    params: Optional[DescriptorParams] = None,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Per-pixel oriented-gradient descriptor, float32 of shape (n_orient, H, W), unit L2 per pixel
    (or less where the image is nearly flat; zero on masked pixels).

    ``img`` is a 2-D [0, 1] image (SAR: log-scaled, as produced by ``preprocess.sar_to_unit``);
    ``modality`` selects the gradient operator ('sar' or 'optical').
    """
    p = params or DescriptorParams()
    if modality not in ("sar", "optical"):
        raise ValueError(f"modality must be 'sar' or 'optical', got {modality!r}")
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    valid = np.isfinite(a)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    a = np.where(valid, a, 0.0)
    if not valid.all():
        a = _fill_invalid(a, valid, p.grad_sigma_sar if modality == "sar" else p.grad_sigma_optical)

    if modality == "sar" and p.sar_gradient == "roewa":
        gy, gx = _roewa_gradients(a, p)
    elif modality == "sar" and p.sar_gradient != "plain":
        raise ValueError(f"sar_gradient must be 'plain' or 'roewa', got {p.sar_gradient!r}")
    else:
        sigma = p.grad_sigma_sar if modality == "sar" else p.grad_sigma_optical
        gy = ndimage.gaussian_filter(a, sigma, order=(1, 0), mode="reflect")
        gx = ndimage.gaussian_filter(a, sigma, order=(0, 1), mode="reflect")
    mag = np.hypot(gx, gy)
    if not valid.all():
        mag = mag * ndimage.binary_erosion(valid, iterations=2, border_value=1)

    n = p.n_orient
    theta = np.mod(np.arctan2(gy, gx), np.pi)
    pos = theta / (np.pi / n) - 0.5  # bin k is centred at (k + 0.5) * pi / n
    desc = np.empty((n,) + a.shape, dtype=np.float32)  # float32: filters ~2x faster, ample precision
    for k in range(n):
        dist = np.abs(np.mod(pos - k + n / 2.0, n) - n / 2.0)  # circular distance in bins
        desc[k] = mag * np.clip(1.0 - dist, 0.0, None)

    if p.cell_sigma > 0:
        desc = ndimage.gaussian_filter(desc, sigma=(0.0, p.cell_sigma, p.cell_sigma), mode="reflect")
    if p.orient_smooth and n >= 3:
        desc = 0.5 * desc + 0.25 * (np.roll(desc, 1, axis=0) + np.roll(desc, -1, axis=0))

    norm = np.sqrt((desc * desc).sum(axis=0, dtype=np.float64))
    ref = float(np.percentile(norm[valid], 90)) if valid.any() else 0.0
    eps = max(p.norm_eps * ref, 1e-12)
    desc /= np.sqrt(norm * norm + eps * eps).astype(np.float32)[None]
    desc[:, ~valid] = 0.0
    return desc


def match_descriptors(
    search_desc: np.ndarray,
    template_desc: np.ndarray,
    search_mask: Optional[np.ndarray] = None,
    template_mask: Optional[np.ndarray] = None,
    params: Optional[StructuralParams] = None,
) -> PatchMatch:
    """Match precomputed descriptor windows: (C, S, S) SAR search vs (C, T, T) optical template."""
    p = params or StructuralParams()
    check_pair(np.asarray(search_desc), np.asarray(template_desc), ndim=3)
    heat = ncc_volume(
        search_desc,
        template_desc,
        search_mask,
        template_mask,
        NCCParams(eps=p.eps, min_overlap=p.min_overlap, workers=p.workers),
    )
    n = template_pixels(template_desc, template_mask)
    return patch_match_from_heatmap(heat, p.exclusion_radius, n_samples=n)


def match(
    search: np.ndarray,
    template: np.ndarray,
    search_mask: Optional[np.ndarray] = None,
    template_mask: Optional[np.ndarray] = None,
    params: Optional[StructuralParams] = None,
) -> PatchMatch:
    """Match an optical template (2-D, [0, 1]) inside a SAR search window by structural descriptors."""
    p = params or StructuralParams()
    check_pair(np.asarray(search), np.asarray(template))
    ds = dense_descriptor(search, "sar", p.descriptor, search_mask)
    dt = dense_descriptor(template, "optical", p.descriptor, template_mask)
    return match_descriptors(ds, dt, search_mask, template_mask, p)
