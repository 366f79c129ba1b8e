"""CorrASL with a structural prior ("sp"): the structural matcher's descriptor as fixed layers, plus a
learned residual refinement, correlated by zero-normalised cross-correlation at 1 px per heatmap cell.

Why this shape (issue 13): the published CorrASL trained on two CPU cores localises to 2-3 px and loses to
our hand-crafted structural matcher on every real set. Here each stream *starts as* that matcher:

1. fixed layers compute ``engine.matchers.structural.dense_descriptor`` exactly (ROEWA log-ratio gradients
   for SAR, derivative-of-Gaussian for optical; soft orientation binning; Gaussian cell aggregation;
   [1,2,1]/4 smoothing across bins; per-pixel normalisation with a floor at 10 % of the 90th percentile);
2. a few convolutions of modest width (dilated, so the residual sees ~30 px of context) add a
   refinement whose last layer starts at zero, so an untrained network *is* the structural matcher and
   training can only move it where the loss says;
3. the heatmap is the ZNCC of the two feature volumes over all integer offsets (1 px cells; the same
   ``ncc_volume`` the structural matcher uses, so masks and flat-window handling are shared).

Fully convolutional, no resizing, no window-size dependent operation except the normalisation floor,
which is an image statistic (like the structural matcher's, computed over the whole tile in the engine);
so the engine computes a tile's features once and cuts every window from them.

Orientation binning without atan2 (not an ONNX operator): the circular distance between the doubled
gradient angle and a bin's doubled centre is ``acos(cos 2(theta - phi_k))``, and ``cos 2(theta - phi_k)``
is a linear form of ``(gx^2 - gy^2, 2 gx gy) / |g|^2``. Same numbers as the structural matcher's binning.

Inputs: ``image`` (N,1,H,W) unit-range (invalid pixels already filled by the engine's ``_fill_invalid``,
as the structural matcher does), ``valid`` (N,1,H,W) 1/0. Output: (N, C, H, W) features (zero where
invalid).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.matchers.structural import DescriptorParams

SEARCH_PX = 256
TEMPLATE_PX = 128
HEATMAP = SEARCH_PX - TEMPLATE_PX + 1     # 129
CELL_PX = 1.0
CENTRE_CELL = (HEATMAP - 1) // 2          # 64


@dataclass(frozen=True)
class SPWidths:
    """Residual refinement: ``width`` channels, dilations per 3x3 layer, ``extra`` added output channels."""
    width: int = 32
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    extra: int = 7

    def to_dict(self) -> dict:
        return asdict(self)


SP_WIDTHS = {"sp": SPWidths(), "sp-wide": SPWidths(width=64, dilations=(1, 2, 4, 8, 1), extra=15)}


def _gauss1d(sigma: float, order: int = 0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's 1-D kernel (truncate 4.0), flipped for correlation."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    phi /= phi.sum()
    if order == 1:
        phi = -x / (sigma * sigma) * phi   # derivative of the Gaussian
    # ndimage convolves (kernel reversed); as a correlation kernel we need the reversed one
    return phi[::-1].copy()


def _sym_pad(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
    """scipy's 'reflect' boundary (edge sample repeated: d c b a | a b c d | d c b a)."""
    if p == 0:
        return x
    n = x.shape[dim]
    head = torch.flip(x.narrow(dim, 0, p), [dim])
    tail = torch.flip(x.narrow(dim, n - p, p), [dim])
    return torch.cat([head, x, tail], dim)


