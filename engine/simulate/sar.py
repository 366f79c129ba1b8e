"""SAR rendering of a Scene as a terrain-corrected (ground range, north-up) product.

Geometry (flat-earth, plane wave, constant incidence theta, sensor towards ``look_azimuth``):
a scatterer at height h above the DTM appears displaced towards the sensor by h/tan(theta)
(layover); a point is in radar shadow when the ray towards the sensor, climbing 1/tan(theta) per
metre, hits the DSM (so an object of height h shadows h*tan(theta) of ground behind it). Ground-
level pixels therefore stay where they are, which is why SAR and optical ground points coincide.

Radiometry: per-class sigma0 depending on the local incidence angle (DSM normals), per-object
and patchy variation, crop rows, specular flashes from roof planes facing the sensor, sensor-facing
walls (sampled from base to top, layover-displaced, window bands), dihedral double-bounce lines at
wall bases, strong point targets (cars, rooftop equipment, building edges) and a thermal noise
floor. Speckle: complex circular Gaussian reflectivity filtered by a Gaussian impulse response,
averaged over L looks, so the intensity is Gamma(L) distributed and spatially correlated like
real SAR, and its mean is the resolution-blurred sigma0.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .noise import blur, gaussian_kernel, object_keys, smooth_noise, table_bits
from .optical import M_POOL, M_SUBURB_ROOF, N_MAT, materials
from .params import LandCover as LC
from .params import SarParams
from .raycast import direction_colrow, occluder_height, splat, surface_normals
from .scene import ELEVATED_M, Scene

LN10_10 = math.log(10.0) / 10.0

# Per material: (sigma0 dB at 35 deg, dB per degree of local incidence, per-object std dB,
#                patch amplitude dB)
_SIGMA = {
    LC.WATER: (-21.0, -0.35, 2.0, 2.5), LC.ROAD: (-18.0, -0.15, 1.5, 1.0),
    LC.PAVED: (-13.0, -0.12, 2.5, 1.5), LC.BARE: (-13.0, -0.18, 3.5, 1.5),
    LC.GRASS: (-12.5, -0.12, 2.0, 1.5), LC.CROP: (-11.0, -0.12, 3.5, 1.2),
    LC.TREE: (-7.0, -0.04, 1.0, 1.0), LC.BUILDING: (-9.0, -0.1, 3.0, 1.5),
    M_SUBURB_ROOF: (-9.0, -0.1, 3.0, 1.0), M_POOL: (-19.0, -0.3, 1.0, 0.5),
}
WALL_DB = -4.0          # mean facade sigma0 per facade area (windows, balconies, structure)
DOUBLE_BOUNCE_DBM = 16.0  # dihedral wall-ground return per metre of wall facing the sensor squarely (dB m)
POINT_RCS_DBSM = 5.0    # median RCS of cars, rooftop equipment, roof corners (dB m^2), 5 dB spread
FLAT_ROOF_DB = -14.0    # smooth flat roofs scatter mostly away from the sensor
PITCHED_ROOF_DB = -8.0


# Polarisation: dB offsets from the co-polarised (VV) values above. Cross-pol (VH) is 6-8 dB
# weaker on surfaces, keeps vegetation volume scattering relatively bright, and strongly
# suppresses dihedral double bounce; HH has darker water and stronger double bounce.
_POL = {
    "VV": dict(mat={}, wall=0.0, roof=0.0, dbl=0.0, point=0.0, floor=0.0),
    "HH": dict(mat={LC.WATER: -3.0, M_POOL: -3.0, LC.CROP: -0.5}, wall=0.5, roof=0.0, dbl=2.5, point=0.5,
               floor=0.0),
    "VH": dict(mat={LC.WATER: -6.0, LC.ROAD: -7.0, LC.PAVED: -8.0, LC.BARE: -7.5, LC.GRASS: -6.5,
                    LC.CROP: -6.0, LC.TREE: -6.0, LC.BUILDING: -8.0, M_SUBURB_ROOF: -8.0, M_POOL: -6.0},
               wall=-5.0, roof=-7.0, dbl=-7.0, point=-4.0, floor=-3.0),
}


def _tables(pol: str = "VV"):
    off = _POL[pol]["mat"]
    t = np.zeros((4, N_MAT), np.float32)
    for m in range(N_MAT):
        t[:, m] = _SIGMA.get(m, (-12.0, -0.1, 1.5, 1.0))
        t[0, m] += off.get(m, -7.0 if pol == "VH" else 0.0)
    return t


_SIG_TABS = {pol: _tables(pol) for pol in _POL}


def _look(p: SarParams):
    th = math.radians(p.incidence)
    az = math.radians(p.look_azimuth)
    dc, dr = direction_colrow(p.look_azimuth)
    sensor = (math.sin(az) * math.sin(th), math.cos(az) * math.sin(th), math.cos(th))
    return th, dc, dr, sensor


def sar_mean(scene: Scene, p: SarParams = SarParams(), rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Expected sigma0 (linear, float32 (H, W)) before speckle and resolution blur."""
    rng = np.random.default_rng(0) if rng is None else rng
    h, w = scene.shape
    g = scene.gsd
    th, dc, dr, sensor = _look(p)
    tan_t = math.tan(th)
    mat = materials(scene)
    ne, nn, nu = surface_normals(scene.dsm, g)
    cos_loc = ne * sensor[0] + nn * sensor[1] + nu * sensor[2]
    theta_loc = np.degrees(np.arccos(np.clip(cos_loc, -1.0, 1.0)))
    pol = _POL[p.polarization]
    tab = _SIG_TABS[p.polarization]
    a0, slope, obj_std, patch_amp = (tab[i][mat] for i in range(4))
    bits = table_bits(h * w)
    key = object_keys(scene.object_id, bits)
    obj = rng.standard_normal(1 << bits, dtype=np.float32)
    patch = smooth_noise(rng, (h, w), max(25.0 / g, 3.0), octaves=2)
    tx = np.float32(p.texture)
    db = a0 + slope * (np.minimum(theta_loc, 89.0) - 35.0) + (tx * obj_std) * obj[key] + (tx * patch_amp) * patch
    if tx > 0:
        db += (1.2 * tx) * scene.row_texture
    sig = np.exp(db * LN10_10)
    roofs = (mat == LC.BUILDING) | (mat == M_SUBURB_ROOF)
    # Flat roofs are smooth (dark); pitched roofs are rough tiles, and planes tilted towards the
    # sensor flash (near-specular).
    rr = np.flatnonzero(roofs.ravel())
    pitch = np.clip((1.0 - nu.ravel()[rr]) / 0.08, 0.0, 1.0)
    roof_db = (FLAT_ROOF_DB + pol["roof"] + (PITCHED_ROOF_DB - FLAT_ROOF_DB) * pitch
               + tx * obj_std.ravel()[rr] * obj[key.ravel()[rr]])
    tl = theta_loc.ravel()[rr]
    flash = 6.0 * math.exp(pol["roof"] * LN10_10)
    sig.ravel()[rr] = np.exp(roof_db * LN10_10) + flash * np.exp(-(tl / 9.0) ** 2)
    sig[theta_loc >= 89.0] *= 0.05                     # facing away from the sensor
    # Point targets (RCS in m^2 over the pixel area): cars / rooftop equipment, roof corners.
    edge = (roofs & ~_eroded(roofs)).ravel()[rr]
    prob = np.where(edge, 0.05 * tx, 0.004 * g * g * tx).astype(np.float32)
    on_roof = rr[rng.random(rr.size, dtype=np.float32) < prob]
    pts = np.union1d(np.flatnonzero(scene.clutter.ravel()), on_roof)
    if pts.size:
        rcs = np.exp((POINT_RCS_DBSM + pol["point"] + 5.0 * rng.standard_normal(pts.size).astype(np.float32))
                     * LN10_10)
        sig.ravel()[pts] += rcs / (g * g)

    # Radar shadow: hidden from the sensor (ray climbing at 90 - theta).
    maxh = float(scene.ndsm.max()) + 2.0
    occ = occluder_height(scene.dsm, p.look_azimuth, 90.0 - p.incidence, g, maxh)
    lit = occ <= scene.dsm + 0.3
    sig *= lit

    nd = scene.ndsm
    elev = nd > ELEVATED_M
    img = np.where(elev, 0.0, sig).astype(np.float32)
    er, ec = np.nonzero(elev)
    if er.size:
        shift = nd[er, ec] / tan_t / g
        img += splat(sig[er, ec], er + dr * shift, ec + dc * shift, (h, w))
    img += _walls(scene, p, rng, occ, mat)
    img += np.float32(math.exp((p.noise_floor_db + pol["floor"]) * LN10_10))
    return img


