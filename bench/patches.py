"""Patch test of Hughes' thesis ch. 5: 256x256 SAR search windows vs 128x128 optical templates.

Each test pair is cut from a co-registered SAR/optical pair (a held-out simulated scene, or a real
co-registered pair) so that the template's centre content lies at a known offset of up to ±32 px
from the window centre; half of the offsets are integers, half sub-pixel (the template is resampled
with a cubic spline for the fractional part, so the SAR, the reference, is never interpolated).

The work is split into *tasks* (one scene or one real image each) that build their pairs and run
every method on them inside a worker process: pairs never travel between processes, only the small
per-pair records do, so the two cores are used without copying hundreds of MB of windows around.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

SEARCH = 256
TEMPLATE = 128
MAX_OFFSET = 32


@dataclass
class PatchPair:
    search: np.ndarray
    template: np.ndarray
    truth: tuple[float, float]
    """True (drow, dcol) of the template centre's content relative to the window centre."""
    source: str
    kind: str


@dataclass
class PairRecord:
    """What one pair produced for every method (no images: cheap to send between processes)."""

    source: str
    kind: str
    truth: tuple[float, float]
    offsets: dict[str, tuple[float, float]] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    keep: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def random_offsets(rng: np.random.Generator, n: int, max_offset: float = MAX_OFFSET,
                   subpixel_frac: float = 0.5) -> np.ndarray:
    """(n, 2) true offsets, uniform in [-max, max]; the first ``subpixel_frac`` of them fractional."""
    d = rng.uniform(-max_offset, max_offset, size=(n, 2))
    n_int = n - int(round(n * subpixel_frac))
    d[:n_int] = np.clip(np.rint(d[:n_int]), -max_offset, max_offset)
    return d[rng.permutation(n)]


def cut_pair(sar: np.ndarray, opt: np.ndarray, r0: int, c0: int, d: Sequence[float],
             search: int = SEARCH, template: int = TEMPLATE) -> tuple[np.ndarray, np.ndarray]:
    """Search window centred (index size//2) at (r0, c0) and template whose centre content is at +d.

    The template is cut around (r0 + floor(d)); its fractional part f is applied by resampling the
    optical so that template pixel k shows optical content at k + f. Co-registered inputs, so that
    content sits in the SAR at r0 + d, i.e. at offset d from the window centre.
    """
    s2, t2 = search // 2, template // 2
    win = sar[r0 - s2:r0 + s2, c0 - s2:c0 + s2]
    fr, fc = float(d[0]) - math.floor(d[0]), float(d[1]) - math.floor(d[1])
    ri, ci = r0 + int(math.floor(d[0])), c0 + int(math.floor(d[1]))
    if fr == 0.0 and fc == 0.0:
        tpl = opt[ri - t2:ri + t2, ci - t2:ci + t2]
    else:
        m = 4
        crop = np.asarray(opt[ri - t2 - m:ri + t2 + m, ci - t2 - m:ci + t2 + m], dtype=np.float64)
        crop = ndimage.shift(crop, (-fr, -fc), order=3, mode="nearest")
        tpl = np.clip(crop[m:-m, m:-m], 0.0, 1.0)
    if win.shape != (search, search) or tpl.shape != (template, template):
        raise ValueError(f"pair at ({r0}, {c0}) + {tuple(d)} does not fit the image {sar.shape}")
    return np.ascontiguousarray(win, np.float32), np.ascontiguousarray(tpl, np.float32)


