"""Export the structural-prior CorrASL streams to ONNX (``corrasl_sar_<set>.onnx``, ``corrasl_opt_<set>.onnx``).

Each graph: ``image`` (N,1,H,W) unit range, invalid pixels filled, and ``valid`` (N,1,H,W) 1/0 ->
``features`` (N,C,H,W), any H, W >= 32 (fully convolutional, stride 1). The metadata carries the whole
geometry the engine needs (``engine.runtime.sp``): stride 1, 1 px heatmap cells, the receptive field,
template/search sizes, the similarity ("zncc": the engine's ``ncc_volume``) and the preprocessing.

The graphs are not added to the manifest here: a set is installed by ``--install`` once its metrics are
measured, so an unmeasured export never becomes a model set the engine offers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from .export import _export, finish_with_metadata
from .sp_nets import CELL_PX, CENTRE_CELL, HEATMAP, SEARCH_PX, SP_WIDTHS, TEMPLATE_PX, CorrASLSP

MODELS_DIR = Path(__file__).resolve().parents[1]
OPSET = 18
VERSION = "2.0.0"


def receptive_px(size: str) -> int:
    """Receptive field side (px) of one feature: prior support (ROEWA 2x10 + cell Gaussian 2x6 + 1) plus
    the dilated 3x3 layers."""
    w = SP_WIDTHS[size]
    return 21 + 12 + 2 * sum(w.dilations) + 1


class _Stream(nn.Module):
    def __init__(self, stream: nn.Module) -> None:
        super().__init__()
        self.stream = stream

    def forward(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.stream(image, valid)


def export_stream(stream: nn.Module, path: Path, meta: dict, example_px: int) -> None:
    mod = _Stream(stream).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    dims = {0: batch, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    x = torch.rand(2, 1, example_px, example_px)
    v = torch.ones(2, 1, example_px, example_px)
    tmp = path.with_name(path.name + ".part")
    torch.onnx.export(mod, (x, v), str(tmp), input_names=["image", "valid"], output_names=["features"],
                      opset_version=OPSET, dynamic_shapes={"image": dims, "valid": dims}, dynamo=True,
                      external_data=False)
    finish_with_metadata(tmp, path, meta)


def geometry(size: str) -> dict:
    return {"search_px": SEARCH_PX, "template_px": TEMPLATE_PX, "heatmap": HEATMAP, "cell_px": CELL_PX,
            "centre_cell": CENTRE_CELL, "feature_stride": 1, "receptive_px": receptive_px(size),
            "similarity": "zncc", "inputs": ["image", "valid"],
            "cell_to_offset": "offset_px = (cell - centre_cell) * cell_px: template centre relative to the search "
                              "window centre; features are aligned with the input pixels (stride 1, no resizing)",
            "preprocessing": {"input_centre": 0.0, "input_scale": 1.0,
                              "fill_invalid": "engine.matchers.structural._fill_invalid before the network",
                              "sar": "sigma0 -> dB -> robust 1-99 % stretch to [0,1] (engine.preprocess.sar_to_unit)",
                              "optical": "luminance -> robust 1-99 % stretch to [0,1]"}}


def export(checkpoint_path: Path, size: str, out: Path, tag: str) -> list[Path]:
    net = CorrASLSP(size)
    extra: dict = {}
    step = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        step, extra = int(state.get("step", 0)), dict(state.get("extra") or {})
    base = {"version": VERSION, "size": tag, "architecture": f"corrasl-{size} (structural prior + residual)",
            "widths": SP_WIDTHS[size].to_dict(),
            "training": {"steps": step, "seconds": round(float(extra.get("seconds", 0.0))),
                         "hardware": "CPU (2 cores)", "mix": extra.get("mix")},
            **geometry(size)}
    written = []
    for mod, stream in (("sar", net.sar), ("opt", net.opt)):
        p = out / f"corrasl_{mod}_{tag}.onnx"
        export_stream(stream, p, {"name": f"corrasl_{mod}", "network": "CorrASL-SP feature stream",
                                  "modality": mod, **base}, 96)
        print(f"wrote {p} ({p.stat().st_size / 1e3:.0f} kB, sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:12]})",
              flush=True)
        written.append(p)
    return written


class _ORN(nn.Module):
    def __init__(self, orn: nn.Module) -> None:
        super().__init__()
        self.orn = orn

    def forward(self, heatmap: torch.Tensor) -> torch.Tensor:
        return self.orn(heatmap)


def export_orn(checkpoint_path: Path, out: Path, tag: str) -> Path:
    """ORN-SP (``sp_orn.ORNSP``): raw ZNCC crop (N,65,65) -> reliability (N,)."""
    from .sp_orn import CROP, ORNSP

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    orn = ORNSP()
    orn.load_state_dict(state["model"])
    p = out / f"orn_{tag}.onnx"
    extra = dict(state.get("extra") or {})
    meta = {"name": "orn", "network": "outlier reduction (CorrASL-SP)", "version": VERSION, "size": tag,
            "input": "zncc_crop", "heatmap": CROP,
            "input_description": "raw ZNCC heatmap cells (N,65,65) centred on the peak (engine.deep.matcher.orn_crop), "
                                 "not rescaled: the absolute peak height is evidence",
            "label_thresholds": {"pos_error_px": extra.get("pos_px"), "neg_error_px": extra.get("neg_px")},
            "training": {k: extra.get(k) for k in ("seconds", "examples", "train_pos", "train_neg", "corrasl")},
            "validation": {k: extra.get(k) for k in ("val_acc", "val_le1_all", "val_le1_kept", "val_kept")}}
    _export(_ORN(orn), torch.rand(2, CROP, CROP), "heatmap", "reliability", p, meta, spatial_dynamic=False)
    return p


def install(tag: str, goodness_set: str, make_default: bool = False, models_dir: Path = MODELS_DIR) -> list[dict]:
    """Add set ``tag`` to the manifest: its CorrASL-SP streams and ORN, and ``goodness_set``'s goodness files
    (re-used unchanged; the streams' metadata names that set). Existing records of ``tag`` are replaced."""
    import onnx

    from engine.runtime.registry import sha256_of

    man_path = models_dir / "manifest.json"
    doc = json.loads(man_path.read_text(encoding="utf-8"))
    records = []
    for name in ("corrasl_sar", "corrasl_opt", "orn"):
        f = models_dir / f"{name}_{tag}.onnx"
        if name.startswith("corrasl"):  # record where the set's goodness networks come from
            m = onnx.load(str(f))
            meta = {q.key: q.value for q in m.metadata_props}
            if meta.get("goodness_set") != json.dumps(goodness_set):
                q = m.metadata_props.add()
                q.key, q.value = "goodness_set", json.dumps(goodness_set)
                tmp = f.with_name(f.name + ".part")
                onnx.save(m, str(tmp))
                tmp.replace(f)
        records.append({"name": name, "size": tag, "file": f.name, "sha256": sha256_of(f), "bytes": f.stat().st_size,
                        "metadata": {"version": VERSION, "similarity": "zncc" if name != "orn" else None,
                                     "goodness_set": goodness_set}})
    for r in doc["models"]:
        if r["size"] == goodness_set and r["name"].startswith("goodness"):
            records.append({**r, "size": tag, "metadata": {**r.get("metadata", {}), "shared_from": goodness_set}})
    doc["models"] = [r for r in doc["models"] if r["size"] != tag] + records
    if make_default:
        doc["default"] = tag
    tmp = man_path.with_name("manifest.json.part")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(man_path)
    return records


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.training.sp_export", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=tuple(SP_WIDTHS), default="sp")
    p.add_argument("--checkpoint", default=None, help="default: models/training/checkpoints/corrasl_<size>.pt")
    p.add_argument("--tag", default=None, help="model-set name in the file names (default: the size)")
    p.add_argument("--out", default=str(MODELS_DIR))
    p.add_argument("--orn", default=None, help="ORN-SP checkpoint (default: checkpoints/orn_<size>.pt when present)")
    p.add_argument("--install", metavar="GOODNESS_SET", default=None,
                   help="also add the set to models/manifest.json, re-using GOODNESS_SET's goodness networks")
    p.add_argument("--make-default", action="store_true", help="with --install: make it the default set")
    a = p.parse_args(argv)
    here = Path(__file__).resolve().parent / "checkpoints"
    ck = Path(a.checkpoint) if a.checkpoint else here / f"corrasl_{a.size}.pt"
    tag = a.tag or a.size
    export(ck, a.size, Path(a.out), tag)
    orn = Path(a.orn) if a.orn else here / f"orn_{a.size}.pt"
    if orn.exists():
        print(f"wrote {export_orn(orn, Path(a.out), tag)}", flush=True)
    if a.install:
        for r in install(tag, a.install, a.make_default, Path(a.out)):
            print(f"manifest: {r['name']} {r['size']} {r['file']} {r['sha256'][:12]}", flush=True)


if __name__ == "__main__":
    main()
