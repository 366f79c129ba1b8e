"""Simulate a georeferenced SAR + (misregistered) optical pair with its truth sidecar.

The scene is generated with a margin around the SAR footprint so that the misregistered optical
always samples rendered ground; the SAR is the centre crop. Random streams are separate per stage
(scene, optical, SAR, check points), so changing e.g. the misregistration never changes the scene
or the SAR image.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .misregistration import (CheckPoints, MisregModel, describe, margin_px, pick_check_points,
                              resample_optical)
from .optical import add_noise, quantize, render_optical_clean
from .params import LandCover, MisregParams, OpticalParams, SarParams, SceneParams, params_dict
from .sar import render_sar, sar_to_output
from .scene import Scene, generate_scene
from .truth import TRUTH_FORMAT
from .writer import write_geotiff, write_json

PAIR_MARGIN_PX = 96
"""Minimum scene margin (SAR pixels) around the SAR footprint; grows in steps of 32 only when a
misregistration needs more, so the scene stays the same across usual misregistrations."""
DEFAULT_ORIGIN = (452_000.0, 5_412_000.0)
"""Upper-left corner (x, y) of the SAR grid: central Europe in UTM zone 33N."""


@dataclass
class PairPaths:
    sar: str
    optical: str
    truth: str


@dataclass
class PairArrays:
    """Everything ``simulate_pair`` writes, in memory, plus the true-grid renderings."""

    scene: Scene                 # on the SAR grid
    sar: np.ndarray              # SAR in the requested output kind (H, W)
    sar_sigma0: np.ndarray       # speckled linear sigma0 (H, W)
    optical: np.ndarray          # written optical (bands, Ho, Wo), uint8/uint16, nominal grid
    optical_true: np.ndarray     # optical float [0, 1] on the SAR grid (true geometry, before noise)
    sar_transform: object        # rasterio Affine
    optical_transform: object
    crs_wkt: str
    model: MisregModel
    check_points: CheckPoints
    truth: dict


def _box(r0, r1, c0, c1, shape):
    """(row0, col0, height, width) of a pixel box clipped to ``shape``."""
    a = max(int(math.floor(r0)), 0)
    b = max(int(math.floor(c0)), 0)
    return a, b, min(int(math.ceil(r1)), shape[0]) - a, min(int(math.ceil(c1)), shape[1]) - b


def _affine(x0, y0, gsd):
    from rasterio.transform import Affine
    return Affine(gsd, 0.0, x0, 0.0, -gsd, y0)


def simulate_pair_arrays(scene: SceneParams = SceneParams(), optical: OpticalParams = OpticalParams(),
                         sar: SarParams = SarParams(), misreg: MisregParams = MisregParams(),
                         crs: str = "EPSG:32633", origin: Optional[Tuple[float, float]] = None) -> PairArrays:
    """Simulate the pair in memory (see ``simulate_pair``)."""
    from rasterio.crs import CRS

    crs_obj = CRS.from_user_input(crs)
    h, w = scene.shape
    g = float(scene.gsd)
    go = float(optical.gsd or g)
    x0, y0 = origin or DEFAULT_ORIGIN
    sar_tf = _affine(x0, y0, g)
    ho, wo = int(round(h * g / go)), int(round(w * g / go))
    opt_tf = _affine(x0, y0, go)
    center = (x0 + wo * go / 2.0, y0 - ho * go / 2.0)
    model = MisregModel.from_params(misreg, center, go, (ho, wo))
    need = margin_px(model, (ho, wo), go, g, misreg.order)
    m = PAIR_MARGIN_PX if need <= PAIR_MARGIN_PX else int(math.ceil(need / 32.0)) * 32
    big = generate_scene(SceneParams(size=(h + 2 * m, w + 2 * m), gsd=g, kind=scene.kind, seed=scene.seed))
    big_tf = _affine(x0 - m * g, y0 + m * g, g)

    rng_opt = np.random.default_rng([int(scene.seed) & 0xFFFFFFFF, 0x0971])
    rng_sar = np.random.default_rng([int(scene.seed) & 0xFFFFFFFF, 0x05A2])
    rng_pts = np.random.default_rng([int(scene.seed) & 0xFFFFFFFF, int(misreg.seed) & 0xFFFFFFFF, 0xC4])

    ratio = go / g
    psf = optical.blur_sigma * max(ratio, 1.0)
    if ratio > 1.0:   # anti-alias before decimation
        psf = math.hypot(psf, 0.45 * ratio)
    max_h = float(big.ndsm.max())
    # Optical: the whole margin scene is rendered (not just what the misregistered image samples)
    # so the true-grid rendering does not depend on the misregistration.
    cover = np.zeros(big.shape, bool)
    clean = render_optical_clean(big, optical, rng_opt, psf_sigma_px=psf, cover=cover)
    opt_float = resample_optical(clean, big_tf, opt_tf, (ho, wo), model, order=misreg.order)
    opt_float = add_noise(opt_float, optical.noise_std, rng_opt)
    opt_out = quantize(opt_float, optical.bits)
    optical_true = clean[:, m:m + h, m:m + w].copy()

    # SAR: layover brings in objects from up to h/tan(theta) away from the sensor and shadows come
    # from up to h*tan(theta) towards it, along the look direction only.
    th = math.radians(sar.incidence)
    reach = max(max_h / math.tan(th), max_h * math.tan(th)) / g
    dcol = abs(math.sin(math.radians(sar.look_azimuth)))
    drow = abs(math.cos(math.radians(sar.look_azimuth)))
    bc, br = reach * dcol + 4 + 3 * sar.blur_sigma, reach * drow + 4 + 3 * sar.blur_sigma
    sb = _box(m - br, m + h + br, m - bc, m + w + bc, big.shape)
    sig_sub = render_sar(big.crop(*sb, copy=False), sar, rng_sar)
    sigma0 = np.ascontiguousarray(sig_sub[m - sb[0]:m - sb[0] + h, m - sb[1]:m - sb[1] + w])
    sar_out = sar_to_output(sigma0, sar.output, sar.db_range)
    scene_c = big.crop(m, m, h, w)
    scene_c.params = scene

    # Check points avoid elevated pixels and, off-nadir, ground hidden behind leaning objects.
    hidden = cover[m:m + h, m:m + w]
    pts = pick_check_points(model, opt_tf, (ho, wo), sar_tf, (h, w), np.where(hidden, np.float32(99), scene_c.ndsm),
                            rng_pts)
    truth = {
        "format": TRUTH_FORMAT,
        "crs": crs,
        "crs_wkt": crs_obj.to_wkt(),
        "conventions": ("pixel (col, row) has (0, 0) at the upper-left corner of the upper-left pixel "
                        "(pixel [r, c] centre = (c + 0.5, r + 0.5)); geotransforms are GDAL order "
                        "(x0, dx, rx, y0, ry, dy); azimuths are degrees clockwise from north; the SAR "
                        "georeference is the truth and f maps nominal optical map xy to true map xy"),
        "sar": {"geotransform": list(sar_tf.to_gdal()), "shape": [h, w], "gsd": g, "output": sar.output,
                "dtype": str(sar_out.dtype)},
        "optical": {"geotransform": list(opt_tf.to_gdal()), "shape": [ho, wo], "gsd": go,
                    "bands": optical.bands, "dtype": str(opt_out.dtype)},
        "params": {"scene": params_dict(scene), "optical": params_dict(optical), "sar": params_dict(sar),
                   "misreg": params_dict(misreg), "scene_margin_px": m},
        "misregistration": dict(model.to_dict(), summary=describe(misreg)),
        "landcover_classes": {c.name: int(c) for c in LandCover},
        "check_points": pts.to_list(),
    }
    return PairArrays(scene=scene_c, sar=sar_out, sar_sigma0=sigma0, optical=opt_out,
                      optical_true=optical_true, sar_transform=sar_tf, optical_transform=opt_tf,
                      crs_wkt=truth["crs_wkt"], model=model, check_points=pts, truth=truth)


def simulate_pair(out_dir: str, name: str = "scene", scene: SceneParams = SceneParams(),
                  optical: OpticalParams = OpticalParams(), sar: SarParams = SarParams(),
                  misreg: MisregParams = MisregParams(), crs: str = "EPSG:32633",
                  origin: Optional[Tuple[float, float]] = None, write_layers: bool = False) -> PairPaths:
    """Simulate and write ``<name>_sar.tif``, ``<name>_opt.tif`` and ``<name>_truth.json``.

    ``write_layers`` also writes the scene's land cover and nDSM on the SAR grid
    (``<name>_landcover.tif``, ``<name>_ndsm.tif``).
    """
    os.makedirs(out_dir, exist_ok=True)
    arr = simulate_pair_arrays(scene, optical, sar, misreg, crs, origin)
    sar_path = os.path.join(out_dir, f"{name}_sar.tif")
    opt_path = os.path.join(out_dir, f"{name}_opt.tif")
    truth_path = os.path.join(out_dir, f"{name}_truth.json")
    from rasterio.crs import CRS
    crs_obj = CRS.from_user_input(crs)
    write_geotiff(sar_path, arr.sar, arr.sar_transform, crs_obj,
                  descriptions=[f"SAR {sar.output}"], tags={"simulated": "sar", "output": sar.output})
    bands = ["red", "green", "blue"] if optical.bands == "rgb" else ["pan"]
    write_geotiff(opt_path, arr.optical, arr.optical_transform, crs_obj, descriptions=bands,
                  tags={"simulated": "optical", "misregistration": describe(misreg)})
    if write_layers:
        write_geotiff(os.path.join(out_dir, f"{name}_landcover.tif"), arr.scene.landcover,
                      arr.sar_transform, crs_obj)
        write_geotiff(os.path.join(out_dir, f"{name}_ndsm.tif"), arr.scene.ndsm, arr.sar_transform, crs_obj)
    truth = dict(arr.truth)
    truth["sar"] = dict(truth["sar"], file=os.path.basename(sar_path), path=os.path.abspath(sar_path))
    truth["optical"] = dict(truth["optical"], file=os.path.basename(opt_path), path=os.path.abspath(opt_path))
    write_json(truth_path, truth)
    return PairPaths(sar=sar_path, optical=opt_path, truth=truth_path)


def demo_pair(out_dir: str, size: int = 2048, seed: int = 7):
    """The bundled demo's scene (``python -m engine demo``): mixed land cover, 8-bit RGB optical, single-look
    SAR in dB, a known shift + small rotation/scale. One definition, so tests can run "the demo scene"."""
    return simulate_pair(
        out_dir, name="demo",
        scene=SceneParams(size=size, kind="mixed", seed=seed),
        optical=OpticalParams(bands="rgb", bits=8),
        sar=SarParams(incidence=35.0, look_azimuth=90.0, looks=1, output="db"),
        misreg=MisregParams(shift=(23.4, -17.8), rotation_deg=0.15, scale=1.0005, warp_px=0.0, seed=seed),
    )
