"""Export trained checkpoints to the ONNX files the engine loads, with their metadata.

One graph per network and modality, all fully convolutional with dynamic batch *and* spatial size
(opset 18):

* ``corrasl_sar``   image (N,1,H,W) -> L2-normalised features (N,C,(H-7)//2,(W-7)//2): 256 px -> 124
* ``corrasl_opt``   image (N,1,h,w) -> features — 128 px -> 60
* ``goodness_sar``, ``goodness_opt``  image (N,1,H,W) -> goodness map (N,1,H/32-3,W/32-3) in [0,1]
* ``orn``           raw heatmap (N,65,65) -> reliability (N,) in [0,1] (min-max scaling inside)

Why the correlation is not in a graph: a valid correlation of two feature maps with a per-pair
kernel is a grouped convolution whose group count is the (dynamic) batch size, which ONNX cannot
express; the engine computes it with numpy's FFT (``engine.runtime.correlate``), the same maths as
``nets.fft_correlate`` used in training (tested against each other).

``metadata_props`` carry JSON values: name, version, size, input sizes, preprocessing, output
stride / cell mapping, training data and (added by ``card.py``) the measured metrics.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint
from .corrasl import RUNS
from .data import INPUT_CENTRE, INPUT_SCALE
from .nets import (CELL_PX, CENTRE_CELL, GOOD_FIELD, GOOD_STRIDE, HEATMAP, SEARCH_PX, TEMPLATE_PX, WIDTHS,
                   CorrASL, Goodness, ORN)

MODELS_DIR = Path(__file__).resolve().parents[1]
VERSION = "1.0.0"
OPSET = 18

PREPROCESS = {
    "sar": "sigma0 -> dB (10 log10 linear, 20 log10 amplitude, dB/DN as is) -> robust 1-99 % stretch to "
           f"[0,1] over the scene -> (x - {INPUT_CENTRE}) * {INPUT_SCALE}",
    "optical": "bands -> luminance (BT.709 for RGB, 1 band as is) -> robust 1-99 % stretch to [0,1] over "
               f"the scene -> (x - {INPUT_CENTRE}) * {INPUT_SCALE}",
    "input_centre": INPUT_CENTRE, "input_scale": INPUT_SCALE,
}
TRAINING_DATA = ("project simulator (engine.simulate.patches): 600 co-registered 512 px SAR/optical pool "
                 "patches, seeds 1000-1599 (held-out benchmark seeds 900000-999999 excluded), rural/suburban/"
                 "urban, 1-10 m GSD, incidence 20-50 deg, 1-4 looks, RGB and pan optical, random sun and "
                 "off-nadir; augmentation: flips, speckle, blur, 8-bit quantisation, gamma/contrast, "
                 "coarse dropout")


class _Goodness(nn.Module):
    def __init__(self, net: Goodness) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.scene_map(image)


class _ORN(nn.Module):
    def __init__(self, net: ORN) -> None:
        super().__init__()
        self.net = net

    def forward(self, heatmap: torch.Tensor) -> torch.Tensor:
        return self.net(ORN.normalise(heatmap))


FINETUNE_DATA = {
    "s1s2": "then fine-tuned (CorrASL only) on the declared training split of s1s2_volkov "
            "(models/training/s1s2_volkov_split.json: 55 Sentinel-1 VH / Sentinel-2 fragments of southern "
            "California, labels refined per fragment by structural-descriptor matches), half of each batch real, "
            "half simulated; left-right flips only",
}


def arch_of(model_set: str) -> str:
    """'lite-s1s2' -> 'lite': the widths a model set was built with."""
    return model_set.split("-", 1)[0]


def _common(model_set: str, seconds: float, steps: int, finetuned: bool = True) -> dict:
    variant = model_set.split("-", 1)[1] if "-" in model_set else ""
    data = TRAINING_DATA + ("; " + FINETUNE_DATA[variant] if variant and finetuned else "")
    return {"version": VERSION, "size": model_set, "widths": WIDTHS[arch_of(model_set)].to_dict(),
            "preprocessing": PREPROCESS, "gsd_m": [1.0, 10.0], "training_data": data,
            "training": {"seconds": round(seconds), "steps": steps, "hardware": "CPU (2 cores)"}}


def run_for(kind: str, model_set: str) -> Path:
    """A network's run folder for a model set: its own when it was trained for the set, else the base size's
    (a fine-tuned variant re-uses the simulator-trained goodness networks and ORN)."""
    own = RUNS / f"{kind}_{model_set}"
    return own if (own / "checkpoint.pt").exists() else RUNS / f"{kind}_{arch_of(model_set)}"


def _export(module: nn.Module, example: torch.Tensor, in_name: str, out_name: str, path: Path, meta: dict,
            spatial_dynamic: bool = True) -> None:
    module.eval()
    dims = {0: torch.export.Dim("batch", min=1, max=65536)}
    if spatial_dynamic:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    arg = list(module.forward.__code__.co_varnames)[1]
    tmp = path.with_name(path.name + ".part")
    torch.onnx.export(module, (example,), str(tmp), input_names=[in_name], output_names=[out_name],
                      opset_version=OPSET, dynamic_shapes={arg: dims}, dynamo=True, external_data=False)
    finish_with_metadata(tmp, path, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def finish_with_metadata(tmp: Path, path: Path, meta: dict) -> None:
    """Replace the exported graph's metadata by ``meta`` (JSON values) and move ``tmp`` onto ``path``."""
    import onnx

    model = onnx.load(str(tmp))
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, json.dumps(v)
    onnx.save(model, str(tmp))
    tmp.replace(path)


