"""The deep pipeline stages: goodness selection, heatmap -> pixels, tiling without seams, the scene run.

The pure stages are tested on synthetic arrays; the stages that need the shipped networks skip
(with the reason) when models/ has no complete set.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine.deep import goodness as G
from engine.deep.matcher import cell_to_offset, heatmap_to_match, orn_crop
from engine.errors import CancelledError, InputError
from engine.params import MatchParams
from engine.runtime.registry import available_sizes

needs_models = pytest.mark.skipif(not available_sizes(), reason="no complete model set in models/")


def test_fusion_and_soft_nms_peaks():
    a = np.array([[0.2, 0.9], [0.5, 0.1]])
    b = np.array([[0.4, 0.3], [0.6, 0.8]])
    np.testing.assert_array_equal(G.fuse(a, b, "min"), [[0.2, 0.3], [0.5, 0.1]])
    np.testing.assert_array_equal(G.fuse(a, b, "max"), [[0.4, 0.9], [0.6, 0.8]])
    with pytest.raises(ValueError):
        G.fuse(a, b, "product")
    g = np.zeros((9, 9))
    g[2, 2], g[2, 3], g[6, 6], g[6, 1] = 0.9, 0.8, 0.7, 0.2
    pk = {tuple(p) for p in G.peaks(g, 0.5)}
    assert pk == {(2, 2), (6, 6)}           # (2,3) suppressed by its better neighbour, (6,1) below threshold
    usable = np.ones_like(g, bool)
    usable[6, 6] = False
    assert {tuple(p) for p in G.peaks(g, 0.5, usable)} == {(2, 2)}
    s = G.soft_nms(np.ones((5, 5)))
    assert s[2, 2] == pytest.approx(1 / 9)


def test_spread_select_takes_every_region_before_seconds():
    # 20 strong peaks in one corner, one weak peak in each other corner of a 2048 px scene
    rng = np.random.default_rng(0)
    corner = np.stack([rng.integers(0, 10, 20), rng.integers(0, 10, 20)], 1)
    others = np.array([[55, 5], [5, 55], [55, 55]])
    cells = np.concatenate([corner, others])
    score = np.r_[np.full(20, 0.9), 0.4, 0.4, 0.4]
    pick = G.spread_select(cells, score, (2048, 2048), 4)
    assert len(pick) == 4
    assert set(range(20, 23)) <= set(pick.tolist())   # the weak but distant peaks win over corner seconds


def test_valid_fraction_cells_counts_each_128px_field():
    v = np.ones((256, 256), bool)
    v[:, :64] = False
    f = G.valid_fraction_cells(v, 6, 6)
    assert f[0, 0] == pytest.approx(0.5) and f[0, 2] == pytest.approx(1.0) and f[3, 4] == pytest.approx(1.0)
    assert f[0, 5] == pytest.approx(96 / 128)  # field [160, 288) clipped at the image border


def test_cell_to_offset_mapping():
    assert tuple(cell_to_offset(np.array([32.0, 32.0]), 256)) == (0.0, 0.0)
    assert tuple(cell_to_offset(np.array([40.0, 20.0]), 256)) == (16.0, -24.0)
    assert tuple(cell_to_offset(np.array([48.0, 48.0]), 320)) == (0.0, 0.0)   # 320 px window: centre cell 48


def test_heatmap_to_match_subpixel_and_alternatives():
    yy, xx = np.mgrid[:65, :65]
    h = 100 * np.exp(-((yy - 40.25) ** 2 + (xx - 21.5) ** 2) / 4.0) + 30 * np.exp(-((yy - 10) ** 2 + (xx - 50) ** 2) / 4.0)
    m = heatmap_to_match(h.astype(np.float32), 256)
    assert m.offset[0] == pytest.approx(2 * 40.25 - 64, abs=0.3)
    assert m.offset[1] == pytest.approx(2 * 21.5 - 64, abs=0.3)
    assert m.cov[0] > 0 and m.cov[2] > 0
    assert tuple(m.alternatives[0]) == (2 * 10 - 64, 2 * 50 - 64)
    assert orn_crop(np.zeros((81, 81))).shape == (65, 65)


def test_deep_params_are_validated():
    with pytest.raises(InputError, match="Goodness fusion"):
        MatchParams(method="deep", goodness_fusion="mean").validate()
    with pytest.raises(InputError, match="128 px template"):
        MatchParams(method="deep", template_size=96).validate()
    with pytest.raises(InputError, match="device"):
        MatchParams(device="tpu").validate()
    assert MatchParams(method="deep").candidate_mode() == "goodness"
    assert MatchParams().candidate_mode() == "structure"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from engine.simulate import MisregParams, SceneParams, simulate_pair

    out = tmp_path_factory.mktemp("deep")
    return simulate_pair(str(out), "d", scene=SceneParams(size=1024, gsd=3.0, kind="suburban", seed=21),
                         misreg=MisregParams(shift=(12.0, -7.0)))


@needs_models
def test_goodness_map_has_no_seams(scene):
    """Tiled goodness (4 tiles) equals the one-tile map cell for cell."""
    from engine.raster_io import open_pair
    from engine.runtime.deep import DeepModels
    from engine.tiling import TileRun, TilingOptions, find_candidates_tiled, scene_stretch, tiles_for

    models = DeepModels()
    p = MatchParams(method="deep", n_target=80)
    src = open_pair(scene.sar, scene.optical)
    stats = scene_stretch(src, p)
    maps = []
    for opts in (TilingOptions(core=512, block=512), TilingOptions(core=4096, block=512)):
        run = TileRun(tiles=tiles_for(src, p, opts))
        acc = G.GoodnessAccumulator(models, (src.grid.height, src.grid.width), "min", 0.3, 128, 80)
        pts = find_candidates_tiled(src, stats.stretch, p, run, lambda i, n: None, acc)
        maps.append((len(run.tiles), acc.good.copy(), pts))
    (n4, g4, p4), (n1, g1, p1) = maps
    assert n4 == 4 and n1 == 1
    both = np.isfinite(g4) & np.isfinite(g1)
    assert both.sum() > 0.8 * g1.size
    np.testing.assert_allclose(g4[both], g1[both], atol=1e-4)
    np.testing.assert_array_equal(p4, p1)


@needs_models
def test_deep_scene_run_stage_outputs(scene):
    """The stage outputs of a deep run on a simulated scene: spread goodness candidates carrying their
    fused goodness, an ORN reliability per match, ORN flags exactly where the reliability is below the
    threshold, and the models recorded. (Accuracy is measured by the benchmark, not here.)"""
    from engine.pipeline import match_pair

    seen = []
    p = MatchParams(method="deep", transform="shift", n_target=80, orn_threshold=0.3)
    res = match_pair(scene.sar, scene.optical, p, progress=lambda f, s: seen.append(s))
    assert "Loading models" in seen and any(s.startswith("Matching") for s in seen)
    pts = res.tieset.points
    assert res.stats.n_candidates == len(pts) >= 30
    g = np.array([q.goodness for q in pts])
    o = np.array([q.orn_prob for q in pts])
    assert np.all(np.isfinite(g)) and np.all((g >= p.goodness_threshold) & (g <= 1))
    assert np.all((o >= 0) & (o <= 1))
    for q in pts:
        if q.orn_prob < p.orn_threshold:
            assert q.status == "flagged"
            assert q.flag_reason.startswith("ORN") or q.flag_reason == "peak at search window edge"
        elif q.flag_reason.startswith("ORN"):
            pytest.fail(f"point {q.id} flagged by the ORN with reliability {q.orn_prob:.2f}")
    # candidates spread: every quadrant of the 1024 px scene holds some
    cols = np.array([q.sar_col for q in pts])
    rows = np.array([q.sar_row for q in pts])
    quads = {(int(r >= 512), int(c >= 512)) for r, c in zip(rows, cols)}
    assert len(quads) == 4
    from engine.runtime.registry import default_set

    assert res.models["size"] == default_set() and res.models["provider"] in ("cpu", "cuda")
    assert res.summary()["models"]["versions"]["orn"]


@needs_models
def test_deep_run_cancels_promptly(scene):
    from engine.pipeline import match_pair
    from engine.progress import CancelToken

    tok = CancelToken()

    def progress(f, s):
        if s.startswith("Matching"):
            tok.cancel()

    with pytest.raises(CancelledError):
        match_pair(scene.sar, scene.optical, MatchParams(method="deep", n_target=80), progress=progress, cancel=tok)
