"""Optical rendering of a Scene on its own (true) grid.

Reflectance (R, G, B, NIR) comes from per-class palettes with per-object choices and brightness,
multiplied by grain / patch / crop-row textures; illumination is sky light plus Lambertian sun light
on the DSM normals, with cast shadows from a ray cast towards the sun. Off-nadir views move
elevated pixels away from the sensor by h*tan(off_nadir) and reveal sensor-facing facades. A haze
term, display gain and gamma, a Gaussian PSF and additive noise make it look like a product.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .canvas import ID_POOL
from .noise import blur, object_keys, smooth_noise, table_bits
from .params import LandCover as LC
from .params import OpticalParams, Zone
from .raycast import direction_colrow, occluder_height, surface_normals
from .scene import Scene

# Materials: LandCover values, plus suburban roofs and pools which get their own palettes.
M_SUBURB_ROOF = 9
M_POOL = 10
N_MAT = 11

# (R, G, B, NIR) reflectance variants and their probabilities, per material.
_PALETTE = {
    LC.WATER: ([(0.025, 0.04, 0.045, 0.012), (0.05, 0.07, 0.06, 0.02), (0.035, 0.055, 0.04, 0.015)], [0.5, 0.25, 0.25]),
    LC.ROAD: ([(0.085, 0.088, 0.095, 0.11), (0.12, 0.12, 0.125, 0.14), (0.2, 0.2, 0.19, 0.22)], [0.55, 0.3, 0.15]),
    LC.PAVED: ([(0.17, 0.165, 0.155, 0.19), (0.25, 0.24, 0.22, 0.27), (0.23, 0.16, 0.13, 0.26), (0.12, 0.12, 0.125, 0.14)],
               [0.4, 0.25, 0.1, 0.25]),
    LC.BARE: ([(0.19, 0.145, 0.10, 0.24), (0.28, 0.23, 0.17, 0.31), (0.12, 0.095, 0.07, 0.18), (0.24, 0.2, 0.16, 0.27)],
              [0.35, 0.25, 0.2, 0.2]),
    LC.GRASS: ([(0.06, 0.10, 0.045, 0.36), (0.13, 0.14, 0.08, 0.30), (0.05, 0.09, 0.04, 0.42), (0.09, 0.11, 0.06, 0.33)],
               [0.35, 0.2, 0.25, 0.2]),
    LC.CROP: ([(0.045, 0.095, 0.04, 0.45), (0.24, 0.21, 0.11, 0.33), (0.09, 0.14, 0.06, 0.40), (0.21, 0.18, 0.125, 0.27),
               (0.15, 0.12, 0.085, 0.24), (0.07, 0.12, 0.05, 0.42)],
              [0.25, 0.17, 0.16, 0.14, 0.13, 0.15]),
    LC.TREE: ([(0.035, 0.065, 0.03, 0.32), (0.025, 0.045, 0.028, 0.22), (0.045, 0.07, 0.035, 0.3)], [0.45, 0.3, 0.25]),
    LC.BUILDING: ([(0.24, 0.24, 0.235, 0.26), (0.11, 0.11, 0.115, 0.13), (0.42, 0.42, 0.41, 0.43),
                   (0.18, 0.175, 0.16, 0.2), (0.22, 0.25, 0.28, 0.27), (0.28, 0.16, 0.12, 0.3)],
                  [0.3, 0.2, 0.15, 0.17, 0.08, 0.1]),
    M_SUBURB_ROOF: ([(0.30, 0.14, 0.10, 0.31), (0.21, 0.13, 0.10, 0.24), (0.10, 0.10, 0.11, 0.12),
                     (0.18, 0.18, 0.18, 0.2), (0.33, 0.32, 0.3, 0.34)], [0.35, 0.2, 0.25, 0.12, 0.08]),
    M_POOL: ([(0.18, 0.42, 0.48, 0.05), (0.22, 0.5, 0.55, 0.06)], [0.6, 0.4]),
}
# Per material: (grain amplitude, patch amplitude, row-texture amplitude, per-object brightness spread)
_TEXTURE = {
    LC.WATER: (0.02, 0.12, 0.0, 0.2), LC.ROAD: (0.05, 0.08, 0.0, 0.15), LC.PAVED: (0.07, 0.1, 0.0, 0.25),
    LC.BARE: (0.09, 0.09, 0.15, 0.25), LC.GRASS: (0.1, 0.1, 0.0, 0.25), LC.CROP: (0.06, 0.06, 0.14, 0.2),
    LC.TREE: (0.12, 0.1, 0.0, 0.2), LC.BUILDING: (0.05, 0.04, 0.0, 0.3), M_SUBURB_ROOF: (0.05, 0.03, 0.0, 0.25),
    M_POOL: (0.03, 0.0, 0.0, 0.1),
}
_LUT_BINS = 64
_SKY = np.array([0.75, 0.88, 1.3, 0.7], np.float32)     # skylight is bluer than sunlight
_SUN = np.array([1.05, 1.0, 0.9, 1.0], np.float32)
_HAZE = np.array([0.8, 0.95, 1.35], np.float32)
_PAN_W = np.array([0.22, 0.3, 0.13, 0.35], np.float32)   # 450-800 nm panchromatic band
DISPLAY_GAIN = 2.6


def _tables():
    colours, var_lut, tex = [], np.zeros((N_MAT, _LUT_BINS), np.int32), np.zeros((4, N_MAT), np.float32)
    for m in range(N_MAT):
        cols, probs = _PALETTE.get(m, ([(0.1, 0.1, 0.1, 0.1)], [1.0]))
        base = len(colours)
        colours.extend(cols)
        cum = np.cumsum(probs) / np.sum(probs)
        bins = (np.arange(_LUT_BINS) + 0.5) / _LUT_BINS
        var_lut[m] = base + np.minimum(np.searchsorted(cum, bins), len(cols) - 1)
        tex[:, m] = _TEXTURE.get(m, (0.05, 0.05, 0.0, 0.2))
    return np.array(colours, np.float32).T.copy(), var_lut, tex


_COLOURS, _VAR_LUT, _TEX = _tables()


def materials(scene: Scene) -> np.ndarray:
    m = scene.landcover.copy()
    m[(m == LC.BUILDING) & (scene.zone == Zone.SUBURBAN)] = M_SUBURB_ROOF
    m[(m == LC.WATER) & (scene.object_id >= ID_POOL) & (scene.object_id < ID_POOL + 1_000_000)] = M_POOL
    return m


_DRY = {LC.GRASS: (0.21, 0.19, 0.14, 0.27), LC.CROP: (0.24, 0.21, 0.16, 0.28), LC.TREE: (0.08, 0.085, 0.065, 0.17)}


def reflectance(scene: Scene, rng: np.random.Generator, texture: float = 1.0, nir: bool = True,
                greenness: float = 1.0) -> np.ndarray:
    """(4, H, W) surface reflectance R, G, B, NIR (3 bands without ``nir``) with per-object
    variation and texture. The grain is white: the sensor PSF applied later correlates it."""
    h, w = scene.shape
    g = scene.gsd
    mat = materials(scene)
    bits = table_bits(h * w)
    key = object_keys(scene.object_id, bits)
    t1 = rng.random(1 << bits, dtype=np.float32)
    t2 = rng.random(1 << bits, dtype=np.float32)
    tint = rng.normal(1.0, 0.03 * texture, (4, 1 << min(bits, 14))).astype(np.float32)
    choice = (t1[key] * _LUT_BINS).astype(np.int32)
    var = _VAR_LUT[mat, choice]
    amp_grain, amp_patch, amp_rows, amp_obj = (_TEX[i][mat] * np.float32(texture) for i in range(4))
    bright = 1.0 + amp_obj * (t2[key] - 0.5) * 2.0
    grain = rng.random((h, w), dtype=np.float32)
    grain -= np.float32(0.5)
    grain *= np.float32(2.6)
    patch = smooth_noise(rng, (h, w), max(30.0 / g, 3.0), octaves=2)
    patch += 0.5 * smooth_noise(rng, (h, w), max(8.0 / g, 2.5))
    tex = bright * (1.0 + amp_grain * grain + amp_patch * patch + amp_rows * scene.row_texture)
    np.maximum(tex, 0.2, out=tex)
    kt = key & ((1 << min(bits, 14)) - 1)
    nb = 4 if nir else 3
    out = np.empty((nb, h, w), np.float32)
    for b in range(nb):
        out[b] = _COLOURS[b][var] * tex * tint[b][kt]
    dry = float(np.clip(1.0 - greenness, 0.0, 1.0))
    if dry > 0:
        for m, col in _DRY.items():
            sel = mat == m
            if not sel.any():
                continue
            for b in range(nb):
                o = out[b]
                o[sel] = o[sel] * (1 - dry) + np.float32(col[b] * dry) * tex[sel]
    # Cars and small rooftop objects: random bright / dark / coloured specks.
    cl = scene.clutter
    if cl.any():
        n = int(cl.sum())
        pal = np.array([(0.5, 0.5, 0.5, 0.5), (0.04, 0.04, 0.045, 0.05), (0.3, 0.05, 0.04, 0.3),
                        (0.06, 0.1, 0.25, 0.2), (0.3, 0.3, 0.3, 0.3), (0.15, 0.15, 0.16, 0.17)], np.float32)
        pick = pal[rng.integers(0, len(pal), n)]
        for b in range(nb):
            out[b][cl] = pick[:, b]
    return out


def illumination(scene: Scene, p: OpticalParams, nb: int = 4) -> np.ndarray:
    """(nb, H, W) relative irradiance: 1 on flat sunlit ground; shadows get only (bluish) sky light."""
    az, el = math.radians(p.sun_azimuth), math.radians(p.sun_elevation)
    se, sn, su = math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)
    ne, nn, nu = surface_normals(scene.dsm, scene.gsd)
    cos_i = np.maximum(ne * se + nn * sn + nu * su, 0)
    maxh = float(scene.ndsm.max()) + 2.0
    occ = occluder_height(scene.dsm, p.sun_azimuth, p.sun_elevation, scene.gsd, maxh)
    direct = cos_i * (occ <= scene.dsm + 0.3)
    direct *= np.float32(0.78)
    amb = 0.22 * (0.55 + 0.45 * nu)   # sky view shrinks on steep surfaces
    flat = 0.22 + 0.78 * su
    out = np.empty((nb,) + scene.shape, np.float32)
    for b in range(nb):
        o = out[b]
        np.multiply(amb, np.float32(_SKY[b] / flat), out=o)
        o += direct * np.float32(_SUN[b] / flat)
    return out


def _facade_colour(rng, n):
    base = np.array([(0.2, 0.19, 0.18, 0.22), (0.3, 0.28, 0.25, 0.32), (0.15, 0.15, 0.16, 0.17)], np.float32)
    return base[rng.integers(0, len(base), n)]


def relief_displace(img: np.ndarray, scene: Scene, p: OpticalParams, rng: np.random.Generator,
                    cover: Optional[np.ndarray] = None) -> np.ndarray:
    """Off-nadir view: elevated pixels lean away from the sensor by h*tan(off_nadir); facades facing
    the sensor fill the gap between a building's base and its displaced roof (painter's order).

    ``cover`` (bool (H, W)), if given, is set True where a leaning object or facade now hides
    what is on the ground there.
    """
    if p.off_nadir <= 0:
        return img
    tan_v = math.tan(math.radians(p.off_nadir))
    dc, dr = direction_colrow(p.off_nadir_azimuth)   # towards the sensor
    h, w = scene.shape
    nd = scene.ndsm
    out = img.copy()
    elev = np.flatnonzero(nd.ravel() > 0.5)
    if elev.size == 0:
        return out
    hts = nd.ravel()[elev]
    order = np.argsort(hts, kind="stable")
    elev, hts = elev[order], hts[order]
    r = elev // w
    c = elev - r * w
    shift = hts * tan_v / scene.gsd
    # Facades: sample each sensor-facing wall from its base to its top, then paint roofs on top.
    ndp = np.pad(nd, 1, mode="edge")
    rr = np.clip(np.rint(r + dr).astype(np.int64), -1, h) + 1
    cc = np.clip(np.rint(c + dc).astype(np.int64), -1, w) + 1
    front = ndp[rr, cc]
    wall = (hts - front > 2.0) & (scene.landcover.ravel()[elev] == LC.BUILDING)
    if wall.any():
        wr, wc, wh, wf = r[wall], c[wall], hts[wall], front[wall]
        n_s = np.maximum(np.ceil((wh - wf) * tan_v / scene.gsd).astype(np.int64), 1)
        rep = np.repeat(np.arange(wr.size), n_s)
        k = np.arange(rep.size) - np.repeat(np.cumsum(n_s) - n_s, n_s)
        frac = (k + 0.5) / n_s[rep]
        z = wf[rep] + frac * (wh[rep] - wf[rep])
        d = z * tan_v / scene.gsd
        tr = np.rint(wr[rep] - dr * d).astype(np.int64)
        tc = np.rint(wc[rep] - dc * d).astype(np.int64)
        ok = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
        bid = scene.building_id.ravel()[(wr * w + wc)[rep]]
        fcol = _facade_colour(np.random.default_rng(7), 4096)[bid % 4096]
        # Floors: darker window bands every ~3.2 m.
        band = 0.75 + 0.25 * ((z % 3.2) > 1.2)
        # Facades facing the sun are brighter.
        sun_side = math.cos(math.radians(p.sun_azimuth - p.off_nadir_azimuth))
        light = 0.55 + 0.45 * max(sun_side, 0.0)
        for b in range(out.shape[0]):
            out[b].ravel()[(tr * w + tc)[ok]] = (fcol[:, b] * band * light)[ok]
        if cover is not None:
            cover.ravel()[(tr * w + tc)[ok]] = True
    tr = np.rint(r - dr * shift).astype(np.int64)
    tc = np.rint(c - dc * shift).astype(np.int64)
    ok = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
    src = elev[ok]
    dst = (tr * w + tc)[ok]
    for b in range(out.shape[0]):
        out[b].ravel()[dst] = img[b].ravel()[src]
    if cover is not None:
        cover.ravel()[dst] = True
    return out


def to_display(radiance: np.ndarray, p: OpticalParams) -> np.ndarray:
    """(4, H, W) radiance-like values -> (bands, H, W) display values in [0, 1] (no noise yet)."""
    if p.bands == "pan":
        x = np.tensordot(_PAN_W, radiance, axes=1)[None]
        haze = [p.haze]
    else:
        x = radiance[:3]
        haze = list(p.haze * _HAZE)
    out = np.empty(x.shape, np.float32)
    for b in range(x.shape[0]):
        o = out[b]
        np.multiply(x[b], np.float32(DISPLAY_GAIN), out=o)
        o += np.float32(haze[b])
        np.clip(o, 0, 1, out=o)
    return out


def render_optical_clean(scene: Scene, p: OpticalParams, rng: np.random.Generator,
                         psf_sigma_px: Optional[float] = None, cover: Optional[np.ndarray] = None) -> np.ndarray:
    """Noise-free display image (bands, H, W) in [0, 1] on the scene grid, PSF applied.

    ``cover``: optional bool (H, W) array set True where off-nadir leaning objects hide the ground.
    """
    nir = p.bands == "pan"
    refl = reflectance(scene, rng, p.texture, nir=nir, greenness=p.greenness)
    ill = illumination(scene, p, refl.shape[0])
    refl *= ill
    refl = relief_displace(refl, scene, p, rng, cover)
    img = to_display(refl, p)
    sig = p.blur_sigma if psf_sigma_px is None else psf_sigma_px
    if sig > 0.05:
        img = np.stack([blur(b, sig) for b in img])
    return img


def add_noise(img: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian sensor noise, clipped to [0, 1] (in place when possible)."""
    if noise_std > 0:
        for b in range(img.shape[0]):
            img[b] += rng.standard_normal(img.shape[1:], dtype=np.float32) * np.float32(noise_std)
    np.clip(img, 0, 1, out=img)
    return img


def render_optical(scene: Scene, params: OpticalParams = OpticalParams(),
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Optical image (bands, H, W) float32 in [0, 1] on the scene's TRUE grid.

    The PSF sigma is ``blur_sigma`` in optical pixels, i.e. scaled by optical gsd / scene gsd.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    ratio = (params.gsd or scene.gsd) / scene.gsd
    img = render_optical_clean(scene, params, rng, psf_sigma_px=params.blur_sigma * max(ratio, 1.0))
    return add_noise(img, params.noise_std, rng)


def quantize(img: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] float -> uint8 (0..255) or uint16 (0..65535)."""
    top = 255 if bits == 8 else 65535
    return np.rint(np.clip(img, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
