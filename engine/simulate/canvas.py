"""Flat per-pixel layers the layout stages write into, plus the rotated street/field grid they share.

Layout stages work on 1-D subsets of pixels (flat indices) instead of whole images: a mixed scene
is ~20 % urban, ~35 % suburban and ~45 % rural, so evaluating every layout rule only where it can
apply keeps a 2048x2048 scene near a second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .noise import interval_index, random_edges, smooth_noise
from .params import LandCover, Zone


@dataclass
class Canvas:
    """Flat (H*W,) layers; ``idx`` arguments elsewhere are flat indices into these."""

    H: int
    W: int
    gsd: float

    def __post_init__(self) -> None:
        n = self.H * self.W
        self.landcover = np.full(n, LandCover.GRASS, np.uint8)
        self.height = np.zeros(n, np.float32)          # building / bridge height above ground
        self.object_id = np.zeros(n, np.int32)
        self.building_id = np.zeros(n, np.int32)
        self.zone = np.full(n, Zone.RURAL, np.uint8)
        self.row_texture = np.zeros(n, np.float32)
        self.tree_density = np.zeros(n, np.float32)    # expected trees per m^2
        self.tree_height = np.zeros(n, np.float32)     # 0 = use the default isolated-tree height
        self.clutter_density = np.zeros(n, np.float32)  # cars / small man-made scatterers per m^2
        self.bridge_ok = np.zeros(n, bool)             # road pixel that becomes a bridge over water

    @property
    def n(self) -> int:
        return self.H * self.W

    def xy(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Metric (x east, y south) of pixel centres for flat indices."""
        r = idx // self.W
        x = (idx - r * self.W).astype(np.float32)
        y = r.astype(np.float32)
        g = np.float32(self.gsd)
        x += np.float32(0.5)
        x *= g
        y += np.float32(0.5)
        y *= g
        return x, y

    @property
    def extent(self) -> tuple[float, float]:
        return self.W * self.gsd, self.H * self.gsd


def rotated_range(width_m: float, height_m: float, angle: float, margin: float) -> tuple:
    """(umin, umax, vmin, vmax) of the rotated coordinates u, v over the scene rectangle."""
    c, s = math.cos(angle), math.sin(angle)
    xs = np.array([0.0, width_m, 0.0, width_m])
    ys = np.array([0.0, 0.0, height_m, height_m])
    u = xs * c + ys * s
    v = -xs * s + ys * c
    return u.min() - margin, u.max() + margin, v.min() - margin, v.max() + margin


