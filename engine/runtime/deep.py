"""The three networks behind one object: features, heatmaps, peaks, reliability and goodness.

Why one object: sessions are expensive to create (hundreds of ms) and must be created once and
reused across candidates, tiles and batch tasks; the object also checks that the five files belong
together (same size variant and version) and that their metadata matches what this engine assumes
(input sizes, cell size), so a model built for another geometry is refused rather than misread.

Inputs are unit-range images as produced by ``engine.preprocess`` (SAR dB stretch, optical
luminance stretch, both in [0, 1]); the fixed affine map to network input comes from metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ModelError
from .correlate import fft_correlate
from .registry import NETWORKS, available_sizes, broken_sets, default_set, load_manifest, verify
from .session import Session, make_session

EXPECTED = {"search_px": 256, "template_px": 128, "heatmap": 65, "cell_px": 2.0, "centre_cell": 32}
BATCH = 8
"""Windows per CorrASL call on the CPU. Why 8: onnxruntime's memory arena keeps the largest batch's
activations (~35 MB per 256 px window for lite); 16 at a time cost 0.6 GB more peak memory for no
measurable speed (docs/BENCHMARKS.md, memory section)."""
BATCH_GPU = 64
"""On a GPU larger batches pay; an out-of-memory error halves it (``_run``)."""
GOOD_STRIDE = 32
GOOD_BLOCK = 1024
"""Core side (px) of the blocks a large image's goodness map is computed in (multiple of the stride).

Why blocks: the goodness networks keep full-resolution activations (channels x H x W floats per
layer); on a 2336² tile that is several hundred MB per layer and drove the deep pipeline's peak to
5 GB. Blocks of 1024² plus the reach margin bound it, and give the same map (tested)."""
GOOD_REACH = 160
"""Margin (px, multiple of the stride) around a block core: more than the networks' reach, so the cells
taken from a block are the cells a whole-image pass gives."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for onnxruntime's allocation failures (CUDA or CPU arena) and MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return any(k in msg for k in ("out of memory", "failed to allocate", "cudaerrormemoryallocation",
                                  "bad_alloc", "cudnn_status_alloc_failed"))


def _goodness_cells(n: int) -> int:
    """Cells of the goodness map along a side of ``n`` px, as the network computes them: three 2x2
    max-pools (floor), two 3x3 stride-2 convolutions with padding 1, the 4x4 average pool."""
    m = n // 8
    m = (m - 1) // 2 + 1
    m = (m - 1) // 2 + 1
    return m - 3


def _goodness_blocks(n_cells: int, size: int, block: int):
    """Per block along one axis: (its cells: centre in the block core, read start, read end)."""
    centres = GOOD_STRIDE * np.arange(n_cells) + 64
    for start in range(0, size, block):
        cells = np.flatnonzero((centres >= start) & (centres < start + block))
        if len(cells):
            yield cells, max(start - GOOD_REACH, 0), min(start + block + GOOD_REACH, size)


