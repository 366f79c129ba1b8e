"""Training pairs for the structural-prior CorrASL: simulated and real *training* splits, mixed per batch.

Sources (each a ``Source`` that cuts one (search 256, template 128, truth) pair in unit range):

* ``sim``: the project's simulator pool (``data.build_pool``; held-out benchmark seeds excluded);
* ``s1s2``: the declared training fragments of s1s2_volkov, labels refined per fragment (``realpool``);
* ``srif``: the training block of srif_aligned chips (``real_splits.json``), pixel-aligned, with masks;
* ``whu``: rows 0-599 of the WHU-OPT-SAR sample, its global residual shift refined like s1s2;
* ``lzk``: manual tie points of the six training tiles of airborne_lzk2211 (non-rigid scene: each point
  is its own truth), windows wholly left of the test column.

Why a mix: the simulator gives unlimited exact truth but is harder and unlike the real pairs (the
structural matcher scores 33 % <=3 px on simulated patches vs 82 % on srif); real pairs are few. The
weights (``DEFAULT_MIX``) put most of each batch on real pairs and keep the simulator as a regulariser.

Augmentation: speckle, blur, 8-bit quantisation for SAR; contrast/gamma, blur, JPEG-like block
quantisation, coarse dropout for both; small rotations (+-3 deg) and scale changes (+-3 %) of the optical
template, so residual affine distortion between the images is tolerated; left-right flips only (an
up-down flip turns the simulator's southern sun north).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from .data import _augment_common, _augment_sar

HERE = Path(__file__).resolve().parent
SPLITS = HERE / "real_splits.json"
SEARCH, TEMPLATE, MAX_OFFSET = 256, 128, 32
DEFAULT_MIX = {"sim": 0.2, "s1s2": 0.25, "srif": 0.25, "whu": 0.15, "lzk": 0.15}


@dataclass
class Pair:
    search: np.ndarray      # (256, 256) unit SAR
    template: np.ndarray    # (128, 128) unit optical
    s_valid: np.ndarray     # (256, 256) float 1/0
    t_valid: np.ndarray     # (128, 128)
    truth: np.ndarray       # (2,) (drow, dcol) of the template centre's content from the window centre
    source: str


def load_splits() -> dict:
    return json.loads(SPLITS.read_text(encoding="utf-8"))


def _template_at(opt: np.ndarray, r: float, c: float, rng: Optional[np.random.Generator], warp: bool) -> np.ndarray:
    """The 128 px optical template whose pixel (64, 64) shows optical content at (r, c) (sub-pixel), with
    an optional small rotation/scale about that centre (cubic resampling)."""
    t2 = TEMPLATE // 2
    ang = math.radians(rng.uniform(-3, 3)) if warp else 0.0
    sc = rng.uniform(0.97, 1.03) if warp else 1.0
    ca, sa = math.cos(ang) * sc, math.sin(ang) * sc
    m = np.array([[ca, -sa], [sa, ca]])
    off = np.array([r, c]) - m @ np.array([t2, t2], float)
    return ndimage.affine_transform(opt, m, off, output_shape=(TEMPLATE, TEMPLATE), order=3,
                                    mode="nearest").astype(np.float32)


def _cut_coregistered(sar, opt, valid, r0: int, c0: int, d: np.ndarray, rng, warp: bool) -> Optional[Pair]:
    s2 = SEARCH // 2
    h, w = sar.shape
    if not (s2 <= r0 <= h - s2 and s2 <= c0 <= w - s2):
        return None
    tr, tc = r0 + d[0], c0 + d[1]
    t2 = TEMPLATE // 2 + 3
    if not (t2 <= tr <= h - t2 and t2 <= tc <= w - t2):
        return None
    win = sar[r0 - s2:r0 + s2, c0 - s2:c0 + s2].astype(np.float32)
    sv = np.ones_like(win) if valid is None else valid[r0 - s2:r0 + s2, c0 - s2:c0 + s2].astype(np.float32)
    tpl = _template_at(opt, tr, tc, rng, warp)
    if valid is None:
        tv = np.ones_like(tpl)
    else:
        ri, ci = int(round(tr)), int(round(tc))
        tv = valid[ri - 64:ri + 64, ci - 64:ci + 64].astype(np.float32)
        if tv.shape != tpl.shape or tv.mean() < 0.95:
            return None
    if tpl.std() < 0.02 or sv.mean() < 0.6:
        return None
    return Pair(win, tpl, sv, tv, np.asarray(d, float), "")


class Coregistered:
    """Random windows over co-registered images (a list of (sar, opt, valid-or-None) arrays)."""

    def __init__(self, name: str, images: list, fixed_centre: bool = False) -> None:
        self.name, self.images, self.fixed_centre = name, images, fixed_centre

    def __call__(self, rng: np.random.Generator, augment: bool) -> Pair:
        for _ in range(200):
            sar, opt, valid = self.images[int(rng.integers(len(self.images)))]
            h, w = sar.shape
            if self.fixed_centre:
                r0, c0 = h // 2, w // 2
            else:
                r0 = int(rng.integers(SEARCH // 2, h - SEARCH // 2 + 1))
                c0 = int(rng.integers(SEARCH // 2, w - SEARCH // 2 + 1))
            d = rng.uniform(-MAX_OFFSET, MAX_OFFSET, 2)
            if rng.random() < 0.3:
                d = np.rint(d)
            p = _cut_coregistered(sar, opt, valid, r0, c0, d, rng, augment and rng.random() < 0.5)
            if p is not None:
                p.source = self.name
                return p
        raise RuntimeError(f"{self.name}: no valid training window found in 200 tries")


class TiePoints:
    """Pairs centred on manual tie points (optical point -> SAR point): the airborne set."""

    def __init__(self, name: str, sar: np.ndarray, opt: np.ndarray, points: np.ndarray) -> None:
        self.name, self.sar, self.opt, self.points = name, sar, opt, points

    def __call__(self, rng: np.random.Generator, augment: bool) -> Pair:
        s2 = SEARCH // 2
        h, w = self.sar.shape
        for _ in range(200):
            ox, oy, sx, sy = self.points[int(rng.integers(len(self.points)))]
            d = np.rint(rng.uniform(-MAX_OFFSET, MAX_OFFSET, 2))   # labels are integer pixels
            r0, c0 = int(round(sy - d[0])), int(round(sx - d[1]))
            if not (s2 <= r0 <= h - s2 and s2 <= c0 <= w - s2):
                continue
            win = self.sar[r0 - s2:r0 + s2, c0 - s2:c0 + s2].astype(np.float32)
            tpl = _template_at(self.opt, oy, ox, rng, augment and rng.random() < 0.5)
            truth = np.array([sy - r0, sx - c0], float)
            return Pair(win, tpl, np.ones_like(win), np.ones_like(tpl), truth, self.name)
        raise RuntimeError(f"{self.name}: no tie point fits a window")


def _real_root() -> Optional[Path]:
    from bench.realdata import realdata_root

    return realdata_root()


def build_sources(cache: Path, names: tuple[str, ...] = tuple(DEFAULT_MIX), sim_pool: int = 400,
                  log: Callable[[str], None] = print) -> dict[str, Callable]:
    """The training sources present here (real sets need ../shared/realdata); train sides only."""
    from bench.realdata import _lzk_mosaic, _opt_unit, _read_png, _read_tif, _sar_unit, lzk_points

    out: dict[str, Callable] = {}
    root = _real_root()
    sp = load_splits()
    if "sim" in names:
        from .data import build_pool

        pool = build_pool(1000, sim_pool, cache / f"pool_1000_{sim_pool}.npz")
        out["sim"] = Coregistered("sim", [(pool.sar[i].astype(np.float32), pool.opt[i].astype(np.float32), None)
                                          for i in range(len(pool))])
    if root is None:
        log("real data absent: training on the simulator only")
        return out
    if "s1s2" in names and (root / "s1s2_volkov").is_dir():
        from .realpool import build_real_pool

        pool = build_real_pool(cache / "real_s1s2_volkov.npz")
        out["s1s2"] = Coregistered("s1s2", [(pool.sar[i].astype(np.float32), pool.opt[i].astype(np.float32), None)
                                            for i in range(len(pool))])
    if "srif" in names and (root / "srif_aligned").is_dir():
        d = root / "srif_aligned"
        imgs = []
        for i in sp["srif_aligned"]["train"]:
            m = _read_png(d / f"{i}_mask.png")
            m = (m if m.ndim == 2 else m[0]) > 0
            s, sv = _sar_unit(_read_png(d / f"{i}_sar.png"))
            o, ov = _opt_unit(_read_png(d / f"{i}_opt.png"))
            v = m & sv & ov
            if v.mean() >= 0.6:
                imgs.append((np.where(v, s, 0.0).astype(np.float32), o.astype(np.float32), v))
        out["srif"] = Coregistered("srif", imgs, fixed_centre=True)
    if "whu" in names and (root / "whu_opt_sar_sample").is_dir():
        d = root / "whu_opt_sar_sample"
        a, b = sp["whu_opt_sar_sample"]["train_rows"]
        s, sv = _sar_unit(_read_tif(d / "sar_WHU-OPT-SAR.tif")[0])
        o, ov = _opt_unit(_read_tif(d / "optical_WHU-OPT-SAR.tif"))
        s, o, v = s[a:b].astype(np.float32), o[a:b].astype(np.float32), (sv & ov)[a:b]
        shift = whu_label_shift(s, o, v)
        log(f"whu: label shift ({shift[0]:+.2f}, {shift[1]:+.2f}) px")
        o = np.clip(ndimage.shift(o, shift, order=3, mode="nearest"), 0, 1).astype(np.float32)
        out["whu"] = Coregistered("whu", [(s, o, v)])
    if "lzk" in names and (root / "airborne_lzk2211").is_dir():
        lim = sp["airborne_lzk2211"]["train_max_x"]
        pts = lzk_points(root)
        keep = (pts[:, 0] + 64 < lim) & (pts[:, 2] + SEARCH // 2 + MAX_OFFSET < lim)
        s, _ = _sar_unit(_lzk_mosaic(root, "SAR"))
        o, _ = _opt_unit(_lzk_mosaic(root, "OPT"))
        # the test column is blanked so that no training window can ever see it
        s, o = s.astype(np.float32).copy(), o.astype(np.float32).copy()
        s[:, lim:] = 0.0
        o[:, lim:] = 0.0
        out["lzk"] = TiePoints("lzk", s, o, pts[keep])
    return out


def whu_label_shift(sar: np.ndarray, opt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Global residual shift of the (assumed co-registered) WHU training rows, two rounds of the s1s2
    refinement (median of agreeing structural matches)."""
    from .realpool import MIN_AGREE, residual_shift

    rng = np.random.default_rng(7)
    total = np.zeros(2)
    cur = opt
    for _ in range(2):
        step, n = residual_shift(sar, cur, valid, rng, n=80)
        if n < MIN_AGREE:
            break
        total = total + step
        cur = np.clip(ndimage.shift(opt, total, order=3, mode="nearest"), 0, 1)
    return total