def _corr1d(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """Correlate every channel of (N,C,H,W) with the odd 1-D kernel ``k`` along ``dim`` (2 or 3)."""
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    xp = _sym_pad(x, r, dim)
    w = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
    return F.conv2d(xp, w.expand(c, 1, *w.shape[2:]).contiguous(), groups=c)


class StructuralPrior(nn.Module):
    """Fixed layers = ``dense_descriptor`` for one modality (no trainable parameters)."""

    def __init__(self, modality: str, p: DescriptorParams = DescriptorParams()) -> None:
        super().__init__()
        if modality not in ("sar", "optical"):
            raise ValueError(modality)
        self.modality, self.p = modality, p
        self.roewa = modality == "sar" and p.sar_gradient == "roewa"
        if self.roewa:
            k = max(2, int(np.ceil(5.0 / p.roewa_alpha)))
            d = np.arange(1, k + 1)
            w = np.exp(-p.roewa_alpha * d)
            w /= w.sum()
            ahead = np.concatenate([np.zeros(k + 1), w])
            sym = np.concatenate([w[::-1], [1.0 / k], w])
            sym /= sym.sum()
            self.register_buffer("k_ahead", torch.tensor(ahead, dtype=torch.float32))
            self.register_buffer("k_behind", torch.tensor(ahead[::-1].copy(), dtype=torch.float32))
            self.register_buffer("k_sym", torch.tensor(sym, dtype=torch.float32))
        else:
            sigma = p.grad_sigma_sar if modality == "sar" else p.grad_sigma_optical
            self.register_buffer("k_g", torch.tensor(_gauss1d(sigma), dtype=torch.float32))
            self.register_buffer("k_d", torch.tensor(_gauss1d(sigma, 1), dtype=torch.float32))
        n = p.n_orient
        phi2 = 2.0 * (np.arange(n) + 0.5) * np.pi / n          # doubled bin centres
        self.register_buffer("cos_c", torch.tensor(np.cos(phi2), dtype=torch.float32).view(1, n, 1, 1))
        self.register_buffer("sin_c", torch.tensor(np.sin(phi2), dtype=torch.float32).view(1, n, 1, 1))
        self.register_buffer("k_cell", torch.tensor(_gauss1d(p.cell_sigma) if p.cell_sigma > 0 else [1.0],
                                                     dtype=torch.float32))
        mix = np.zeros((n, n))
        for i in range(n):
            if p.orient_smooth and n >= 3:
                mix[i, i] += 0.5
                mix[i, (i - 1) % n] += 0.25
                mix[i, (i + 1) % n] += 0.25
            else:
                mix[i, i] = 1.0
        self.register_buffer("mix", torch.tensor(mix, dtype=torch.float32).view(n, n, 1, 1))

    def gradients(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.roewa:
            p = self.p
            lin = torch.exp(a * (p.roewa_span_db / 10.0 * math.log(10.0)))
            out = []
            for axis in (2, 3):
                other = 5 - axis
                base = _corr1d(lin, self.k_sym, other)
                after = _corr1d(base, self.k_ahead, axis)
                before = _corr1d(base, self.k_behind, axis)
                ratio = torch.log(torch.clamp(after, min=1e-12) / torch.clamp(before, min=1e-12))
                out.append(ratio * (10.0 / math.log(10.0)) / p.roewa_span_db)
            return out[0], out[1]
        gy = _corr1d(_corr1d(a, self.k_d, 2), self.k_g, 3)
        gx = _corr1d(_corr1d(a, self.k_g, 2), self.k_d, 3)
        return gy, gx

    @staticmethod
    def erode2(valid: torch.Tensor) -> torch.Tensor:
        """``binary_erosion(valid, iterations=2, border_value=1)`` with the 3x3 cross."""
        v = valid
        for _ in range(2):
            p = F.pad(v, (1, 1, 1, 1), value=1.0)
            v = torch.minimum(torch.minimum(torch.minimum(p[:, :, 1:-1, 1:-1], p[:, :, :-2, 1:-1]),
                                            torch.minimum(p[:, :, 2:, 1:-1], p[:, :, 1:-1, :-2])),
                              p[:, :, 1:-1, 2:])
        return v

    def unnormalised(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Aggregated orientation channels before the per-pixel normalisation, (N, n_orient, H, W)."""
        gy, gx = self.gradients(image)   # invalid pixels arrive filled (the engine's _fill_invalid)
        m2 = gx * gx + gy * gy
        mag = torch.sqrt(m2) * self.erode2(valid)
        inv = 1.0 / torch.clamp(m2, min=1e-30)
        c2 = (gx * gx - gy * gy) * inv
        s2 = 2.0 * gx * gy * inv
        cosd = torch.clamp(c2 * self.cos_c + s2 * self.sin_c, -1.0, 1.0)
        dist = torch.acos(cosd) * (self.p.n_orient / (2.0 * math.pi))   # circular distance in bins
        desc = mag * torch.relu(1.0 - dist)
        if self.k_cell.numel() > 1:
            desc = _corr1d(_corr1d(desc, self.k_cell, 2), self.k_cell, 3)
        return F.conv2d(desc, self.mix)

    def forward(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        desc = self.unnormalised(image, valid)
        norm = torch.sqrt((desc * desc).sum(1, keepdim=True))
        floor = self.p.norm_eps * percentile90(norm, valid)
        floor = torch.clamp(floor, min=1e-12)
        return desc / torch.sqrt(norm * norm + floor * floor) * valid


def percentile90(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """numpy's ``percentile(x[valid], 90)`` (linear interpolation) per sample, shape (N,1,1,1).

    Sorting puts invalid pixels (set to -1; ``x`` >= 0) first, so the valid ones are the top ``count``."""
    n = x.shape[0]
    flat = torch.where(valid > 0, x, torch.full_like(x, -1.0)).reshape(n, -1)
    srt, _ = torch.sort(flat, dim=1)
    total = flat.shape[1]
    count = (valid.reshape(n, -1) > 0).sum(1).to(torch.float32)
    pos = (total - count) + 0.9 * torch.clamp(count - 1.0, min=0.0)     # fractional index into srt
    lo = torch.floor(pos)
    frac = (pos - lo).unsqueeze(1)
    lo_i = lo.to(torch.int64).unsqueeze(1)
    hi_i = torch.clamp(lo_i + 1, max=total - 1)
    v = torch.gather(srt, 1, lo_i) * (1.0 - frac) + torch.gather(srt, 1, hi_i) * frac
    return torch.clamp(v, min=0.0).reshape(n, 1, 1, 1)


class SPStream(nn.Module):
    """One modality: structural prior + zero-initialised residual refinement."""

    def __init__(self, modality: str, w: SPWidths = SPWidths()) -> None:
        super().__init__()
        self.prior = StructuralPrior(modality)
        n = self.prior.p.n_orient
        layers: list[nn.Module] = []
        cin = n + 1
        for d in w.dilations:
            layers += [nn.Conv2d(cin, w.width, 3, padding=d, dilation=d, padding_mode="replicate"),
                       nn.ReLU(inplace=False)]
            cin = w.width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(w.width, n + w.extra, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.extra = w.extra

    def forward(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        d0 = self.prior(image, valid)
        x = torch.cat([d0, image - 0.5], 1)
        r = self.head(self.body(x))
        base = F.pad(d0, (0, 0, 0, 0, 0, self.extra))
        return (base + r) * valid


def box_sum(a: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Sums of every th x tw window of the last two axes ('valid' positions), like ncc.box_sum."""
    c = torch.cumsum(torch.cumsum(a.double(), -2), -1)
    c = F.pad(c, (1, 0, 1, 0))
    return (c[..., th:, tw:] - c[..., :-th, tw:] - c[..., th:, :-tw] + c[..., :-th, :-tw])


def zncc(search: torch.Tensor, template: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ZNCC heatmap of (N,C,T,T) templates over (N,C,S,S) windows, (N, S-T+1, S-T+1): ``ncc_volume``
    without masks (channels summed before normalising; flat windows score 0)."""
    N, C, H, W = search.shape
    th, tw = template.shape[-2:]
    n = float(th * tw)
    g = template - template.mean((2, 3), keepdim=True)
    Sf = torch.fft.rfft2(search, s=(H, W))
    Tf = torch.fft.rfft2(g, s=(H, W))
    num = torch.fft.irfft2((Sf * Tf.conj()).sum(1), s=(H, W))[:, : H - th + 1, : W - tw + 1]
    var_g = (g * g).sum((1, 2, 3)).view(N, 1, 1)
    bs = box_sum(search, th, tw)
    var_f = (box_sum((search * search).sum(1), th, tw) - (bs * bs).sum(1) / n).float()
    floor = eps * n * C
    ok = (var_f > floor) & (var_g > floor)
    den = torch.sqrt(torch.clamp(var_f, min=floor) * torch.clamp(var_g, min=floor))
    return torch.where(ok, num / den, torch.zeros_like(num)).clamp(-1.0, 1.0)


class CorrASLSP(nn.Module):
    """Two unshared structural-prior streams and their ZNCC heatmap (1 px cells)."""

    def __init__(self, size: str = "sp") -> None:
        super().__init__()
        w = SP_WIDTHS[size]
        self.sar = SPStream("sar", w)
        self.opt = SPStream("optical", w)
        self.log_temp = nn.Parameter(torch.tensor(math.log(30.0)))
        """Softmax temperature of the training loss (ZNCC in [-1, 1] -> logits); not exported."""

    def forward(self, search: torch.Tensor, template: torch.Tensor, search_valid: torch.Tensor,
                template_valid: torch.Tensor) -> torch.Tensor:
        return zncc(self.sar(search, search_valid), self.opt(template, template_valid))
