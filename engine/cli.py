"""Command line: ``python -m engine match|demo|simulate|batch``.

Errors the user can act on (``MatcherError``) print one clear line and exit with status 2; Ctrl-C
cancels through the same token the QGIS task uses, so partial outputs are cleaned up the same way.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Optional, Sequence

from .errors import CancelledError, MatcherError
from .params import CANDIDATE_MODES, DEVICES, GOODNESS_FUSIONS, METHODS, TRANSFORMS, MatchParams
from .progress import CancelToken, ConsoleProgressBar
from .version import __version__


def _aoi(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[0] >= vals[2] or vals[1] >= vals[3]:
        raise argparse.ArgumentTypeError("AOI must be 'xmin,ymin,xmax,ymax' with xmin<xmax and ymin<ymax")
    return vals  # type: ignore[return-value]


def _bands(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers from 1, e.g. 1,2,3; got '{text}'")
    return vals


def _sim_size(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 16:
        raise argparse.ArgumentTypeError(f"the scene size must be a whole number of pixels, at least 16; got '{text}'")
    return v


def _shift(text: str) -> tuple[float, float]:
    import math

    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"the shift must be 'dx,dy' in pixels, e.g. 23.4,-17.8; got '{text}'")
    return vals  # type: ignore[return-value]


def _add_match_options(p: argparse.ArgumentParser) -> None:
    d = MatchParams()
    p.add_argument("--method", choices=METHODS, default=d.method, help="similarity measure (default %(default)s)")
    p.add_argument("--transform", choices=TRANSFORMS, default=d.transform, help="correction model (default %(default)s)")
    p.add_argument("--aoi", type=_aoi, help="area of interest xmin,ymin,xmax,ymax (in --aoi-crs, default the SAR CRS)")
    p.add_argument("--aoi-crs", help="CRS of --aoi, e.g. EPSG:4326")
    p.add_argument("--n-target", type=int, default=d.n_target, help="candidate locations wanted (default %(default)s)")
    p.add_argument("--candidates", choices=CANDIDATE_MODES, default=d.candidates,
                   help="candidate detector; 'auto' = goodness networks for --method deep, else structure")
    p.add_argument("--orn-threshold", type=float, default=d.orn_threshold,
                   help="deep: flag matches the ORN rates below this (default %(default)s)")
    p.add_argument("--goodness-fusion", choices=GOODNESS_FUSIONS, default=d.goodness_fusion,
                   help="deep: fuse SAR/optical goodness with min (precision) or max (recall)")
    p.add_argument("--goodness-threshold", type=float, default=d.goodness_threshold)
    p.add_argument("--model-size", metavar="SET",
                   help="deep: model set, e.g. lite (simulator only) or lite-s1s2 (fine-tuned on real Sentinel-1/2 "
                        "pairs); default: the one models/manifest.json names (`python -m engine models` lists them)")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="deep: where the networks run; 'auto' uses CUDA only if it really works")
    p.add_argument("--max-offset", type=float, help="largest expected misregistration in pixels (widens the search)")
    p.add_argument("--template-size", type=int, default=d.template_size)
    p.add_argument("--search-size", type=int, default=d.search_size)
    p.add_argument("--sar-scale", choices=("auto", "linear", "amplitude", "db", "dn"), default=d.sar_scale)
    p.add_argument("--sar-clip", default=d.sar_clip, help="'robust' or 'lo,hi' dB (e.g. 10,30)")
    p.add_argument("--min-quality", type=float, default=d.min_quality)
    p.add_argument("--ransac-threshold", type=float, default=d.ransac_threshold_px, help="inlier threshold in pixels")
    p.add_argument("--resolution", type=float, help="matching grid pixel size (default: the SAR's)")
    p.add_argument("--sar-band", type=int, default=1)
    p.add_argument("--optical-bands", type=_bands, help="comma-separated optical bands used for the grey image (default 1,2,3)")
    p.add_argument("--no-corrected", action="store_true", help="do not write the corrected optical GeoTIFF")
    p.add_argument("--no-checkerboard", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _params(a: argparse.Namespace) -> MatchParams:
    return MatchParams(
        method=a.method, transform=a.transform, aoi=a.aoi, aoi_crs=a.aoi_crs, n_target=a.n_target,
        candidates=a.candidates, max_offset_px=a.max_offset, template_size=a.template_size,
        search_size=a.search_size, sar_scale=a.sar_scale, sar_clip=a.sar_clip, min_quality=a.min_quality,
        ransac_threshold_px=a.ransac_threshold, resolution=a.resolution, sar_band=a.sar_band,
        opt_bands=a.optical_bands,
        orn_threshold=a.orn_threshold, goodness_fusion=a.goodness_fusion, goodness_threshold=a.goodness_threshold,
        model_size=a.model_size, device=a.device,
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m engine", description="SAR-Optical Matcher engine")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("match", help="match an optical raster against a SAR raster and correct it")
    m.add_argument("--sar", required=True)
    m.add_argument("--optical", required=True)
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--truth", help="simulator truth JSON: report the check-point error")
    _add_match_options(m)
    d = sub.add_parser("demo", help="simulate a misregistered scene, match it and report the error")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--size", type=_sim_size, default=2048)
    d.add_argument("--seed", type=int, default=7)
    _add_match_options(d)
    s = sub.add_parser("simulate", help="write a simulated SAR/optical pair with a truth JSON")
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=_sim_size, default=2048)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--kind", default="mixed", choices=("rural", "suburban", "urban", "mixed"))
    s.add_argument("--shift", type=_shift, default="23.4,-17.8", help="misregistration dx,dy in pixels")
    s.add_argument("--rotation", type=float, default=0.0, help="misregistration rotation (degrees)")
    from .batch.command import add_arguments as add_batch_arguments

    add_batch_arguments(sub.add_parser("batch", help="match every pair of a manifest (CSV/YAML) on Dask"))
    sub.add_parser("models", help="list the installed model sets (checksums verified) and the default one")
    return ap


def run_models() -> int:
    """Print every model set the manifest names, with what it was trained on. A set with a missing or
    corrupt file is listed as BROKEN with what is wrong and how to restore it, and the command exits 1:
    a set is whole or refused (``--method deep`` never runs another set in its place)."""
    from .errors import ModelError
    from .runtime.registry import NETWORKS, broken_sets, default_set, listed_sets, load_manifest, verify

    try:
        man = load_manifest()
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    default = default_set()
    broken = broken_sets()
    bad = []
    for size in listed_sets():
        lines, failed = [], []
        for net in NETWORKS:
            mf = man.get((net, size))
            if mf is None:
                lines.append(f"  {net:13s} {'(not in the manifest)':32s}                      MISSING")
                continue
            if not mf.path.exists():
                state = "MISSING"
            else:
                try:
                    verify(mf)
                    state = "ok"
                except ModelError as exc:
                    state = f"FAILED: {exc}"
                    failed.append(str(exc))
            lines.append(f"  {net:13s} {mf.path.name:32s} sha256 {mf.sha256[:12]}  {state}")
        why = broken.get(size) or (f"model set '{size}' is refused: {failed[0]}" if failed else None)
        print(f"{size}{'  (default)' if size == default else ''}{'  BROKEN' if why else ''}")
        print("\n".join(lines))
        if why:
            bad.append(why)
        note = next((man[(n, size)].metadata.get("training") for n in NETWORKS if (n, size) in man), None)
        if note:
            print(f"  trained on: {note}")
    for why in bad:
        print(f"error: {why}", file=sys.stderr)
    return 1 if bad else 0


def _install_sigint(token: CancelToken, received: Optional[list] = None) -> dict:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, a job scheduler, a closing session) both cancel through
    ``token``, so partial outputs are removed the same way; the first signal is appended to
    ``received``. Returns {signal: previous handler} for ``_restore_signals``."""
    def handler(signum, frame):
        if received is not None and not received:
            received.append(signum)
        token.cancel()
    old = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not in the main thread
            pass
    return old