@dataclass
class Grid:
    """A rotated, optionally warped grid of road centre lines with random spacings and widths."""

    angle: float
    u_edges: np.ndarray
    v_edges: np.ndarray
    u_width: np.ndarray
    v_width: np.ndarray
    sidewalk: float
    warp_u: Optional[np.ndarray] = None   # full-res flat warp fields (metres) or None
    warp_v: Optional[np.ndarray] = None

    @property
    def n_blocks(self) -> int:
        return (len(self.u_edges) - 1) * (len(self.v_edges) - 1)

    @property
    def nj(self) -> int:
        return len(self.v_edges) - 1

    @classmethod
    def random(cls, rng: np.random.Generator, canvas: Canvas, angle: float, su: tuple, sv: tuple,
               width: tuple, major_width: tuple, p_major: float, sidewalk: float,
               warp_m: float = 0.0, warp_scale_m: float = 400.0) -> "Grid":
        w_m, h_m = canvas.extent
        umin, umax, vmin, vmax = rotated_range(w_m, h_m, angle, 2 * max(su[1], sv[1]) + warp_m * 3)
        ue = random_edges(rng, umin, umax, *su)
        ve = random_edges(rng, vmin, vmax, *sv)

        def widths(n: int) -> np.ndarray:
            w = rng.uniform(*width, n)
            major = rng.random(n) < p_major
            w[major] = rng.uniform(*major_width, int(major.sum()))
            return w

        wu, wv = widths(len(ue)), widths(len(ve))
        warp_u = warp_v = None
        if warp_m > 0:
            sc = warp_scale_m / canvas.gsd
            warp_u = (warp_m * smooth_noise(rng, (canvas.H, canvas.W), sc)).ravel()
            warp_v = (warp_m * smooth_noise(rng, (canvas.H, canvas.W), sc)).ravel()
        return cls(angle, ue, ve, wu, wv, sidewalk, warp_u, warp_v)

    def block_centres_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Metric (x, y) of every block centre, flattened as block = i * nj + j."""
        uc = 0.5 * (self.u_edges[:-1] + self.u_edges[1:])
        vc = 0.5 * (self.v_edges[:-1] + self.v_edges[1:])
        uu, vv = np.meshgrid(uc, vc, indexing="ij")
        c, s = math.cos(self.angle), math.sin(self.angle)
        return (uu * c - vv * s).ravel(), (uu * s + vv * c).ravel()

    def cells(self, canvas: Canvas, idx: np.ndarray) -> "Cells":
        x, y = canvas.xy(idx)
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = x * np.float32(c)
        u += y * np.float32(s)
        v = y * np.float32(c)
        v -= x * np.float32(s)
        if self.warp_u is not None:
            u += self.warp_u[idx]
            v += self.warp_v[idx]
        i = interval_index(u, self.u_edges)
        j = interval_index(v, self.v_edges)
        sw = self.sidewalk
        # Inner block (inside roads and sidewalks) start and length per grid interval.
        lo_u = (self.u_edges[:-1] + 0.5 * self.u_width[:-1] + sw).astype(np.float32)
        len_u = (self.u_edges[1:] - 0.5 * self.u_width[1:] - sw).astype(np.float32) - lo_u
        lo_v = (self.v_edges[:-1] + 0.5 * self.v_width[:-1] + sw).astype(np.float32)
        len_v = (self.v_edges[1:] - 0.5 * self.v_width[1:] - sw).astype(np.float32) - lo_v
        u -= lo_u[i]
        v -= lo_v[j]
        lu = len_u[i]
        lv = len_v[j]
        sw32 = np.float32(sw)
        road = (u < -sw32) | (v < -sw32) | (u - lu > sw32) | (v - lv > sw32)
        return Cells(i=i, j=j, road=road, s=u, t=v, lu=lu, lv=lv, nj=self.nj, sidewalk=sw)

    def line_id(self, cells: "Cells") -> np.ndarray:
        """Id of the road line a road pixel lies on: u-lines 0..n-1, v-lines offset by 100000."""
        sw = np.float32(cells.sidewalk)
        lo_u = cells.s < -sw
        hi_u = cells.s - cells.lu > sw
        lo_v = cells.t < -sw
        return np.where(lo_u, cells.i, np.where(hi_u, cells.i + 1,
                        np.where(lo_v, 100000 + cells.j, 100000 + cells.j + 1))).astype(np.int32)


@dataclass
class Cells:
    """Per-pixel position inside a Grid: block indices, road flag, inner-block coordinates."""

    i: np.ndarray
    j: np.ndarray
    road: np.ndarray
    s: np.ndarray    # metres from the block's inner corner along u (inside sidewalks)
    t: np.ndarray
    lu: np.ndarray   # inner block size along u
    lv: np.ndarray
    nj: int
    sidewalk: float

    def __post_init__(self) -> None:
        self.block = self.i * self.nj + self.j

    def neighbour(self) -> np.ndarray:
        """Block across the nearest road (for road pixels on a zone border)."""
        sw = np.float32(self.sidewalk)
        di = np.where(self.s < -sw, -1, np.where(self.s - self.lu > sw, 1, 0))
        dj = np.where(di != 0, 0, np.where(self.t < -sw, -1, np.where(self.t - self.lv > sw, 1, 0)))
        return np.maximum(self.i + di, 0) * self.nj + np.maximum(self.j + dj, 0)

    @property
    def inside(self) -> np.ndarray:
        return (self.s >= 0) & (self.s < self.lu) & (self.t >= 0) & (self.t < self.lv)

    def subset(self, m: np.ndarray) -> "Cells":
        return Cells(i=self.i[m], j=self.j[m], road=self.road[m], s=self.s[m], t=self.t[m],
                     lu=self.lu[m], lv=self.lv[m], nj=self.nj, sidewalk=self.sidewalk)


# Disjoint object-id ranges. Renderers derive per-object colour/brightness variation from these ids
# and recognise a few materials from the range (e.g. swimming pools vs. lakes).
ID_URBAN_BUILDING = 1
ID_SUBURB_BUILDING = 20_000_000
ID_FARM_BUILDING = 40_000_000
ID_FIELD = 50_000_000
ID_BLOCK = 60_000_000
ID_LOT = 70_000_000
ID_ROAD = 80_000_000
ID_WATER = 90_000_000
ID_POOL = 95_000_000
ID_FOREST = 97_000_000
