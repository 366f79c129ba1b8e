"""The outlier reduction network for CorrASL-SP heatmaps: examples, training, export.

Why a new ORN: the lite ORN was trained on 171 positive pairs of 2 px-cell heatmaps of another network;
CorrASL-SP heatmaps are ZNCC values at 1 px cells. This ORN sees the 65 x 65 cells around the heatmap's
peak (``engine.deep.matcher.orn_crop``: +-32 px of context) as *raw* ZNCC, not min-max scaled, because the
absolute peak height of a ZNCC heatmap is itself evidence (the lite ORN's min-max scaling would discard it).

Examples: thousands of pairs from every training source of ``sp_data`` (simulated and the real training
splits, augmented), matched by the current CorrASL-SP; label 1 when the engine's sub-pixel peak is within
``POS_PX`` of the truth, 0 beyond ``NEG_PX``, in between left out (ambiguous). Balanced by subsampling.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.deep.matcher import orn_crop
from engine.matchers.subpixel import patch_match_from_heatmap

from . import checkpoint
from .sp_data import DEFAULT_MIX, build_sources, sample_batch
from .sp_nets import CorrASLSP
from .sp_train import CACHE, COMMITTED, RUNS, to_tensors

POS_PX = 1.0
NEG_PX = 2.5
CROP = 65


class ORNSP(nn.Module):
    """Small CNN over a (N, 65, 65) raw ZNCC crop -> P(peak within 1 px of the truth)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        c = width
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),            # 32
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 16
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * c + 3, c), nn.ReLU(), nn.Linear(c, 1))

    @staticmethod
    def scalars(x: torch.Tensor) -> torch.Tensor:
        """Peak height, second-highest value outside +-3 cells of the peak, and mean: (N, 3)."""
        n = x.shape[0]
        flat = x.reshape(n, -1)
        peak = flat.amax(1)
        c = CROP // 2
        masked = x.clone()
        # the crop is centred on the peak except near the heatmap border; mask the centre 7x7 anyway
        masked[:, c - 3:c + 4, c - 3:c + 4] = -1.0
        second = masked.reshape(n, -1).amax(1)
        return torch.stack([peak, second, flat.mean(1)], 1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x.unsqueeze(1)).mean((2, 3))
        return self.head(torch.cat([f, self.scalars(x)], 1)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))


def make_examples(net: CorrASLSP, n: int, seed: int, cache: Path, log=print) -> dict:
    """``n`` labelled heatmap crops (float16) with their errors and sources, cached in ``cache``."""
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        if len(z["label"]) >= n:
            return {k: z[k] for k in z.files}
    sources = build_sources(CACHE, tuple(DEFAULT_MIX), log=log)
    rng = np.random.default_rng(seed)
    crops, errs, srcs = [], [], []
    net.eval()
    t0 = time.time()
    with torch.no_grad():
        while len(crops) < n:
            pairs = sample_batch(sources, DEFAULT_MIX, 16, rng, augment=True)
            s, t, sv, tv, y = to_tensors(pairs)
            heat = net(s, t, sv, tv).numpy().astype(np.float64)
            for h, p in zip(heat, pairs):
                m = patch_match_from_heatmap(h)
                errs.append(float(np.hypot(*(np.array(m.offset) - p.truth))))
                crops.append(orn_crop(h).astype(np.float16))
                srcs.append(p.source)
            if len(crops) % 320 < 16:
                log(f"ORN examples {len(crops)}/{n} ({time.time() - t0:.0f} s)")
    e = np.array(errs)
    label = np.where(e <= POS_PX, 1, np.where(e > NEG_PX, 0, -1))
    out = {"crop": np.stack(crops), "error": e, "label": label, "source": np.array(srcs)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".part.npz")
    np.savez(tmp, **out)
    tmp.replace(cache)
    return out


def _aug(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips/transposes of a heatmap do not change whether its peak is right."""
    if rng.random() < 0.5:
        x = x[:, ::-1]
    if rng.random() < 0.5:
        x = x[::-1]
    if rng.random() < 0.5:
        x = x.T
    return np.ascontiguousarray(x)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    net = CorrASLSP(args.size)
    ck = Path(args.corrasl) if args.corrasl != "init" else None
    if ck is not None:
        net.load_state_dict(torch.load(ck, map_location="cpu", weights_only=False)["model"])
    tag = "init" if ck is None else f"step{torch.load(ck, map_location='cpu', weights_only=False).get('step', 0)}"
    ex = make_examples(net, args.examples, args.seed, CACHE / f"orn_{args.size}_{tag}_{args.examples}.npz")
    lab = ex["label"]
    idx = np.flatnonzero(lab >= 0)
    val_mask = (np.arange(len(lab)) % 10) == 0          # every 10th example for validation
    rng = np.random.default_rng(args.seed)
    tr = idx[~val_mask[idx]]
    va = idx[val_mask[idx]]
    pos, neg = tr[lab[tr] == 1], tr[lab[tr] == 0]
    print(f"ORN examples: {len(lab)}; train {len(pos)} positive / {len(neg)} negative; val {len(va)}", flush=True)
    orn = ORNSP()
    opt = torch.optim.Adam(orn.parameters(), lr=args.lr)
    run = RUNS / f"orn_{args.size}"
    log = checkpoint.Log(run / "log.jsonl")
    t0 = time.time()
    for step in range(1, args.steps + 1):
        k = args.batch // 2
        b = np.concatenate([rng.choice(pos, k), rng.choice(neg, k)])
        x = torch.tensor(np.stack([_aug(ex["crop"][i].astype(np.float32), rng) for i in b]))
        y = torch.tensor(lab[b], dtype=torch.float32)
        loss = F.binary_cross_entropy_with_logits(orn.logit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            log(step=step, loss=float(loss.detach()), **evaluate(orn, ex, va))
    meta = {"seconds": time.time() - t0, "examples": int(len(lab)), "train_pos": int(len(pos)),
            "train_neg": int(len(neg)), "pos_px": POS_PX, "neg_px": NEG_PX, **evaluate(orn, ex, va)}
    COMMITTED.mkdir(parents=True, exist_ok=True)
    meta["corrasl"] = tag
    torch.save({"model": orn.state_dict(), "step": args.steps, "extra": meta}, COMMITTED / f"orn_{args.size}.pt")
    print(json.dumps(meta), flush=True)


def evaluate(orn: ORNSP, ex: dict, va: np.ndarray) -> dict:
    """Validation accuracy, and the <=1 px share of all validation matches vs of those the ORN keeps."""
    orn.eval()
    with torch.no_grad():
        p = orn(torch.tensor(ex["crop"][va].astype(np.float32))).numpy()
    orn.train()
    y = ex["label"][va]
    keep = p >= 0.5
    return {"val_acc": float(((p >= 0.5) == (y == 1)).mean()),
            "val_le1_all": float((y == 1).mean()), "val_le1_kept": float((y[keep] == 1).mean()) if keep.any() else 0.0,
            "val_kept": float(keep.mean())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.training.sp_orn", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="sp")
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--corrasl", default=str(COMMITTED / "corrasl_sp.pt"),
                   help="CorrASL-SP weights whose heatmaps the ORN learns to judge, or 'init' (the untrained "
                        "network = the structural matcher)")
    p.add_argument("--seed", type=int, default=5)
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
