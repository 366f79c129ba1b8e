"""Scene model: DTM, object heights and land cover on a regular ground grid, with ground truth.

``generate_scene`` composes the layout stages (settlements, fields, forests, farmsteads, arterial
roads, water) on a flat Canvas, then plants trees (Gaussian crowns around random trunk positions
whose density each stage set) and scatters small man-made objects (cars, rooftop equipment).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import numpy as np

from .canvas import ID_URBAN_BUILDING, Canvas
from .landscape import (add_arterials, add_farmsteads, add_forests, add_water, layout_fields,
                        stand_height, terrain, urbanness)
from .noise import blur, gaussian_kernel, smooth_noise
from .params import SCENE_KINDS, LandCover, SceneParams, Zone
from .settlement import layout_settlements

ELEVATED_M = 0.5
"""Height above the DTM from which a pixel counts as elevated (not ground level)."""


@dataclass
class Scene:
    """A simulated scene on a north-up grid of ``gsd`` metre pixels (row 0 = north edge)."""

    dtm: np.ndarray
    """float32 (H, W) terrain height, metres."""
    ndsm: np.ndarray
    """float32 (H, W) height of buildings, trees and bridges above the terrain (0 = ground)."""
    landcover: np.ndarray
    """uint8 (H, W) ``LandCover`` values (the visible top surface)."""
    building_id: np.ndarray
    """int32 (H, W) unique id per building (0 = no building)."""
    object_id: np.ndarray
    """int32 (H, W) id of the field / lot / block / building / water body a pixel belongs to; the
    renderers derive per-object brightness and colour from it."""
    zone: np.ndarray
    """uint8 (H, W) ``Zone`` (rural / suburban / urban)."""
    row_texture: np.ndarray
    """float32 (H, W) crop-row / furrow pattern in [-1, 1] (0 outside fields)."""
    clutter: np.ndarray
    """bool (H, W) small man-made objects: cars, rooftop equipment (bright SAR point targets)."""
    gsd: float
    params: Optional[SceneParams] = None
    dsm: np.ndarray = field(init=False, repr=False)
    """float32 (H, W) surface height = dtm + ndsm."""

    def __post_init__(self) -> None:
        self.dtm = np.asarray(self.dtm, np.float32)
        self.ndsm = np.asarray(self.ndsm, np.float32)
        self.dsm = self.dtm + self.ndsm

    @property
    def shape(self) -> Tuple[int, int]:
        return self.landcover.shape

    @property
    def elevated(self) -> np.ndarray:
        """bool (H, W): pixels whose visible surface is above ground level (roofs, canopy, bridges)."""
        return self.ndsm > ELEVATED_M

    def crop(self, r0: int, c0: int, h: int, w: int, copy: bool = True) -> "Scene":
        """Sub-scene of rows [r0, r0 + h) and columns [c0, c0 + w); ``copy=False`` shares memory."""
        sl = (slice(r0, r0 + h), slice(c0, c0 + w))
        f = (lambda a: a[sl].copy()) if copy else (lambda a: a[sl])
        return Scene(dtm=f(self.dtm), ndsm=f(self.ndsm), landcover=f(self.landcover),
                     building_id=f(self.building_id), object_id=f(self.object_id), zone=f(self.zone),
                     row_texture=f(self.row_texture), clutter=f(self.clutter), gsd=self.gsd,
                     params=self.params)


def generate_scene(params: SceneParams = SceneParams()) -> Scene:
    """Build a deterministic random scene (same params -> identical arrays)."""
    H, W = params.shape
    kind = params.kind
    rng = np.random.default_rng([int(params.seed) & 0xFFFFFFFF, SCENE_KINDS.index(kind), 0x5CE4E])
    canvas = Canvas(H, W, float(params.gsd))
    urb = urbanness(canvas, rng, kind)
    dtm = terrain(canvas, rng, kind)
    settled = layout_settlements(canvas, rng, urb)
    layout_fields(canvas, rng, np.flatnonzero(~settled))
    add_forests(canvas, rng, kind)
    add_farmsteads(canvas, rng)
    add_arterials(canvas, rng, kind)
    add_water(canvas, rng, kind, dtm)
    canopy = _plant_trees(canvas, rng)
    clutter = _scatter_clutter(canvas, rng)
    ndsm = np.maximum(canvas.height, canopy)
    tree = canopy > canvas.height
    lc = canvas.landcover
    lc[tree] = LandCover.TREE
    canvas.row_texture[tree] = 0
    shp = (H, W)
    return Scene(dtm=dtm, ndsm=ndsm.reshape(shp), landcover=lc.reshape(shp),
                 building_id=np.where(lc == LandCover.BUILDING, canvas.building_id, 0).astype(np.int32).reshape(shp),
                 object_id=canvas.object_id.reshape(shp), zone=canvas.zone.reshape(shp),
                 row_texture=canvas.row_texture.reshape(shp), clutter=clutter.reshape(shp),
                 gsd=float(params.gsd), params=params)


def _plant_trees(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Flat canopy height: Gaussian crowns around random trunks; 0 where no tree."""
    g = canvas.gsd
    lc = canvas.landcover
    allowed = (lc == LandCover.GRASS) | (lc == LandCover.PAVED) | (lc == LandCover.BARE) | (lc == LandCover.CROP)
    p = np.minimum(canvas.tree_density * (g * g), 0.9)
    trunks = (rng.random(canvas.n, dtype=np.float32) < p) & allowed
    canopy = np.zeros(canvas.n, np.float32)
    if not trunks.any():
        return canopy
    sigma = 2.0 / g
    if sigma > 0.05:
        k = gaussian_kernel(sigma)
        k0 = float(k[len(k) // 2])   # peak weight: one trunk's blurred value at its own pixel is k0**2
    else:
        k0 = 1.0
    prof = blur(trunks.reshape(canvas.H, canvas.W).astype(np.float32), sigma).ravel() * (1.0 / (k0 * k0))
    forest = canvas.tree_density >= 0.03
    thr = np.where(forest, 0.16, 0.22).astype(np.float32)
    m = (prof > thr) & allowed
    stand = stand_height(canvas, rng)
    iso = np.clip(10.0 + 3.0 * smooth_noise(rng, (canvas.H, canvas.W), 120.0 / g).ravel(), 5.0, 18.0)
    base = np.where(canvas.tree_height > 0, canvas.tree_height, np.where(forest, stand, iso))
    # Crowns: isolated trees are domes; in stands the overlapping crowns make a bumpy canopy whose
    # peaks are the trunks (profile relative to its mean over the stand).
    fmean = float(prof[forest & m].mean()) if (forest & m).any() else 1.0
    shape = np.where(forest, np.clip(0.45 + 0.45 * prof / fmean, 0.45, 1.1),
                     0.55 + 0.45 * np.sqrt(np.clip(prof, 0, 1)))
    canopy[m] = (base * shape)[m]
    return canopy


def _scatter_clutter(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    g = canvas.gsd
    p = np.minimum(canvas.clutter_density * (g * g), 0.5)
    c = rng.random(canvas.n, dtype=np.float32) < p
    if g < 1.6:   # cars span a few pixels at fine resolution
        c2 = c.reshape(canvas.H, canvas.W)
        c2[:, 1:] |= c2[:, :-1].copy()
        if g < 0.9:
            c2[:, 2:] |= c2[:, :-2].copy()
            c2[1:, :] |= c2[:-1, :].copy()
    return c


def scene_from_arrays(landcover: np.ndarray, ndsm: np.ndarray, gsd: float, dtm: Optional[np.ndarray] = None,
                      building_id: Optional[np.ndarray] = None, object_id: Optional[np.ndarray] = None,
                      zone: Optional[np.ndarray] = None, row_texture: Optional[np.ndarray] = None,
                      clutter: Optional[np.ndarray] = None) -> Scene:
    """Wrap user-made arrays (e.g. a hand-built test scene) into a Scene with defaults for the rest."""
    landcover = np.asarray(landcover, np.uint8)
    shp = landcover.shape
    z = np.zeros(shp, np.float32)
    if building_id is None:
        building_id = np.where(landcover == LandCover.BUILDING, ID_URBAN_BUILDING, 0).astype(np.int32)
    return Scene(dtm=z if dtm is None else dtm, ndsm=ndsm, landcover=landcover,
                 building_id=np.asarray(building_id, np.int32),
                 object_id=np.asarray(building_id if object_id is None else object_id, np.int32),
                 zone=np.full(shp, Zone.RURAL, np.uint8) if zone is None else np.asarray(zone, np.uint8),
                 row_texture=z.copy() if row_texture is None else np.asarray(row_texture, np.float32),
                 clutter=np.zeros(shp, bool) if clutter is None else np.asarray(clutter, bool),
                 gsd=float(gsd))


def single_building_scene(size: int = 160, gsd: float = 1.0, height: float = 20.0,
                          footprint: Tuple[int, int, int, int] = (60, 60, 100, 100),
                          ground: LandCover = LandCover.GRASS) -> Scene:
    """Flat ground of one class with one flat-roofed box building.

    ``footprint`` = (row0, col0, row1, col1) in pixels, end-exclusive. Used by tests and to check
    the rendering geometry (layover, shadows, double bounce) against closed-form values.
    """
    lc = np.full((size, size), ground, np.uint8)
    nd = np.zeros((size, size), np.float32)
    r0, c0, r1, c1 = footprint
    lc[r0:r1, c0:c1] = LandCover.BUILDING
    nd[r0:r1, c0:c1] = height
    s = scene_from_arrays(lc, nd, gsd)
    s.params = replace(SceneParams(size=size, gsd=gsd, kind="rural", seed=0))
    return s