def _restore_signals(old: dict) -> None:
    for sig, handler in old.items():
        if handler is not None:
            signal.signal(sig, handler)


def _cancelled_status(received: list, exc: BaseException) -> tuple[str, int]:
    """What a cancelled run prints and its exit status: 130 for Ctrl-C, 143 (128 + 15) for SIGTERM."""
    if received and received[0] == getattr(signal, "SIGTERM", None):
        return "terminated: stopped by SIGTERM.", 143
    return f"cancelled: {exc}", 130


def run_match(sar: str, optical: str, out: str, params: MatchParams, quiet: bool, corrected: bool,
              checkerboard: bool, truth: Optional[str] = None) -> int:
    from .outputs.lock import OutputLock, remove_stale_temporaries
    from .pipeline import match_pair
    from .write_results import check_outputs, ensure_writable_dir, write_results

    token = CancelToken()
    received: list = []
    old = _install_sigint(token, received)
    bar = None if quiet else ConsoleProgressBar()
    made_out = not os.path.exists(out)
    ok = False
    lock = None
    try:
        ensure_writable_dir(out)
        # One run per output folder; only the holder removes what a killed run left there.
        lock = OutputLock(out).acquire()
        remove_stale_temporaries(out, before=lock.acquired_at)
        # Everything that can be checked is checked before any work: a long run must not fail at its end.
        params.validate()
        truth_data = _load_truth(truth) if truth else None
        check_outputs(sar, optical, out, corrected, checkerboard)
        t0 = time.perf_counter()
        result = match_pair(sar, optical, params, progress=bar, cancel=token)
        extra = {}
        cp = None
        if truth:
            from .evaluate import checkpoint_error

            cp = checkpoint_error(result.transform, truth_data, result.tieset.pixel_size)
            extra["checkpoints"] = cp.__dict__
        paths = write_results(result, out, corrected=corrected, checkerboard=checkerboard, extra_summary=extra,
                              progress=bar, cancel=token)
        _print_summary(result, paths, time.perf_counter() - t0, cp)
        ok = True
        return 0
    except CancelledError as exc:
        head, status = _cancelled_status(received, exc)
        print(f"\n{head} Partial outputs were removed.", file=sys.stderr)
        return status
    except MatcherError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("\nerror: out of memory; choose a smaller area of interest (--aoi) or a coarser --resolution.",
              file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
        _restore_signals(old)
        if not ok and made_out and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # a failed run leaves no empty output folder behind either


def _load_truth(path: str):
    """The simulator truth of ``--truth``, loaded before matching; InputError when it is unusable."""
    from .errors import InputError
    from .simulate.truth import load_truth

    if not os.path.exists(path):
        raise InputError(f"The truth file '{path}' does not exist; give the '<name>_truth.json' that "
                         "'python -m engine simulate' wrote next to the pair.")
    try:
        return load_truth(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"The truth file '{path}' is not a simulator truth JSON ({type(exc).__name__}: {exc}); "
                         "give the '<name>_truth.json' that 'python -m engine simulate' wrote.") from None


def _print_summary(result, paths, seconds: float, cp) -> None:
    s = result.stats
    unit = result.pair.grid.crs.linear_units or "units"
    print(f"Candidates {s.n_candidates}, matched {s.n_matched}, inliers {s.n_inliers}, flagged {s.n_flagged}")
    print(f"Recovered shift: dx={s.shift_m[0]:+.2f} {unit}, dy={s.shift_m[1]:+.2f} {unit} "
          f"(columns {s.shift_px[0]:+.2f} px, rows {s.shift_px[1]:+.2f} px)")
    print(f"Transform '{result.params.transform}': residual RMSE {s.rmse_px:.2f} px over {s.n_inliers} inliers, "
          f"tie-point hull covers {s.coverage * 100:.0f}% of the area")
    if cp is not None:
        print(f"Check points ({cp.n}): error before correction {cp.before_px:.2f} px RMSE, "
              f"after {cp.after_px:.2f} px RMSE (max {cp.max_after_px:.2f} px)")
    for k, v in paths.__dict__.items():
        if v:
            print(f"  {k:15s} {v}")
    for w in result.warnings:  # e.g. an extreme resolution ratio, CUDA unusable: the run worked, but see why
        print(f"warning: {w}", file=sys.stderr)
    print(f"Done in {seconds:.1f} s")


def run_demo(a: argparse.Namespace) -> int:
    from .simulate.pair import demo_pair

    scene_dir = os.path.join(a.out, "scene")
    os.makedirs(scene_dir, exist_ok=True)
    print(f"Simulating a {a.size}×{a.size} px SAR/optical scene (seed {a.seed}) with a known misregistration...")
    pair = demo_pair(scene_dir, a.size, a.seed)
    print(f"  SAR     {pair.sar}\n  optical {pair.optical}\n  truth   {pair.truth}")
    return run_match(pair.sar, pair.optical, os.path.join(a.out, "result"), _params(a), a.quiet,
                     not a.no_corrected, not a.no_checkerboard, truth=pair.truth)


def run_simulate(a: argparse.Namespace) -> int:
    from .simulate import MisregParams, SceneParams, simulate_pair

    dx, dy = a.shift
    try:  # checked before anything is written
        scene = SceneParams(size=a.size, kind=a.kind, seed=a.seed)
        misreg = MisregParams(shift=(dx, dy), rotation_deg=a.rotation, seed=a.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pair = simulate_pair(a.out, name=f"sim_{a.seed}", scene=scene, misreg=misreg)

    print(f"{pair.sar}\n{pair.optical}\n{pair.truth}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "match":
        return run_match(a.sar, a.optical, a.out, _params(a), a.quiet, not a.no_corrected,
                         not a.no_checkerboard, truth=a.truth)
    if a.command == "demo":
        return run_demo(a)
    if a.command == "simulate":
        return run_simulate(a)
    if a.command == "batch":
        from .batch.command import run as run_batch

        return run_batch(a)
    if a.command == "models":
        return run_models()
    return 1
