"""Tiled processing: same results as one tile, candidates owned once, global stretch, cancel, bounded reads."""
from __future__ import annotations

import numpy as np
import pytest

from engine import raster_io, tiling
from engine.errors import CancelledError
from engine.params import MatchParams
from engine.pipeline import find_candidates, match_pair, preprocess_pair
from engine.preprocess import estimate_stretch
from engine.progress import CancelToken
from engine.raster_io import load_pair, open_pair, read_pair
from engine.simulate import MisregParams, SceneParams, simulate_pair
from engine.tiling import (CandidateAccumulator, Tile, TileArrays, TilingOptions, plan_tiles, points_in_tiles,
                           scene_stretch, tile_margin)

SMALL = TilingOptions(core=256, block=256)
"""3 x 3 tiles on the 768 px scene (read windows about 544 px)."""
ONE = TilingOptions(core=4096, block=256)
"""One tile, same descriptor blocks: the reference."""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiling")
    return simulate_pair(str(out), "t", scene=SceneParams(size=768, kind="suburban", seed=11),
                         misreg=MisregParams(shift=(9.0, -6.0)))


@pytest.fixture(scope="module")
def runs(scene):
    p = MatchParams(transform="shift", n_target=60)
    return match_pair(scene.sar, scene.optical, p, tiling=SMALL), match_pair(scene.sar, scene.optical, p, tiling=ONE)


def _xy(result):
    return np.array([[p.opt_x, p.opt_y, p.sar_x, p.sar_y] for p in result.tieset.points])


def test_small_tiles_give_the_one_tile_result(runs):
    tiled, one = runs
    assert tiled.stats.n_tiles == 9 and one.stats.n_tiles == 1
    a, b = _xy(tiled), _xy(one)
    assert len(a) == len(b) >= 40
    # Same candidates (template centres), in the same order ...
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    # ... and the same offsets, to well under 0.05 px (2.5 m pixels).
    assert np.abs(a[:, 2:] - b[:, 2:]).max() / 2.5 < 0.05
    assert [p.status for p in tiled.tieset.points] == [p.status for p in one.tieset.points]
    assert tiled.stats.shift_px == pytest.approx(one.stats.shift_px, abs=0.05)
    assert tiled.stats.shift_px[0] == pytest.approx(9.0, abs=4.0)
    assert tiled.stats.shift_px[1] == pytest.approx(-6.0, abs=4.0)


def test_one_tile_run_equals_the_whole_scene_stages(scene, runs):
    """For a small scene the tiled pipeline is exactly the whole-array stages."""
    _tiled, one = runs
    pair = load_pair(scene.sar, scene.optical)
    sar, opt, valid = preprocess_pair(pair, one.params)
    pts = find_candidates(sar, opt, valid, one.params)
    grid_rc = np.array([[p.opt_x, p.opt_y] for p in one.tieset.points])
    x, y = pair.grid.xy(pts[:, 1], pts[:, 0])
    np.testing.assert_allclose(grid_rc, np.stack([x, y], axis=1), atol=1e-6)


def test_candidates_unique_and_spread_over_tiles(scene, runs):
    tiled, _one = runs
    src = open_pair(scene.sar, scene.optical)
    tiles = tiling.tiles_for(src, tiled.params, SMALL)
    inv = ~src.grid.transform
    pts = np.array([[round(v) for v in reversed(inv * (p.opt_x, p.opt_y))] for p in tiled.tieset.points], int)
    assert len(np.unique(pts, axis=0)) == len(pts)
    owners = np.array([sum(bool(t.owns(p[None])[0]) for t in tiles) for p in pts])
    assert (owners == 1).all()  # every candidate belongs to exactly one tile core
    used = set(points_in_tiles(pts, tiles).tolist())
    # Centre tiles are the only ones whose cores are far from the 128 px search margin of the
    # scene border; candidates still come from most tiles, not from one busy district.
    assert len(used) >= 6
    assert -1 not in used


def test_plan_tiles_partitions_the_grid():
    tiles = plan_tiles(1000, 700, core=256, margin=144, snap=16)
    cover = np.zeros((1000, 700), int)
    for t in tiles:
        r0, c0, r1, c1 = t.core
        cover[r0:r1, c0:c1] += 1
        rr0, cc0, rr1, cc1 = t.read
        assert rr0 % 16 == 0 and cc0 % 16 == 0
        assert rr0 <= max(r0 - 144, 0) and cc0 <= max(c0 - 144, 0)
        assert rr1 == min(r1 + 144, 1000) and cc1 == min(c1 + 144, 700)
    assert (cover == 1).all()
    assert len(tiles) == 4 * 3


