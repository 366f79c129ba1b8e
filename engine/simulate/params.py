"""Parameter dataclasses and enums of the SAR/optical scene simulator.

All lengths are metres unless a name ends in ``_px`` (pixels) or ``_deg`` (degrees). Angles that give a
direction on the map (sun azimuth, SAR look azimuth, off-nadir azimuth) are degrees clockwise from
north, where north is "up" in the image (towards row 0) and east is towards increasing column.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Optional, Tuple, Union

import numpy as np


class LandCover(IntEnum):
    """Land-cover classes of ``Scene.landcover`` (uint8). 0 is never produced."""

    NODATA = 0
    WATER = 1      # rivers, lakes, ponds, swimming pools
    ROAD = 2       # asphalt roads and bridges
    PAVED = 3      # sidewalks, plazas, parking lots, courtyards
    BARE = 4       # bare soil, ploughed fields, dirt tracks
    GRASS = 5      # lawns, meadows, pasture
    CROP = 6       # agricultural fields with row texture
    TREE = 7       # tree canopy (forest stands and single trees)
    BUILDING = 8   # building roofs


class Zone(IntEnum):
    """Settlement zone of ``Scene.zone``: decides which layout rules made a pixel."""

    RURAL = 0
    SUBURBAN = 1
    URBAN = 2


SCENE_KINDS = ("rural", "suburban", "urban", "mixed")
SAR_OUTPUTS = ("linear", "db", "amplitude", "dn8", "dn16")


def _pair(v: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    r, c = v
    return int(r), int(c)


@dataclass
class SceneParams:
    """What to build: grid size (rows, cols) or a square size, ground sampling distance, scene kind."""

    size: Union[int, Tuple[int, int]] = 2048
    gsd: float = 2.5
    kind: str = "mixed"
    """'rural', 'suburban', 'urban' or 'mixed' (an urban core fading to suburbs and farmland)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCENE_KINDS:
            raise ValueError(f"kind must be one of {SCENE_KINDS}, got {self.kind!r}")
        if not self.gsd > 0:
            raise ValueError("gsd must be > 0")
        r, c = _pair(self.size)
        if r < 16 or c < 16:
            raise ValueError("size must be at least 16 pixels")

    @property
    def shape(self) -> Tuple[int, int]:
        return _pair(self.size)


@dataclass
class OpticalParams:
    """How the optical image is rendered (sun, view geometry, sensor PSF, noise, quantisation)."""

    sun_azimuth: float = 135.0
    sun_elevation: float = 45.0
    off_nadir: float = 0.0
    """View angle from nadir (degrees). Elevated objects lean away from the sensor by h*tan(off_nadir)."""
    off_nadir_azimuth: float = 0.0
    """Direction from the scene towards the satellite, degrees clockwise from north."""
    blur_sigma: float = 0.7
    """Gaussian PSF sigma in output (optical) pixels."""
    noise_std: float = 0.01
    """Additive Gaussian noise std on the [0, 1] output scale."""
    bits: int = 8
    bands: str = "rgb"
    """'rgb' (3 bands) or 'pan' (1 band, includes the near infrared so vegetation is mid-grey)."""
    gsd: Optional[float] = None
    """Optical pixel size; None = the SAR/scene gsd."""
    haze: float = 0.04
    """Atmospheric path radiance added before display scaling (bluish)."""
    texture: float = 1.0
    """Scale of within-class variation (per-object colour/brightness, grain, patches, crop rows);
    0 gives homogeneous classes, handy to isolate geometry."""
    greenness: float = 1.0
    """Vegetation vigour: 1 = lush temperate summer, 0 = dry / arid (straw grass, brown fields,
    grey-green shrubby trees)."""

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise ValueError("bits must be 8 or 16")
        if self.bands not in ("rgb", "pan"):
            raise ValueError("bands must be 'rgb' or 'pan'")
        if not 0.0 < self.sun_elevation <= 90.0:
            raise ValueError("sun_elevation must be in (0, 90]")
        if not 0.0 <= self.off_nadir < 60.0:
            raise ValueError("off_nadir must be in [0, 60)")

    @property
    def n_bands(self) -> int:
        return 3 if self.bands == "rgb" else 1


