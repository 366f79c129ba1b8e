"""Held-out simulated data for the benchmark, made with the engine's own simulator.

Two products:

* ``coregistered_scene``: an in-memory, perfectly co-registered SAR/optical pair (no misregistration)
  preprocessed exactly as the pipeline does (SAR dB -> [0,1] robust stretch, optical luminance ->
  [0,1]); the patch test cuts its pairs from it with known synthetic offsets.
* ``write_scene_pair``: SAR + optical GeoTIFFs with the misregistration model applied, plus the truth
  JSON with check points, for the end-to-end scene test.

Scene and sensor parameters are drawn with the simulator's own training distribution
(``engine.simulate.patches.random_params``) from a held-out seed, so the test set is not one fixed
geometry; the draw is deterministic so every run sees the same held-out data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_params(seed: int, kind: str, size: int):
    """(SceneParams, OpticalParams, SarParams) like the training generator's, for a held-out seed.

    Uses the simulator's own ``random_params`` (the distribution training draws from: gsd 1-10 m,
    varied incidence, look direction, sun, off-nadir, bands) and then forces the scene seed to the
    held-out one, so the test resembles training data without ever being training data.
    """
    from engine.simulate.params import SceneParams
    from engine.simulate.patches import random_params

    from .heldout import is_heldout

    if not is_heldout(seed):
        raise ValueError(f"seed {seed} is not in the held-out block; the benchmark must not use training seeds")
    rng = np.random.default_rng([seed, 17])
    sp, op, sar = random_params(rng, size=size, kind=kind)
    sp = SceneParams(size=size, gsd=sp.gsd, kind=kind, seed=seed)
    return sp, op, sar


def coregistered_scene(seed: int, kind: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sar_unit, opt_unit, valid) of one held-out scene, co-registered, float32 in [0, 1]."""
    from engine.preprocess import optical_to_gray, optical_to_unit, sar_to_unit
    from engine.simulate.patches import render_patch

    sp, op, sar = draw_params(seed, kind, size)
    pp = render_patch(sp, op, sar, np.random.default_rng([seed, 23]))
    sar_u, sv = sar_to_unit(pp.sar, scale="linear")
    opt_u, ov = optical_to_unit(optical_to_gray(pp.optical))
    return sar_u.astype(np.float32), opt_u.astype(np.float32), sv & ov


def write_scene_pair(work: Path, name: str, seed: int, kind: str, size: int,
                     misreg_shift_only: bool = False) -> tuple[str, str, str, str]:
    """Simulate and write one misregistered pair; returns (sar_path, opt_path, truth_path, misreg text)."""
    from engine.simulate import simulate_pair
    from engine.simulate.params import MisregParams

    sp, op, sar = draw_params(seed, kind, size)
    sar.output = "db"
    rng = np.random.default_rng([seed, 31])
    if misreg_shift_only:
        misreg = MisregParams(shift=tuple(float(v) for v in rng.uniform(-20, 20, 2)))
    else:
        # Odd seeds always get the affine part, even seeds never: both kinds are in every run of >= 2.
        misreg = MisregParams.random(rng, max_shift=30.0, max_warp_px=2.0, p_affine=float(seed % 2))
    work.mkdir(parents=True, exist_ok=True)
    # simulate_pair writes <name>_sar.tif, <name>_opt.tif and <name>_truth.json.
    cached = [work / f"{name}_{t}" for t in ("sar.tif", "opt.tif", "truth.json")]
    if all(p.exists() for p in cached):  # same seed and name -> same pair; skip re-simulating
        sar_p, opt_p, truth_p = (str(p) for p in cached)
    else:
        out = simulate_pair(str(work), name, scene=sp, optical=op, sar=sar, misreg=misreg)
        sar_p, opt_p, truth_p = out.sar, out.optical, out.truth
    desc = (f"shift ({misreg.shift[0]:+.1f}, {misreg.shift[1]:+.1f}) px, rot {misreg.rotation_deg:+.2f}°, "
            f"scale {misreg.scale:.4f}, shear {misreg.shear:+.4f}, warp {misreg.warp_px:.1f} px")
    desc += f"; gsd {sp.gsd:.1f} m, incidence {sar.incidence:.0f}°, look az {sar.look_azimuth:.0f}°"
    return sar_p, opt_p, truth_p, desc

