"""The structural-prior CorrASL feature streams (``models/training/sp_nets.py``) behind one object.

Why a separate runtime from ``deep.DeepModels``: these streams are stride-1, fully convolutional and
translation-equivariant, and their similarity is the ZNCC our structural matcher uses, so a tile's
features are computed once and every window is cut from them (``describe`` is a drop-in for
``structural.dense_descriptor``), and the heatmap has 1 px cells. Everything the engine needs to know
about the geometry comes from each file's metadata and is checked here, nothing is assumed: a graph
whose stride, cell size, window sizes, inputs or similarity differ is refused with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ModelError
from ..matchers.structural import _fill_invalid, match_descriptors
from ..types import PatchMatch
from .session import make_session

REQUIRED = {"feature_stride": 1, "cell_px": 1.0, "similarity": "zncc", "inputs": ["image", "valid"]}
"""Metadata values this runtime can use; anything else is another engine's model."""
GEOMETRY_KEYS = ("search_px", "template_px", "heatmap", "centre_cell", "receptive_px")


@dataclass(frozen=True)
class SPGeometry:
    """Window and heatmap geometry, as recorded in the ONNX metadata."""
    search_px: int
    template_px: int
    heatmap: int
    centre_cell: int
    receptive_px: int
    cell_px: float = 1.0

    def check(self) -> None:
        if self.heatmap != self.search_px - self.template_px + 1 or self.centre_cell != (self.heatmap - 1) // 2:
            raise ModelError(f"inconsistent CorrASL-SP geometry {self}: heatmap must be search - template + 1 "
                             "and the centre cell its middle")


def read_geometry(meta: dict, name: str) -> SPGeometry:
    """Validate one stream's metadata and return its geometry (ModelError naming what is wrong)."""
    for k, v in REQUIRED.items():
        got = meta.get(k)
        if got != v and not (isinstance(v, float) and isinstance(got, (int, float)) and float(got) == v):
            raise ModelError(f"model {name} has {k}={got!r}; this engine's CorrASL-SP runtime needs {v!r}")
    missing = [k for k in GEOMETRY_KEYS if not isinstance(meta.get(k), int)]
    if missing:
        raise ModelError(f"model {name} lacks the geometry metadata {', '.join(missing)}; re-export it")
    g = SPGeometry(*(int(meta[k]) for k in GEOMETRY_KEYS), cell_px=float(meta["cell_px"]))
    g.check()
    return g


class SPFeatures:
    """Loaded CorrASL-SP streams: ``describe`` (features of an image) and ``match_patch``."""

    def __init__(self, sar_path: Path, opt_path: Path, provider: str = "auto", threads: Optional[int] = None) -> None:
        self._setup({m: make_session(Path(p), provider, threads, arena=False)
                     for m, p in (("sar", sar_path), ("optical", opt_path))})

    @classmethod
    def from_sessions(cls, sar_session, opt_session) -> "SPFeatures":
        """From sessions a model set already loaded and verified (``deep.DeepModels``)."""
        obj = cls.__new__(cls)
        obj._setup({"sar": sar_session, "optical": opt_session})
        return obj

    def _setup(self, sessions: dict) -> None:
        self.sessions = sessions
        geos = {m: read_geometry(s.metadata, f"corrasl_{m}") for m, s in self.sessions.items()}
        if geos["sar"] != geos["optical"]:
            raise ModelError(f"the two CorrASL-SP streams disagree on geometry: {geos['sar']} vs {geos['optical']}")
        versions = {s.metadata.get("version") for s in self.sessions.values()}
        if len(versions) != 1:
            raise ModelError(f"the two CorrASL-SP streams come from different builds (versions {sorted(map(str, versions))})")
        self.geometry = geos["sar"]
        self.provider = self.sessions["sar"].provider

    def describe(self, img: np.ndarray, modality: str = "sar", mask: Optional[np.ndarray] = None) -> np.ndarray:
        """(C, H, W) float32 features of a 2-D unit image: ``structural.dense_descriptor``'s contract
        (zero on masked pixels), learned refinement included."""
        if modality not in ("sar", "optical"):
            raise ValueError(f"modality must be 'sar' or 'optical', got {modality!r}")
        a = np.asarray(img, np.float64)
        if a.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {a.shape}")
        valid = np.isfinite(a)
        if mask is not None:
            valid &= np.asarray(mask, bool)
        a = np.where(valid, a, 0.0)
        if not valid.all():
            # the same fill as the structural matcher (gradient scale of the modality)
            a = _fill_invalid(a, valid, 1.5 if modality == "sar" else 1.0)
        sess = self.sessions[modality].ort_session
        out = sess.run(None, {"image": a.astype(np.float32)[None, None],
                              "valid": valid.astype(np.float32)[None, None]})[0]
        return out[0]

    def match_patch(self, search: np.ndarray, template: np.ndarray, search_mask: Optional[np.ndarray] = None,
                    template_mask: Optional[np.ndarray] = None) -> PatchMatch:
        """Match one optical template inside one SAR window (features of each window alone)."""
        ds = self.describe(search, "sar", search_mask)
        dt = self.describe(template, "optical", template_mask)
        return match_descriptors(ds, dt, search_mask, template_mask)
