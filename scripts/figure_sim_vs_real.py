#!/usr/bin/env python3
"""Render docs/img/sim_vs_real.png: simulated SAR/optical crops next to real pairs.

Row 1: a simulated 10 m scene (Sentinel-1-like SAR, 4 looks, dB display; Sentinel-2-like RGB) next
to a real Sentinel-1 VH / Sentinel-2 RGB pair from ../shared/realdata/s1s2_volkov.
Row 2: a simulated ~1 m suburban scene (1-look SAR, panchromatic optical) next to a real
high-resolution pair from ../shared/realdata/srif_aligned.
Real panels are skipped, with a message, when the data folder is absent.

Usage: python scripts/figure_sim_vs_real.py [--out docs/img/sim_vs_real.png] [--realdata DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.simulate import (OpticalParams, SarParams, SceneParams, render_patch,  # noqa: E402
                             sar_to_output)


def _stretch(img: np.ndarray, lo: float = 1, hi: float = 99) -> np.ndarray:
    a, b = np.percentile(img, [lo, hi])
    return np.clip((img - a) / max(b - a, 1e-6), 0, 1)


def simulate_10m(seed: int):
    sp = SceneParams(size=512, gsd=10.0, kind="suburban", seed=seed)
    sar = SarParams(incidence=38.0, look_azimuth=100.0, looks=4, blur_sigma=1.0, output="linear",
                    polarization="VH")
    opt = OpticalParams(sun_azimuth=150.0, sun_elevation=40.0, blur_sigma=0.6, noise_std=0.006, haze=0.06,
                        greenness=0.35)
    return render_patch(sp, opt, sar, np.random.default_rng(seed))


def simulate_1m(seed: int):
    sp = SceneParams(size=256, gsd=1.0, kind="suburban", seed=seed)
    sar = SarParams(incidence=35.0, look_azimuth=260.0, looks=1, blur_sigma=0.9, output="linear")
    opt = OpticalParams(sun_azimuth=160.0, sun_elevation=50.0, blur_sigma=0.8, noise_std=0.01, bands="pan",
                        greenness=0.3)
    return render_patch(sp, opt, sar, np.random.default_rng(seed))


def load_real(realdata: str):
    """((s1 sar, s2 rgb) or None, (srif sar, srif opt) or None)."""
    s1 = srif = None
    vol = os.path.join(realdata, "s1s2_volkov")
    if os.path.isdir(vol):
        import rasterio
        with rasterio.open(os.path.join(vol, "003_sar.tif")) as d:
            sar = d.read(1)
        with rasterio.open(os.path.join(vol, "003_opt.tif")) as d:
            opt = d.read()
        s1 = (sar[:512, :512], np.transpose(opt[:, :512, :512], (1, 2, 0)))
    else:
        print(f"[figure] {vol} not found: skipping the Sentinel-1/2 real panels")
    sd = os.path.join(realdata, "srif_aligned")
    if os.path.isdir(sd):
        from PIL import Image
        i = 120
        sar = np.array(Image.open(os.path.join(sd, f"{i}_sar.png")).convert("L"))
        opt = np.array(Image.open(os.path.join(sd, f"{i}_opt.png")).convert("L"))
        srif = (sar, opt)
    else:
        print(f"[figure] {sd} not found: skipping the high-resolution real panels")
    return s1, srif


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "sim_vs_real.png"))
    ap.add_argument("--realdata", default=os.path.join(os.path.dirname(ROOT), "shared", "realdata"))
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    p10 = simulate_10m(args.seed)
    p1 = simulate_1m(args.seed + 1)
    print(f"[figure] simulated both crops in {time.perf_counter() - t0:.1f} s")
    s1, srif = load_real(args.realdata)

    fig, axes = plt.subplots(2, 4, figsize=(20, 10.6))
    # Row 1: 10 m. The real S1 product is display-scaled VH DN; show ours as dn8 of dB.
    sim_sar10 = sar_to_output(p10.sar, "dn8", (-25.0, 5.0))
    sim_opt10 = np.transpose(p10.optical, (1, 2, 0))
    panels = [(sim_sar10, "gray", "Simulated SAR VH, 10 m, 4 looks (dB -> 8 bit)"),
              (sim_opt10, None, "Simulated optical RGB, 10 m"),
              (None if s1 is None else s1[0], "gray", "Real Sentinel-1 VH (s1s2_volkov/003)"),
              (None if s1 is None else s1[1], None, "Real Sentinel-2 RGB (s1s2_volkov/003)")]
    sim_sar1 = _stretch(np.sqrt(p1.sar), 0.5, 99.0)
    panels += [(sim_sar1, "gray", "Simulated SAR, 1 m, 1 look (amplitude)"),
               (p1.optical[0], "gray", "Simulated optical pan, 1 m"),
               (None if srif is None else srif[0], "gray", "Real high-res SAR (srif_aligned/120)"),
               (None if srif is None else srif[1], "gray", "Real high-res optical (srif_aligned/120)")]
    for ax, (img, cmap, title) in zip(axes.ravel(), panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.text(0.5, 0.5, "real data not available", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            continue
        ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=(255 if img.dtype == np.uint8 else 1) if cmap else None,
                  interpolation="nearest")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Simulator (left pair) vs. real SAR / optical pairs (right pair)", fontsize=13)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=72)
    print(f"[figure] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
