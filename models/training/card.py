"""Stamp measured metrics into the ONNX files, record their sha256, write MODEL_CARD.md + manifest.

Why last: a file's sha256 changes whenever its metadata does, so metrics go in first and the
checksum that the engine verifies (``engine.runtime.registry``) is taken of the final bytes.

Metrics come from (a) each network's validation set (pool patches never trained on), stored in
its checkpoint, and (b) the benchmark suite's held-out tables (``docs/benchmarks.json``: simulated
patch test on seeds 900000+, and the real pairs), for the deep variants next to NCC, MI and the
structural descriptor on the same pairs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
from pathlib import Path

from .corrasl import RUNS
from .export import MODELS_DIR

NETS = ("corrasl_sar", "corrasl_opt", "goodness_sar", "goodness_opt", "orn")
RUN_OF = {"corrasl_sar": "corrasl", "corrasl_opt": "corrasl", "goodness_sar": "goodness_sar",
          "goodness_opt": "goodness_opt", "orn": "orn"}
PATCH_METHODS = ("ncc", "mi", "structural", "corrasl", "corrasl_orn", "goodness_corrasl", "deep_full",
                 "corrasl_s1s2", "deep_full_s1s2")
VARIANT_METHODS = {"s1s2": ("corrasl_s1s2", "deep_full_s1s2")}
"""Benchmark rows of a fine-tuned set (``bench.methods``); the base set's are the un-suffixed deep rows."""
COMMANDS = {
    "corrasl": "python -m models.training corrasl --size {size} --steps 1400 --minutes 52",
    "calibrate": "python -m models.training calibrate --size {size} --val-pairs 512",
    "labels": "python -m models.training labels --size {size} --n 3000",
    "goodness_sar": "python -m models.training head goodness_sar --size {size} --steps 600 --minutes 7",
    "goodness_opt": "python -m models.training head goodness_opt --size {size} --steps 600 --minutes 7",
    "orn": "python -m models.training head orn --size {size} --steps 800 --minutes 4",
    "export": "python -m models.training export --size {size}",
    "bench": "python -m bench --full --only patches,real --no-install",
    "card": "python -m models.training card --size {size}",
    "corrasl_s1s2": "python -m models.training corrasl --size {size} --variant s1s2 --init "
                    "models/training/runs/corrasl_{size}/checkpoint.pt --real-fraction 0.5 --flips h --lr 1e-4 "
                    "--lr-min 1e-5 --steps {steps} --minutes {minutes}",
    "export_s1s2": "python -m models.training export --size {size} --variant s1s2",
}


@functools.lru_cache(maxsize=None)
def _ckpt_extra(run_dir: Path) -> dict:
    """Step, timings, args and validation of the checkpoint in ``run_dir`` (read once per run: both
    CorrASL streams share one)."""
    import torch

    p = run_dir / "checkpoint.pt"
    if not p.exists():
        return {}
    st = torch.load(p, map_location="cpu", weights_only=False)
    out = {"step": st["step"], **{k: v for k, v in st.get("extra", {}).items() if k != "args"},
           "args": {k: v for k, v in st.get("extra", {}).get("args", {}).items() if k != "func"}}
    if not any(k.startswith("val_") for k in out):  # a run stopped by its time budget: last logged validation
        log = p.with_name("log.jsonl")
        if log.exists():
            vals = [json.loads(line) for line in log.read_text().splitlines() if '"val_' in line]
            if vals:
                out.update({k: v for k, v in vals[-1].items() if k.startswith("val_")}, val_step=vals[-1]["step"])
    return out


def _bench_metrics(bench: dict) -> dict:
    out: dict = {}
    ps = bench.get("patch_sim", {})
    if ps:
        out["simulated_patch_test"] = {"n_pairs": ps.get("n_pairs"), "seeds": "900000+ (held out)",
                                       **{m: _slim(ps["all"].get(m), ps.get("kept", {}).get(m))
                                          for m in PATCH_METHODS if m in ps.get("all", {})}}
    for name, st in bench.get("real", {}).get("sets", {}).items():
        if "all" in st:
            out[f"real_{name}"] = {"n_pairs": st.get("n_pairs"),
                                   **{m: _slim(st["all"].get(m), st.get("kept", {}).get(m))
                                      for m in PATCH_METHODS if m in st.get("all", {})}}
    return out


