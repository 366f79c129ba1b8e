"""The three networks of Hughes' framework (thesis 3.1.3, 3.3.2, 3.3.3; paper of section 4.6).

Why one ``width`` factor: the published widths (``full``) need a GPU to train in reasonable time; the
``lite`` variant keeps every layer, kernel and stride and only narrows the channels, so the engine's
geometry (feature sizes, output strides, cell -> pixel mapping) is identical for both sizes.

The correspondence heatmap is the valid cross-correlation of the SAR search features with the
optical template features. It is computed with an FFT here (and with numpy's FFT in the engine): the
direct form costs 65*65*60*60*C multiply-adds per pair, the FFT form a small fraction of that, and
both give the same numbers (tested).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = ("full", "lite")


@dataclass(frozen=True)
class Widths:
    """Channel widths of one size variant."""
    corr: tuple[int, int, int, int]          # CorrASL conv stages
    corr_reduce: tuple[int, int, int]        # CorrASL 1x1 reduction (last = feature channels)
    good: tuple[int, int, int, int]          # goodness VGG blocks
    good_head: tuple[int, int]               # goodness strided convs
    orn: tuple[int, int, int, int]           # ORN conv stages

    def to_dict(self) -> dict:
        return asdict(self)


WIDTHS = {
    "full": Widths(corr=(32, 64, 128, 128), corr_reduce=(256, 512, 256), good=(32, 64, 128, 128),
                   good_head=(128, 64), orn=(32, 64, 128, 128)),
    # Half the conv channels; the 1x1 reduction at 124x124 dominates CorrASL's cost, so it is narrowed
    # to a quarter to keep a CPU training run within about an hour.
    "lite": Widths(corr=(16, 32, 64, 64), corr_reduce=(64, 128, 64), good=(16, 32, 64, 64),
                   good_head=(64, 32), orn=(16, 32, 64, 64)),
}

SEARCH_PX = 256
TEMPLATE_PX = 128
SEARCH_FEAT = 124
TEMPLATE_FEAT = 60
HEATMAP = SEARCH_FEAT - TEMPLATE_FEAT + 1   # 65
CELL_PX = 2.0
"""Pixels of offset per heatmap cell: the first max-pool has stride 2 and everything after is
upsampled back to its grid."""
CENTRE_CELL = (HEATMAP - 1) // 2            # 32: template centred in the search window
GOOD_STRIDE = 32
GOOD_FIELD = 128


def _cbr(cin: int, cout: int, k: int, pad: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=pad), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialAttention(nn.Module):
    """Per-pixel channel mean and max -> 3x3 conv (no bias) -> tanh; multiplies the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.tanh(self.conv(a))


