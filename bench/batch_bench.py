"""Batch throughput on Dask: pairs/min and megapixels/s for 1, 2 and 4 local workers, and one large
pair split into tile tasks against the single-process run. Writes ``docs/BATCH_BENCHMARK.md``.

    .venv/bin/python -m bench.batch_bench [--pairs 6] [--size 1024] [--workers 1,2,4] [--large 4096,16384]

The simulated scenes are cached in ``bench_output/batch/scenes`` (re-used by later runs). Large pairs
above 4096 px are the simulated 4096² pair tiled on disk (``bench.speed.tile_pair_on_disk``: simulating a
16k scene would cost more than the run being measured; repeated content does not change the work).
The numbers also go to ``bench_output/batch/results.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("suburban", "rural", "urban", "mixed")


def _simulate(out: str, name: str, size: int, seed: int, kind: str):
    from engine.simulate import MisregParams, SceneParams, simulate_pair

    sar, opt = os.path.join(out, f"{name}_sar.tif"), os.path.join(out, f"{name}_opt.tif")
    if os.path.exists(sar) and os.path.exists(opt):
        return sar, opt
    p = simulate_pair(out, name, scene=SceneParams(size=size, kind=kind, seed=seed),
                      misreg=MisregParams(shift=(12.0 - seed % 7 * 3.0, -8.0 + seed % 5 * 3.0), seed=seed))
    return p.sar, p.optical


def _cluster(n: int):
    from engine.batch.runner import make_client

    t0 = time.perf_counter()
    client = make_client(workers=n)  # the local cluster `python -m engine batch` starts
    cluster = client.cluster
    client.wait_for_workers(n)
    import importlib

    for mod in ("engine.pipeline", "engine.write_results", "engine.batch.tasks", "engine.matchers.structural"):
        client.run(importlib.import_module, mod)  # imports are part of the start, as in the parent process
    return client, cluster, time.perf_counter() - t0


def _close(client, cluster) -> None:
    client.close()
    cluster.close()


def run(a: argparse.Namespace) -> dict:
    from engine.batch.manifest import parse_manifest_rows
    from engine.batch.runner import run_batch

    work = os.path.join(ROOT, "bench_output", "batch")
    scenes = os.path.join(work, "scenes")
    os.makedirs(scenes, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for i in range(a.pairs):
        sar, opt = _simulate(scenes, f"s{a.size}_{i}", a.size, 100 + i, KINDS[i % len(KINDS)])
        rows.append({"name": f"pair{i}", "sar": sar, "optical": opt, "n_target": a.n_target})
    print(f"{a.pairs} pairs of {a.size}² px ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    jobs = parse_manifest_rows(rows)
    mpx = a.pairs * a.size * a.size / 1e6
    results: dict = {"throughput": [], "large": None, "args": vars(a)}
    if a.baseline:
        from engine.pipeline import match_pair
        from engine.write_results import write_results

        out = os.path.join(work, "run_sequential")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        for j in jobs:
            write_results(match_pair(j.sar, j.optical, j.params), os.path.join(out, j.name))
        wall = time.perf_counter() - t
        results["throughput"].append({"workers": "none (one process, no Dask)", "wall_s": wall, "start_s": 0.0,
                                      "done": a.pairs, "pairs": a.pairs, "pairs_per_min": a.pairs / wall * 60.0,
                                      "mpx_per_s": mpx / wall})
        print(f"sequential, no Dask: {a.pairs} pairs in {wall:.1f} s", flush=True)
    for w in a.workers:
        client, cluster, start_s = _cluster(w)
        try:
            out = os.path.join(work, f"run_w{w}")
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            rep = run_batch(jobs, out, client=client, force=True)
            wall = time.perf_counter() - t
        finally:
            _close(client, cluster)
        done = rep.count("done")
        row = {"workers": w, "wall_s": wall, "start_s": start_s, "done": done, "pairs": a.pairs,
               "pairs_per_min": done / wall * 60.0, "mpx_per_s": mpx * done / a.pairs / wall}
        results["throughput"].append(row)
        print(f"{w} worker(s): {done}/{a.pairs} pairs in {wall:.1f} s (+{start_s:.1f} s cluster start): "
              f"{row['pairs_per_min']:.2f} pairs/min, {row['mpx_per_s']:.3f} Mpx/s", flush=True)
    results["large"] = [_large(a, size, work, scenes, parse_manifest_rows, run_batch) for size in a.large]
    return results


def _large_pair(scenes: str, size: int) -> tuple[str, str]:
    if size <= 4096:
        return _simulate(scenes, f"large{size}", size, 7, "mixed")
    from pathlib import Path

    from .speed import tile_pair_on_disk

    sar, opt = _simulate(scenes, "large4096", 4096, 7, "mixed")
    return tile_pair_on_disk(sar, opt, Path(scenes), size)


def _large(a, size: int, work: str, scenes: str, parse_manifest_rows, run_batch) -> dict:
    from .memprobe import peak_rss_mb
    from .speed import memory_probe

    t0 = time.perf_counter()
    sar, opt = _large_pair(scenes, size)
    print(f"large pair {size}² px ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    (job,) = parse_manifest_rows([{"name": "large", "sar": sar, "optical": opt, "n_target": a.n_target}])
    single_dir = os.path.join(work, f"large{size}_single")
    shutil.rmtree(single_dir, ignore_errors=True)
    # match_pair + write_results (what `python -m engine match` does) in a fresh interpreter: its own peak RSS
    one = memory_probe(sar, opt, job.params.method, timeout_s=3600, n_target=a.n_target, out_dir=single_dir)
    if one.get("error"):
        raise RuntimeError(f"single-process run failed: {one['error']}")
    single = one["seconds"]
    print(f"single process: {single:.1f} s ({one['n_tiles']} tiles, {one['n_inliers']} inliers, "
          f"peak {one['peak_rss_mb']:.0f} MB)", flush=True)
    client, cluster, start_s = _cluster(a.large_workers)
    try:
        out = os.path.join(work, f"large{size}_batch")
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        rep = run_batch([job], out, client=client, tile_pixels=0, force=True)
        tiled = time.perf_counter() - t
        worker_peak = max(client.run(peak_rss_mb).values())
    finally:
        _close(client, cluster)
    (o,) = rep.outcomes
    name = os.path.basename(opt) + ".points"
    same = open(os.path.join(single_dir, name), "rb").read() == open(os.path.join(out, "large", name), "rb").read()
    print(f"tiled on {a.large_workers} workers: {tiled:.1f} s ({o.tiles} tiles, {o.tasks} tasks), "
          f"speed-up {single / tiled:.2f}x, .points identical: {same}, worker peak {worker_peak:.0f} MB", flush=True)
    return {"size": size, "single_s": single, "tiled_s": tiled, "workers": a.large_workers, "tiles": o.tiles,
            "tasks": o.tasks, "identical": same, "status": o.status, "inliers": one["n_inliers"],
            "start_s": start_s, "single_peak_mb": one["peak_rss_mb"], "worker_peak_mb": worker_peak,
            "tiled_from_4096": size > 4096}


def write_doc(results: dict, path: str, seconds: float) -> None:
    a = results["args"]
    cpu = "unknown CPU"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Batch matching benchmark (Dask)",
        "",
        f"Generated by `.venv/bin/python -m bench.batch_bench {a['cmdline']}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), {platform.python_implementation()} "
        f"{platform.python_version()}. {a['note']}",
        "",
        f"## Throughput: {a['pairs']} simulated pairs of {a['size']}² px",
        "",
        f"Structural method, affine transform, n_target {a['n_target']}, all outputs (tie points, GeoPackage, corrected "
        "GeoTIFF, checkerboards, summary.json). Local cluster of single-threaded worker processes; wall time from "
        "submission to the last pair written (the cluster start, with the engine's imports in every worker, is listed "
        "separately). The first row runs the same pairs one after the other in one process without Dask.",
        "",
        "| workers | wall (s) | cluster start (s) | pairs done | pairs/min | Mpx/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        lines.append(f"| {r['workers']} | {r['wall_s']:.1f} | {r['start_s']:.1f} | {r['done']}/{r['pairs']} | "
                     f"{r['pairs_per_min']:.2f} | {r['mpx_per_s']:.3f} |")
    large = results.get("large") or []
    if large:
        lines += [
            "",
            "## Large pairs split into tile tasks",
            "",
            "Each pair is split along the engine's tile plan (2048 px tile cores): pass-1 tile tasks return their "
            "pieces of the scene-wide candidate score map, one task selects the candidates, pass-2 tile tasks match "
            "the candidates their cores own, one task fits the geometry and writes all outputs. The single-process "
            "run is `match_pair` + `write_results` (what `python -m engine match` does) in a fresh interpreter; "
            "peak memory is the kernel's high-water mark (VmHWM) of that process, and of the largest worker "
            "process for the batch run.",
            "",
            f"| pair | tiles | tasks | single process (s) | batch, {large[0]['workers']} workers (s) | speed-up | "
            "single-process peak (MB) | worker peak (MB) | `.points` | inliers |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for lg in large:
            src = " (4096² simulated pair tiled on disk)" if lg.get("tiled_from_4096") else " (simulated)"
            lines.append(
                f"| {lg['size']}²{src} | {lg['tiles']} | {lg['tasks']} | {lg['single_s']:.1f} | {lg['tiled_s']:.1f} | "
                f"{lg['single_s'] / lg['tiled_s']:.2f}× | {lg.get('single_peak_mb', float('nan')):.0f} | "
                f"{lg.get('worker_peak_mb', float('nan')):.0f} | "
                f"{'byte-identical' if lg['identical'] else 'DIFFERENT'} | {lg['inliers']} |")
        lines += [
            "",
            f"Cluster start ({large[0]['start_s']:.1f} s) not included. The speed-up is bounded by each pair's "
            "serial steps (the scene statistics read before the tiles; the fit and the writing of all outputs, the "
            "corrected GeoTIFF and the checkerboards included, after them) and, on this machine, by the single "
            "process already using both cores in its BLAS calls.",
        ]
    lines += [
        "",
        "## Scaling to more machines",
        "",
        "The same command runs on any number of machines once they share two things:",
        "",
        "1. **Storage**: every worker opens the inputs by the paths in the manifest and writes to `--out`, so both "
        "must be visible under the same paths on every machine (NFS/SMB/Lustre mount, or inputs on object storage "
        "through GDAL, e.g. `/vsicurl/https://...` or `/vsis3/bucket/key`, with `--out` on a shared file system). "
        "No pixels travel through the scheduler: tasks carry paths and tile windows only.",
        "2. **A scheduler address**: start a scheduler on one machine and workers on the others (same Python "
        "environment and engine version everywhere, the repository importable by the scheduler and the workers, one "
        "thread per worker; with the deep method each worker "
        "process loads the networks once; `DASK_CONFIG=engine/batch` applies `engine/batch/dask.yaml`, which keeps "
        "Dask's `MALLOC_TRIM_THRESHOLD_` default from halving the matcher's speed):",
        "",
        "```bash",
        "cd /opt/sar-optical-matcher                    # the repository, on every machine",
        "PYTHONPATH=$PWD .venv/bin/dask scheduler --port 8786                        # on the head node",
        "PYTHONPATH=$PWD DASK_CONFIG=$PWD/engine/batch \\",
        "    .venv/bin/dask worker tcp://head:8786 --nworkers 8 --nthreads 1         # on each compute node",
        ".venv/bin/python -m engine batch /shared/manifest.csv --out /shared/results --scheduler tcp://head:8786",
        "```",
        "",
        "Independent pairs scale with the number of worker processes until the storage saturates; a large pair's "
        "tiles run in parallel (its two reduce steps, the candidate selection and the final fit, are small). "
        "On this 2-core machine more than 2 workers cannot help: the 4-worker row shows the oversubscription cost.",
        "",
    ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def main(argv=None) -> int:
    import sys

    ap = argparse.ArgumentParser(prog="python -m bench.batch_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--large", default="4096,16384",
                    help="sides of the large pairs, comma-separated ('' or 0: none)")
    ap.add_argument("--large-workers", type=int, default=2)
    ap.add_argument("--n-target", type=int, default=150)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the sequential run without Dask")
    ap.add_argument("--note", default="", help="a remark for the report (e.g. other load on the machine)")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "BATCH_BENCHMARK.md"))
    a = ap.parse_args(argv)
    a.workers = [int(w) for w in a.workers.split(",")]
    a.large = [int(x) for x in str(a.large).split(",") if x.strip() and int(x) > 0]
    args = list(argv if argv is not None else sys.argv[1:])
    if "--note" in args:  # the note goes into the text, not into the command line shown
        i = args.index("--note")
        del args[i:i + 2]
    a.cmdline = shlex.join(args)
    t0 = time.perf_counter()
    results = run(a)
    import json

    with open(os.path.join(ROOT, "bench_output", "batch", "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=str)
    write_doc(results, a.doc, time.perf_counter() - t0)
    print(f"wrote {a.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