def _slim(a, k) -> dict:
    if not a:
        return {}
    r = {x: round(a[x], 3) for x in ("accuracy", "within_2px", "within_3px", "mean_l2", "mAP") if a.get(x) is not None}
    if k:
        r["kept"] = k.get("n_kept")
        r["kept_accuracy"] = None if k.get("accuracy") is None else round(k["accuracy"], 3)
    return r


def model_sets(size: str) -> list[str]:
    """The exported sets of this size: the base one and its fine-tuned variants (``SIZE-VARIANT``)."""
    out = [size]
    for p in sorted(MODELS_DIR.glob(f"corrasl_sar_{size}-*.onnx")):
        out.append(p.stem[len("corrasl_sar_"):])
    return out


def _set_methods(model_set: str, net: str) -> tuple[str, ...]:
    """Benchmark rows that describe this network of this set (plus the classical baselines)."""
    variant = model_set.split("-", 1)[1] if "-" in model_set else ""
    if variant:
        deep = VARIANT_METHODS.get(variant, ())
        deep = deep if net.startswith("corrasl") or net == "orn" else tuple(m for m in deep if m.startswith("deep"))
    else:
        deep = ("corrasl", "corrasl_orn", "goodness_corrasl", "deep_full") if net.startswith("corrasl") or net == "orn" \
            else ("goodness_corrasl", "deep_full")
    return ("n_pairs", "ncc", "mi", "structural") + deep


def write_card(args: argparse.Namespace) -> Path:
    import onnx

    from engine.runtime.registry import sha256_of

    bench_path = Path(args.bench)
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else {}
    bm = _bench_metrics(bench)
    records = []
    extras = {}
    sets = model_sets(args.size)
    for size in sets:
        records += _stamp_set(size, bm, bench, extras, onnx, sha256_of)
    man_path = MODELS_DIR / "manifest.json"
    doc = json.loads(man_path.read_text()) if man_path.exists() else {"models": []}
    doc["models"] = [r for r in doc["models"] if r["size"] not in sets] + records
    if args.default:
        doc["default"] = args.default
    doc.setdefault("default", args.size)
    tmp = man_path.with_name("manifest.json.part")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(man_path)
    card = MODELS_DIR / "MODEL_CARD.md"
    text = render(args.size, sets, doc["default"], records, extras, bm, bench)
    from .sp_card import BEGIN, END   # the CorrASL-SP section is written by sp_card; keep it
    old = card.read_text(encoding="utf-8") if card.exists() else ""
    if BEGIN in old and END in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(BEGIN):old.index(END) + len(END)] + "\n"
    tmp = card.with_name("MODEL_CARD.md.part")
    tmp.write_text(text)
    tmp.replace(card)
    print(f"wrote {man_path} and {card}")
    return card


def _stamp_set(size: str, bm: dict, bench: dict, extras: dict, onnx, sha256_of) -> list[dict]:
    from .export import run_for

    records = []
    for net in NETS:
        path = MODELS_DIR / f"{net}_{size}.onnx"
        if not path.exists():
            raise SystemExit(f"{path} missing: run the export stage first")
        ex = _ckpt_extra(run_for(RUN_OF[net], size))  # a fine-tuned set re-uses the base goodness/ORN runs
        extras[(size, net)] = ex
        val = {k: v for k, v in ex.items() if k.startswith("val_")}
        keep = _set_methods(size, net)
        metrics = {"validation": val, "benchmark": {k: {m: v for m, v in d.items() if m in keep} for k, d in bm.items()}}
        model = onnx.load(str(path))
        props = {p.key: p.value for p in model.metadata_props}
        props["metrics"] = json.dumps(metrics)
        props["benchmark_date"] = json.dumps(bench.get("meta", {}).get("date", ""))
        del model.metadata_props[:]
        for k, v in props.items():
            p = model.metadata_props.add()
            p.key, p.value = k, v
        tmp = path.with_name(path.name + ".part")
        onnx.save(model, str(tmp))
        tmp.replace(path)
        meta = {k: json.loads(v) for k, v in props.items()}
        md = {k: meta[k] for k in ("version", "input_px", "crop_px", "output_stride", "cell_px") if k in meta}
        md["training"] = meta.get("training_data", "")
        records.append({"name": net, "size": size, "file": path.name, "sha256": sha256_of(path),
                        "bytes": path.stat().st_size, "metadata": md})
    return records


