"""Goodness and ORN labels from the trained CorrASL (thesis section 3.3, Eq. 6).

Why labels come from CorrASL: "matchable" is defined by what the correspondence network can match,
so the goodness networks learn to find regions where *this* CorrASL succeeds and the ORN learns to
recognise heatmaps of its failures.

A pair is **positive** when its matching loss is low (``loss <= t_pos``) and the L2 error <= 1 px,
**negative** when the loss is high (``loss >= t_neg``) or the error >= 2.5 px; the rest is
ambiguous and dropped, then classes are balanced. The thesis's thresholds (-log loss > 1.2 / < 1)
belong to its loss scale; ours are re-derived from the loss distribution of the labelling run:
``t_pos`` = the 75th percentile of the loss among pairs matched within 1 px, ``t_neg`` = the 25th
percentile among pairs off by >= 2.5 px (and ``t_pos <= t_neg`` enforced). The values used are
stored with the labels and in the model card.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .corrasl import CACHE, RUNS, heatmap_offsets, pool_from_args
from .data import l2, sample_corr, split_pool
from .nets import SEARCH_PX, TEMPLATE_PX, CorrASL, matching_loss_per_pair

POS_ERR = 1.0
NEG_ERR = 2.5


@dataclass
class LabelSet:
    sar_crop: np.ndarray     # (N,128,128) float16 network input: SAR under the template's true extent
    opt_crop: np.ndarray     # (N,128,128) float16 network input: the optical template
    heatmap: np.ndarray      # (N,65,65) float32 raw CorrASL heatmap
    loss: np.ndarray         # (N,)
    error: np.ndarray        # (N,) px
    label: np.ndarray        # (N,) int8: 1 positive, 0 negative, -1 ambiguous
    val: np.ndarray          # (N,) bool: pair comes from a validation patch
    t_pos: float
    t_neg: float


def derive_thresholds(loss: np.ndarray, error: np.ndarray) -> tuple[float, float]:
    good = loss[error <= POS_ERR]
    bad = loss[error >= NEG_ERR]
    t_pos = float(np.percentile(good, 75)) if good.size else float(np.median(loss))
    t_neg = float(np.percentile(bad, 25)) if bad.size else float(np.max(loss))
    if t_pos > t_neg:
        t_pos = t_neg = 0.5 * (t_pos + t_neg)
    return t_pos, t_neg


def assign(loss: np.ndarray, error: np.ndarray, t_pos: float, t_neg: float) -> np.ndarray:
    lab = np.full(loss.shape, -1, np.int8)
    lab[(loss <= t_pos) & (error <= POS_ERR)] = 1
    lab[(loss >= t_neg) | (error >= NEG_ERR)] = 0
    return lab


@torch.no_grad()
def make_labels(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out or CACHE / f"labels_{args.size}.npz")
    pool = pool_from_args(args)
    tr_idx, va_idx = split_pool(len(pool))
    model = CorrASL(args.size)
    checkpoint.load(Path(args.corrasl or RUNS / f"corrasl_{args.size}" / "checkpoint.pt"), model, None, None)
    model.eval()
    cal = Path(args.corrasl or RUNS / f"corrasl_{args.size}" / "checkpoint.pt").with_name("calibration.json")
    corr = np.array(json.loads(cal.read_text())["offset_correction_px"]) if cal.exists() else np.zeros(2)
    rng = np.random.default_rng(args.seed)
    n_val = int(args.n * 0.15)
    recs = {k: [] for k in ("sar", "opt", "hm", "loss", "err", "val")}
    S, T = SEARCH_PX, TEMPLATE_PX
    for start in range(0, args.n, 32):
        m = min(32, args.n - start)
        is_val = start < n_val
        idx = rng.choice(va_idx if is_val else tr_idx, m)
        # mild augmentation only: labels should describe the content, not the augmentation
        b = sample_corr(pool, rng, m, augment=False, indices=idx)
        raw = model(torch.from_numpy(b.search), torch.from_numpy(b.template))
        loss = matching_loss_per_pair(raw, torch.from_numpy(b.cell).float(), args.loss).numpy()
        err = l2(heatmap_offsets(raw.numpy()) - corr, b.offset)
        for k in range(m):
            r, c = (S - T) // 2 + int(b.offset[k, 0]), (S - T) // 2 + int(b.offset[k, 1])
            recs["sar"].append(b.search[k, 0, r:r + T, c:c + T].astype(np.float16))
        recs["opt"].extend(b.template[:, 0].astype(np.float16))
        recs["hm"].extend(raw.numpy().astype(np.float32))
        recs["loss"].extend(loss)
        recs["err"].extend(err)
        recs["val"].extend([is_val] * m)
        if (start // 32) % 10 == 0:
            print(f"labelled {start + m}/{args.n}", flush=True)
    loss = np.array(recs["loss"])
    err = np.array(recs["err"])
    val = np.array(recs["val"])
    t_pos, t_neg = derive_thresholds(loss[~val], err[~val])
    lab = assign(loss, err, t_pos, t_neg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.npz")
    np.savez(tmp, sar_crop=np.stack(recs["sar"]), opt_crop=np.stack(recs["opt"]), heatmap=np.stack(recs["hm"]),
             loss=loss, error=err, label=lab, val=val, t_pos=t_pos, t_neg=t_neg)
    tmp.replace(out)
    print(f"labels: {len(lab)} pairs, acc<=1px {np.mean(err <= 1):.3f}, t_pos {t_pos:.4g}, t_neg {t_neg:.4g}, "
          f"positive {np.sum(lab == 1)}, negative {np.sum(lab == 0)}, ambiguous {np.sum(lab == -1)}", flush=True)
    return out


def load_labels(path: Path) -> LabelSet:
    z = np.load(path)
    return LabelSet(z["sar_crop"], z["opt_crop"], z["heatmap"], z["loss"], z["error"], z["label"], z["val"],
                    float(z["t_pos"]), float(z["t_neg"]))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("lite", "full"), default="lite")
    p.add_argument("--n", type=int, default=3000, help="pairs to label (15 %% from validation patches)")
    p.add_argument("--corrasl", default=None, help="CorrASL checkpoint (default: the size's run)")
    p.add_argument("--out", default=None)
    p.add_argument("--pool-first-seed", type=int, default=1000)
    p.add_argument("--pool-size", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--loss", choices=("ce", "thesis"), default="ce", help="the matching loss CorrASL was trained with")