def _tile_arrays(sar, opt, valid, tile: Tile) -> TileArrays:
    r0, c0, r1, c1 = tile.read
    return TileArrays(tile=tile, grid=None, sar=sar[r0:r1, c0:c1], opt=opt[r0:r1, c0:c1], valid=valid[r0:r1, c0:c1])


@pytest.mark.parametrize("mode", ["structure", "grid"])
def test_tile_boundaries_lose_no_candidates(scene, mode):
    """Accumulating tile by tile selects exactly the whole-image candidates, including those right
    next to a core boundary (whose score and window reach into the neighbouring tiles)."""
    pair = load_pair(scene.sar, scene.optical)
    p = MatchParams(n_target=150, candidates=mode, grid_spacing=24 if mode == "grid" else None)
    sar, opt, valid = preprocess_pair(pair, p)
    valid = valid.copy()
    valid[300:340, 420:470] = False  # a hole inside one core
    valid[500:530, 240:275] = False  # a hole straddling the core boundaries at row 512 and column 256
    whole = find_candidates(sar, opt, valid, p)
    tiles = plan_tiles(*valid.shape, core=256, margin=tile_margin(p), snap=tiling.candidate_geometry(p)[2])
    acc = CandidateAccumulator(p, valid.shape)
    for t in tiles:
        acc.add(_tile_arrays(sar, opt, valid, t))
    tiled = acc.select()
    np.testing.assert_array_equal(tiled, whole)
    # Some of them lie within 12 px of a core boundary (256 or 512) on either side.
    d = np.minimum(np.abs(whole[:, :, None] - np.array([256, 512])[None, None, :]).min(axis=2), 99)
    near = (d <= 12).any(axis=1)
    assert near.sum() >= 3
    assert len(whole) >= 25


def test_decimated_statistics_match_the_full_read(scene):
    src = open_pair(scene.sar, scene.optical)
    p = MatchParams()
    stats = scene_stretch(src, p, max_pixels=40_000)
    assert stats.factor == 5 and stats.whole is None
    full = load_pair(scene.sar, scene.optical)
    ref = estimate_stretch(full.sar, full.sar_valid, full.optical, full.opt_valid)
    st = stats.stretch
    assert st.sar_scale == ref.sar_scale
    sar_range, opt_range = ref.sar_hi - ref.sar_lo, ref.opt_hi - ref.opt_lo
    assert sar_range > 5  # dB: a real stretch, not a degenerate one
    assert abs(st.sar_lo - ref.sar_lo) < 0.03 * sar_range and abs(st.sar_hi - ref.sar_hi) < 0.03 * sar_range
    assert abs(st.opt_lo - ref.opt_lo) < 0.03 * opt_range and abs(st.opt_hi - ref.opt_hi) < 0.03 * opt_range
    assert stats.valid_fraction == pytest.approx(float((full.sar_valid & full.opt_valid).mean()), abs=0.02)
    # Small scenes: the "sample" is the whole grid and the stretch is exactly the full one.
    whole = scene_stretch(src, p)
    assert whole.factor == 1 and whole.stretch == ref


