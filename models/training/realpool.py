"""The declared real fine-tuning data: the training split of ``s1s2_volkov`` as a ``PatchPool``.

``s1s2_volkov_split.json`` (committed) names the split: train = the southern-California fragments
(Sentinel-2 tiles T11SLT, T11SMT), test = the south-Texas fragments (T14RNT). Only the training side
is ever read here; the benchmark scores that set on the test side only.

Why the labels are refined: the dataset's co-registration is good to about ±3 px (an independent
check found a median residual of 2.6 px per pair, mostly along x), too loose to teach a ≤1 px
matcher. Each training fragment's residual shift is re-estimated as the median offset of many
structural-descriptor matches at zero offset (the classical matcher that is best on this set,
median of the consistent ones) and removed by resampling the optical image before it enters the
pool. Fragments where too few matches agree keep the published registration. Every correction is
recorded in the cache and in the model card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from .data import POOL_PX, PatchPool

SPLIT_FILE = Path(__file__).resolve().parent / "s1s2_volkov_split.json"
DATASET = "s1s2_volkov"
PATCH_STRIDE = 256
"""512 px pool patches every 256 px: 9 per 1024 px fragment (overlapping; crops are random anyway)."""
AGREE_PX = 4.0
MIN_AGREE = 8
REFINE_ROUNDS = 2


def load_split() -> dict:
    """{"train": [stems], "test": [stems], "rule": ...} — the committed declaration."""
    doc = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    if set(doc["train"]) & set(doc["test"]):
        raise ValueError(f"{SPLIT_FILE.name}: train and test overlap")
    return doc


def realdata_dir() -> Optional[Path]:
    from bench.realdata import realdata_root

    root = realdata_root()
    return root / DATASET if root is not None and (root / DATASET).is_dir() else None


def _unit_pair(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from bench.realdata import _opt_unit, _read_tif, _sar_unit

    sar, sv = _sar_unit(_read_tif(folder / f"{stem}_sar.tif")[0])
    opt, ov = _opt_unit(_read_tif(folder / f"{stem}_opt.tif"))
    return sar.astype(np.float32), opt.astype(np.float32), sv & ov


def residual_shift(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                   n: int = 60) -> tuple[np.ndarray, int]:
    """(drow, dcol) px where the optical content sits in the SAR, from structural matches at zero offset.

    Returns the median of the matches within ``AGREE_PX`` of the first median, and how many agreed;
    (0, 0) when fewer than ``MIN_AGREE`` did.
    """
    from bench.patches import pairs_from_coregistered
    from engine.matchers import get_matcher

    match = get_matcher("structural")
    pairs = pairs_from_coregistered(sar, opt, valid, n, rng, DATASET, DATASET)
    offs = []
    for p in pairs:
        m = match(p.search, p.template)
        offs.append(np.asarray(m.offset, float) - np.asarray(p.truth, float))
    if not offs:
        return np.zeros(2), 0
    o = np.array(offs)
    med = np.median(o, 0)
    near = np.hypot(*(o - med).T) <= AGREE_PX
    if near.sum() < MIN_AGREE:
        return np.zeros(2), int(near.sum())
    return np.median(o[near], 0), int(near.sum())


def build_real_pool(cache: Path, refine: bool = True, min_valid: float = 0.98) -> PatchPool:
    """512 px unit-range pool patches of the training fragments (label-refined), cached in ``cache``."""
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return PatchPool(z["sar"], z["opt"], list(z["info"]))
    folder = realdata_dir()
    if folder is None:
        raise FileNotFoundError(f"{DATASET} not found under ../shared/realdata: the real fine-tuning needs it")
    rng = np.random.default_rng(2024)
    sars, opts, infos = [], [], []
    for stem in load_split()["train"]:
        sar, opt, valid = _unit_pair(folder, stem)
        shift, agree = np.zeros(2), 0
        src = opt
        for _ in range(REFINE_ROUNDS if refine else 0):  # a second round removes what the first left
            step, n = residual_shift(sar, opt, valid, rng)
            if n < MIN_AGREE:
                break
            shift, agree = shift + step, n
            # optical content at p appears in the SAR at p + shift: move it there (one resampling of the source)
            opt = np.clip(ndimage.shift(src, shift, order=3, mode="nearest"), 0, 1).astype(np.float32)
        print(f"{stem}: residual shift ({shift[0]:+.2f}, {shift[1]:+.2f}) px from {agree} agreeing matches",
              flush=True)
        h, w = sar.shape
        for r in range(0, h - POOL_PX + 1, PATCH_STRIDE):
            for c in range(0, w - POOL_PX + 1, PATCH_STRIDE):
                if valid[r:r + POOL_PX, c:c + POOL_PX].mean() < min_valid:
                    continue
                sars.append(sar[r:r + POOL_PX, c:c + POOL_PX].astype(np.float16))
                opts.append(opt[r:r + POOL_PX, c:c + POOL_PX].astype(np.float16))
                infos.append({"source": DATASET, "stem": stem, "row": r, "col": c,
                              "label_shift_px": [float(shift[0]), float(shift[1])], "agreeing_matches": agree})
    pool = PatchPool(np.stack(sars), np.stack(opts), infos)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".part.npz")
    np.savez(tmp, sar=pool.sar, opt=pool.opt, info=np.array(infos, dtype=object))
    tmp.replace(cache)
    return pool


def label_shifts(pool: PatchPool) -> dict[str, dict]:
    """{stem: {"shift_px": [dr, dc], "agreeing": n}} as applied (for the model card)."""
    out: dict[str, dict] = {}
    for i in pool.info:
        out.setdefault(i["stem"], {"shift_px": i["label_shift_px"], "agreeing": i["agreeing_matches"]})
    return out
