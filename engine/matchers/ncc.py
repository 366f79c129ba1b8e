"""Zero-normalised cross-correlation (ZNCC) over all offsets, computed with real FFTs.

NCC is the reference matcher for same-modality data and the similarity the structural matcher
applies to its descriptor volumes, so the core here works on channel stacks (C, H, W): the score is
the correlation of the whole zero-mean (per channel) template volume with the zero-mean search
sub-volume, i.e. the channels are summed *before* normalising. For C == 1 this is plain ZNCC.

Why this formulation:

* Only the template is made zero-mean explicitly; the search window's local means cancel in the
  numerator because the template sums to zero, and enter the denominator through box sums
  (cumulative sums, like ``skimage.feature.match_template``), so one forward FFT per channel and a
  *single* inverse FFT (channels summed in the frequency domain) give the whole heatmap.
* Circular correlation of size >= S has no wrap-around in the "valid" region (offsets where the
  template lies fully inside the search window), so no padding to S + T - 1 is needed.
* Flat windows (local variance below ``eps`` per pixel and channel, i.e. below 8-bit quantisation
  for [0, 1] data) get score 0 instead of noise amplified by a tiny denominator.
* With masks the normalised-cross-correlation of Padfield (2012, "Masked object registration in
  the Fourier domain") is used: every sum is restricted to pixels valid in *both* images at that
  offset; offsets whose overlap is below ``min_overlap`` of the template's valid pixels are NaN
  (``subpixel`` turns them into the heatmap minimum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import fft as sfft

from ..types import PatchMatch
from .subpixel import EXCLUSION_RADIUS, patch_match_from_heatmap


@dataclass
class NCCParams:
    eps: float = 1e-6
    """Per-pixel variance below which a window counts as flat (score 0)."""
    min_overlap: float = 0.5
    """Masked matching: minimum fraction of the template's valid pixels that must overlap valid
    search pixels for an offset to be scored."""
    exclusion_radius: float = EXCLUSION_RADIUS
    workers: Optional[int] = None
    """scipy.fft worker threads (None = 1); the pipeline parallelises over patches instead."""


def check_pair(search: np.ndarray, template: np.ndarray, ndim: int = 2) -> None:
    """Validate shapes: the template must fit in the search window (spatial axes are the last two)."""
    if search.ndim != ndim or template.ndim != ndim:
        raise ValueError(f"expected {ndim}-D search and template, got {search.shape} and {template.shape}")
    if ndim == 3 and search.shape[0] != template.shape[0]:
        raise ValueError(f"channel counts differ: {search.shape[0]} vs {template.shape[0]}")
    if template.shape[-2] > search.shape[-2] or template.shape[-1] > search.shape[-1]:
        raise ValueError(f"template {template.shape[-2:]} larger than search window {search.shape[-2:]}")


def box_sum(a: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Sums of every ``th`` x ``tw`` window of the last two axes ('valid' positions), float64."""
    c = np.cumsum(np.cumsum(np.asarray(a, dtype=np.float64), axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(1, 0), (1, 0)])
    return c[..., th:, tw:] - c[..., :-th, tw:] - c[..., th:, :-tw] + c[..., :-th, :-tw]


class _Correlator:
    """Valid cross-correlations of search-sized arrays with template-sized arrays via rFFTs.

    ``corr(F, G)[i, j] = sum_{u,v} f[i+u, j+v] * g[u, v]`` for the valid offsets only.
    """

    def __init__(self, search_shape: tuple[int, int], template_shape: tuple[int, int], workers=None):
        self.shape = tuple(sfft.next_fast_len(int(n), real=True) for n in search_shape)
        self.out = (search_shape[0] - template_shape[0] + 1, search_shape[1] - template_shape[1] + 1)
        self.workers = workers

    def fwd(self, a: np.ndarray, dtype=np.float64) -> np.ndarray:
        return sfft.rfft2(np.asarray(a, dtype=dtype), s=self.shape, axes=(-2, -1), workers=self.workers)

    def inv(self, spec: np.ndarray) -> np.ndarray:
        # Inverse along rows first and drop the rows outside the valid region before the real
        # inverse along columns: same result as irfft2 + crop, about twice as fast.
        half = sfft.ifft(spec, axis=-2, workers=self.workers)[..., : self.out[0], :]
        full = sfft.irfft(half, n=self.shape[1], axis=-1, workers=self.workers)
        return full[..., : self.out[1]]

    def corr(self, fs: np.ndarray, gs: np.ndarray) -> np.ndarray:
        return self.inv(fs * np.conj(gs))