@pytest.mark.parametrize("strip_rows", [None, 40])
def test_point_sampled_decimation_picks_grid_pixels(scene, monkeypatch, strip_rows):
    src = open_pair(scene.sar, scene.optical)
    full = read_pair(src)
    if strip_rows:  # read in strips of 8 coarse rows (each opening the files afresh): same pixels
        monkeypatch.setattr(raster_io, "STRIP_SOURCE_ROWS", strip_rows)
        assert raster_io._strip_rows(src.sar_info, src.grid.decimated(5)) == 8
    coarse = read_pair(src, src.grid.decimated(5), point_sample=True)
    h, w = coarse.sar.shape
    assert (h, w) == (768 // 5, 768 // 5)
    ref_sar = full.sar[2::5, 2::5][:h, :w]
    ok = coarse.sar_valid & full.sar_valid[2::5, 2::5][:h, :w]
    assert ok.mean() > 0.95
    np.testing.assert_array_equal(coarse.sar[ok], ref_sar[ok])  # the SAR grid is the SAR's own pixels
    ref_opt = full.optical[:, 2::5, 2::5][:, :h, :w]
    ok &= coarse.opt_valid & full.opt_valid[2::5, 2::5][:h, :w]
    np.testing.assert_allclose(coarse.optical[:, ok], ref_opt[:, ok], atol=0.02 * float(np.ptp(ref_opt[:, ok])))


def test_cancel_between_tiles(scene):
    token = CancelToken()
    seen: list[str] = []

    def progress(f, stage):
        seen.append(stage)
        if stage.startswith("Finding candidates (tile 2/"):
            token.cancel()

    with pytest.raises(CancelledError):
        match_pair(scene.sar, scene.optical, MatchParams(n_target=60), progress=progress, cancel=token, tiling=SMALL)
    assert "Finding candidates (tile 2/9)" in seen
    assert not any(s.startswith("Finding candidates (tile 3/") for s in seen)
    assert not any(s.startswith("Matching") for s in seen)


def test_cancel_during_tiled_matching(scene):
    token = CancelToken()
    seen: list[str] = []

    def progress(f, stage):
        seen.append(stage)
        if stage.startswith("Matching") and f > 0.5:
            token.cancel()

    with pytest.raises(CancelledError):
        match_pair(scene.sar, scene.optical, MatchParams(method="ncc", n_target=60), progress=progress,
                   cancel=token, tiling=SMALL)
    assert any(s.startswith("Matching") for s in seen)
    assert not any(s.startswith("Fitting") for s in seen)


def test_reads_are_bounded_by_the_tile_size(scene, monkeypatch):
    """No read of the run is larger than one tile's window (or the statistics sample)."""
    sizes: list[int] = []
    real = raster_io._read_onto

    def spy(info, bands, grid, *a, **kw):
        sizes.append(grid.width * grid.height)
        return real(info, bands, grid, *a, **kw)

    monkeypatch.setattr(raster_io, "_read_onto", spy)
    monkeypatch.setattr(tiling, "_read_onto", spy)
    p = MatchParams(method="ncc", transform="shift", n_target=40)
    opts = TilingOptions(core=256, block=256, stats_max_pixels=60_000)
    res = match_pair(scene.sar, scene.optical, p, tiling=opts)
    m = tile_margin(p)
    assert res.stats.n_tiles == 9 and res.stats.n_matched >= 20
    assert max(sizes) <= max((256 + 2 * m) ** 2, 60_000)
    assert max(sizes) < 768 * 768  # never the whole grid at once
    assert len(sizes) >= 2 * 9  # SAR and optical per tile, at least once each


def test_custom_tile_matcher_gets_tile_arrays_and_local_points(scene, runs):
    """A plug-in matcher sees each tile's arrays and its candidates in tile coordinates."""
    _tiled, one = runs
    calls = []
    from engine.pipeline import classical_tile_matcher

    inner = classical_tile_matcher(256)

    def matcher(tile, points, params, report=None):
        s2 = params.effective_search_size() // 2
        assert tile.sar.shape == tile.opt.shape == tile.valid.shape == tile.tile.shape
        assert (points >= s2).all() and (points[:, 0] <= tile.sar.shape[0] - s2).all()
        assert tile.tile.owns(points + np.array(tile.origin)).all()
        calls.append(len(points))
        return inner(tile, points, params, report)

    res = match_pair(scene.sar, scene.optical, one.params, tiling=SMALL, matcher=matcher)
    assert sum(calls) == len(res.tieset.points) == len(one.tieset.points) and len(calls) >= 6
    np.testing.assert_allclose(_xy(res), _xy(one), atol=0.05 * 2.5)


@pytest.mark.parametrize("kind", ["linear", "amplitude"])
def test_scale_detection_from_a_decimated_read(tmp_path, kind):
    """The SAR scale detected from the decimated sample plus full-resolution chips is the one the
    whole image gives (the speckle test needs neighbouring pixels, which decimation removes)."""
    from rasterio.transform import Affine
    from scipy import ndimage

    from engine.preprocess import detect_sar_scale
    from helpers import write_geotiff

    n = 900
    rng = np.random.default_rng(21)
    db = -12 + 10 * ndimage.gaussian_filter(rng.standard_normal((n, n)), 3)
    yy, xx = np.mgrid[:n, :n]
    db[(yy // 40 + xx // 40) % 2 == 0] -= 6
    lin = (10 ** (db / 10) * rng.gamma(1, 1.0, (n, n))).astype(np.float32)
    sar_arr = lin if kind == "linear" else np.sqrt(lin)
    tf = Affine(2.5, 0, 500000.0, 0, -2.5, 5000000.0)
    sar = write_geotiff(tmp_path / "sar.tif", sar_arr, tf)
    opt = write_geotiff(tmp_path / "opt.tif", (rng.random((3, n, n)) * 200).astype(np.float32), tf)
    assert detect_sar_scale(sar_arr) == kind
    stats = scene_stretch(open_pair(sar, opt), MatchParams(), max_pixels=20_000)
    assert stats.factor == 7
    assert stats.stretch.sar_scale == kind
    ones = np.ones((n, n), bool)
    ref = estimate_stretch(sar_arr, ones, rng.random((1, n, n)), ones)
    span = ref.sar_hi - ref.sar_lo
    assert abs(stats.stretch.sar_lo - ref.sar_lo) < 0.03 * span and abs(stats.stretch.sar_hi - ref.sar_hi) < 0.03 * span
