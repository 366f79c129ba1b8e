"""Parameters of one matching run, with the defaults a user gets from the CLI and the plugin."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

METHODS = ("structural", "ncc", "mi", "deep")
CANDIDATE_MODES = ("auto", "structure", "grid", "goodness")
GOODNESS_FUSIONS = ("min", "max")
DEVICES = ("auto", "cpu", "cuda")
TRANSFORMS = ("shift", "affine", "poly1", "poly2", "poly3", "tps", "projective")


@dataclass
class MatchParams:
    method: str = "structural"
    """Similarity used for template matching: 'structural' (default), 'ncc', 'mi' or 'deep' (Hughes'
    goodness -> CorrASL -> ORN networks, ``models/``)."""
    transform: str = "affine"
    template_size: int = 128
    search_size: int = 256
    max_offset_px: Optional[float] = None
    """Largest misregistration expected, in pixels of the matching grid; widens the search window."""
    candidates: str = "auto"
    """'structure' (corner/structure detector with spread), 'grid', 'goodness' (the goodness networks;
    needs the models) or 'auto': goodness for the deep method, structure otherwise."""
    n_target: int = 300
    """Number of candidate locations wanted (an upper bound; spread is kept)."""
    grid_spacing: Optional[int] = None
    sar_scale: str = "auto"
    """'auto', 'linear', 'amplitude', 'db' or 'dn'."""
    sar_clip: str = "robust"
    """'robust' (percentiles) or 'lo,hi' in dB, e.g. '10,30' as in Hughes' thesis."""
    min_quality: float = 1.05
    """Peaks less distinct than this (best/second-best ratio) are flagged."""
    ransac_threshold_px: float = 2.0
    consistency_k: int = 14
    consistency_z: float = 1.5
    aoi: Optional[tuple[float, float, float, float]] = None
    aoi_crs: Optional[str] = None
    resolution: Optional[float] = None
    sar_band: int = 1
    opt_bands: Optional[list[int]] = None
    seed: int = 0
    orn_threshold: float = 0.5
    """Deep method: matches whose ORN reliability is below this are flagged (not deleted)."""
    goodness_fusion: str = "min"
    """Deep method: fuse the SAR and optical goodness maps with 'min' (precision) or 'max' (recall)."""
    goodness_threshold: float = 0.0
    """Deep method: goodness peaks below this fused value are not candidates. 0 keeps every soft-NMS
    peak and lets the goodness rank them (the shipped lite networks rate few places above 0.3)."""
    model_size: Optional[str] = None
    """Model set ('lite', 'lite-s1s2', 'full', ...) or None: the manifest's default set."""
    device: str = "auto"
    """Where the networks run: 'auto' (CUDA if it really works), 'cpu' or 'cuda'."""

    def validate(self) -> None:
        from .errors import InputError

        if self.method not in METHODS:
            raise InputError(f"Unknown method '{self.method}'; choose one of {', '.join(METHODS)}.")
        if self.candidates not in CANDIDATE_MODES:
            raise InputError(f"Unknown candidate mode '{self.candidates}'; choose one of {', '.join(CANDIDATE_MODES)}.")
        if self.goodness_fusion not in GOODNESS_FUSIONS:
            raise InputError(f"Goodness fusion must be 'min' or 'max', got '{self.goodness_fusion}'.")
        if self.device not in DEVICES:
            raise InputError(f"Unknown device '{self.device}'; choose one of {', '.join(DEVICES)}.")
        if not 0.0 <= self.orn_threshold <= 1.0 or not 0.0 <= self.goodness_threshold <= 1.0:
            raise InputError("The ORN and goodness thresholds must lie between 0 and 1.")
        if self.method == "deep" and self.template_size != 128:
            raise InputError("The deep method uses the networks' 128 px template; leave the template size at 128.")
        if self.transform not in TRANSFORMS:
            raise InputError(f"Unknown transform '{self.transform}'; choose one of {', '.join(TRANSFORMS)}.")
        if self.max_offset_px is not None and not _positive(self.max_offset_px):
            raise InputError("The largest expected offset (--max-offset) must be a positive number of pixels, "
                             f"got {self.max_offset_px}.")
        if not _finite(self.min_quality):
            raise InputError(f"The minimum peak quality (--min-quality) must be a finite number, got {self.min_quality}.")
        if not _positive(self.ransac_threshold_px):
            raise InputError("The RANSAC inlier threshold (--ransac-threshold) must be a positive number of pixels, "
                             f"got {self.ransac_threshold_px}.")
        if self.aoi_crs and self.aoi is None:
            raise InputError(f"An AOI CRS (--aoi-crs {self.aoi_crs}) was given without an area of interest (--aoi); "
                             "give both, or neither to match the whole overlap.")
        if self.template_size < 16 or self.template_size % 2:
            raise InputError("The template size must be an even number of pixels, at least 16.")
        if self.effective_search_size() <= self.template_size:
            raise InputError("The search window must be larger than the template.")
        if int(self.n_target) < 1:
            raise InputError(f"The number of candidates (n_target) must be at least 1, got {self.n_target}.")
        if self.resolution is not None and not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise InputError(f"The matching resolution must be a positive pixel size, got {self.resolution}.")

    def effective_search_size(self) -> int:
        if self.max_offset_px is None:
            return int(self.search_size)
        need = self.template_size + 2 * int(round(self.max_offset_px)) + 2
        return max(int(self.search_size), need + (need % 2))

    def candidate_mode(self) -> str:
        """The candidate detector this run uses ('auto' resolved)."""
        if self.candidates != "auto":
            return self.candidates
        return "goodness" if self.method == "deep" else "structure"

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _positive(v) -> bool:
    return _finite(v) and float(v) > 0
