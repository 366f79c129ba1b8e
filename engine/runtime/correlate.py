"""Valid cross-correlation of feature maps with numpy's FFT (the CorrASL heatmap).

Why not inside the ONNX graph: the correlation kernel differs per pair, i.e. a grouped convolution
with a dynamic group count, which ONNX cannot express. It is the same maths as the training code's
``fft_correlate``; tests compare it with the direct sum.
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft

CHUNK = 8
"""Pairs transformed at a time. Why: the spectra of a whole batch (N x C x H x W/2 complex) are
hundreds of MB for 32 candidates; eight at a time keeps them in tens of MB at the same speed."""


def fft_correlate(search_feat: np.ndarray, template_feat: np.ndarray) -> np.ndarray:
    """(N,C,H,W) x (N,C,h,w) -> (N,H-h+1,W-w+1): sum over channels of the valid cross-correlation.

    scipy's FFT keeps float32 in single precision (numpy's would promote to complex128 and double
    the memory); the heatmap's relative error stays ~1e-6 (tested against the direct sum)."""
    s = np.asarray(search_feat, np.float32)
    t = np.asarray(template_feat, np.float32)
    if s.ndim != 4 or t.ndim != 4 or s.shape[:2] != t.shape[:2]:
        raise ValueError(f"feature shapes do not pair: {s.shape} vs {t.shape}")
    H, W = s.shape[-2:]
    h, w = t.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"template features {h}x{w} larger than search features {H}x{W}")
    out = np.empty((len(s), H - h + 1, W - w + 1), np.float32)
    for i in range(0, len(s), CHUNK):
        S = sfft.rfft2(s[i:i + CHUNK], s=(H, W))
        T = sfft.rfft2(t[i:i + CHUNK], s=(H, W))
        r = sfft.irfft2((S * np.conj(T)).sum(1), s=(H, W))
        out[i:i + CHUNK] = r[:, : H - h + 1, : W - w + 1]
    return out


def direct_correlate(search_feat: np.ndarray, template_feat: np.ndarray) -> np.ndarray:
    """The straightforward O(H W h w C) form of ``fft_correlate``; for tests and small inputs."""
    s = np.asarray(search_feat, np.float64)
    t = np.asarray(template_feat, np.float64)
    n, _, H, W = s.shape
    h, w = t.shape[-2:]
    out = np.empty((n, H - h + 1, W - w + 1))
    for i in range(H - h + 1):
        for j in range(W - w + 1):
            out[:, i, j] = np.einsum("nchw,nchw->n", s[:, :, i:i + h, j:j + w], t)
    return out.astype(np.float32)