@dataclass
class SarParams:
    """How the SAR image is rendered: side-looking geometry, speckle, resolution and output scaling."""

    incidence: float = 35.0
    """Incidence angle from vertical, degrees (20-50 typical)."""
    look_azimuth: float = 90.0
    """Direction FROM the scene TOWARDS the sensor, degrees clockwise from north (90 = sensor to the
    east: layover moves elevated points east, radar shadows fall west of tall objects)."""
    looks: int = 1
    output: str = "db"
    """'linear' sigma0, 'db', 'amplitude', 'dn8' or 'dn16' (dB clipped to ``db_range``, scaled)."""
    blur_sigma: float = 0.8
    """Gaussian sigma (pixels) of the complex impulse response; 0 = no resolution blur, white speckle."""
    db_range: Tuple[float, float] = (-25.0, 5.0)
    """dB window mapped to 0..255 / 0..65535 for the DN outputs."""
    noise_floor_db: float = -24.0
    """Thermal noise equivalent sigma0 (NESZ): what radar shadows and calm water bottom out at."""
    texture: float = 1.0
    """Scale of within-class sigma0 variation (per object, patches, crop rows); 0 = homogeneous."""
    polarization: str = "VV"
    """'VV', 'HH' or 'VH' (cross-pol: darker, relatively brighter vegetation, weak double bounce)."""

    def __post_init__(self) -> None:
        if not 10.0 <= self.incidence <= 70.0:
            raise ValueError("incidence must be within 10..70 degrees")
        if int(self.looks) < 1:
            raise ValueError("looks must be >= 1")
        if self.output not in SAR_OUTPUTS:
            raise ValueError(f"output must be one of {SAR_OUTPUTS}")
        if self.polarization not in ("VV", "HH", "VH"):
            raise ValueError("polarization must be 'VV', 'HH' or 'VH'")
        self.db_range = (float(self.db_range[0]), float(self.db_range[1]))
        if not self.db_range[1] > self.db_range[0]:
            raise ValueError("db_range must be (low, high) with high > low")


@dataclass
class MisregParams:
    """Misregistration applied to the OPTICAL image only (the SAR georeference is the truth).

    The model maps a nominal map position X (what the written optical GeoTIFF's geotransform says) to
    the true map position of the ground shown there. In optical pixel units with column to the right
    and row down, around the image centre c:  true = c + A (X - c) + shift + warp(X - c), where A is
    rotation (counter-clockwise on the map) x scale x shear. Consequence: with a pure ``shift`` of
    (dx, dy), the content at optical pixel (col, row) truly lies at (col + dx, row + dy) of the SAR
    grid, i.e. the patch offset a matcher must find is (drow, dcol) = (dy, dx).
    """

    shift: Tuple[float, float] = (0.0, 0.0)
    """(dx, dy) in optical pixels, dx along columns (east), dy along rows (south)."""
    rotation_deg: float = 0.0
    scale: float = 1.0
    shear: float = 0.0
    """Dimensionless x-shear: column offset added per row of distance from the centre."""
    warp_px: float = 0.0
    """Maximum amplitude (optical pixels) of the smooth polynomial (degree 2-3) warp over the image."""
    seed: int = 0
    """Seed of the warp polynomial's coefficients."""
    order: int = 1
    """Interpolation order used to resample the optical (1 = bilinear, 3 = cubic spline)."""

    def __post_init__(self) -> None:
        self.shift = (float(self.shift[0]), float(self.shift[1]))
        if self.order not in (0, 1, 3):
            raise ValueError("order must be 0, 1 or 3")
        if not self.scale > 0:
            raise ValueError("scale must be > 0")

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        max_shift: float = 40.0,
        max_rotation_deg: float = 0.5,
        max_scale_dev: float = 0.004,
        max_shear: float = 0.002,
        max_warp_px: float = 3.0,
        p_affine: float = 0.5,
        p_warp: float = 0.5,
        order: int = 1,
    ) -> "MisregParams":
        """A realistic random misregistration: always a shift, sometimes a small affine and a warp."""
        shift = tuple(float(v) for v in rng.uniform(-max_shift, max_shift, 2))
        rot = scale_dev = shear = warp = 0.0
        if rng.random() < p_affine:
            rot = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
            scale_dev = float(rng.uniform(-max_scale_dev, max_scale_dev))
            shear = float(rng.uniform(-max_shear, max_shear))
        if rng.random() < p_warp:
            warp = float(rng.uniform(0.3, 1.0) * max_warp_px)
        return cls(shift=shift, rotation_deg=rot, scale=1.0 + scale_dev, shear=shear, warp_px=warp,
                   seed=int(rng.integers(0, 2**31 - 1)), order=order)


def params_dict(obj) -> dict:
    """JSON-friendly dict of a parameter dataclass (tuples become lists)."""
    d = asdict(obj)
    for k, v in list(d.items()):
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


__all__ = [
    "LandCover", "Zone", "SceneParams", "OpticalParams", "SarParams", "MisregParams", "params_dict",
    "SCENE_KINDS", "SAR_OUTPUTS",
]