class CorrStream(nn.Module):
    """One modality's CorrASL feature stream: 4 conv stages, hypercolumn, 1x1 reduction, attention, L2."""

    def __init__(self, w: Widths) -> None:
        super().__init__()
        c1, c2, c3, c4 = w.corr
        self.s1 = nn.Sequential(*_cbr(1, c1, 7, 0), nn.MaxPool2d(3, 2))
        self.s2 = nn.Sequential(*_cbr(c1, c2, 5, 2), nn.MaxPool2d(3, 2))
        self.s3 = nn.Sequential(*_cbr(c2, c3, 5, 2), nn.MaxPool2d(3, 2))
        self.s4 = nn.Sequential(*_cbr(c3, c4, 3, 1), nn.MaxPool2d(3, 2))
        r1, r2, r3 = w.corr_reduce
        self.reduce = nn.Sequential(nn.Conv2d(c1 + c2 + c3 + c4, r1, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(r1, r2, 1), nn.ReLU(inplace=True), nn.Conv2d(r2, r3, 1))
        self.attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.s1(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        f4 = self.s4(f3)
        size = f1.shape[-2:]
        up = [F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in (f2, f3, f4)]
        h = self.attention(self.reduce(torch.cat([f1, *up], 1)))
        return F.normalize(h, p=2.0, dim=1, eps=1e-8)


def fft_correlate(search_feat: torch.Tensor, template_feat: torch.Tensor) -> torch.Tensor:
    """Valid cross-correlation summed over channels: (N,C,H,W) x (N,C,h,w) -> (N,H-h+1,W-w+1)."""
    H, W = search_feat.shape[-2:]
    h, w = template_feat.shape[-2:]
    S = torch.fft.rfft2(search_feat, s=(H, W))
    T = torch.fft.rfft2(template_feat, s=(H, W))
    r = torch.fft.irfft2((S * T.conj()).sum(1), s=(H, W))
    return r[..., : H - h + 1, : W - w + 1]


def direct_correlate(search_feat: torch.Tensor, template_feat: torch.Tensor) -> torch.Tensor:
    """The straightforward form of ``fft_correlate`` (grouped convolution), kept to test it."""
    n, c = search_feat.shape[:2]
    out = F.conv2d(search_feat.reshape(1, n * c, *search_feat.shape[-2:]), template_feat, groups=n)
    return out[0]


class CorrASL(nn.Module):
    """Two unshared streams (SAR search, optical template) and their correlation heatmap."""

    def __init__(self, size: str = "lite") -> None:
        super().__init__()
        w = WIDTHS[size]
        self.size = size
        self.sar = CorrStream(w)
        self.opt = CorrStream(w)

    def forward(self, search: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        return fft_correlate(self.sar(search), self.opt(template))


def corrasl_loss(raw: torch.Tensor, target_cell: torch.Tensor, l1: float = 1e-7) -> torch.Tensor:
    """Batch mean of ``corrasl_loss_per_pair``."""
    return corrasl_loss_per_pair(raw, target_cell, l1).mean()


def corrasl_loss_per_pair(raw: torch.Tensor, target_cell: torch.Tensor, l1: float = 1e-7) -> torch.Tensor:
    """Thesis loss: weighted MSE of the spatial softmax against a one-hot target + lambda*L1(raw).

    ``target_cell`` is (N, 2) float heatmap coordinates of the truth; the one-hot is spread
    bilinearly over the (at most four) cells around it so sub-cell truths are not rounded away.
    The positive cells are weighted by #negatives / #positives as in the thesis.
    """
    n, H, W = raw.shape
    p = torch.softmax(raw.reshape(n, -1), 1).reshape(n, H, W)
    tgt = bilinear_onehot(target_cell, H, W).to(raw.dtype)
    pos = tgt > 0
    npos = pos.sum((1, 2), keepdim=True).clamp(min=1)
    weight = torch.where(pos, (H * W - npos) / npos, torch.ones_like(tgt))
    mse = (weight * (p - tgt) ** 2).sum((1, 2)) / (H * W)
    return mse + l1 * raw.abs().mean((1, 2))


SOFTMAX_SCALE = 30.0 / (TEMPLATE_FEAT * TEMPLATE_FEAT)
"""Temperature of the cross-entropy loss: the raw heatmap is a sum of 3,600 cosines (range +-3,600);
scaled to 30 x the *mean* cosine so the spatial softmax is neither uniform nor saturated at the start."""


def corrasl_ce_loss_per_pair(raw: torch.Tensor, target_cell: torch.Tensor,
                             scale: float = SOFTMAX_SCALE) -> torch.Tensor:
    """Cross-entropy of the spatial softmax of ``scale * raw`` against the bilinear one-hot target.

    Why this is the default and not the thesis's weighted MSE: the MSE of a softmax over 4,225 cells
    has vanishing gradients while the softmax is near uniform or saturated (the gradient at the true
    cell is ~ p(1-p) ~ 1/4,225), and on the 2-core CPU budget it made no measurable progress (loss and
    accuracy flat over the first 50 steps, val accuracy 0 %), whereas the cross-entropy's gradient
    is p - target. Both are selectable (``--loss``); the full-size GPU run can use the thesis's.
    """
    n, H, W = raw.shape
    tgt = bilinear_onehot(target_cell, H, W).to(raw.dtype).reshape(n, -1)
    return -(tgt * torch.log_softmax(scale * raw.reshape(n, -1), 1)).sum(1)


def matching_loss_per_pair(raw: torch.Tensor, target_cell: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    return corrasl_ce_loss_per_pair(raw, target_cell) if kind == "ce" else corrasl_loss_per_pair(raw, target_cell)


def bilinear_onehot(cell: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(N,2) fractional (row, col) -> (N,H,W) target with the unit mass split bilinearly."""
    n = cell.shape[0]
    out = torch.zeros(n, H, W)
    r0 = cell[:, 0].floor().long()
    c0 = cell[:, 1].floor().long()
    fr = cell[:, 0] - r0
    fc = cell[:, 1] - c0
    idx = torch.arange(n)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr = (r0 + dr).clamp(0, H - 1)
            cc = (c0 + dc).clamp(0, W - 1)
            out[idx, rr, cc] += wr * wc
    return out


class Goodness(nn.Module):
    """Per-modality goodness: VGG blocks to stride 8, two stride-2 convs, 1x1 head -> logit map.

    ``forward`` gives the stride-32 logit map; ``crop_logit`` pools a 128 px crop to one logit
    (training) and ``scene_map`` applies the inference pooling (avg 4x4 stride 1, sigmoid), which
    equals ``sigmoid(crop_logit)`` of the 128 px crop under every output cell.
    """

    def __init__(self, size: str = "lite") -> None:
        super().__init__()
        w = WIDTHS[size]
        layers: list[nn.Module] = []
        cin = 1
        for i, c in enumerate(w.good):
            for _ in range(2):
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(c)]
                cin = c
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.Dropout2d(0.25))
        h1, h2 = w.good_head
        layers += [nn.Conv2d(cin, h1, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(h1),
                   nn.Conv2d(h1, h2, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(h2),
                   nn.Conv2d(h2, h2, 1), nn.Dropout(0.5), nn.ReLU(inplace=True), nn.Conv2d(h2, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def crop_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((1, 2, 3))

    def scene_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.avg_pool2d(self.body(x), 4, stride=1))


class ORN(nn.Module):
    """Outlier reduction network over a min-max normalised 65x65 pre-softmax heatmap."""

    def __init__(self, size: str = "lite") -> None:
        super().__init__()
        c1, c2, c3, c4 = WIDTHS[size].orn
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 7, padding=3), nn.InstanceNorm2d(c1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            *_cbr(c1, c2, 5, 2), nn.MaxPool2d(3, 2),
            *_cbr(c2, c3, 5, 2), nn.MaxPool2d(3, 2),
            *_cbr(c3, c4, 3, 1),
            nn.Conv2d(c4, c4, 1), nn.ReLU(inplace=True), nn.Conv2d(c4, 1, 1))

    @staticmethod
    def normalise(raw: torch.Tensor) -> torch.Tensor:
        """(N,H,W) raw heatmaps -> (N,1,H,W) min-max scaled to [0, 1] per heatmap."""
        lo = raw.amin((1, 2), keepdim=True)
        hi = raw.amax((1, 2), keepdim=True)
        return ((raw - lo) / (hi - lo).clamp(min=1e-12)).unsqueeze(1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))