def _eroded(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def _walls(scene: Scene, p: SarParams, rng: np.random.Generator, occ: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Sensor-facing walls (and canopy sides) sampled base->top, plus double bounce at the base."""
    h, w = scene.shape
    g = scene.gsd
    th, dc, dr, sensor = _look(p)
    tan_t = math.tan(th)
    nd = scene.ndsm
    # Front neighbour = the pixel one step towards the sensor (nearest of the 8 neighbours).
    fr, fc = int(round(dr)), int(round(dc))
    if fr == 0 and fc == 0:
        fc = 1 if dc >= 0 else -1
    ndp = np.pad(nd, 1, mode="constant")
    front = ndp[1 + fr: 1 + fr + h, 1 + fc: 1 + fc + w]
    is_bld = scene.landcover == LC.BUILDING
    is_tree = scene.landcover == LC.TREE
    # Building walls wherever the roof steps down towards the sensor; for trees only the canopy
    # edge facing open ground (bumps inside a canopy are volume scattering, already splatted).
    wall = (nd - front > 2.0) & (is_bld | (is_tree & (front <= ELEVATED_M)))
    out = np.zeros((h, w), np.float32)
    wr, wc = np.nonzero(wall)
    if wr.size == 0:
        return out
    top = nd[wr, wc]
    f_nd = front[wr, wc]
    # Lowest visible point: above the front surface and above what occludes the wall foot.
    frr = np.clip(wr + fr, 0, h - 1)
    fcc = np.clip(wc + fc, 0, w - 1)
    occ_front = occ[frr, fcc] - scene.dtm[frr, fcc]
    low = np.maximum(f_nd, occ_front)
    vis = top - low
    keep = vis > 0.5
    wr, wc, top, low, f_nd, vis = wr[keep], wc[keep], top[keep], low[keep], f_nd[keep], vis[keep]
    if wr.size == 0:
        return out
    # Wall orientation: horizontal normal from the height gradient (points outwards / downhill).
    ndp1 = np.pad(nd, 1, mode="edge")
    nx = ndp1[wr + 1, wc] - ndp1[wr + 1, wc + 2]      # -(d nd / d col): points east when lower east
    ny = ndp1[wr + 2, wc + 1] - ndp1[wr, wc + 1]      # lower to the north -> normal points north
    norm = np.sqrt(nx * nx + ny * ny) + 1e-6
    look_e, look_n = math.sin(math.radians(p.look_azimuth)), math.cos(math.radians(p.look_azimuth))
    facing = np.clip((nx * look_e + ny * look_n) / norm, 0.0, 1.0)
    bld = is_bld[wr, wc]
    # Per-building wall brightness.
    bits = min(table_bits(h * w), 16)
    key = object_keys(scene.building_id[wr, wc], bits)
    wall_var = np.float32(2.5 * p.texture) * rng.standard_normal(1 << bits, dtype=np.float32)[key]
    pol = _POL[p.polarization]
    tree_sig = np.exp(_SIG_TABS[p.polarization][0][LC.TREE] * LN10_10)
    # A wall pixel images g*tan(theta) of wall height over g of wall length: area ratio tan(theta).
    base_sig = np.where(bld, np.exp((WALL_DB + pol["wall"] + wall_var) * LN10_10) * (0.25 + 0.75 * facing),
                        tree_sig * 0.8).astype(np.float32) * np.float32(tan_t)
    dz = g * tan_t   # wall height imaged per pixel of ground range
    n_s = np.maximum(np.ceil(vis / dz).astype(np.int64), 1)
    rep = np.repeat(np.arange(wr.size), n_s)
    k = np.arange(rep.size) - np.repeat(np.cumsum(n_s) - n_s, n_s)
    z = low[rep] + (k + 0.5) * dz
    zt = top[rep]
    within = z < zt
    rep, z = rep[within], z[within]
    frac = np.minimum(zt[within] - (z - 0.5 * dz), dz) / dz
    # Window / balcony bands every storey make facades in layover look striped.
    storey = 1.0 + 0.8 * np.where(bld[rep], np.cos(2 * np.pi * z / 3.2), 0.0)
    val = base_sig[rep] * storey * frac
    shift = z / tan_t / g + 0.5
    out += splat(val.astype(np.float32), wr[rep] + dr * shift, wc[rep] + dc * shift, (h, w))
    # Double bounce where the wall foot is visible: a line at the base, very aspect dependent.
    foot = bld & (low <= f_nd + 0.5)
    if foot.any():
        db_var = np.float32(3.0 * p.texture) * rng.standard_normal(1 << bits, dtype=np.float32)[key[foot]]
        # Line target: energy per metre of wall over a pixel of g x g -> scales with 1/g.
        amp = np.exp((DOUBLE_BOUNCE_DBM + pol["dbl"] + db_var) * LN10_10) / g * (facing[foot] ** 8 + 0.03)
        shift = f_nd[foot] / tan_t / g + 0.5
        out += splat(amp.astype(np.float32), wr[foot] + dr * shift, wc[foot] + dc * shift, (h, w))
    return out


def apply_speckle(mean: np.ndarray, looks: int, blur_sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Speckled intensity: L-look average of |PSF * (sqrt(mean) * complex Gaussian)|^2.

    The marginal is Gamma(L, mean_blurred / L); speckle is correlated over the PSF width.
    """
    mean = np.asarray(mean, np.float32)
    looks = int(looks)
    if blur_sigma <= 0.05:
        return (mean * rng.standard_gamma(looks, mean.shape).astype(np.float32) / looks).astype(np.float32)
    amp = np.sqrt(mean)
    k = gaussian_kernel(blur_sigma)
    norm = float((k.astype(np.float64) ** 2).sum() ** 2)
    acc = np.zeros(mean.shape, np.float32)
    for _ in range(looks):
        for _part in range(2):
            z = rng.standard_normal(mean.shape, dtype=np.float32)
            z *= amp
            z = blur(z, blur_sigma)
            acc += z * z
    acc *= np.float32(1.0 / (2.0 * looks * norm))
    return acc


def render_sar(scene: Scene, params: SarParams = SarParams(), rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Speckled linear sigma0 (float32 (H, W)) on the scene's true grid."""
    rng = np.random.default_rng(0) if rng is None else rng
    return apply_speckle(sar_mean(scene, params, rng), params.looks, params.blur_sigma, rng)


def sar_to_output(sigma0: np.ndarray, kind: str = "db", db_range: Sequence[float] = (-25.0, 5.0)) -> np.ndarray:
    """Convert linear sigma0 to 'linear' / 'db' / 'amplitude' (float32) or 'dn8' / 'dn16' (uint).

    DN products are display-scaled like commercial 8/16-bit quicklooks: dB clipped to
    ``db_range`` and mapped linearly onto 0..255 or 0..65535.
    """
    s = np.asarray(sigma0, np.float32)
    if kind == "linear":
        return s.copy()
    if kind == "amplitude":
        return np.sqrt(np.maximum(s, 0)).astype(np.float32)
    db = (10.0 * np.log10(np.maximum(s, 1e-10))).astype(np.float32)
    if kind == "db":
        return db
    lo, hi = float(db_range[0]), float(db_range[1])
    x = np.clip((db - lo) / (hi - lo), 0.0, 1.0)
    if kind == "dn8":
        return np.rint(x * 255).astype(np.uint8)
    if kind == "dn16":
        return np.rint(x * 65535).astype(np.uint16)
    raise ValueError(f"unknown SAR output kind {kind!r}")
