"""Registry of patch-level methods: our matchers and the external peers behind one call shape.

Why a registry: every table in the report iterates over it, so a new method (e.g. the deep networks
of a later issue) slots in by adding one ``PatchMethod`` here — no table or metric code changes.

Call shape: ``fn(search SxS, template TxT) -> PatchOutcome`` with inputs in [0, 1]. ``keep`` is the
method's *own* reliability filter (what the method would hand to the geometry stage), used for the
"kept" metrics; it never sees the truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class PatchOutcome:
    offset: tuple[float, float]
    """Predicted (drow, dcol); NaN when the method gave no answer."""
    quality: float = math.nan
    keep: bool = False
    """The method's own filter accepted this match."""
    error: str = ""


@dataclass
class PatchMethod:
    name: str
    label: str
    kind: str
    """'ours', 'peer' or 'deep'."""
    fn: Callable[[np.ndarray, np.ndarray], PatchOutcome]
    filter_desc: str


def _engine_method(name: str) -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    from engine.matchers import get_matcher
    from engine.params import MatchParams

    match = get_matcher(name)
    min_q = MatchParams().min_quality

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        try:
            m = match(search, template)
        except Exception as exc:  # a crash is a result too
            return PatchOutcome((math.nan, math.nan), error=f"{type(exc).__name__}: {exc}")
        radius = (search.shape[0] - template.shape[0]) // 2
        on_edge = max(abs(m.peak[0]), abs(m.peak[1])) >= radius
        q = float(m.quality)
        return PatchOutcome((float(m.offset[0]), float(m.offset[1])), q, bool(q >= min_q and not on_edge))

    return run


SP_MODELS_ENV = "SOM_SP_MODELS"
"""Folder with ``corrasl_{sar,opt}_<set>.onnx`` to benchmark a CorrASL-SP export before it is installed
(default: the shipped models folder)."""


class _SPPair:
    """CorrASL-SP outputs of one pair (match + ORN), computed once and shared by the SP variants."""

    _by_set: dict = {}

    def __init__(self, model_set: str) -> None:
        import os
        from pathlib import Path

        from engine.runtime.registry import MODELS_DIR
        from engine.runtime.session import make_session
        from engine.runtime.sp import SPFeatures

        d = Path(os.environ.get(SP_MODELS_ENV) or MODELS_DIR)
        self.feats = SPFeatures(d / f"corrasl_sar_{model_set}.onnx", d / f"corrasl_opt_{model_set}.onnx", "cpu",
                                threads=1)
        orn = d / f"orn_{model_set}.onnx"
        self.orn = make_session(orn, "cpu", 1) if orn.exists() else None
        self.key: tuple = ()
        self.value: dict = {}

    @classmethod
    def of(cls, model_set: str) -> "_SPPair":
        if model_set not in cls._by_set:
            cls._by_set[model_set] = cls(model_set)
        return cls._by_set[model_set]

    def get(self, search: np.ndarray, template: np.ndarray) -> dict:
        from engine.deep.matcher import orn_crop

        key = (id(search), id(template), float(search.flat[0]), float(template.flat[-1]))
        if key != self.key:
            m = self.feats.match_patch(search, template)
            p = float("nan")
            if self.orn is not None:
                h = np.asarray(m.heatmap, np.float32)
                h = np.where(np.isfinite(h), h, np.nanmin(h))
                p = float(self.orn.run(orn_crop(h)[None])[0])
            self.key, self.value = key, {"match": m, "orn": p}
        return self.value


def _sp_method(model_set: str = "sp", variant: str = "corrasl") -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    """CorrASL with the structural prior (stride-1 features, ZNCC heatmap). ``variant`` 'corrasl': the same keep
    rule as structural; 'orn': kept when the set's ORN-SP gives >= DEEP_THRESHOLD."""
    from engine.params import MatchParams

    pair = _SPPair.of(model_set)
    if variant == "orn" and pair.orn is None:
        raise FileNotFoundError(f"no orn_{model_set}.onnx beside the CorrASL-SP streams")
    min_q = MatchParams().min_quality

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        try:
            v = pair.get(search, template)
        except Exception as exc:
            return PatchOutcome((math.nan, math.nan), error=f"{type(exc).__name__}: {exc}")
        m = v["match"]
        radius = (search.shape[0] - template.shape[0]) // 2
        on_edge = max(abs(m.peak[0]), abs(m.peak[1])) >= radius
        if variant == "orn":
            return PatchOutcome((float(m.offset[0]), float(m.offset[1])), v["orn"],
                                bool(v["orn"] >= DEEP_THRESHOLD and not on_edge))
        q = float(m.quality)
        return PatchOutcome((float(m.offset[0]), float(m.offset[1])), q, bool(q >= min_q and not on_edge))

    return run


