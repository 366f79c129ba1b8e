"""``python -m bench.memprobe SAR OPT METHOD [N_TARGET [OUT]]``: one pipeline run, prints JSON with peak RSS.

With OUT the run also writes every output there (``write_results``, as ``python -m engine match``),
and ``seconds`` covers matching and writing.

Runs in its own interpreter so the peak measures this pipeline run only. The peak is the kernel's
``VmHWM`` (high-water mark of *this* address space), not ``ru_maxrss``: Linux carries ``ru_maxrss``
over from the parent through fork + exec, so a child of a big benchmark process would report the
parent's size.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    """VmHWM in MB (falls back to ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
    sar, opt, method = argv[:3]
    n_target = int(argv[3]) if len(argv) > 3 else 300
    out_dir = argv[4] if len(argv) > 4 else None
    from engine.params import MatchParams
    from engine.pipeline import match_pair
    from engine.write_results import write_results

    base = peak_rss_mb()
    t0 = time.perf_counter()
    out: dict = {"method": method}
    try:
        res = match_pair(sar, opt, MatchParams(method=method, n_target=n_target))
        if out_dir:
            write_results(res, out_dir)
        out.update(seconds=time.perf_counter() - t0, timings=res.timings, n_inliers=res.stats.n_inliers,
                   n_tiles=res.stats.n_tiles, grid=[res.pair.grid.height, res.pair.grid.width], error="")
    except Exception as exc:  # report what happened, the caller records it
        out.update(seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:300])
    out["peak_rss_mb"] = peak_rss_mb()
    out["import_rss_mb"] = base
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
