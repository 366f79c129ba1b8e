"""Train the structural-prior CorrASL (``sp_nets.CorrASLSP``) on the mixed sources of ``sp_data``.

Loss (per pair, on the 129 x 129 ZNCC heatmap at 1 px cells):

* soft-label cross-entropy: softmax of ``zncc * T`` (``T`` learned) against a Gaussian of 0.75 px around
  the true sub-pixel offset; every other offset is a negative, so repetitive structure and near-misses
  (the hard negatives of this task) are penalised where they score;
* sub-pixel term: the soft-argmax over the 5 x 5 cells around the true cell, L1 to the truth (sharp,
  symmetric peaks where the quadratic peak fit of the engine is accurate);
* hard-example weighting: the half of each batch with the highest loss counts twice (online hard
  example mining), so easy pairs the prior already gets right do not dominate.

The untrained network equals the structural matcher (the residual's last layer starts at zero), so the
first evaluation is the structural baseline on the same pairs. Resumes from ``runs/corrasl_<set>/
checkpoint.pt``, or from the committed ``checkpoints/corrasl_<set>.pt`` (the whole state: weights, optimiser,
RNG, step; under a MB) when a fresh clone has no run folder; every ``--save-every`` steps both are written
atomically.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .sp_data import DEFAULT_MIX, Pair, build_sources, sample_batch
from .sp_nets import CENTRE_CELL, HEATMAP, SP_WIDTHS, CorrASLSP

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
CACHE = HERE / "cache"
COMMITTED = HERE / "checkpoints"


def to_tensors(pairs: list[Pair]) -> tuple[torch.Tensor, ...]:
    s = torch.tensor(np.stack([p.search for p in pairs]))[:, None]
    t = torch.tensor(np.stack([p.template for p in pairs]))[:, None]
    sv = torch.tensor(np.stack([p.s_valid for p in pairs]))[:, None]
    tv = torch.tensor(np.stack([p.t_valid for p in pairs]))[:, None]
    y = torch.tensor(np.stack([p.truth for p in pairs]), dtype=torch.float32)
    return s, t, sv, tv, y


def heatmap_loss(heat: torch.Tensor, truth: torch.Tensor, log_temp: torch.Tensor, sigma: float = 0.75,
                 subpix_weight: float = 0.5) -> torch.Tensor:
    """Per-pair loss (N,): soft-label CE + local soft-argmax L1 (see the module docstring)."""
    n, H, W = heat.shape
    logits = heat * torch.exp(log_temp)
    logp = F.log_softmax(logits.reshape(n, -1), 1).reshape(n, H, W)
    cell = truth + CENTRE_CELL                                     # fractional (row, col) cell
    r = torch.arange(H, dtype=torch.float32)
    gr = torch.exp(-0.5 * ((r[None] - cell[:, :1]) / sigma) ** 2)   # (n, H)
    gc = torch.exp(-0.5 * ((r[None] - cell[:, 1:]) / sigma) ** 2)
    target = gr[:, :, None] * gc[:, None, :]
    target = target / target.sum((1, 2), keepdim=True)
    ce = -(target * logp).sum((1, 2))
    # local soft-argmax around the true integer cell
    ci = torch.round(cell).long().clamp(2, H - 3)
    idx = torch.arange(-2, 3)
    rows = (ci[:, 0:1] + idx[None]).clamp(0, H - 1)                  # (n, 5)
    cols = (ci[:, 1:2] + idx[None]).clamp(0, W - 1)
    win = logits[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]   # (n, 5, 5)
    p = F.softmax(win.reshape(n, -1), 1).reshape(n, 5, 5)
    er = (p.sum(2) * rows.float()).sum(1)
    ec = (p.sum(1) * cols.float()).sum(1)
    sub = (er - cell[:, 0]).abs() + (ec - cell[:, 1]).abs()
    return ce + subpix_weight * sub


def peak_errors(heat: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Integer-peak error (px) per pair (the quick validation metric; the benchmark fits sub-pixel peaks)."""
    n, H, W = heat.shape
    k = heat.reshape(n, -1).argmax(1)
    pr = torch.stack([k // W, k % W], 1).float() - CENTRE_CELL
    return torch.linalg.norm(pr - truth, dim=1).numpy()


def evaluate(net: CorrASLSP, val: list[Pair]) -> dict:
    net.eval()
    errs = []
    with torch.no_grad():
        for i in range(0, len(val), 16):
            s, t, sv, tv, y = to_tensors(val[i:i + 16])
            errs.append(peak_errors(net(s, t, sv, tv), y))
    net.train()
    e = np.concatenate(errs)
    src = np.array([p.source for p in val])
    out = {"val_le1": float((e <= 1.0).mean()), "val_le3": float((e <= 3.0).mean())}
    for k in sorted(set(src)):
        out[f"le3_{k}"] = float((e[src == k] <= 3.0).mean())
    return out


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    run = RUNS / f"corrasl_{args.size}"
    net = CorrASLSP(args.size)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    step, extra = checkpoint.load(run / "checkpoint.pt", net, opt, rng)
    if step == 0 and args.init and Path(args.init).exists():
        # the committed checkpoint holds the whole training state (weights, optimiser, RNG, step), so a fresh
        # clone resumes where the last session stopped
        step, extra = checkpoint.load(Path(args.init), net, opt, rng)
    seconds = float(extra.get("seconds", 0.0))
    log = checkpoint.Log(run / "log.jsonl")
    mix = dict(DEFAULT_MIX)
    for kv in args.mix.split(",") if args.mix else []:
        k, v = kv.split("=")
        mix[k] = float(v)
    sources = build_sources(CACHE, tuple(k for k, v in mix.items() if v > 0), log=lambda m: print(m, flush=True))
    print(f"sources: {sorted(sources)}; resuming at step {step}", flush=True)
    vrng = np.random.default_rng(12345)   # fixed validation pairs from the training sources (monitoring only)
    val = sample_batch(sources, mix, args.val_pairs, vrng, augment=False)
    if step == 0:
        log(step=0, **evaluate(net, val))
    t_last = time.time()
    while step < args.steps:
        pairs = sample_batch(sources, mix, args.batch, rng)
        s, t, sv, tv, y = to_tensors(pairs)
        loss_each = heatmap_loss(net(s, t, sv, tv), y, net.log_temp)
        k = max(1, len(loss_each) // 2)
        hard = torch.topk(loss_each.detach(), k).indices
        loss = (loss_each.sum() + loss_each[hard].sum()) / (len(loss_each) + k)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        step += 1
        now = time.time()
        seconds += now - t_last
        t_last = now
        if step % args.log_every == 0:
            log(step=step, loss=float(loss), temp=float(torch.exp(net.log_temp)), seconds=round(seconds))
        if step % args.save_every == 0 or step == args.steps:
            ev = evaluate(net, val)
            log(step=step, **ev)
            t_last = time.time()
            meta = {"seconds": seconds, "size": args.size, "widths": SP_WIDTHS[args.size].to_dict(), "mix": mix,
                    "lr": args.lr, "batch": args.batch, **ev}
            checkpoint.save(run / "checkpoint.pt", net, opt, step, rng, meta)
            checkpoint.save(COMMITTED / f"corrasl_{args.size}.pt", net, opt, step, rng, meta)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=tuple(SP_WIDTHS), default="sp")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="", help="source weights, e.g. sim=0.2,srif=0.3")
    p.add_argument("--val-pairs", type=int, default=160)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--init", default=str(COMMITTED / "corrasl_sp.pt"),
                   help="training state to resume when no run checkpoint exists (the committed checkpoint)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.training.sp_train", description=__doc__.split("\n")[0])
    add_args(p)
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