def _peer(module_name: str) -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    import importlib

    mod = importlib.import_module(f"bench.peers.{module_name}")
    ok, why = mod.available() if hasattr(mod, "available") else (True, "")
    if not ok:  # reported as unavailable (with the reason), not as a failure on every pair
        raise RuntimeError(why)
    keep_fn = getattr(mod, "patch_keep", None)

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        r = mod.match_patch(search, template)
        ok = bool(np.all(np.isfinite(r.offset)))
        keep = ok and (keep_fn(r) if keep_fn else True)
        return PatchOutcome(r.offset, r.quality, keep, r.error)

    return run


class _DeepPair:
    """All deep outputs of one pair for one model set, computed once and shared by that set's variants.

    Why: the variants differ only in which filter decides ``keep`` (none, ORN, goodness, both);
    running the networks once per pair keeps the suite's time down. The speed section times the
    variants with ``fresh=True`` so their timings include the network calls.
    """

    _by_set: dict = {}

    def __init__(self, model_set: str) -> None:
        from engine.runtime.deep import DeepModels

        self.models = DeepModels(model_set or None, threads=1)
        self.key: tuple = ()
        self.value: dict = {}

    @classmethod
    def of(cls, model_set: str) -> "_DeepPair":
        if model_set not in cls._by_set:
            cls._by_set[model_set] = cls(model_set)
        return cls._by_set[model_set]

    def get(self, search: np.ndarray, template: np.ndarray, fresh: bool = False) -> dict:
        from engine.deep.matcher import heatmap_to_match

        key = (id(search), id(template), float(search.flat[0]), float(template.flat[-1]))
        if fresh or key != self.key:
            m = self.models
            raw = m.heatmaps(search[None], template[None])
            dm = heatmap_to_match(raw[0], search.shape[0], correction=m.offset_correction)
            s = search.shape[0] // 2 - template.shape[0] // 2
            centre = search[s:s + template.shape[0], s:s + template.shape[1]]
            good = min(float(m.crop_goodness(centre[None], "sar")[0]), float(m.crop_goodness(template[None], "opt")[0]))
            self.key, self.value = key, {"match": dm, "orn": float(m.reliability(raw)[0]), "good": good}
        return self.value


def reset_caches() -> None:
    """Forget the shared per-pair deep outputs (the speed section times every call from scratch)."""
    for d in _DeepPair._by_set.values():
        d.key = ()


DEEP_THRESHOLD = 0.5
"""ORN and goodness acceptance threshold (the engine's default)."""

FINETUNED_SET = "lite-s1s2"
"""The model set fine-tuned on the declared s1s2_volkov training split (methods ``*_s1s2``)."""


def _deep_method(variant: str, fresh: bool = False, model_set: str = "") -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    """``model_set`` "" = the engine's default set when no ``FINETUNED_SET`` exists, else the simulator-only
    set of the same size (so ``corrasl`` always means simulator-only and ``corrasl_s1s2`` the fine-tuned one)."""
    from engine.runtime.registry import available_sizes

    if not model_set:
        sets = available_sizes()
        model_set = "lite" if "lite" in sets else ""
    pair = _DeepPair.of(model_set)
    pair.get(np.zeros((256, 256), np.float32), np.zeros((128, 128), np.float32), fresh=True)  # load now

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        try:
            v = pair.get(search, template, fresh)
        except Exception as exc:
            return PatchOutcome((math.nan, math.nan), error=f"{type(exc).__name__}: {exc}")
        dm = v["match"]
        ok_orn = v["orn"] >= DEEP_THRESHOLD
        ok_good = v["good"] >= DEEP_THRESHOLD
        keep = {"corrasl": max(abs(dm.peak[0]), abs(dm.peak[1])) < 32, "corrasl_orn": ok_orn,
                "goodness_corrasl": ok_good, "deep_full": ok_orn and ok_good}[variant]
        q = {"corrasl": dm.quality, "corrasl_orn": v["orn"], "goodness_corrasl": v["good"],
             "deep_full": min(v["orn"], v["good"])}[variant]
        return PatchOutcome((float(dm.offset[0]), float(dm.offset[1])), float(q), bool(keep))

    return run


