"""Real SAR-optical pairs from ``shared/realdata`` (read in place, never copied into the repo).

Each set has its own kind of ground truth (see that folder's README.md), so each gets its own test:

* ``s1s2_volkov`` (Sentinel-1 VH / Sentinel-2, 10 m, co-registered to about ±3 px): patch pairs with
  synthetic known offsets; scored at <=1 px and at loose thresholds because the labels are loose. Only
  the declared *test* split (``models/training/s1s2_volkov_split.json``: the south-Texas fragments) is
  scored, for every method, because the fine-tuned networks trained on the other fragments.
* ``srif_aligned`` (≈1 m chips, pixel-aligned, with masks): the 256² SAR chip is the search window,
  the template is cut from the optical chip at a known offset; templates over masked pixels skipped.
* ``airborne_lzk2211`` (airborne, not co-registered): the 3x3 tiles are mosaicked and each manual
  tie point gives the truth: template centred on the optical point, search window centred at the
  SAR point minus a known integer offset (labels are integer pixels).
* ``whu_opt_sar_sample`` (GF-1 / GF-3, 5 m, assumed co-registered, unverified): patch pairs.
* ``gf3_worldview_ossift`` (no ground truth, ≈76 px real offset): whole-pair run, recovered offset
  per method and agreement between methods (see ``bench.scenes.run_real_scene``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .patches import SEARCH, TEMPLATE, PatchPair, cut_pair, pairs_from_coregistered, random_offsets

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def realdata_root() -> Optional[Path]:
    """``$SAROPT_REALDATA`` or ../shared/realdata next to the repo; None (and the tests skip) if absent."""
    p = Path(os.environ.get("SAROPT_REALDATA", DEFAULT_ROOT))
    return p if p.is_dir() else None


def _sar_unit(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from engine.preprocess import sar_to_unit

    if a.ndim == 3:  # PNG SAR stored as grey RGB
        a = a.astype(np.float64).mean(axis=0)
    return sar_to_unit(a, scale="auto")


def _opt_unit(a: np.ndarray, valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    from engine.preprocess import optical_to_gray, optical_to_unit

    return optical_to_unit(optical_to_gray(a), valid)


def _read_tif(path: Path) -> np.ndarray:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning for the WHU sample
        with rasterio.open(path) as ds:
            return ds.read()


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(path))
    return np.moveaxis(a, -1, 0) if a.ndim == 3 else a


# ------------------------------------------------------------------------------------------------
# Task lists (what to cut) and pair builders (run inside worker processes)
# ------------------------------------------------------------------------------------------------

VOLKOV_SPLIT = Path(__file__).resolve().parents[1] / "models" / "training" / "s1s2_volkov_split.json"


def volkov_stems(root: Path) -> list[str]:
    """The fragments of the declared test split that are present (never the fine-tuning ones)."""
    import json

    test = set(json.loads(VOLKOV_SPLIT.read_text(encoding="utf-8"))["test"])
    return sorted(n for n in (p.name[:-len("_sar.tif")] for p in (root / "s1s2_volkov").glob("*_sar.tif")) if n in test)


REAL_SPLITS = Path(__file__).resolve().parents[1] / "models" / "training" / "real_splits.json"
"""Declared train/test splits of srif_aligned, airborne_lzk2211 and whu_opt_sar_sample (committed before
any training on them); the benchmark reads the test sides only."""


def real_splits() -> dict:
    import json

    return json.loads(REAL_SPLITS.read_text(encoding="utf-8"))


def srif_ids(root: Path) -> list[str]:
    """The srif_aligned chips of the declared test split that are present."""
    test = set(real_splits()["srif_aligned"]["test"])
    return sorted((n for n in (p.name[:-len("_sar.png")] for p in (root / "srif_aligned").glob("*_sar.png"))
                   if n in test), key=int)


def lzk_test_range(root: Path) -> tuple[int, int]:
    """(first, end) rows of ``lzk_points`` in the declared test column (optical x >= test_min_x)."""
    pts = lzk_points(root)
    test = np.flatnonzero(pts[:, 0] >= real_splits()["airborne_lzk2211"]["test_min_x"])
    return int(test.min()), int(test.max()) + 1


def lzk_points(root: Path) -> np.ndarray:
    """(N, 4) manual tie points (opt_x, opt_y, sar_x, sar_y) on the 3x3 mosaic (1476² px)."""
    lines = (root / "airborne_lzk2211" / "Label" / "tile_all_points.csv").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ID"))
    a = np.loadtxt(io.StringIO("\n".join(lines[start + 1:])), delimiter=",", ndmin=2)
    return a[:, 1:5]


def _lzk_mosaic(root: Path, which: str) -> np.ndarray:
    """tile_{x}_{y}.png placed at column x, row y (checked against tile_all_points.csv)."""
    d = root / "airborne_lzk2211" / which
    tiles = {}
    for p in d.glob("tile_*_*.png"):
        x, y = (int(v) for v in p.stem.split("_")[1:3])
        tiles[(x, y)] = _read_png(p)
    b = next(iter(tiles.values()))
    th, tw = b.shape[-2:]
    w = max(x for x, _ in tiles) + tw
    h = max(y for _, y in tiles) + th
    out = np.zeros((b.shape[0], h, w), dtype=b.dtype)
    for (x, y), t in tiles.items():
        out[:, y:y + th, x:x + tw] = t
    return out


def build_real_pairs(loader: str, arg, n_pairs: int, rng: np.random.Generator) -> list[PatchPair]:
    root = realdata_root()
    if root is None:
        raise FileNotFoundError("real data folder not found")
    if loader in ("s1s2_volkov", "whu_opt_sar_sample"):
        if loader == "s1s2_volkov":
            sar_raw = _read_tif(root / loader / f"{arg}_sar.tif")[0]
            opt_raw = _read_tif(root / loader / f"{arg}_opt.tif")
        else:
            sar_raw = _read_tif(root / loader / "sar_WHU-OPT-SAR.tif")[0]
            opt_raw = _read_tif(root / loader / "optical_WHU-OPT-SAR.tif")
        sar, sv = _sar_unit(sar_raw)
        opt, ov = _opt_unit(opt_raw)
        valid = sv & ov
        if loader == "whu_opt_sar_sample":  # the declared test rows only (windows never cross into training rows)
            a, b = real_splits()["whu_opt_sar_sample"]["test_rows"]
            sar, opt, valid = sar[a:b], opt[a:b], valid[a:b]
        return pairs_from_coregistered(sar, opt, valid, n_pairs, rng, loader, loader)
    if loader == "srif_aligned":
        return _srif_pairs(root, str(arg), n_pairs, rng)
    if loader == "airborne_lzk2211":
        return _lzk_pairs(root, arg, rng)
    raise ValueError(f"unknown real-data loader {loader!r}")


def _srif_pairs(root: Path, i: str, n_pairs: int, rng: np.random.Generator) -> list[PatchPair]:
    d = root / "srif_aligned"
    mask = _read_png(d / f"{i}_mask.png")
    mask = (mask if mask.ndim == 2 else mask[0]) > 0
    sar, sv = _sar_unit(_read_png(d / f"{i}_sar.png"))
    opt, ov = _opt_unit(_read_png(d / f"{i}_opt.png"))
    valid = mask & sv & ov
    sar = np.where(valid, sar, 0.0)
    out: list[PatchPair] = []
    c, t2 = SEARCH // 2, TEMPLATE // 2
    chip_valid = valid.mean() >= 0.6
    for d_off in random_offsets(rng, 8 * n_pairs):
        if len(out) >= n_pairs:
            break
        win, tpl = cut_pair(sar, opt, c, c, d_off)
        ri, ci = c + int(np.floor(d_off[0])), c + int(np.floor(d_off[1]))
        if not chip_valid or valid[ri - t2:ri + t2, ci - t2:ci + t2].mean() < 0.95 or tpl.std() < 0.02:
            continue
        out.append(PatchPair(win, tpl, (float(d_off[0]), float(d_off[1])), "srif_aligned", "srif_aligned"))
    return out


def _lzk_pairs(root: Path, idx: tuple[int, int], rng: np.random.Generator) -> list[PatchPair]:
    """Pairs for tie points idx[0]:idx[1] (integer offsets: the labels are integer pixels)."""
    pts = lzk_points(root)[idx[0]:idx[1]]
    pts = pts[pts[:, 0] >= real_splits()["airborne_lzk2211"]["test_min_x"]]   # declared test column only
    sar, _ = _sar_unit(_lzk_mosaic(root, "SAR"))
    opt, _ = _opt_unit(_lzk_mosaic(root, "OPT"))
    h, w = sar.shape
    s2, t2 = SEARCH // 2, TEMPLATE // 2
    offs = np.rint(random_offsets(rng, len(pts), subpixel_frac=0.0))
    out: list[PatchPair] = []
    for (ox, oy, sx, sy), d in zip(pts, offs):
        ri, ci = int(round(oy)), int(round(ox))
        r0, c0 = int(round(sy - d[0])), int(round(sx - d[1]))
        if not (s2 <= r0 <= h - s2 and s2 <= c0 <= w - s2 and t2 <= ri <= h - t2 and t2 <= ci <= w - t2):
            continue
        win = sar[r0 - s2:r0 + s2, c0 - s2:c0 + s2]
        tpl = opt[ri - t2:ri + t2, ci - t2:ci + t2]
        truth = (float(sy - r0), float(sx - c0))
        out.append(PatchPair(np.ascontiguousarray(win, np.float32), np.ascontiguousarray(tpl, np.float32),
                             truth, "airborne_lzk2211", "airborne_lzk2211"))
    return out


def real_patch_tasks(mode_full: bool, methods: tuple[str, ...]):
    """PatchTasks for every co-registered real set present; plus a list of skip messages."""
    from .patches import PatchTask

    root = realdata_root()
    if root is None:
        return [], [f"real data folder not found ({DEFAULT_ROOT}); real-data tests skipped"]
    tasks: list = []
    notes: list[str] = []
    sets = {
        "s1s2_volkov": (lambda: volkov_stems(root), 16 if mode_full else 2, None if mode_full else 15),
        "srif_aligned": (lambda: srif_ids(root), 2 if mode_full else 1, None if mode_full else 30),
        "whu_opt_sar_sample": (lambda: ["sample"], 100 if mode_full else 20, None),
    }
    for name, (lister, per, limit) in sets.items():
        if not (root / name).is_dir():
            notes.append(f"{name}: folder absent, skipped")
            continue
        items = lister()
        if limit:
            items = items[:: max(1, len(items) // limit)][:limit]
        tasks += [PatchTask(name, it, per, methods) for it in items]
    if (root / "airborne_lzk2211").is_dir():
        first, end = lzk_test_range(root)
        n = end - first
        if not mode_full:
            n = min(n, 80)
        step = max(1, (n + 3) // 4)
        tasks += [PatchTask("airborne_lzk2211", (first + a, first + min(a + step, n)), step, methods)
                  for a in range(0, n, step)]
    else:
        notes.append("airborne_lzk2211: folder absent, skipped")
    return tasks, notes


GF3_DIR = "gf3_worldview_ossift"


def gf3_paths() -> Optional[tuple[str, str]]:
    """(SAR, optical) of the GF-3 / WorldView pair, or None when absent."""
    root = realdata_root()
    if root is None or not (root / GF3_DIR).is_dir():
        return None
    files = sorted((root / GF3_DIR).glob("*.tif*"))
    sar = [f for f in files if f.name.startswith("GF3")]
    opt = [f for f in files if not f.name.startswith("GF3")]
    if not sar or not opt:
        return None
    return str(sar[0]), str(opt[0])