class DeepModels:
    """Loaded, verified sessions of one size variant."""

    def __init__(self, size: Optional[str] = None, provider: str = "auto", models_dir: Optional[Path] = None,
                 threads: Optional[int] = None) -> None:
        sizes = available_sizes(models_dir)
        broken = broken_sets(models_dir)
        if not sizes and not broken:
            load_manifest(models_dir)  # raises the specific "not installed"/"corrupt" error
            raise ModelError("the model manifest lists no complete set of networks; reinstall the plugin")
        size = size or default_set(models_dir)
        if size in broken:  # a set is whole or refused: never another set in its place
            raise ModelError(broken[size])
        if size not in sizes:
            raise ModelError(f"no '{size}' models installed (available: {', '.join(sizes) or 'none'})")
        man = load_manifest(models_dir)
        self.size = size
        self.sessions: dict[str, Session] = {}
        for name in NETWORKS:
            try:
                path = verify(man[(name, size)])
            except ModelError as exc:
                raise ModelError(f"model set '{size}' is refused: {exc}") from None
            # no arena for networks run on large images a few times (goodness, CorrASL-SP's per-block features):
            # the arena keeps its largest allocations (measured: 4.8 GB vs 1.6 GB for one 1324² SP block)
            big = name.startswith("goodness") or man[(name, size)].metadata.get("similarity") == "zncc"
            self.sessions[name] = make_session(path, provider, threads, arena=not big)
        self.provider = self.sessions["corrasl_sar"].provider
        self.kind = "sp" if self.sessions["corrasl_sar"].metadata.get("similarity") == "zncc" else "corrasl"
        """'sp': CorrASL with the structural prior (stride-1 features, ZNCC at 1 px cells, ``engine.runtime.sp``);
        'corrasl': the published architecture (2 px cells, 65 x 65 heatmaps)."""
        self.sp = None
        if self.kind == "sp":
            from .sp import SPFeatures

            self._check_sp_metadata()
            self.sp = SPFeatures.from_sessions(self.sessions["corrasl_sar"], self.sessions["corrasl_opt"])
        else:
            self._check_metadata()
        self.input_map: dict[str, tuple[float, float]] = {}
        """Per network: the fixed affine map unit image -> network input, from its own metadata."""
        for name, sess in self.sessions.items():
            pre = sess.metadata.get("preprocessing", {})
            self.input_map[name] = (float(pre.get("input_centre", 0.5)), float(pre.get("input_scale", 4.0)))
        self.centre, self.scale = self.input_map["corrasl_sar"]
        self.versions = {n: s.metadata.get("version", "?") for n, s in self.sessions.items()}
        self.max_batch: dict[str, int] = {}
        self.warnings: list[str] = []
        corr = self.sessions["corrasl_sar"].metadata.get("offset_correction_px", [0.0, 0.0])
        self.offset_correction = (float(corr[0]), float(corr[1]))
        """(drow, dcol) px subtracted from every CorrASL offset: its bias measured on validation pairs."""

    def _check_sp_metadata(self) -> None:
        """A CorrASL-SP set: its two streams and ORN are one build of this set; its goodness networks are
        the ones its CorrASL metadata names (``goodness_set``), re-used unchanged from that set."""
        own = ("corrasl_sar", "corrasl_opt", "orn")
        versions = {self.sessions[n].metadata.get("version") for n in own}
        sizes = {self.sessions[n].metadata.get("size") for n in own}
        good_from = self.sessions["corrasl_sar"].metadata.get("goodness_set", self.size)
        good_sizes = {self.sessions[n].metadata.get("size") for n in ("goodness_sar", "goodness_opt")}
        if len(versions) != 1 or sizes != {self.size} or good_sizes != {good_from}:
            raise ModelError(f"the installed model files of set '{self.size}' do not belong together (CorrASL/ORN "
                             f"versions {sorted(map(str, versions))}, sizes {sorted(map(str, sizes))}; goodness from "
                             f"{sorted(map(str, good_sizes))}, expected '{good_from}'); reinstall the plugin")
        orn = self.sessions["orn"].metadata
        if orn.get("input") != "zncc_crop" or orn.get("heatmap") != 65:
            raise ModelError(f"the ORN of set '{self.size}' does not judge 65 x 65 ZNCC crops "
                             f"(input={orn.get('input')!r}, heatmap={orn.get('heatmap')!r}); reinstall the plugin")

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
    def to_input(self, unit: np.ndarray, network: str = "corrasl_sar") -> np.ndarray:
        centre, scale = self.input_map.get(network, (self.centre, self.scale))
        return ((np.asarray(unit, np.float32) - centre) * scale).astype(np.float32)

    def _run(self, name: str, x: np.ndarray, batch: int = 0) -> np.ndarray:
        """Run ``name`` over ``x`` in batches; on an out-of-memory error retry with half the batch.

        Why: a GPU's free memory is not known in advance (other programs share it); halving until it
        fits (down to one sample) is cheaper than a failed run. Other errors propagate unchanged."""
        sess = self.sessions[name]
        out = []
        i = 0
        batch = batch or (BATCH if self.provider == "cpu" else BATCH_GPU)
        batch = max(1, min(batch, self.max_batch.get(name, batch)))
        while i < len(x):
            try:
                out.append(sess.run(x[i:i + batch]))
            except Exception as exc:  # onnxruntime raises its own RuntimeException types
                if not is_out_of_memory(exc) or batch == 1:
                    if is_out_of_memory(exc):
                        raise ModelError(f"not enough memory to run {name} even one sample at a time on "
                                         f"{self.provider.upper()}; use --device cpu or a smaller tile") from None
                    raise
                batch = max(1, batch // 2)
                self.max_batch[name] = batch
                self.warnings.append(f"{name}: out of memory on {self.provider.upper()}, batch reduced to {batch}")
                continue
            i += batch
        return np.concatenate(out)

    def sar_features(self, search_unit: np.ndarray) -> np.ndarray:
        """(N,H,W) unit SAR -> (N,C,(H-7)//2,(W-7)//2) L2-normalised features."""
        return self._run("corrasl_sar", self.to_input(search_unit, "corrasl_sar")[:, None])

    def opt_features(self, template_unit: np.ndarray) -> np.ndarray:
        return self._run("corrasl_opt", self.to_input(template_unit, "corrasl_opt")[:, None])

    def heatmaps(self, search_unit: np.ndarray, template_unit: np.ndarray) -> np.ndarray:
        """(N,S,S) SAR windows x (N,128,128) optical templates -> raw heatmaps, (N,65,65) for S = 256.

        Any even S > 136 works (the streams are fully convolutional); see ``engine.deep.matcher`` for
        the cell -> pixel mapping."""
        s = np.asarray(search_unit)
        t = np.asarray(template_unit)
        if (t.shape[1:] != (128, 128) or len(s) != len(t) or s.ndim != 3 or s.shape[1] != s.shape[2]
                or s.shape[1] < 136 or s.shape[1] % 2):
            raise ValueError(f"CorrASL needs (N,S,S) windows (S even, > 136) and (N,128,128) templates, "
                             f"got {s.shape}, {t.shape}")
        return fft_correlate(self.sar_features(s), self.opt_features(t))

    def reliability(self, heatmaps: np.ndarray) -> np.ndarray:
        """ORN probability that each heatmap's peak is a correct match, (N,)."""
        return self._run("orn", np.asarray(heatmaps, np.float32), batch=256).reshape(-1)

    def goodness_map(self, unit: np.ndarray, modality: str, block: int = GOOD_BLOCK) -> np.ndarray:
        """Goodness of a (H,W) unit image, (H//32-3, W//32-3); cell (i,j) covers px [32i, 32i+128).

        Images larger than a block are done block by block (cores of ``block`` px plus ``GOOD_REACH``
        of context, read windows on the 32 px grid); each block gives the cells whose centre lies in
        its core."""
        name = "goodness_sar" if modality == "sar" else "goodness_opt"
        unit = np.asarray(unit)
        H, W = unit.shape
        n_r, n_c = _goodness_cells(H), _goodness_cells(W)
        if H <= block + 2 * GOOD_REACH and W <= block + 2 * GOOD_REACH:
            return self._run(name, self.to_input(unit, name)[None, None])[0, 0]
        out = np.empty((n_r, n_c), np.float32)
        for rows, a, b in _goodness_blocks(n_r, H, block):
            for cols, c, d in _goodness_blocks(n_c, W, block):
                g = self._run(name, self.to_input(unit[a:b, c:d], name)[None, None])[0, 0]
                # block cell k is image cell a/32 + k
                out[np.ix_(rows, cols)] = g[np.ix_(rows - a // GOOD_STRIDE, cols - c // GOOD_STRIDE)]
        return out

    def crop_goodness(self, crops_unit: np.ndarray, modality: str) -> np.ndarray:
        """Goodness of (N,128,128) crops, (N,)."""
        name = "goodness_sar" if modality == "sar" else "goodness_opt"
        return self._run(name, self.to_input(crops_unit, name)[:, None], batch=64).reshape(-1)