def _as_mask(mask: Optional[np.ndarray], shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """Bool mask broadcastable to the spatial shape, or None when it masks nothing."""
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return None if m.all() else m


def ncc_volume(
    search: np.ndarray,
    template: np.ndarray,
    search_mask: Optional[np.ndarray] = None,
    template_mask: Optional[np.ndarray] = None,
    params: Optional[NCCParams] = None,
) -> np.ndarray:
    """ZNCC heatmap of a (C, T, T') template volume over a (C, S, S') search volume.

    Returns float64 of shape (S-T+1, S'-T'+1) in [-1, 1] (NaN where the masked overlap is too small).
    Masks are 2-D (shared by all channels); non-finite pixels are treated as masked.
    """
    p = params or NCCParams()
    f = np.asarray(search, dtype=np.float64)
    g = np.asarray(template, dtype=np.float64)
    check_pair(f, g, ndim=3)
    sm = _as_mask(search_mask, f.shape[1:])
    tm = _as_mask(template_mask, g.shape[1:])
    fin_f, fin_g = np.isfinite(f).all(0), np.isfinite(g).all(0)
    if not fin_f.all():
        sm = fin_f if sm is None else sm & fin_f
    if not fin_g.all():
        tm = fin_g if tm is None else tm & fin_g
    nch, th, tw = g.shape
    cor = _Correlator(f.shape[1:], g.shape[1:], p.workers)

    if sm is None and tm is None:
        n = float(th * tw)
        g = g - g.mean(axis=(1, 2), keepdims=True)
        num = cor.inv((cor.fwd(f) * np.conj(cor.fwd(g))).sum(axis=0))
        var_g = float((g * g).sum())
        bs = box_sum(f, th, tw)
        var_f = box_sum((f * f).sum(axis=0), th, tw) - (bs * bs).sum(axis=0) / n
        floor = p.eps * n * nch
        den = np.sqrt(np.maximum(var_f, 0.0) * var_g)
        ok = (var_f > floor) & (var_g > floor)
        out = np.zeros(cor.out)
        out[ok] = num[ok] / den[ok]
        return np.clip(out, -1.0, 1.0)

    # Masked (Padfield 2012): all sums over pixels valid in both at each offset.
    mf = np.ones(f.shape[1:]) if sm is None else sm.astype(np.float64)
    mg = np.ones(g.shape[1:]) if tm is None else tm.astype(np.float64)
    f = np.where(mf > 0, f, 0.0)
    g = np.where(mg > 0, g, 0.0)
    # Centre the template on its valid mean (reduces cancellation in the variance terms).
    n_tvalid = mg.sum()
    if n_tvalid == 0:
        return np.full(cor.out, np.nan)
    g = (g - (g * mg).sum(axis=(1, 2), keepdims=True) / n_tvalid) * mg
    f_s, f2_s, mf_s = cor.fwd(f), cor.fwd(f * f), cor.fwd(mf)
    g_s, g2_s, mg_s = cor.fwd(g), cor.fwd(g * g), cor.fwd(mg)
    n = np.rint(cor.corr(mf_s, mg_s))
    sum_fg = cor.inv((f_s * np.conj(g_s)).sum(axis=0))
    sum_f = cor.corr(f_s, mg_s[None])  # (C, ...)
    sum_g = cor.corr(mf_s[None], g_s)
    sum_f2 = cor.inv((f2_s * np.conj(mg_s)[None]).sum(axis=0))
    sum_g2 = cor.inv((mf_s[None] * np.conj(g2_s)).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_n = np.where(n > 0, 1.0 / n, 0.0)
        num = sum_fg - (sum_f * sum_g).sum(axis=0) * inv_n
        var_f = sum_f2 - (sum_f * sum_f).sum(axis=0) * inv_n
        var_g = sum_g2 - (sum_g * sum_g).sum(axis=0) * inv_n
        floor = p.eps * n * nch
        ok = (var_f > floor) & (var_g > floor)
        out = np.zeros(cor.out)
        out[ok] = num[ok] / np.sqrt(var_f[ok] * var_g[ok])
    out = np.clip(out, -1.0, 1.0)
    out[n < max(1.0, p.min_overlap * n_tvalid)] = np.nan
    return out


def ncc_heatmap(
    search: np.ndarray,
    template: np.ndarray,
    search_mask: Optional[np.ndarray] = None,
    template_mask: Optional[np.ndarray] = None,
    params: Optional[NCCParams] = None,
) -> np.ndarray:
    """ZNCC heatmap of a 2-D template over a 2-D search window (see ``ncc_volume``)."""
    s, t = np.asarray(search), np.asarray(template)
    check_pair(s, t, ndim=2)
    return ncc_volume(s[None], t[None], search_mask, template_mask, params)


def match(
    search: np.ndarray,
    template: np.ndarray,
    search_mask: Optional[np.ndarray] = None,
    template_mask: Optional[np.ndarray] = None,
    params: Optional[NCCParams] = None,
) -> PatchMatch:
    """Match an optical template inside a SAR search window by ZNCC (both 2-D, [0, 1])."""
    p = params or NCCParams()
    heat = ncc_heatmap(search, template, search_mask, template_mask, p)
    n = template_pixels(template, template_mask)
    return patch_match_from_heatmap(heat, p.exclusion_radius, n_samples=n)


def template_pixels(template: np.ndarray, template_mask: Optional[np.ndarray]) -> int:
    """Number of valid template pixels (the sample count behind a correlation score)."""
    t = np.asarray(template)
    valid = np.isfinite(t) if t.ndim == 2 else np.isfinite(t).all(axis=0)
    if template_mask is not None:
        valid &= np.asarray(template_mask, dtype=bool)
    return int(np.count_nonzero(valid))
