"""Timing of the simulator: ``python -m engine.simulate.bench [--size 2048] [--repeat 3]``.

Reports, per stage, the best of ``repeat`` runs in CPU seconds of this process (single-threaded
numpy; set OMP_NUM_THREADS=1) and wall seconds, for a full georeferenced pair (written to a
temporary folder) and for in-memory 512x512 training patches.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable, Dict

import numpy as np

from . import pair as _pair
from .params import MisregParams, SceneParams
from .patches import simulate_patch_pair

_STAGES = ("generate_scene", "render_optical_clean", "resample_optical", "add_noise", "render_sar",
           "pick_check_points", "write_geotiff", "write_json")


def _instrument(timings: Dict[str, float]) -> Callable[[], None]:
    """Wrap the pair module's stage functions to accumulate CPU time; returns an undo function."""
    saved = {}
    for name in _STAGES:
        f = getattr(_pair, name)
        saved[name] = f

        def wrapped(*a, __f=f, __n=name, **k):
            t0 = time.process_time()
            try:
                return __f(*a, **k)
            finally:
                timings[__n] = timings.get(__n, 0.0) + time.process_time() - t0
        setattr(_pair, name, wrapped)

    def undo() -> None:
        for n, f in saved.items():
            setattr(_pair, n, f)
    return undo


def bench_pair(size: int, repeat: int, kind: str = "mixed") -> Dict[str, float]:
    best: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            stages: Dict[str, float] = {}
            undo = _instrument(stages)
            try:
                c0, w0 = time.process_time(), time.perf_counter()
                _pair.simulate_pair(tmp, "bench", scene=SceneParams(size=size, kind=kind, seed=r),
                                    misreg=MisregParams(shift=(12.3, -7.6), rotation_deg=0.2, warp_px=2.0))
                stages["total_cpu"] = time.process_time() - c0
                stages["total_wall"] = time.perf_counter() - w0
            finally:
                undo()
            for k, v in stages.items():
                best[k] = min(best.get(k, np.inf), v)
    return best


def bench_patches(size: int, n: int) -> Dict[str, float]:
    rng = np.random.default_rng(0)
    cpu = []
    for _ in range(n):
        c0 = time.process_time()
        simulate_patch_pair(rng, size=size)
        cpu.append(time.process_time() - c0)
    return {"mean_cpu": float(np.mean(cpu)), "median_cpu": float(np.median(cpu)), "max_cpu": float(np.max(cpu))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time the SAR/optical simulator.")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kind", default="mixed")
    ap.add_argument("--patches", type=int, default=10, help="number of 512x512 patch pairs to time")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for single-core figures")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    res = bench_pair(args.size, args.repeat, args.kind)
    print(f"{args.size}x{args.size} {args.kind} pair (best of {args.repeat}): "
          f"{res['total_cpu']:.2f} s CPU, {res['total_wall']:.2f} s wall")
    for k in _STAGES:
        if k in res:
            print(f"  {k:22s} {res[k]:6.2f} s CPU")
    if args.patches:
        p = bench_patches(512, args.patches)
        print(f"512x512 random patch pairs: mean {p['mean_cpu']:.2f} s, median {p['median_cpu']:.2f} s, "
              f"max {p['max_cpu']:.2f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
