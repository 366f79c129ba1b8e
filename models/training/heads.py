"""Train the goodness networks (SAR, optical) and the ORN on CorrASL-derived labels.

Both are small binary classifiers (BCE, Adam), trained on the balanced labelled pairs of
``labels.py``: goodness on the 128 px crops of its modality (flips as augmentation), the ORN on the
min-max normalised raw heatmaps (flips/transposes of a heatmap flip/transpose the offset, which
does not change whether the match is reliable). Validation pairs come from pool patches CorrASL
never trained on.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .corrasl import CACHE, RUNS
from .labels import load_labels
from .nets import ORN, Goodness

KINDS = ("goodness_sar", "goodness_opt", "orn")


def _inputs(kind: str, ls) -> np.ndarray:
    if kind == "goodness_sar":
        return ls.sar_crop
    if kind == "goodness_opt":
        return ls.opt_crop
    return ORN.normalise(torch.from_numpy(ls.heatmap)).numpy()[:, 0]


def balanced_indices(label: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labelled indices within ``mask`` with the larger class subsampled to the smaller's size."""
    pos = np.flatnonzero(mask & (label == 1))
    neg = np.flatnonzero(mask & (label == 0))
    n = min(len(pos), len(neg))
    if n == 0:
        raise RuntimeError("labels have no positive or no negative pairs; train CorrASL longer")
    return np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])


def _flip(x: np.ndarray, rng: np.random.Generator, transpose: bool) -> np.ndarray:
    if rng.random() < 0.5:
        x = x[..., ::-1]
    if rng.random() < 0.5:
        x = x[..., ::-1, :]
    if transpose and rng.random() < 0.5:
        x = np.swapaxes(x, -1, -2)
    return np.ascontiguousarray(x)


def make_model(kind: str, size: str) -> torch.nn.Module:
    return ORN(size) if kind == "orn" else Goodness(size)


def logits(kind: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.logit(x) if kind == "orn" else model.crop_logit(x)


@torch.no_grad()
def evaluate(kind: str, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, precision and recall at p >= 0.5 on a balanced validation set."""
    model.eval()
    ps = []
    for s in range(0, len(x), 128):
        xb = torch.from_numpy(x[s:s + 128].astype(np.float32)[:, None])
        ps.append(torch.sigmoid(logits(kind, model, xb)).numpy())
    model.train()
    p = np.concatenate(ps)
    pred = p >= 0.5
    tp = float(np.sum(pred & (y == 1)))
    return {"val_acc": float(np.mean(pred == (y == 1))), "val_precision": tp / max(1.0, float(pred.sum())),
            "val_recall": tp / max(1.0, float(np.sum(y == 1))), "val_n": int(len(y))}


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kind = args.kind
    ls = load_labels(Path(args.labels or CACHE / f"labels_{args.size}.npz"))
    rng = np.random.default_rng(args.seed)
    x_all = _inputs(kind, ls)
    tr = balanced_indices(ls.label, ~ls.val, rng)
    va = balanced_indices(ls.label, ls.val, np.random.default_rng(1))
    x_va, y_va = x_all[va], ls.label[va]
    run = Path(args.run or RUNS / f"{kind}_{args.size}")
    model = make_model(kind, args.size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    ck = run / "checkpoint.pt"
    step, extra = checkpoint.load(ck, model, opt, rng)
    log = checkpoint.Log(run / "log.jsonl")
    t0 = time.time()
    spent = float(extra.get("seconds", 0.0))
    print(f"{kind} {args.size}: {len(tr)} balanced training pairs, {len(va)} validation, from step {step}", flush=True)
    model.train()
    while step < args.steps:
        if args.minutes and time.time() - t0 > args.minutes * 60:
            print("time budget reached; re-run to resume", flush=True)
            break
        idx = rng.choice(tr, args.batch)
        xb = _flip(x_all[idx].astype(np.float32), rng, transpose=kind == "orn")
        xb = torch.from_numpy(xb[:, None])
        yb = torch.from_numpy((ls.label[idx] == 1).astype(np.float32))
        loss = F.binary_cross_entropy_with_logits(logits(kind, model, xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log(step=step, loss=float(loss.detach()))
        if step % args.ckpt_every == 0 or step == args.steps:
            rec = evaluate(kind, model, x_va, y_va)
            log(step=step, **rec)
            checkpoint.save(ck, model, opt, step, rng, {"seconds": spent + time.time() - t0, "args": vars(args),
                                                        "t_pos": ls.t_pos, "t_neg": ls.t_neg, **rec})
    rec = evaluate(kind, model, x_va, y_va)
    checkpoint.save(ck, model, opt, step, rng, {"seconds": spent + time.time() - t0, "args": vars(args),
                                                "t_pos": ls.t_pos, "t_neg": ls.t_neg, **rec})
    return ck


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--size", choices=("lite", "full"), default="lite")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--minutes", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--labels", default=None)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None)
