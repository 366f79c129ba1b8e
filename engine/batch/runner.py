"""Runs a batch on Dask: a local cluster by default, or an existing scheduler given its address.

The client submits, per pair, ``tasks.prepare``; a large pair's plan is expanded into its tile
tasks when it comes back (``tasks`` explains the graph). Futures get ``retries`` so a task whose
worker died (killed, out of memory, lost machine) runs again elsewhere; a user-fixable problem
fails only its own pair. Pairs whose outputs are complete (``summary.json`` and every output it
lists) are skipped, so an interrupted batch resumes where it stopped. The summary table is
rewritten as pairs complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import CancelledError, InputError
from ..progress import CancelToken, ProgressCallback
from . import tasks
from .manifest import PairJob, load_manifest
from .summary import write_summary

DEFAULT_TILE_PIXELS = 32 * 1024 * 1024
"""Pairs whose matching grid has more pixels than this (about 5800² px) are split into tile tasks."""
RETRIES = 3
SCHEDULER_TIMEOUT_S = 30.0
"""How long connecting to a ``--scheduler`` may take, its handshake included."""


@dataclass
class BatchReport:
    outcomes: list[tasks.PairOutcome]
    csv: str
    gpkg: Optional[str]
    seconds: float
    workers: int
    dashboard: Optional[str] = None
    cancelled: bool = False
    extra: dict = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def completed_summary(job: PairJob) -> Optional[dict]:
    """The pair's summary.json when the pair is done: every output it lists exists in the pair's
    folder and it was made from the same inputs, parameters and output switches; else None."""
    path = os.path.join(job.out_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as fh:
            s = json.load(fh)
    except (OSError, ValueError):
        return None
    outs = s.get("outputs") or {}
    if not outs or not all(os.path.exists(os.path.join(job.out_dir, os.path.basename(str(p))))
                           for p in outs.values()):
        return None
    same_params = s.get("params") == json.loads(json.dumps(job.params.to_dict()))
    same_inputs = (s.get("sar"), s.get("optical")) == (job.sar, job.optical)
    same_outputs = ("corrected" in outs) == job.corrected and ("checker_before" in outs) == job.checkerboard
    return s if (same_params and same_inputs and same_outputs) else None


def make_client(scheduler: Optional[str] = None, workers: Optional[int] = None, processes: bool = True,
                threads_per_worker: int = 1, retries: int = RETRIES):
    """A ``distributed.Client``: connected to ``scheduler`` (an address, e.g. tcp://host:8786), or to
    a new ``LocalCluster`` of ``workers`` single-threaded worker processes (default: the CPU count),
    whose scheduler reschedules a task up to ``retries`` times after its worker died."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency of the batch mode only
        raise InputError("Batch matching needs Dask: pip install 'dask[distributed]'.") from None
    if scheduler:
        _probe_scheduler(scheduler, SCHEDULER_TIMEOUT_S)
        try:
            return Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S:g}s")
        except Exception as exc:  # a timeout, a refused or reset connection, a protocol error
            raise InputError(f"Cannot connect to the Dask scheduler at {scheduler}: {type(exc).__name__}: {exc}"
                             ) from None
    n = int(workers) if workers is not None else int(os.cpu_count() or 1)
    if n < 1:
        raise InputError(f"The number of workers (--workers) must be at least 1, got {n}.")
    import dask

    # Dask pins numeric libraries to one thread per worker process; with fewer workers than cores let
    # each use its share of the cores (one worker on a 4-core machine: 4 BLAS threads).
    blas = str(max(1, (os.cpu_count() or 1) // (n * max(int(threads_per_worker), 1))))
    env = {f"distributed.nanny.pre-spawn-environ.{k}": blas
           for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # Dask also sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which fixes glibc's mmap threshold at
    # 128 kB: every large temporary array is then mmapped and page-faulted afresh, which halves the speed of
    # the matcher (measured: 1.5 s -> 0.75 s per 512 px pair). Keep glibc's adaptive default.
    env["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] = None
    cluster = None
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": max(int(retries), 0), **env}):
            # A free port, so several batches (or a QGIS session and a terminal) never fight over 8787.
            cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                                   dashboard_address=":0")
        return Client(cluster)
    except Exception as exc:  # no socket can be made or bound (loopback down, sandbox without network)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        raise InputError(
            f"Cannot start a local Dask cluster ({type(exc).__name__}: {exc}). Its scheduler and workers talk "
            "over TCP on 127.0.0.1: check that the loopback interface is up (ip link set lo up) and that local "
            "connections are allowed, or connect to a running scheduler with --scheduler.") from None


def _probe_scheduler(address: str, timeout: float) -> None:
    """InputError unless a Dask scheduler answers at ``address`` within ``timeout`` seconds.

    A Dask server speaks first: its handshake is a frame whose 8-byte little-endian length is small.
    A web server (e.g. the dashboard's port) says nothing until asked, and distributed would then
    wait for it forever; another protocol's greeting, read as a frame length, asks for exabytes."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        if scheme != "tcp":
            return  # tls://, ucx://, inproc://: distributed's own connect (bounded by its timeout)
        host, port = parse_host_port(loc, 8786)
    except (ValueError, TypeError) as exc:
        raise InputError(f"'{address}' is not a Dask scheduler address ({exc}); use e.g. tcp://host:8786.") from None
    hint = ("is the address right? A Dask scheduler listens on port 8786 by default; 8787 is its dashboard, a "
            "web page.")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            head = b""
            while len(head) < 8:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    raise InputError(f"The server at {address} closed the connection without a Dask handshake; {hint}")
                head += chunk
            (size,) = struct.unpack("<Q", head)
            if size > 1 << 20:  # a handshake is a few hundred bytes
                more = b""
                with contextlib.suppress(OSError):
                    sock.settimeout(0.2)
                    more = sock.recv(24)
                raise InputError(f"The server at {address} is not a Dask scheduler: it answered {head + more!r}, "
                                 f"not the Dask protocol; {hint}")
    except socket.timeout:
        raise InputError(f"The server at {address} did not answer as a Dask scheduler within {timeout:g} s; "
                         f"{hint}") from None
    except OSError as exc:
        raise InputError(f"Cannot reach the Dask scheduler at {address}: {exc.strerror or exc}; is it running? "
                         f"{hint[0].upper()}{hint[1:]}") from None


def _dashboard(client) -> str:
    import importlib.util

    try:
        link = client.dashboard_link
    except Exception:  # no dashboard (e.g. a cluster started without one)
        link = None
    if not link:
        return "not available"
    if importlib.util.find_spec("bokeh") is None and getattr(client, "cluster", None) is not None:
        return f"{link} (the page needs bokeh>=3.1 installed)"
    return link


def _n_workers(client) -> int:
    try:
        return len(client.scheduler_info()["workers"])
    except Exception:  # pragma: no cover
        return 0


def run_batch(jobs: list[PairJob] | str, out_dir: str, *, client=None, scheduler: Optional[str] = None,
              workers: Optional[int] = None, processes: bool = True, tile_pixels: int = DEFAULT_TILE_PIXELS,
              retries: int = RETRIES, force: bool = False, progress: Optional[ProgressCallback] = None,
              cancel: Optional[CancelToken] = None, log: Callable[[str], None] = lambda s: None,
              tiling=None) -> BatchReport:
    """Match every pair of ``jobs`` (or of the manifest at that path) into ``out_dir/<name>/``.

    ``client``: an existing ``distributed.Client`` (kept open); otherwise one is made from
    ``scheduler``/``workers`` and closed at the end. ``tile_pixels``: grid size above which a pair is
    split into tile tasks. ``force``: re-run pairs already done. Returns the outcomes of all pairs;
    the summary table is in ``out_dir/batch_summary.csv`` (and ``.gpkg``).

    The batch holds ``out_dir``'s ``OutputLock`` throughout (a second batch or run there is refused)
    and first removes what a killed run left in it and in the pairs' folders. A manifest error is
    raised before ``out_dir`` is created; a batch that fails leaves no empty ``out_dir`` it created."""
    from ..outputs.lock import OutputLock
    from ..write_results import ensure_writable_dir

    t_start = time.perf_counter()
    check_batch_options(workers, tile_pixels, retries)
    if isinstance(jobs, str):
        jobs = load_manifest(jobs, out_dir)  # before anything is created: a bad manifest leaves no --out
    jobs = [dataclasses.replace(j, out_dir=os.path.join(out_dir, j.name)) for j in jobs]
    made = not os.path.exists(out_dir)
    lock = None
    try:
        ensure_writable_dir(out_dir)
        lock = OutputLock(out_dir).acquire()
        _remove_stale(out_dir, jobs, lock.acquired_at)
        return _run_locked(jobs, out_dir, client=client, scheduler=scheduler, workers=workers, processes=processes,
                           tile_pixels=tile_pixels, retries=retries, force=force, progress=progress, cancel=cancel,
                           log=log, tiling=tiling, t_start=t_start)
    finally:
        if lock is not None:
            lock.release()
        if made and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)


def check_batch_options(workers: Optional[int], tile_pixels, retries: int) -> None:
    """InputError for a worker count, tile size or retry count that cannot work (before any work)."""
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"The number of workers (--workers) must be at least 1, got {workers}.")
    try:
        tp = float(tile_pixels)
    except (TypeError, ValueError):
        tp = math.nan
    if not (math.isfinite(tp) and tp >= 0):   # 0: split every pair along the tile plan (tests, benchmarks)
        raise InputError(f"The tile size (--tile-pixels) must be a positive number of megapixels, got {tp / 1e6:g}.")
    if int(retries) < 0:
        raise InputError(f"The number of retries (--retries) must be 0 or more, got {retries}.")


def _remove_stale(out_dir: str, jobs: list[PairJob], before: float) -> None:
    """What a killed batch left (the caller holds ``out_dir``'s lock): hidden temporaries in ``out_dir``
    and the pairs' folders (the workers write there under this lock) and the summary table's temporaries."""
    from ..outputs.lock import remove_stale_temporaries

    remove_stale_temporaries(out_dir, before)
    for name in ("batch_summary.csv.tmp", "batch_summary.tmp.gpkg", "batch_summary.tmp.gpkg-journal"):
        p = os.path.join(out_dir, name)
        try:
            if os.path.getmtime(p) < before:
                os.remove(p)
        except OSError:
            pass
    for j in jobs:
        remove_stale_temporaries(j.out_dir, before)


def _run_locked(jobs: list[PairJob], out_dir: str, *, client, scheduler, workers, processes, tile_pixels, retries,
                force, progress, cancel, log, tiling, t_start) -> BatchReport:
    from distributed import wait

    cancel = cancel or CancelToken()
    progress = progress or (lambda f, s: None)
    own = client is None
    client = client or make_client(scheduler, workers, processes, retries=retries)
    outcomes: dict[str, tasks.PairOutcome] = {}
    order = [j.name for j in jobs]
    csv_path = os.path.join(out_dir, "batch_summary.csv")
    dashboard, n_workers = None, 0
    try:
        dashboard = _dashboard(client)
        n_workers = _n_workers(client)
        log(f"Dask: {n_workers} worker(s), scheduler {client.scheduler.address}; dashboard {dashboard}")
        pending: dict = {}  # future -> (job, stage)
        started: dict[str, float] = {}
        share: dict[str, tuple[int, int]] = {}  # pair -> (tasks done, tasks) for the progress bar

        def submit(fn, *args, job: PairJob, stage: str, key: str):
            fut = client.submit(fn, *args, key=f"{key}-{job.name}-{_uid()}", retries=retries, pure=False)
            pending[fut] = (job, stage)
            return fut

        for j in jobs:
            done = None if force else completed_summary(j)
            if done is not None:
                outcomes[j.name] = tasks.PairOutcome(j.name, "skipped", summary=done, tasks=0,
                                                     tiles=int(done.get("tiles") or 1))
                continue
            started[j.name] = time.perf_counter()
            share[j.name] = (0, 1)
            submit(tasks.prepare, j, int(tile_pixels), tiling, job=j, stage="prepare", key="prepare")
        n_skip = len(outcomes)
        if n_skip:
            log(f"{n_skip} pair(s) already done (skipped); {len(jobs) - n_skip} to run")

        def report() -> None:
            n_done = sum(o.status == "done" for o in outcomes.values())
            n_fail = sum(o.status == "failed" for o in outcomes.values())
            frac = (len(outcomes) + sum(a / b for a, b in share.values())) / max(len(jobs), 1)
            progress(min(frac, 1.0), f"pairs {len(outcomes)}/{len(jobs)}: {n_done} done, {n_fail} failed, "
                                     f"{n_skip} skipped")

        report()
        while pending:
            if cancel.cancelled:
                client.cancel(list(pending))
                for job, _stage in pending.values():
                    if job.name not in outcomes:
                        outcomes[job.name] = tasks.PairOutcome(job.name, "cancelled", error="cancelled")
                pending.clear()
                break
            try:
                wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for fut in [f for f in pending if f.done()]:
                job, stage = pending.pop(fut)
                name = job.name
                a, b = share.get(name, (0, 1))
                share[name] = (a + 1, b)
                if fut.status == "cancelled":
                    continue
                if fut.status == "error":
                    if stage in ("prepare", "finish") and name not in outcomes:
                        exc = fut.exception()
                        outcomes[name] = tasks.PairOutcome(name, "failed", error=f"{type(exc).__name__}: {exc}")
                        share.pop(name, None)
                        _after(outcomes[name], started, jobs, order, outcomes, csv_path, log)
                    continue
                if stage == "prepare":
                    res = fut.result()
                    if isinstance(res, tasks.TilePlan):
                        _expand(res, submit, share)
                        continue
                    outcomes[name] = res
                elif stage == "finish":
                    outcomes[name] = fut.result()
                else:
                    continue
                share.pop(name, None)
                _after(outcomes[name], started, jobs, order, outcomes, csv_path, log)
            report()
    finally:
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    out = [outcomes.get(n) or tasks.PairOutcome(n, "cancelled", error="cancelled") for n in order]
    for i, (o, j) in enumerate(zip(out, jobs)):
        if o.status == "cancelled":  # a task that was already writing when the batch was cancelled may have finished
            done = completed_summary(j)
            if done is not None:
                out[i] = tasks.PairOutcome(j.name, "done", summary=done, tiles=int(done.get("tiles") or 1))
    csv_path, gpkg = write_summary(out, jobs, out_dir, final=True)
    rep = BatchReport(outcomes=out, csv=csv_path, gpkg=gpkg, seconds=time.perf_counter() - t_start,
                      workers=n_workers, dashboard=dashboard, cancelled=cancel.cancelled)
    if cancel.cancelled:
        raise BatchCancelled(rep)
    return rep


class BatchCancelled(CancelledError):
    """The batch was cancelled; ``report`` holds what completed (the summary table is written)."""

    def __init__(self, report: BatchReport) -> None:
        super().__init__("Batch cancelled; completed pairs are kept and a re-run resumes the rest.")
        self.report = report


def _uid() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def _expand(plan: tasks.TilePlan, submit, share) -> None:
    """Submit a large pair's tile tasks (pass 1, selection, pass 2, finish)."""
    job, n = plan.job, len(plan.tiles)
    p1 = [submit(tasks.candidate_tile, plan, i, job=job, stage="pass1", key=f"candidates-t{i}") for i in range(n)]
    sel = submit(tasks.select_candidates, plan, *p1, job=job, stage="select", key="select")
    p2 = [submit(tasks.match_tile, plan, i, sel, job=job, stage="pass2", key=f"match-t{i}") for i in range(n)]
    submit(tasks.finish, plan, sel, *p2, job=job, stage="finish", key="finish")
    a, _b = share[job.name]
    share[job.name] = (a, 1 + 2 * n + 2)


def _after(outcome: tasks.PairOutcome, started, jobs, order, outcomes, csv_path, log) -> None:
    t0 = started.get(outcome.name)
    if t0 is not None:
        outcome.wall_s = time.perf_counter() - t0
    msg = f"{outcome.name}: {outcome.status}"
    if outcome.status == "done" and outcome.summary:
        s = outcome.summary
        msg += f" ({s.get('inliers')} inliers, RMSE {s.get('rmse_px', float('nan')):.2f} px)"
    elif outcome.error:
        msg += f": {outcome.error}"
    log(msg)
    write_summary([outcomes[n] for n in order if n in outcomes], jobs, os.path.dirname(csv_path), final=False)
