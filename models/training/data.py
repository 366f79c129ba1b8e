"""Training data for the three networks, drawn from the project's own simulator.

Why a patch *pool*: rendering a 512 px simulated pair takes ~0.2 s, a training step on CPU several
seconds; each pooled pair yields many distinct training pairs through random crops, true offsets,
flips and the augmentations below, so the pool is rendered once (in parallel) and cached.

Conventions shared with the engine (recorded in the ONNX metadata):
* SAR: linear sigma0 -> dB -> robust 1-99 % stretch to [0, 1] (``engine.preprocess.sar_to_unit``);
* optical: luminance -> robust 1-99 % stretch to [0, 1] (``optical_to_gray`` + ``optical_to_unit``);
* network input = (unit - 0.5) * 4, a fixed affine map, so features of a large region equal the
  features of the patches cut from it (the engine computes SAR features once per region).

Held-out benchmark seeds (``bench.heldout``) are never rendered here.
"""
from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from bench.heldout import is_heldout
from engine.preprocess import optical_to_gray, optical_to_unit, sar_to_unit
from engine.simulate.params import SceneParams
from engine.simulate.patches import random_params, render_patch

from .nets import CELL_PX, CENTRE_CELL, SEARCH_PX, TEMPLATE_PX

POOL_PX = 512
INPUT_CENTRE = 0.5
INPUT_SCALE = 4.0


def to_input(unit: np.ndarray) -> np.ndarray:
    """Unit-range image -> network input (the fixed affine map in the module docstring)."""
    return ((unit.astype(np.float32) - INPUT_CENTRE) * INPUT_SCALE).astype(np.float32)


def _render(seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng([seed, 4242])
    sp, op, sar = random_params(rng, size=POOL_PX)
    scene_seed = sp.seed
    while is_heldout(scene_seed):
        scene_seed = int(rng.integers(0, 2**31 - 1))
    sp = SceneParams(size=POOL_PX, gsd=sp.gsd, kind=sp.kind, seed=scene_seed)
    pp = render_patch(sp, op, sar, rng)
    s, _ = sar_to_unit(pp.sar, scale="linear")
    o, _ = optical_to_unit(optical_to_gray(pp.optical))
    info = {"seed": seed, "scene_seed": scene_seed, "kind": sp.kind, "gsd": sp.gsd,
            "incidence": sar.incidence, "bands": op.bands}
    return s.astype(np.float16), o.astype(np.float16), info


@dataclass
class PatchPool:
    """Co-registered unit-range SAR/optical patches (N, 512, 512) float16 and their parameters."""
    sar: np.ndarray
    opt: np.ndarray
    info: list

    def __len__(self) -> int:
        return len(self.sar)


def build_pool(first_seed: int, n: int, cache: Optional[Path] = None, workers: int = 2) -> PatchPool:
    """Render (or load from ``cache``) ``n`` pool pairs with seeds first_seed..first_seed+n-1."""
    seeds = [s for s in range(first_seed, first_seed + n)]
    if any(is_heldout(s) for s in seeds):
        raise ValueError("pool seeds overlap the held-out benchmark block")
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=True)
        if len(z["sar"]) == n and int(z["first_seed"]) == first_seed:
            return PatchPool(z["sar"], z["opt"], list(z["info"]))
    with Pool(workers) as p:
        out = p.map(_render, seeds, chunksize=4)
    pool = PatchPool(np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), [o[2] for o in out])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".part.npz")
        np.savez(tmp, sar=pool.sar, opt=pool.opt, info=np.array(pool.info, dtype=object),
                 first_seed=first_seed)
        tmp.replace(cache)
    return pool


# ---------------------------------------------------------------- augmentation (narrows the real gap)

