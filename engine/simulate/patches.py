"""Fast in-memory co-registered SAR/optical patches with random scene kinds and sensor parameters.

Meant for training data: no files, no misregistration (crop the arrays as the training needs).
Coarse patches (gsd >= ``oversample_above``) are rendered at half the pixel size and averaged
2x2 (optical display values; SAR mean sigma0 before speckle), so sub-pixel buildings and cars mix
into pixels as in real 10 m imagery instead of aliasing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np

from .optical import add_noise, render_optical_clean
from .params import SCENE_KINDS, OpticalParams, SarParams, SceneParams
from .sar import apply_speckle, sar_mean
from .scene import Scene, generate_scene


@dataclass
class PatchPair:
    sar: np.ndarray          # (H, W) float32 speckled linear sigma0
    optical: np.ndarray      # (bands, H, W) float32 in [0, 1]
    landcover: np.ndarray    # (H, W) uint8
    ndsm: np.ndarray         # (H, W) float32
    scene_params: SceneParams
    optical_params: OpticalParams
    sar_params: SarParams
    info: dict = field(default_factory=dict)


def _pool2(a: np.ndarray) -> np.ndarray:
    return 0.25 * (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2])


def random_params(rng: np.random.Generator, size: int = 512, kind: Optional[str] = None,
                  gsd: Optional[float] = None, gsd_range: Tuple[float, float] = (1.0, 10.0),
                  kinds: Sequence[str] = SCENE_KINDS, bands: Optional[str] = None):
    """Draw (SceneParams, OpticalParams, SarParams) like the variety of real acquisitions."""
    kind = kind or str(rng.choice(list(kinds)))
    if gsd is None:
        gsd = float(math.exp(rng.uniform(math.log(gsd_range[0]), math.log(gsd_range[1]))))
    sp = SceneParams(size=size, gsd=gsd, kind=kind, seed=int(rng.integers(0, 2**31 - 1)))
    if rng.random() < 0.7:    # polar orbit, right looking: sensor roughly east or west
        look = (90.0 if rng.random() < 0.5 else 270.0) + rng.normal(0, 10)
    else:
        look = rng.uniform(0, 360)
    sar = SarParams(incidence=float(rng.uniform(20, 50)), look_azimuth=float(look % 360),
                    looks=int(rng.integers(1, 5)), blur_sigma=float(rng.uniform(0.6, 1.3)), output="linear")
    off = 0.0 if rng.random() < 0.5 else float(rng.uniform(0, 20))
    opt = OpticalParams(sun_azimuth=float(rng.uniform(100, 260)), sun_elevation=float(rng.uniform(20, 70)),
                        off_nadir=off, off_nadir_azimuth=float(rng.uniform(0, 360)),
                        blur_sigma=float(rng.uniform(0.4, 1.2)), noise_std=float(rng.uniform(0.003, 0.02)),
                        bands=bands or ("rgb" if rng.random() < 0.6 else "pan"), haze=float(rng.uniform(0.0, 0.08)),
                        greenness=float(np.clip(rng.uniform(-0.2, 1.3), 0.0, 1.0)))
    return sp, opt, sar


def render_patch(scene_params: SceneParams, opt: OpticalParams, sar: SarParams, rng: np.random.Generator,
                 oversample_above: float = 5.0) -> PatchPair:
    """Render one co-registered patch pair for explicit parameters."""
    over = scene_params.gsd >= oversample_above
    sp = scene_params
    if over:
        h, w = scene_params.shape
        sp = SceneParams(size=(2 * h, 2 * w), gsd=scene_params.gsd / 2, kind=scene_params.kind,
                         seed=scene_params.seed)
    scene: Scene = generate_scene(sp)
    f = 2.0 if over else 1.0
    img = render_optical_clean(scene, opt, rng, psf_sigma_px=opt.blur_sigma * f)
    mean = sar_mean(scene, sar, rng)
    lc, nd = scene.landcover, scene.ndsm
    if over:
        img = _pool2(img)
        mean = _pool2(mean)
        lc, nd = lc[::2, ::2], _pool2(nd)
    img = add_noise(np.ascontiguousarray(img, np.float32), opt.noise_std, rng)
    sig = apply_speckle(np.ascontiguousarray(mean, np.float32), sar.looks, sar.blur_sigma, rng)
    return PatchPair(sar=sig, optical=img, landcover=np.ascontiguousarray(lc), ndsm=np.ascontiguousarray(nd),
                     scene_params=scene_params, optical_params=opt, sar_params=sar, info={"oversampled": over})


def simulate_patch_pair(rng: np.random.Generator, size: int = 512, kind: Optional[str] = None,
                        gsd: Optional[float] = None, gsd_range: Tuple[float, float] = (1.0, 10.0),
                        bands: Optional[str] = None, oversample_above: float = 5.0) -> PatchPair:
    """A random co-registered (true-grid) SAR/optical patch pair; everything drawn from ``rng``."""
    sp, opt, sar = random_params(rng, size, kind, gsd, gsd_range, bands=bands)
    return render_patch(sp, opt, sar, rng, oversample_above)