def available_methods(names: Optional[list[str]] = None) -> tuple[list[PatchMethod], dict[str, str]]:
    """The requested methods that can run here, and {name: reason} for those that cannot."""
    from engine.params import MatchParams

    q = MatchParams().min_quality
    all_specs = [
        ("ncc", "NCC (ours)", "ours", lambda: _engine_method("ncc"), f"peak quality >= {q}, not on the window edge"),
        ("mi", "MI (ours)", "ours", lambda: _engine_method("mi"), f"peak quality >= {q}, not on the window edge"),
        ("structural", "Structural (ours)", "ours", lambda: _engine_method("structural"),
         f"peak quality >= {q}, not on the window edge"),
        ("sift_ransac", "SIFT+RANSAC (OpenCV)", "peer", lambda: _peer("opencv_sift"), ">= 3 RANSAC inliers"),
        ("arosics", "AROSICS COREG", "peer", lambda: _peer("arosics_peer"), "reliability >= 60 %"),
        ("lightglue", "ALIKED+LightGlue (peer)", "peer", lambda: _peer("lightglue_peer"),
         ">= 6 LightGlue matches agree on the translation within 3 px"),
        ("corrasl", "CorrASL alone (ours, deep)", "deep", lambda: _deep_method("corrasl"),
         "peak not on the heatmap edge"),
        ("corrasl_orn", "CorrASL + ORN (ours, deep)", "deep", lambda: _deep_method("corrasl_orn"),
         f"ORN reliability >= {DEEP_THRESHOLD}"),
        ("goodness_corrasl", "Goodness + CorrASL (ours, deep)", "deep", lambda: _deep_method("goodness_corrasl"),
         f"min(SAR, optical goodness) >= {DEEP_THRESHOLD} (search centre / template)"),
        ("deep_full", "Goodness + CorrASL + ORN (ours, deep)", "deep", lambda: _deep_method("deep_full"),
         f"goodness and ORN both >= {DEEP_THRESHOLD}"),
        ("corrasl_sp", "CorrASL-SP alone: structural prior + learned residual (ours, deep)", "deep",
         lambda: _sp_method("sp"), f"peak quality >= {q}, not on the window edge"),
        ("corrasl_sp_orn", "CorrASL-SP + ORN-SP (ours, deep)", "deep", lambda: _sp_method("sp", "orn"),
         f"ORN-SP reliability >= {DEEP_THRESHOLD}, not on the window edge"),
        ("corrasl_s1s2", "CorrASL alone, fine-tuned on s1s2 train split (ours, deep)", "deep",
         lambda: _deep_method("corrasl", model_set=FINETUNED_SET), "peak not on the heatmap edge"),
        ("deep_full_s1s2", "Goodness + CorrASL + ORN, CorrASL fine-tuned on s1s2 (ours, deep)", "deep",
         lambda: _deep_method("deep_full", model_set=FINETUNED_SET), f"goodness and ORN both >= {DEEP_THRESHOLD}"),
    ]
    out: list[PatchMethod] = []
    missing: dict[str, str] = {}
    for name, label, kind, factory, filt in all_specs:
        if names and name not in names:
            continue
        try:
            out.append(PatchMethod(name, label, kind, factory(), filt))
        except Exception as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    return out, missing


METHOD_ORDER = ("ncc", "mi", "structural", "sift_ransac", "arosics", "lightglue", "corrasl", "corrasl_orn",
                "goodness_corrasl", "deep_full", "corrasl_s1s2", "deep_full_s1s2", "corrasl_sp", "corrasl_sp_orn")
REFERENCE_METHOD = "ncc"
"""Speed ratios ("computational units") are relative to this method."""