def export(args: argparse.Namespace) -> list[Path]:
    size = f"{args.size}-{args.variant}" if args.variant else args.size   # the model set
    arch = args.size
    out = Path(args.out or MODELS_DIR)
    written = []

    corr = CorrASL(arch)
    step, extra = checkpoint.load(RUNS / f"corrasl_{size}" / "checkpoint.pt", corr, None, None)
    if step == 0:
        raise SystemExit(f"no trained CorrASL {size} checkpoint")
    base = _common(size, extra.get("seconds", 0.0), step)
    cal_path = RUNS / f"corrasl_{size}" / "calibration.json"
    cal = json.loads(cal_path.read_text()) if cal_path.exists() else {"offset_correction_px": [0.0, 0.0]}
    geo = {"search_px": SEARCH_PX, "template_px": TEMPLATE_PX, "heatmap": HEATMAP, "cell_px": CELL_PX,
           "centre_cell": CENTRE_CELL, "offset_correction_px": cal["offset_correction_px"], "calibration": cal,
           "cell_to_offset": "offset_px = (cell - centre_cell) * cell_px, template centre relative to the "
                             "search window centre; features: pixel ~ 2*f + 4 (7x7 conv, stride-2 pool)"}
    for mod, stream, px in (("sar", corr.sar, SEARCH_PX), ("opt", corr.opt, TEMPLATE_PX)):
        p = out / f"corrasl_{mod}_{size}.onnx"
        _export(stream, torch.randn(2, 1, px, px), "image", "features", p,
                {"name": f"corrasl_{mod}", "network": "CorrASL feature stream", "modality": mod,
                 "input_px": px, **geo, **base})
        written.append(p)
    for mod in ("sar", "opt"):
        g = Goodness(arch)
        grun = run_for(f"goodness_{mod}", size)
        gstep, gextra = checkpoint.load(grun / "checkpoint.pt", g, None, None)
        if gstep == 0:
            print(f"no goodness_{mod} checkpoint; skipped", flush=True)
            continue
        p = out / f"goodness_{mod}_{size}.onnx"
        _export(_Goodness(g), torch.randn(2, 1, 256, 256), "image", "goodness", p,
                {"name": f"goodness_{mod}", "network": "goodness", "modality": mod, "crop_px": GOOD_FIELD,
                 "output_stride": GOOD_STRIDE, "receptive_px": GOOD_FIELD,
                 "cell_to_pixel": "map cell (i, j) covers input pixels [32 i, 32 i + 128) x [32 j, 32 j + 128); "
                                  "its centre is (32 i + 64, 32 j + 64)",
                 "label_thresholds": {"t_pos": gextra.get("t_pos"), "t_neg": gextra.get("t_neg"),
                                      "pos_error_px": 1.0, "neg_error_px": 2.5},
                 **_common(size, gextra.get("seconds", 0.0), gstep, grun.name.endswith(size))})
        written.append(p)
    o = ORN(arch)
    orun = run_for("orn", size)
    ostep, oextra = checkpoint.load(orun / "checkpoint.pt", o, None, None)
    if ostep:
        p = out / f"orn_{size}.onnx"
        _export(_ORN(o), torch.randn(2, HEATMAP, HEATMAP), "heatmap", "reliability", p,
                {"name": "orn", "network": "outlier reduction", "input": "raw (pre-softmax) CorrASL heatmap "
                 "(N,65,65); min-max normalisation is inside the graph", "heatmap": HEATMAP,
                 "label_thresholds": {"t_pos": oextra.get("t_pos"), "t_neg": oextra.get("t_neg"),
                                      "pos_error_px": 1.0, "neg_error_px": 2.5},
                 **_common(size, oextra.get("seconds", 0.0), ostep, orun.name.endswith(size))}, spatial_dynamic=False)
        written.append(p)
    return written


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("lite", "full"), default="lite")
    p.add_argument("--variant", default="", help="export the fine-tuned set SIZE-VARIANT (e.g. s1s2)")
    p.add_argument("--out", default=None, help="folder for the .onnx files (default: models/)")
