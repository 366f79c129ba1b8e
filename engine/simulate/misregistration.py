"""Optical misregistration: the map f(nominal xy) -> true xy, resampling, and ground check points.

The model works in optical-pixel units around the optical image centre c (column to the right, row
down) so that its parameters read like what a user sees in the image:

    q = (col, row offsets of X from c) ;  q_true = A q + t + P(q / half_size) ;  f(X) = back to map

with A = R(rotation, counter-clockwise on the map) @ diag(scale) @ [[1, shear], [0, 1]], t the shift
and P a degree-2/3 polynomial scaled so that its largest displacement over the image is warp_px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from scipy import ndimage as ndi

from .params import MisregParams

_EXPONENTS = [(2, 0), (1, 1), (0, 2), (3, 0), (2, 1), (1, 2), (0, 3)]


@dataclass
class MisregModel:
    """Evaluable f: nominal map xy -> true map xy (see module docstring)."""

    center: tuple            # (cx, cy) map coordinates of the optical image centre
    unit: float              # metres per optical pixel
    matrix: np.ndarray       # (2, 2) acting on (col, row) offsets
    translation: np.ndarray  # (2,) (dcol, drow) optical pixels
    half_size: tuple         # (half width, half height) in optical pixels, polynomial normalisation
    poly_x: np.ndarray       # (7,) column-displacement coefficients (optical px), exponents _EXPONENTS
    poly_y: np.ndarray       # (7,) row-displacement coefficients

    @classmethod
    def from_params(cls, p: MisregParams, center, unit: float, shape_px) -> "MisregModel":
        a = math.radians(p.rotation_deg)
        c, s = math.cos(a), math.sin(a)
        # Counter-clockwise on the map (y north) is [[c, s], [-s, c]] in (col, row-down) space.
        rot = np.array([[c, s], [-s, c]])
        mat = rot @ np.diag([p.scale, p.scale]) @ np.array([[1.0, p.shear], [0.0, 1.0]])
        h, w = shape_px
        half = (w / 2.0, h / 2.0)
        px = np.zeros(len(_EXPONENTS))
        py = np.zeros(len(_EXPONENTS))
        if p.warp_px > 0:
            rng = np.random.default_rng([p.seed, 0x3A29])
            px = rng.standard_normal(len(_EXPONENTS))
            py = rng.standard_normal(len(_EXPONENTS))
            gu, gv = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41))
            dx, dy = _poly(gu, gv, px, py)
            mx = float(np.sqrt(dx * dx + dy * dy).max())
            px *= p.warp_px / mx
            py *= p.warp_px / mx
        return cls(center=(float(center[0]), float(center[1])), unit=float(unit), matrix=mat,
                   translation=np.array(p.shift, float), half_size=half, poly_x=px, poly_y=py)

    def displacement_px(self, col_off: np.ndarray, row_off: np.ndarray):
        """(dcol, drow) true minus nominal, in optical pixels, for offsets from the centre."""
        a = self.matrix
        tc = a[0, 0] * col_off + a[0, 1] * row_off + self.translation[0] - col_off
        tr = a[1, 0] * col_off + a[1, 1] * row_off + self.translation[1] - row_off
        if np.any(self.poly_x) or np.any(self.poly_y):
            dx, dy = _poly(col_off / self.half_size[0], row_off / self.half_size[1], self.poly_x, self.poly_y)
            tc = tc + dx
            tr = tr + dy
        return tc, tr

    def true_xy(self, nominal_xy) -> np.ndarray:
        """(N, 2) nominal map xy -> (N, 2) true map xy."""
        xy = np.asarray(nominal_xy, float).reshape(-1, 2)
        col = (xy[:, 0] - self.center[0]) / self.unit
        row = -(xy[:, 1] - self.center[1]) / self.unit
        dc, dr = self.displacement_px(col, row)
        return np.column_stack([xy[:, 0] + dc * self.unit, xy[:, 1] - dr * self.unit])

    def to_dict(self) -> Dict:
        return {
            "description": ("true_xy = f(nominal_xy): with (col, row) = ((x - cx) / unit, -(y - cy) / unit), "
                            "(col', row') = matrix @ (col, row) + translation + sum_k coef_k * "
                            "(col / half_w)^i * (row / half_h)^j over poly_exponents (i, j); "
                            "true_x = cx + col' * unit, true_y = cy - row' * unit"),
            "center": list(self.center), "unit": self.unit,
            "matrix": self.matrix.tolist(), "translation": self.translation.tolist(),
            "half_size": list(self.half_size), "poly_exponents": [list(e) for e in _EXPONENTS],
            "poly_coef_col": self.poly_x.tolist(), "poly_coef_row": self.poly_y.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "MisregModel":
        if [tuple(e) for e in d["poly_exponents"]] != _EXPONENTS:
            raise ValueError("unsupported polynomial exponents in misregistration model")
        return cls(center=tuple(d["center"]), unit=float(d["unit"]), matrix=np.array(d["matrix"], float),
                   translation=np.array(d["translation"], float), half_size=tuple(d["half_size"]),
                   poly_x=np.array(d["poly_coef_col"], float), poly_y=np.array(d["poly_coef_row"], float))


def _poly(u, v, cx, cy):
    dx = np.zeros_like(u, dtype=float)
    dy = np.zeros_like(u, dtype=float)
    for k, (i, j) in enumerate(_EXPONENTS):
        t = u ** i * v ** j
        dx = dx + cx[k] * t
        dy = dy + cy[k] * t
    return dx, dy


def max_displacement_px(model: MisregModel, shape_px) -> float:
    """Largest |true - nominal| over the optical image border and interior samples (optical px)."""
    h, w = shape_px
    cs = np.linspace(-w / 2, w / 2, 33)
    rs = np.linspace(-h / 2, h / 2, 33)
    cc, rr = np.meshgrid(cs, rs)
    dc, dr = model.displacement_px(cc.ravel(), rr.ravel())
    return float(np.sqrt(dc * dc + dr * dr).max())


def _displacement_grid(model: MisregModel, co: np.ndarray, ro: np.ndarray):
    """(dcol, drow) on the grid co (cols) x ro (rows) of centre offsets, exploiting separability:
    affine terms are outer sums and each polynomial row power j multiplies a 1-D column polynomial."""
    a = model.matrix
    t = model.translation
    dc = ((a[0, 0] - 1.0) * co + t[0])[None, :] + (a[0, 1] * ro)[:, None]
    dr = (a[1, 0] * co)[None, :] + ((a[1, 1] - 1.0) * ro + t[1])[:, None]
    if np.any(model.poly_x) or np.any(model.poly_y):
        u = co / model.half_size[0]
        v = ro / model.half_size[1]
        for j in range(4):
            px = np.zeros_like(u)
            py = np.zeros_like(u)
            for k, (ei, ej) in enumerate(_EXPONENTS):
                if ej == j:
                    px = px + model.poly_x[k] * u ** ei
                    py = py + model.poly_y[k] * u ** ei
            if np.any(px) or np.any(py):
                vj = (v ** j)[:, None]
                dc = dc + px[None, :] * vj
                dr = dr + py[None, :] * vj
    return dc, dr


def _is_translation(model: MisregModel) -> bool:
    return bool(np.allclose(model.matrix, np.eye(2), rtol=0, atol=1e-15)
                and not np.any(model.poly_x) and not np.any(model.poly_y))


def _shift_bilinear(img, src_transform, dst_transform, dst_shape, model: MisregModel) -> np.ndarray:
    """Same result as the general bilinear path when f is a translation and the pixel sizes agree:
    a constant sub-pixel offset, done with four shifted slices per band."""
    ho, wo = dst_shape
    nb, h, w = img.shape
    # Source index coordinate of output pixel (0, 0).
    x0 = dst_transform.c + 0.5 * dst_transform.a + model.translation[0] * model.unit
    y0 = dst_transform.f + 0.5 * dst_transform.e - model.translation[1] * model.unit
    c = (x0 - src_transform.c) / src_transform.a - 0.5
    r = (y0 - src_transform.f) / src_transform.e - 0.5
    ci, ri = int(np.floor(c)), int(np.floor(r))
    fc, fr = np.float32(c - ci), np.float32(r - ri)
    # Clamp like the general path: pad by edge replication so every needed index exists.
    pad_lo_r, pad_lo_c = max(0, -ri), max(0, -ci)
    pad_hi_r, pad_hi_c = max(0, ri + ho + 1 - (h - 1)), max(0, ci + wo + 1 - (w - 1))
    if pad_lo_r or pad_lo_c or pad_hi_r or pad_hi_c:
        img = np.pad(img, ((0, 0), (pad_lo_r, pad_hi_r), (pad_lo_c, pad_hi_c)), mode="edge")
        ri += pad_lo_r
        ci += pad_lo_c
    out = np.empty((nb, ho, wo), np.float32)
    for b in range(nb):
        a = img[b]
        top = a[ri:ri + ho, ci:ci + wo] * (1 - fc)
        top += a[ri:ri + ho, ci + 1:ci + 1 + wo] * fc
        bot = a[ri + 1:ri + 1 + ho, ci:ci + wo] * (1 - fc)
        bot += a[ri + 1:ri + 1 + ho, ci + 1:ci + 1 + wo] * fc
        top *= 1 - fr
        bot *= fr
        top += bot
        out[b] = top
    return out


def resample_optical(img: np.ndarray, src_transform, dst_transform, dst_shape, model: MisregModel,
                     order: int = 1) -> np.ndarray:
    """Resample a true-grid image (bands, H, W) onto the nominal optical grid.

    Output pixel p (centre, nominal map X via ``dst_transform``) takes the source value at
    f(X); both transforms are rasterio Affines of north-up grids. Order 1 uses a shared bilinear
    gather for all bands (faster than ``map_coordinates``, same result); edges are clamped.
    """
    ho, wo = dst_shape
    if order == 1 and _is_translation(model) and abs(src_transform.a - dst_transform.a) < 1e-12 \
            and abs(src_transform.e - dst_transform.e) < 1e-12:
        return _shift_bilinear(img, src_transform, dst_transform, dst_shape, model)
    cols = np.arange(wo, dtype=np.float64) + 0.5
    rows = np.arange(ho, dtype=np.float64) + 0.5
    x_nom = dst_transform.c + cols * dst_transform.a            # (wo,)
    y_nom = dst_transform.f + rows * dst_transform.e            # (ho,)
    cx, cy = model.center
    dc, dr = _displacement_grid(model, (x_nom - cx) / model.unit, -(y_nom - cy) / model.unit)
    # Source pixel-index coordinates (pixel centres at integers) of f(nominal).
    sa, se = src_transform.a, src_transform.e
    src_col = (((x_nom - src_transform.c) / sa - 0.5)[None, :] + dc * (model.unit / sa)).astype(np.float32)
    src_row = (((y_nom - src_transform.f) / se - 0.5)[:, None] - dr * (model.unit / se)).astype(np.float32)
    src_col, src_row = np.broadcast_arrays(src_col, src_row)
    nb, h, w = img.shape
    out = np.empty((nb, ho, wo), np.float32)
    if order != 1:
        coords = np.stack([src_row, src_col])
        for b in range(nb):
            out[b] = ndi.map_coordinates(img[b], coords, order=order, mode="nearest", prefilter=order > 1)
        return out
    sc = np.clip(src_col, 0, w - 1)
    sr = np.clip(src_row, 0, h - 1)
    c0 = np.minimum(sc.astype(np.int64), w - 2) if w > 1 else np.zeros(sc.shape, np.int64)
    r0 = np.minimum(sr.astype(np.int64), h - 2) if h > 1 else np.zeros(sr.shape, np.int64)
    fc = sc - c0
    fr = sr - r0
    i00 = r0 * w + c0
    for b in range(nb):
        flat = img[b].ravel()
        top = flat[i00]
        top += fc * (flat[i00 + 1] - top)
        bot = flat[i00 + w]
        bot += fc * (flat[i00 + w + 1] - bot)
        top += fr * (bot - top)
        out[b] = top
    return out


@dataclass
class CheckPoints:
    """Ground-truth correspondences at ground level, as (N, 2) arrays."""

    opt_colrow: np.ndarray   # optical pixel (col, row), corner convention (pixel centre = idx + 0.5)
    nominal_xy: np.ndarray   # map xy the optical georeference gives that pixel
    true_xy: np.ndarray      # where that ground point really is
    sar_colrow: np.ndarray   # the SAR pixel (col, row) of true_xy

    def __len__(self) -> int:
        return len(self.opt_colrow)

    def to_list(self):
        return [{"opt_col": float(o[0]), "opt_row": float(o[1]), "nominal_x": float(n[0]),
                 "nominal_y": float(n[1]), "true_x": float(t[0]), "true_y": float(t[1]),
                 "sar_col": float(s[0]), "sar_row": float(s[1])}
                for o, n, t, s in zip(self.opt_colrow, self.nominal_xy, self.true_xy, self.sar_colrow)]

    @classmethod
    def from_list(cls, items) -> "CheckPoints":
        def arr(a, b):
            return np.array([[it[a], it[b]] for it in items], float).reshape(-1, 2)
        return cls(arr("opt_col", "opt_row"), arr("nominal_x", "nominal_y"), arr("true_x", "true_y"),
                   arr("sar_col", "sar_row"))


def pick_check_points(model: MisregModel, opt_transform, opt_shape, sar_transform, sar_shape,
                      ndsm: np.ndarray, rng: np.random.Generator, n_min: int = 50,
                      border_px: int = 8, ground_m: float = 0.5) -> CheckPoints:
    """Spread >= n_min points over the optical image whose true ground is level (no roof / canopy /
    bridge within one SAR pixel) and inside the SAR image."""
    ho, wo = opt_shape
    hs, ws = sar_shape
    # Elevated pixels grown by one pixel so points are not on object edges either.
    elev = ndsm > ground_m
    grown = elev.copy()
    grown[1:] |= elev[:-1]
    grown[:-1] |= elev[1:]
    grown[:, 1:] |= elev[:, :-1]
    grown[:, :-1] |= elev[:, 1:]
    for n_side in (10, 13, 17, 24):
        pts = []
        edges_c = np.linspace(border_px, wo - border_px, n_side + 1)
        edges_r = np.linspace(border_px, ho - border_px, n_side + 1)
        for i in range(n_side):
            for j in range(n_side):
                c = rng.integers(int(edges_c[j]), max(int(edges_c[j + 1]), int(edges_c[j]) + 1), 24)
                r = rng.integers(int(edges_r[i]), max(int(edges_r[i + 1]), int(edges_r[i]) + 1), 24)
                oc, orow = c + 0.5, r + 0.5
                nx = opt_transform.c + oc * opt_transform.a
                ny = opt_transform.f + orow * opt_transform.e
                txy = model.true_xy(np.column_stack([nx, ny]))
                sc = (txy[:, 0] - sar_transform.c) / sar_transform.a
                sr = (txy[:, 1] - sar_transform.f) / sar_transform.e
                ic, ir = np.floor(sc).astype(int), np.floor(sr).astype(int)
                inside = (ic >= 2) & (ic < ws - 2) & (ir >= 2) & (ir < hs - 2)
                ok = np.zeros(len(c), bool)
                ok[inside] = ~grown[ir[inside], ic[inside]]
                k = np.flatnonzero(ok)
                if k.size:
                    k = k[0]
                    pts.append(((oc[k], orow[k]), (nx[k], ny[k]), tuple(txy[k]), (sc[k], sr[k])))
        if len(pts) >= n_min:
            break
    arr = [np.array([p[i] for p in pts], float).reshape(-1, 2) for i in range(4)]
    return CheckPoints(*arr)


def margin_px(model: MisregModel, opt_shape, opt_gsd: float, sar_gsd: float, order: int) -> int:
    """Scene pixels needed around the SAR extent so every optical pixel samples rendered ground."""
    d = max_displacement_px(model, opt_shape) * opt_gsd / sar_gsd
    return int(math.ceil(d)) + 3 + (2 if order > 1 else 0)


def describe(p: Optional[MisregParams]) -> str:
    if p is None:
        return "none"
    return (f"shift=({p.shift[0]:+.2f}, {p.shift[1]:+.2f}) px, rot={p.rotation_deg:+.3f} deg, "
            f"scale={p.scale:.5f}, shear={p.shear:+.5f}, warp={p.warp_px:.2f} px")