def _augment_sar(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.4:  # extra speckle in dB: multiplicative gamma noise of 1..4 looks
        looks = rng.integers(1, 5)
        x = x + (10 * np.log10(rng.gamma(looks, 1 / looks, x.shape)) / 40.0).astype(np.float32)
    if rng.random() < 0.3:
        x = ndimage.gaussian_filter(x, rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:  # 8-bit display product (like s1s2_volkov's SAR)
        x = np.round(np.clip(x, 0, 1) * 255) / 255
    return x


def _augment_common(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:  # contrast / brightness / gamma
        x = np.clip(x, 0, 1) ** rng.uniform(0.6, 1.6)
        x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.2:
        x = ndimage.gaussian_filter(x, rng.uniform(0.5, 2.0))
    if rng.random() < 0.25:  # coarse dropout: a few blocks replaced by the mean
        h, w = x.shape
        for _ in range(rng.integers(1, 4)):
            bh, bw = rng.integers(h // 10, h // 4, 2)
            r, c = rng.integers(0, h - bh), rng.integers(0, w - bw)
            x[r:r + bh, c:c + bw] = x.mean()
    return x.astype(np.float32)


# ---------------------------------------------------------------- CorrASL pairs

@dataclass
class CorrBatch:
    search: np.ndarray    # (N, 1, 256, 256) network input
    template: np.ndarray  # (N, 1, 128, 128)
    offset: np.ndarray    # (N, 2) true (drow, dcol) px of the template centre from the window centre
    cell: np.ndarray      # (N, 2) heatmap coordinates of the truth
    index: np.ndarray     # (N,) pool index


def offset_to_cell(offset: np.ndarray) -> np.ndarray:
    """True (drow, dcol) px -> fractional heatmap cell (see nets.CELL_PX, nets.CENTRE_CELL)."""
    return CENTRE_CELL + np.asarray(offset, np.float64) / CELL_PX


def cell_to_offset(cell: np.ndarray) -> np.ndarray:
    return (np.asarray(cell, np.float64) - CENTRE_CELL) * CELL_PX


def sample_corr(pool: PatchPool, rng: np.random.Generator, n: int, max_offset: int = 32,
                augment: bool = True, indices: Optional[np.ndarray] = None, flips: str = "hv") -> CorrBatch:
    """Random (search, template, truth) pairs: the template centre lies ``offset`` from the window's.

    ``flips``: "hv" mirrors left-right and up-down at random, "h" left-right only. Why "h" exists:
    an up-down flip turns the simulator's southern sun into a northern one, so the network cannot
    learn which way shadows fall (a systematic sub-pixel bias measured by ``calibrate``); a left-right
    flip keeps the sun in the south.
    """
    S, T = SEARCH_PX, TEMPLATE_PX
    searches, templates, offs, idxs = [], [], [], []
    for k in range(n):
        i = int(indices[k]) if indices is not None else int(rng.integers(len(pool)))
        sar = pool.sar[i].astype(np.float32)
        opt = pool.opt[i].astype(np.float32)
        if augment and "h" in flips and rng.random() < 0.5:
            sar, opt = sar[:, ::-1], opt[:, ::-1]
        if augment and "v" in flips and rng.random() < 0.5:
            sar, opt = sar[::-1], opt[::-1]
        d = rng.integers(-max_offset, max_offset + 1, 2)
        r0, c0 = rng.integers(0, POOL_PX - S + 1, 2)
        # keep the template inside the pool patch
        tr, tc = r0 + (S - T) // 2 + d[0], c0 + (S - T) // 2 + d[1]
        tr, tc = np.clip(tr, 0, POOL_PX - T), np.clip(tc, 0, POOL_PX - T)
        d = np.array([tr - r0 - (S - T) // 2, tc - c0 - (S - T) // 2])
        s = np.ascontiguousarray(sar[r0:r0 + S, c0:c0 + S])
        t = np.ascontiguousarray(opt[tr:tr + T, tc:tc + T])
        if augment:
            s = _augment_common(_augment_sar(s, rng), rng)
            t = _augment_common(t, rng)
        searches.append(to_input(s))
        templates.append(to_input(t))
        offs.append(d)
        idxs.append(i)
    off = np.array(offs, np.float64)
    return CorrBatch(np.stack(searches)[:, None], np.stack(templates)[:, None], off, offset_to_cell(off),
                     np.array(idxs))


def split_pool(n: int, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of pool indices (validation = every k-th patch)."""
    k = max(2, int(round(1 / val_fraction)))
    idx = np.arange(n)
    return idx[idx % k != 0], idx[idx % k == 0]


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hypot(*(np.asarray(a) - np.asarray(b)).T)




def concat_batches(a: CorrBatch, b: CorrBatch) -> CorrBatch:
    """One batch of both (e.g. simulated + real pairs)."""
    return CorrBatch(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                       ("search", "template", "offset", "cell", "index")))
