"""``python -m engine batch MANIFEST --out DIR [--scheduler ADDRESS | --workers N]``."""
from __future__ import annotations

import argparse
import math
import signal
import sys

from ..errors import MatcherError
from ..progress import CancelToken, ConsoleProgressBar


def add_arguments(b: argparse.ArgumentParser) -> None:
    from .runner import DEFAULT_TILE_PIXELS, RETRIES

    b.add_argument("manifest", help="CSV or YAML list of pairs (see README, 'Batch processing')")
    b.add_argument("--out", required=True, help="output folder: one sub-folder per pair, plus batch_summary.csv/.gpkg")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786 "
                                           "(default: start a local cluster)")
    where.add_argument("--workers", type=int, help="local cluster: worker processes (default: the CPU count)")
    b.add_argument("--threads", action="store_true",
                   help="local cluster: workers as threads of this process instead of processes")
    b.add_argument("--tile-pixels", type=float, default=DEFAULT_TILE_PIXELS / 1e6,
                   help="split pairs whose matching grid exceeds this many megapixels into tile tasks "
                        "(default %(default).1f)")
    b.add_argument("--retries", type=int, default=RETRIES,
                   help="times a task is retried after an unexpected error, and (local cluster) rescheduled after "
                        "its worker died (default %(default)s)")
    b.add_argument("--force", action="store_true", help="re-run pairs whose outputs are already complete")
    b.add_argument("--quiet", action="store_true", help="no progress bar")


def _tile_pixels(megapixels: float):
    """Pixels for ``run_batch`` (which refuses what is not a positive finite number)."""
    px = megapixels * 1e6
    return int(px) if math.isfinite(px) else px


def run(a: argparse.Namespace) -> int:
    from ..cli import _install_sigint, _restore_signals
    from .runner import BatchCancelled, run_batch

    token = CancelToken()
    received: list = []
    old = _install_sigint(token, received)  # Ctrl-C and SIGTERM both cancel the batch cleanly
    bar = None if a.quiet else ConsoleProgressBar(width=30)

    def log(msg: str) -> None:
        if bar is not None and bar._tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
        print(msg, flush=True)

    try:
        rep = run_batch(a.manifest, a.out, scheduler=a.scheduler, workers=a.workers, processes=not a.threads,
                        tile_pixels=_tile_pixels(a.tile_pixels), retries=a.retries, force=a.force, progress=bar,
                        cancel=token, log=log)
    except BatchCancelled as exc:
        if received and received[0] == getattr(signal, "SIGTERM", None):
            print(f"\nterminated: stopped by SIGTERM. Completed pairs are kept and a re-run resumes the rest. "
                  f"Summary: {exc.report.csv}", file=sys.stderr)
            return 143
        print(f"\ncancelled: {exc} Summary: {exc.report.csv}", file=sys.stderr)
        return 130
    except MatcherError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    finally:
        _restore_signals(old)
    if bar is not None:
        bar(1.0, "batch finished")
    n = len(rep.outcomes)
    print(f"{n} pair(s): {rep.count('done')} done, {rep.count('failed')} failed, {rep.count('skipped')} skipped "
          f"(already done) in {rep.seconds:.1f} s on {rep.workers} worker(s)")
    for o in rep.outcomes:
        if o.status == "failed":
            print(f"  failed {o.name}: {o.error}", file=sys.stderr)
    print(f"Summary: {rep.csv}" + (f" and {rep.gpkg}" if rep.gpkg else ""))
    return 0 if rep.count("failed") == 0 else 1