def _f(v, nd=1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _finetune_text(size: str, model_set: str, extras: dict) -> list[str]:
    """The fine-tuning paragraph of a variant set: command, data, label refinement, validation."""
    ex = extras.get((model_set, "corrasl_sar"), {})
    a = ex.get("args", {})
    L = ["", f"### `{model_set}`: CorrASL fine-tuned on real Sentinel-1/2 pairs", ""]
    cmd = COMMANDS["corrasl_s1s2"].format(size=size, steps=a.get("steps", "?"), minutes=a.get("minutes", "?"))
    val = ", ".join(f"{k[4:]} {v:.3f}" for k, v in ex.items() if k.startswith("val_") and isinstance(v, float))
    L += [f"`{cmd}`: {ex.get('step', '–')} steps (counted from the start of the fine-tuning), "
          f"{_f((ex.get('seconds') or 0) / 60)} min on the 2-core CPU, from the simulator-only `{size}` CorrASL. "
          f"Each batch: {round(100 * float(a.get('real_fraction', 0.5)))} % real pairs, the rest simulated (so the "
          f"simulated skills are kept); left-right flips only. Validation on simulated pool patches: {val or '–'}.",
          "",
          "Real data: the declared split `models/training/s1s2_volkov_split.json` (committed): **train** = the 55 "
          "fragments of Sentinel-2 tiles T11SLT/T11SMT (southern California, Sentinel-1 2020-11-07; those fragments "
          "overlap each other, so they all stay on one side), **test** = the 25 fragments of T14RNT (south Texas, "
          "Sentinel-1 2020-12-04; no shared pixel, date or acquisition). Only the test fragments are scored by the "
          "benchmark, for every method. Each training fragment is cut into 512 px pool patches (stride 256 px) "
          "with the same preprocessing as the engine."]
    cache = RUNS.parent / "cache" / "real_s1s2_train.npz"
    if cache.exists():
        import numpy as np

        from .realpool import build_real_pool, label_shifts

        pool = build_real_pool(cache)  # the cached pool as trained on
        info = pool.info
        shifts = label_shifts(pool)
        mags = np.array([np.hypot(*v["shift_px"]) for v in shifts.values()])
        fixed = int(np.sum(mags > 0))
        L += ["", f"Label refinement (the published registration is good to about ±3 px, too loose to teach ≤1 px): "
              f"{fixed} of {len(shifts)} training fragments had their residual shift re-estimated as the median "
              "of agreeing structural-descriptor matches at zero offset (two rounds) and removed by resampling the "
              f"optical image; median |shift| {np.median(mags[mags > 0]) if fixed else 0:.2f} px, largest "
              f"{mags.max():.2f} px; the other fragments had fewer than 8 agreeing matches and keep the published "
              f"registration. {len(info)} pool patches in all."]
    L += ["", "Goodness networks and ORN of this set are the simulator-trained ones of "
          f"`{size}` (same weights, exported again so that a set is self-contained and its files belong together)."]
    return L


def render(size: str, sets: list, default: str, records: list, extras: dict, bm: dict, bench: dict) -> str:
    from .export import TRAINING_DATA, VERSION
    from .labels import NEG_ERR, POS_ERR
    from .nets import WIDTHS

    L = [f"# Model card — SAR-Optical Matcher networks ({', '.join(sets)}, version {VERSION})", "",
         f"Generated by `python -m models.training card --size {size} --default {default}` on "
         f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. Every file here was trained by this repository's own code "
         "(`models/training/`) on its own simulator (and, for the fine-tuned set, on the declared training split of "
         "the public s1s2_volkov Sentinel-1/2 pairs); no external weights.", ""]
    if size == "lite":
        L += ["**Size shipped: `lite`.** No GPU machine was lent to this task, so the published-width `full` "
              "variant has not been trained yet; `lite` keeps every layer, kernel and stride of the thesis "
              f"architecture with narrower channels ({WIDTHS['lite'].to_dict()}) and was trained on the "
              "2-core CPU. `python -m models.training corrasl --size full --lr 1e-4 --schedule constant` (and the "
              "later stages with `--size full`) trains the full variant on a GPU machine.", ""]
    L += ["## Model sets", "", "| set | what it is | default |", "|---|---|---|"]
    for st in sets:
        what = ("trained on the simulator only" if "-" not in st else
                "CorrASL fine-tuned on real Sentinel-1/2 pairs (declared split), goodness/ORN as the base set")
        L.append(f"| `{st}` | {what} | {'yes' if st == default else ''} |")
    L += ["", f"The engine uses `{default}` unless told otherwise (`--model-size SET`; the dock's deep options); "
          "`python -m engine models` lists the installed sets and verifies their checksums.", "",
          "## Files", "", "| set | file | network | sha256 | bytes |", "|---|---|---|---|---|"]
    for r in records:
        L.append(f"| {r['size']} | `{r['file']}` | {r['name']} | `{r['sha256']}` | {r['bytes']:,} |")
    L += ["", "`models/manifest.json` holds the same checksums; the engine refuses a file whose sha256 differs.", "",
          "## Training data", "", TRAINING_DATA + ".", "",
          "Held-out: benchmark seeds 900000–999999 are never rendered for training (`bench/heldout.py`); "
          "validation metrics below use pool patches excluded from training (every 10th patch). The simulator-only "
          f"set `{size}` saw no real data, so every real-pair number of it is on data it never saw; the fine-tuned "
          "set saw the s1s2_volkov training fragments only (see below).", "",
          f"## Training runs of `{size}` (CPU, 2 cores)", "", "| network | command | steps | minutes | validation |",
          "|---|---|---|---|---|"]
    for net, run in (("corrasl_sar", "corrasl"), ("goodness_sar", "goodness_sar"), ("goodness_opt", "goodness_opt"),
                     ("orn", "orn")):
        ex = extras.get((size, net), {})
        val = ", ".join(f"{k[4:]} {v:.3f}" for k, v in ex.items() if k.startswith("val_") and isinstance(v, float))
        L.append(f"| {'CorrASL (both streams)' if run == 'corrasl' else net} | `{COMMANDS[run].format(size=size)}` | "
                 f"{ex.get('step', '–')} | {_f((ex.get('seconds') or 0) / 60)} | {val} |")
    cal_p = RUNS / f"corrasl_{size}" / "calibration.json"
    if cal_p.exists():
        cal = json.loads(cal_p.read_text())
        L += ["", f"Offset calibration: `{COMMANDS['calibrate'].format(size=size)}` measured a systematic CorrASL offset "
              f"of ({cal['measured_bias_px'][0]:+.2f}, {cal['measured_bias_px'][1]:+.2f}) px (drow, dcol) on half of "
              f"{cal['n_pairs']} validation pairs (median signed error of matches within 3 px; the simulator's "
              "southern sun and SAR layover displace the visible structures, and the training flips keep the "
              "network from learning that prior). On the other half ≤1 px accuracy went "
              f"{100 * cal['val_acc1_before']:.1f} % → {100 * cal['val_acc1_after']:.1f} %, so the correction is "
              f"{'applied (ONNX metadata `offset_correction_px`, subtracted by the engine)' if cal['applied'] else 'not applied'}."]
    lab = extras.get((size, "goodness_sar"), {})
    lab_path = RUNS.parent / "cache" / f"labels_{size}.npz"
    counts = ""
    if lab_path.exists():
        import numpy as np

        z = np.load(lab_path)
        y, v = z["label"], z["val"]
        counts = (f" Result: {int(np.sum(y == 1))} positive, {int(np.sum(y == 0))} negative, {int(np.sum(y == -1))} "
                  f"ambiguous pairs ({int(np.sum(v))} of them from validation patches); CorrASL matched "
                  f"{100 * float(np.mean(z['error'] <= 1)):.1f} % of them within 1 px, so the balanced goodness/ORN "
                  "training sets are small (a few hundred pairs): the main reason these two networks are weak.")
    L += ["", f"Goodness/ORN labels: `{COMMANDS['labels'].format(size=size)}` (CorrASL run over 3,000 training-pool "
          f"pairs). Positive: loss ≤ t_pos and error ≤ {POS_ERR} px; negative: loss ≥ t_neg or error ≥ {NEG_ERR} px; "
          f"the rest dropped, classes balanced. Re-derived thresholds for our loss scale (75th percentile of the "
          f"loss of ≤1 px matches / 25th percentile of ≥2.5 px matches): t_pos = {_f(lab.get('t_pos'), 4)}, "
          f"t_neg = {_f(lab.get('t_neg'), 4)}"
          + (" (the two percentiles crossed, so both are their midpoint: for this CorrASL the loss barely separates "
             "good from bad matches and the labels rest on the error thresholds)" if lab.get("t_pos") == lab.get("t_neg")
             else "") + "." + counts, "",
          f"Then: `{COMMANDS['export'].format(size=size)}`, `{COMMANDS['bench']}`, "
          f"`{COMMANDS['card'].format(size=size)}`."]
    for st in sets[1:]:
        L += _finetune_text(size, st, extras)
        L += ["", f"Then: `{COMMANDS['export_s1s2'].format(size=size)}` before the benchmark and the card."]
    L += ["", "## Held-out accuracy (benchmark suite)", "",
          f"From `docs/benchmarks.json` ({bench.get('meta', {}).get('date', 'not run')}, "
          f"`{bench.get('meta', {}).get('command', '')}`). Accuracy = % within 1 px; mAP as in the thesis (lower is "
          "better); kept = what the method's own filter passes (goodness/ORN ≥ 0.5). Rows `*_s1s2` are the "
          "fine-tuned set; the s1s2_volkov rows are its declared test split only.", ""]
    for key, d in bm.items():
        L += [f"### {key.replace('_', ' ')} ({d.get('n_pairs')} pairs)", "",
              "| method | ≤1 px % | ≤2 px % | ≤3 px % | mean L2 px | mAP px | kept | ≤1 px % of kept |",
              "|---|---|---|---|---|---|---|---|"]
        for m in PATCH_METHODS:
            if m in d and d[m]:
                a = d[m]
                L.append(f"| {m} | {_f(a.get('accuracy'))} | {_f(a.get('within_2px'))} | {_f(a.get('within_3px'))} | "
                         f"{_f(a.get('mean_l2'), 2)} | {_f(a.get('mAP'), 2)} | {a.get('kept', '–')} | "
                         f"{_f(a.get('kept_accuracy'))} |")
        L.append("")
    L += ["## Intended use and limits", "",
          "* Inputs: SAR intensity (any scaling the engine detects) and optical (1–4+ bands → luminance), 1–10 m "
          "pixels, resampled onto the SAR grid; template 128 px, search 256 px (±64 px reach, trained for ±32 px).",
          "* The simulator-only set depends on how well the simulator covers the real scene; the fine-tuned set saw "
          "one real sensor pair (Sentinel-1 VH / Sentinel-2, 10 m): see the real-pair tables above and "
          "docs/BENCHMARKS.md for how each does on other sensors.",
          "* Goodness/ORN outputs are reliability scores for ranking and flagging, not calibrated probabilities.", ""]
    return "\n".join(L)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("lite", "full"), default="lite")
    p.add_argument("--default", default="", help="model set the engine uses by default (recorded in manifest.json)")
    p.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "docs" / "benchmarks.json"))