def pairs_from_coregistered(sar: np.ndarray, opt: np.ndarray, valid: Optional[np.ndarray], n: int,
                            rng: np.random.Generator, source: str, kind: str,
                            min_valid: float = 0.98, min_std: float = 0.02) -> list[PatchPair]:
    """Up to ``n`` pairs at random window centres where everything is valid and not flat.

    Flat optical templates (water, empty fields) are skipped like the thesis's sampler does: no
    area-based method can be right there and they would only measure the prior.
    """
    h, w = sar.shape
    margin = SEARCH // 2 + 1
    if h < 2 * margin + 1 or w < 2 * margin + 1:
        return []
    offsets = random_offsets(rng, n)
    out: list[PatchPair] = []
    tries = 0
    k = 0
    while k < n and tries < 20 * n:
        tries += 1
        r0 = int(rng.integers(margin, h - margin))
        c0 = int(rng.integers(margin, w - margin))
        d = offsets[k]
        if valid is not None:
            v = valid[r0 - SEARCH // 2:r0 + SEARCH // 2, c0 - SEARCH // 2:c0 + SEARCH // 2]
            if v.mean() < min_valid:
                continue
        win, tpl = cut_pair(sar, opt, r0, c0, d)
        if not (np.isfinite(win).all() and np.isfinite(tpl).all()) or tpl.std() < min_std:
            continue
        out.append(PatchPair(win, tpl, (float(d[0]), float(d[1])), source, kind))
        k += 1
    return out


def evaluate_pairs(pairs: Iterable[PatchPair], methods) -> list[PairRecord]:
    """Run every method on every pair, timing each call (single-threaded, inside this process)."""
    recs: list[PairRecord] = []
    for p in pairs:
        rec = PairRecord(p.source, p.kind, p.truth)
        for m in methods:
            t0 = time.perf_counter()
            out = m.fn(p.search, p.template)
            rec.seconds[m.name] = time.perf_counter() - t0
            rec.offsets[m.name] = (float(out.offset[0]), float(out.offset[1]))
            rec.quality[m.name] = float(out.quality)
            rec.keep[m.name] = bool(out.keep)
            if out.error:
                rec.errors[m.name] = out.error
        recs.append(rec)
    return recs


# ------------------------------------------------------------------------------------------------
# Tasks (run in worker processes)
# ------------------------------------------------------------------------------------------------

_METHODS_CACHE: dict[tuple, list] = {}


def _methods(names: tuple[str, ...]):
    if names not in _METHODS_CACHE:
        from .methods import available_methods

        _METHODS_CACHE[names] = available_methods(list(names))[0]
    return _METHODS_CACHE[names]


@dataclass
class PatchTask:
    """One unit of work: a pair source plus how many pairs to cut from it."""

    loader: str
    """'sim' or a real-data set name (see bench.realdata.LOADERS)."""
    arg: object
    """Seed (sim) or file stem / path (real)."""
    n_pairs: int
    methods: tuple[str, ...]
    kind: str = ""
    size: int = 1024
    """Simulated scene size (px)."""


def run_task(task: PatchTask) -> tuple[list[PairRecord], str]:
    """Build the task's pairs and evaluate all methods; returns (records, error message or '')."""
    try:
        pairs = build_pairs(task)
    except Exception as exc:
        return [], f"{task.loader}:{task.arg}: {type(exc).__name__}: {exc}"
    return evaluate_pairs(pairs, _methods(task.methods)), ""


def build_pairs(task: PatchTask) -> list[PatchPair]:
    rng = np.random.default_rng(_task_seed(task))
    if task.loader == "sim":
        from .simsource import coregistered_scene

        sar, opt, valid = coregistered_scene(int(task.arg), task.kind, task.size)
        return pairs_from_coregistered(sar, opt, valid, task.n_pairs, rng, "simulated", task.kind)
    from .realdata import build_real_pairs

    return build_real_pairs(task.loader, task.arg, task.n_pairs, rng)


def _task_seed(task: PatchTask) -> int:
    from .heldout import OFFSET_SEED

    if task.loader == "sim":
        return int(task.arg)
    return OFFSET_SEED + _stable_hash(f"{task.loader}:{task.arg}")


def _stable_hash(s: str) -> int:
    """Process-independent small hash (Python's str hash is salted per process)."""
    import zlib

    return zlib.crc32(s.encode()) % 50_000


def run_tasks(tasks: list[PatchTask], jobs: int = 2,
              progress: Optional[Callable[[int, int], None]] = None) -> tuple[list[PairRecord], list[str]]:
    """Run tasks on ``jobs`` processes (1 = in-process, easier to debug); keeps task order."""
    records: list[PairRecord] = []
    errors: list[str] = []

    def collect(results: Iterable[tuple[list[PairRecord], str]]) -> None:
        for i, (recs, err) in enumerate(results):
            records.extend(recs)
            if err:
                errors.append(err)
            if progress:
                progress(i + 1, len(tasks))

    if jobs <= 1:
        collect(map(run_task, tasks))
        return records, errors
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(jobs, initializer=_worker_init, maxtasksperchild=20) as pool:
        collect(pool.imap(run_task, tasks))
    return records, errors


def _worker_init() -> None:
    """One thread per worker: the pool already uses every core, and timings stay per core."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------

def errors_of(records: list[PairRecord], method: str) -> np.ndarray:
    """L2 errors (px) of one method over the records (NaN where it gave no answer)."""
    from .metrics import l2_errors

    if not records:
        return np.zeros(0)
    pred = np.array([r.offsets.get(method, (math.nan, math.nan)) for r in records], float)
    truth = np.array([r.truth for r in records], float)
    return l2_errors(pred, truth)


def summarise(records: list[PairRecord], methods: list[str], loose: tuple[float, ...] = (5.0, 32.0)) -> dict:
    """Thesis metrics per method: all pairs, after each method's own filter, and per scene kind.

    ``loose`` adds "% within t" columns: 5 px for the ±3 px-labelled sets, and 32 px, the support of
    the mAP (a method with few matches within 32 px can have a small mAP; this shows how few).
    """
    from collections import Counter

    from .metrics import patch_metrics, within

    out: dict = {"n_pairs": len(records), "all": {}, "kept": {}, "by_kind": {}, "failures": {},
                 "mean_ms": {}}
    for m in methods:
        e = errors_of(records, m)
        d = patch_metrics(e).to_dict()
        for t in loose:
            d[f"within_{t:g}px"] = within(e, t)
        out["all"][m] = d
        keep = np.array([r.keep.get(m, False) for r in records], bool)
        out["kept"][m] = patch_metrics(e, keep).to_dict() if len(records) else {}
        secs = [r.seconds[m] for r in records if m in r.seconds]
        out["mean_ms"][m] = float(np.mean(secs) * 1000) if secs else math.nan
        out.setdefault("bias", {})[m] = _bias(records, m)
        errs = Counter(r.errors[m] for r in records if m in r.errors)
        if errs:
            out["failures"][m] = {"n": int(sum(errs.values())), "top": errs.most_common(3)}
    kinds = sorted({r.kind for r in records})
    if len(kinds) > 1:
        for k in kinds:
            sub = [r for r in records if r.kind == k]
            out["by_kind"][k] = {m: patch_metrics(errors_of(sub, m)).to_dict() for m in methods}
            out["by_kind"][k]["n_pairs"] = len(sub)
    return out


def records_to_json(records: list[PairRecord]) -> list[dict]:
    """Per-pair results (no images) for re-analysis without rerunning the methods."""
    from dataclasses import asdict

    return [asdict(r) for r in records]


def _bias(records: list[PairRecord], method: str, within_px: float = 5.0) -> dict:
    """Median signed error (drow, dcol) over the near-correct matches (<= 5 px).

    Why: a systematic offset (e.g. SAR layover of trees and buildings pulling the match towards the
    sensor, or a half-pixel convention slip) caps the <= 1 px accuracy while <= 3 px stays high; the
    median over near-correct matches separates that bias from random error.
    """
    if not records:
        return {}
    d = np.array([np.subtract(r.offsets.get(method, (math.nan, math.nan)), r.truth) for r in records], float)
    ok = np.isfinite(d).all(axis=1) & (np.hypot(d[:, 0], d[:, 1]) <= within_px)
    if ok.sum() == 0:
        return {"n": 0}
    med = np.median(d[ok], axis=0)
    return {"n": int(ok.sum()), "drow": float(med[0]), "dcol": float(med[1])}