def augment_pair(p: Pair, rng: np.random.Generator) -> Pair:
    s = _augment_common(_augment_sar(p.search.copy(), rng), rng)
    t = _augment_common(p.template.copy(), rng)
    if rng.random() < 0.2:   # JPEG-like: 8x8 block means mixed back in (blocking artefacts)
        h, w = t.shape
        blk = t.reshape(h // 8, 8, w // 8, 8).mean((1, 3))
        t = 0.7 * t + 0.3 * np.kron(blk, np.ones((8, 8), np.float32))
    if rng.random() < 0.5:   # left-right flip of both (keeps the sun's side)
        s, t = s[:, ::-1], t[:, ::-1]
        sv, tv = p.s_valid[:, ::-1], p.t_valid[:, ::-1]
        # even sizes: the window centre 128 mirrors to 127 and the template centre 64 to 63, and the two
        # one-pixel moves cancel: the column offset just changes sign
        truth = np.array([p.truth[0], -p.truth[1]])
        return Pair(np.ascontiguousarray(s), np.ascontiguousarray(t), np.ascontiguousarray(sv),
                    np.ascontiguousarray(tv), truth, p.source)
    return Pair(s, t, p.s_valid, p.t_valid, p.truth, p.source)


def sample_batch(sources: dict, mix: dict, n: int, rng: np.random.Generator, augment: bool = True) -> list[Pair]:
    names = [k for k in mix if k in sources]
    w = np.array([mix[k] for k in names], float)
    w /= w.sum()
    picks = rng.choice(len(names), size=n, p=w)
    out = []
    for k in picks:
        p = sources[names[k]](rng, augment)
        out.append(augment_pair(p, rng) if augment else p)
    return out
