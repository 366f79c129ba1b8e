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


def _peer(module_name: str) -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    import importlib

    mod = importlib.import_module(f"bench.peers.{module_name}")
    keep_fn = getattr(mod, "patch_keep", None)

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        r = mod.match_patch(search, template)
        ok = bool(np.all(np.isfinite(r.offset)))
        keep = ok and (keep_fn(r) if keep_fn else True)
        return PatchOutcome(r.offset, r.quality, keep, r.error)

    return run


class _DeepPair:
    """All deep outputs of one pair, computed once and shared by the four deep variants.

    Why: the variants differ only in which filter decides ``keep`` (none, ORN, goodness, both);
    running the networks once per pair keeps the suite's time down. The speed section times the
    variants with ``fresh=True`` so their timings include the network calls.
    """

    models = None
    key: tuple = ()
    value: dict = {}

    @classmethod
    def get(cls, search: np.ndarray, template: np.ndarray, fresh: bool = False) -> dict:
        from engine.deep.matcher import heatmap_to_match
        from engine.runtime.deep import DeepModels

        if cls.models is None:
            cls.models = DeepModels(threads=1)
        key = (id(search), id(template), float(search.flat[0]), float(template.flat[-1]))
        if fresh or key != cls.key:
            m = cls.models
            raw = m.heatmaps(search[None], template[None])
            dm = heatmap_to_match(raw[0], search.shape[0], correction=m.offset_correction)
            s = search.shape[0] // 2 - template.shape[0] // 2
            centre = search[s:s + template.shape[0], s:s + template.shape[1]]
            good = min(float(m.crop_goodness(centre[None], "sar")[0]), float(m.crop_goodness(template[None], "opt")[0]))
            cls.key, cls.value = key, {"match": dm, "orn": float(m.reliability(raw)[0]), "good": good}
        return cls.value


def reset_caches() -> None:
    """Forget the shared per-pair deep outputs (the speed section times every call from scratch)."""
    _DeepPair.key = ()


DEEP_THRESHOLD = 0.5
"""ORN and goodness acceptance threshold (the engine's default)."""


def _deep_method(variant: str, fresh: bool = False) -> Callable[[np.ndarray, np.ndarray], PatchOutcome]:
    _DeepPair.get(np.zeros((256, 256), np.float32), np.zeros((128, 128), np.float32), fresh=True)  # load now

    def run(search: np.ndarray, template: np.ndarray) -> PatchOutcome:
        try:
            v = _DeepPair.get(search, template, fresh)
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
        ("corrasl", "CorrASL alone (ours, deep)", "deep", lambda: _deep_method("corrasl"),
         "peak not on the heatmap edge"),
        ("corrasl_orn", "CorrASL + ORN (ours, deep)", "deep", lambda: _deep_method("corrasl_orn"),
         f"ORN reliability >= {DEEP_THRESHOLD}"),
        ("goodness_corrasl", "Goodness + CorrASL (ours, deep)", "deep", lambda: _deep_method("goodness_corrasl"),
         f"min(SAR, optical goodness) >= {DEEP_THRESHOLD} (search centre / template)"),
        ("deep_full", "Goodness + CorrASL + ORN (ours, deep)", "deep", lambda: _deep_method("deep_full"),
         f"goodness and ORN both >= {DEEP_THRESHOLD}"),
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


METHOD_ORDER = ("ncc", "mi", "structural", "sift_ransac", "arosics", "corrasl", "corrasl_orn", "goodness_corrasl",
                "deep_full")
REFERENCE_METHOD = "ncc"
"""Speed ratios ("computational units") are relative to this method."""
