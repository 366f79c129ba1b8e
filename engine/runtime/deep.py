"""The three networks behind one object: features, heatmaps, peaks, reliability and goodness.

Why one object: sessions are expensive to create (hundreds of ms) and must be created once and
reused across candidates, tiles and batch tasks; the object also checks that the five files belong
together (same size variant and version) and that their metadata matches what this engine assumes
(input sizes, cell size), so a model built for another geometry is refused rather than misread.

Inputs are unit-range images as produced by ``engine.preprocess`` (SAR dB stretch, optical
luminance stretch, both in [0, 1]); the fixed affine map to network input comes from metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ModelError
from ..matchers.subpixel import refine_peak, top_peaks
from .correlate import fft_correlate
from .registry import NETWORKS, available_sizes, load_manifest, verify
from .session import Session, make_session

EXPECTED = {"search_px": 256, "template_px": 128, "heatmap": 65, "cell_px": 2.0, "centre_cell": 32}
BATCH = 16


@dataclass
class DeepMatch:
    """CorrASL's answer for one pair, in pixels (offset convention of ``engine.types``)."""
    offset: tuple[float, float]
    peak: tuple[int, int]
    """Integer heatmap cell of the maximum, relative to the centre cell."""
    score: float
    quality: float
    cov: tuple[float, float, float]
    """px^2 (cell covariance scaled by cell_px^2)."""
    alternatives: np.ndarray
    """(k, 2) further (drow, dcol) px hypotheses from secondary peaks, best first."""


class DeepModels:
    """Loaded, verified sessions of one size variant."""

    def __init__(self, size: Optional[str] = None, provider: str = "auto", models_dir: Optional[Path] = None,
                 threads: Optional[int] = None) -> None:
        sizes = available_sizes(models_dir)
        if not sizes:
            load_manifest(models_dir)  # raises the specific "not installed"/"corrupt" error
            raise ModelError("the model manifest lists no complete set of networks; reinstall the plugin")
        size = size or ("full" if "full" in sizes else sizes[0])
        if size not in sizes:
            raise ModelError(f"no '{size}' models installed (available: {', '.join(sizes)})")
        man = load_manifest(models_dir)
        self.size = size
        self.sessions: dict[str, Session] = {}
        for name in NETWORKS:
            self.sessions[name] = make_session(verify(man[(name, size)]), provider, threads)
        self.provider = self.sessions["corrasl_sar"].provider
        self._check_metadata()
        pre = self.sessions["corrasl_sar"].metadata.get("preprocessing", {})
        self.centre = float(pre.get("input_centre", 0.5))
        self.scale = float(pre.get("input_scale", 4.0))
        self.versions = {n: s.metadata.get("version", "?") for n, s in self.sessions.items()}

    def _check_metadata(self) -> None:
        versions = {s.metadata.get("version") for s in self.sessions.values()}
        sizes = {s.metadata.get("size") for s in self.sessions.values()}
        if len(versions) != 1 or sizes != {self.size}:
            raise ModelError(f"the installed model files do not belong together (versions {sorted(map(str, versions))}, "
                             f"sizes {sorted(map(str, sizes))}); reinstall the plugin")
        meta = self.sessions["corrasl_sar"].metadata
        for k, v in EXPECTED.items():
            if meta.get(k) != v and not (isinstance(v, float) and meta.get(k) == int(v)):
                raise ModelError(f"model corrasl_sar has {k}={meta.get(k)!r}, this engine expects {v!r}; "
                                 "the model was built for another engine version")

    # ------------------------------------------------------------------ raw network calls
    def to_input(self, unit: np.ndarray) -> np.ndarray:
        return ((np.asarray(unit, np.float32) - self.centre) * self.scale).astype(np.float32)

    def _run(self, name: str, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
        sess = self.sessions[name]
        return np.concatenate([sess.run(x[i:i + batch]) for i in range(0, len(x), batch)])

    def sar_features(self, search_unit: np.ndarray) -> np.ndarray:
        """(N,H,W) unit SAR -> (N,C,(H-7)//2,(W-7)//2) L2-normalised features."""
        return self._run("corrasl_sar", self.to_input(search_unit)[:, None])

    def opt_features(self, template_unit: np.ndarray) -> np.ndarray:
        return self._run("corrasl_opt", self.to_input(template_unit)[:, None])

    def heatmaps(self, search_unit: np.ndarray, template_unit: np.ndarray) -> np.ndarray:
        """(N,256,256) SAR windows x (N,128,128) optical templates -> (N,65,65) raw heatmaps."""
        s = np.asarray(search_unit)
        t = np.asarray(template_unit)
        if s.shape[1:] != (256, 256) or t.shape[1:] != (128, 128) or len(s) != len(t):
            raise ValueError(f"CorrASL needs (N,256,256) windows and (N,128,128) templates, got {s.shape}, {t.shape}")
        return fft_correlate(self.sar_features(s), self.opt_features(t))

    def reliability(self, heatmaps: np.ndarray) -> np.ndarray:
        """ORN probability that each heatmap's peak is a correct match, (N,)."""
        return self._run("orn", np.asarray(heatmaps, np.float32), batch=256).reshape(-1)

    def goodness_map(self, unit: np.ndarray, modality: str) -> np.ndarray:
        """Goodness of a (H,W) unit image, (H//32-3, W//32-3); cell (i,j) covers px [32i, 32i+128)."""
        name = "goodness_sar" if modality == "sar" else "goodness_opt"
        return self._run(name, self.to_input(unit)[None, None])[0, 0]

    def crop_goodness(self, crops_unit: np.ndarray, modality: str) -> np.ndarray:
        """Goodness of (N,128,128) crops, (N,)."""
        name = "goodness_sar" if modality == "sar" else "goodness_opt"
        return self._run(name, self.to_input(crops_unit)[:, None], batch=64).reshape(-1)

    # ------------------------------------------------------------------ heatmap -> pixels
    @staticmethod
    def peak(heatmap: np.ndarray, alternatives: int = 3) -> DeepMatch:
        """Sub-pixel peak of one raw heatmap in pixels, with covariance and secondary peaks."""
        cell = EXPECTED["cell_px"]
        r = refine_peak(heatmap, exclusion_radius=2.0)
        offs, _ = top_peaks(heatmap, alternatives + 1, min_distance=2.0)
        alt = offs[1:].astype(float) * cell if len(offs) > 1 else np.empty((0, 2))
        c = r.cov
        return DeepMatch((r.offset[0] * cell, r.offset[1] * cell), r.peak, r.score, r.quality,
                         (c[0] * cell ** 2, c[1] * cell ** 2, c[2] * cell ** 2), alt)
