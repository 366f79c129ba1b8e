"""Deterministic SAR + optical scene simulator with exact ground truth.

Typical use::

    from engine.simulate import simulate_pair, SceneParams, MisregParams, load_truth
    paths = simulate_pair("out", "demo", scene=SceneParams(size=1024, kind="urban", seed=3),
                          misreg=MisregParams(shift=(12, -7)))
    truth = load_truth(paths.truth)

Modules: ``params`` (dataclasses, enums), ``scene`` (DSM / land cover generation), ``optical`` and
``sar`` (renderers on the true grid), ``misregistration`` (nominal -> true map f, resampling,
check points), ``pair`` (georeferenced files + truth), ``truth`` (sidecar loader), ``patches``
(fast in-memory training pairs), ``writer`` (atomic GeoTIFF / JSON).
"""
from .misregistration import CheckPoints, MisregModel
from .optical import quantize, render_optical
from .pair import PairArrays, PairPaths, simulate_pair, simulate_pair_arrays
from .params import (SAR_OUTPUTS, SCENE_KINDS, LandCover, MisregParams, OpticalParams, SarParams,
                     SceneParams, Zone)
from .patches import PatchPair, random_params, render_patch, simulate_patch_pair
from .sar import apply_speckle, render_sar, sar_mean, sar_to_output
from .scene import Scene, generate_scene, scene_from_arrays, single_building_scene
from .truth import Truth, load_truth

__all__ = [
    "CheckPoints", "MisregModel", "quantize", "render_optical", "PairArrays", "PairPaths", "simulate_pair",
    "simulate_pair_arrays", "SAR_OUTPUTS", "SCENE_KINDS", "LandCover", "MisregParams", "OpticalParams",
    "SarParams", "SceneParams", "Zone", "PatchPair", "random_params", "render_patch", "simulate_patch_pair",
    "apply_speckle", "render_sar", "sar_mean", "sar_to_output", "Scene", "generate_scene",
    "scene_from_arrays", "single_building_scene", "Truth", "load_truth",
]
