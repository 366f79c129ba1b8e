"""The torch training code: architecture geometry, loss, label rules, export parity, a short run.

These import torch (installed by the setup script from requirements-training.txt); the engine and
plugin never do.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.training import data, labels, nets  # noqa: E402


def test_corrasl_geometry_matches_the_thesis():
    m = nets.CorrASL("lite").eval()
    with torch.no_grad():
        fs = m.sar(torch.zeros(1, 1, 256, 256))
        ft = m.opt(torch.zeros(1, 1, 128, 128))
    assert fs.shape[-2:] == (124, 124) and ft.shape[-2:] == (60, 60)
    assert nets.HEATMAP == 65 and nets.CENTRE_CELL == 32
    full = nets.CorrASL("full")
    # published widths: hypercolumn 32+64+128+128 = 352 -> 256 -> 512 -> 256
    assert full.sar.reduce[0].in_channels == 352 and full.sar.reduce[-1].out_channels == 256
    n_full = sum(p.numel() for p in full.parameters())
    n_lite = sum(p.numel() for p in m.parameters())
    assert n_lite < n_full / 3


def test_features_are_unit_length():
    m = nets.CorrASL("lite").eval()
    with torch.no_grad():
        f = m.sar(torch.randn(2, 1, 256, 256))
    np.testing.assert_allclose(f.norm(dim=1).numpy(), 1.0, atol=1e-4)


def test_cell_mapping_round_trip_and_centre():
    off = np.array([[0.0, 0.0], [10.0, -7.0], [-32.0, 32.0]])
    cell = data.offset_to_cell(off)
    assert tuple(cell[0]) == (32.0, 32.0)
    np.testing.assert_allclose(data.cell_to_offset(cell), off)


def test_cell_mapping_on_identical_features():
    """A template cut from the search window at a known offset peaks at the predicted cell: checks the
    2 px / cell mapping and the centre through the real stream (shared weights for both inputs)."""
    torch.manual_seed(0)
    stream = nets.CorrStream(nets.WIDTHS["lite"]).eval()
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.normal(size=(1, 1, 256, 256)).astype(np.float32))
    for d in ((0, 0), (10, -6), (-24, 30)):
        r, c = 64 + d[0], 64 + d[1]
        with torch.no_grad():
            h = nets.fft_correlate(stream(img), stream(img[:, :, r:r + 128, c:c + 128]))[0].numpy()
        peak = np.unravel_index(np.argmax(h), h.shape)
        np.testing.assert_allclose(data.cell_to_offset(np.array(peak, float)), d, atol=1.0)


def test_fft_and_direct_correlation_agree():
    s = torch.randn(3, 8, 30, 30)
    t = torch.randn(3, 8, 10, 10)
    a = nets.fft_correlate(s, t)
    b = nets.direct_correlate(s, t)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_loss_prefers_the_true_cell():
    H = nets.HEATMAP
    good = torch.full((1, H, H), -5.0)
    good[0, 40, 20] = 20.0
    bad = torch.full((1, H, H), -5.0)
    bad[0, 10, 50] = 20.0
    tgt = torch.tensor([[40.0, 20.0]])
    assert nets.corrasl_loss(good, tgt) < 0.01 < nets.corrasl_loss(bad, tgt)
    # the cross-entropy form (default) on the scale it is used at: a 3,600-cosine peak
    good_ce = nets.corrasl_ce_loss_per_pair(good * 180, tgt)
    bad_ce = nets.corrasl_ce_loss_per_pair(bad * 180, tgt)
    assert float(good_ce) < 0.5 < float(bad_ce)
    onehot = nets.bilinear_onehot(torch.tensor([[3.5, 4.25]]), 8, 8)[0]
    assert float(onehot.sum()) == pytest.approx(1.0)
    assert float(onehot[3, 4]) == pytest.approx(0.5 * 0.75)


def test_label_rules():
    loss = np.array([0.01, 0.02, 0.5, 0.9, 0.03, 0.4])
    err = np.array([0.3, 0.8, 0.5, 10.0, 3.0, 1.5])
    t_pos, t_neg = labels.derive_thresholds(loss, err)
    assert t_pos <= t_neg
    lab = labels.assign(loss, err, 0.1, 0.45)
    assert lab.tolist() == [1, 1, 0, 0, 0, -1]


def test_pool_never_uses_heldout_seeds(monkeypatch):
    with pytest.raises(ValueError, match="held-out"):
        data.build_pool(899_999, 3)
    # a scene seed drawn in the held-out block is redrawn
    monkeypatch.setattr(data, "is_heldout", lambda s: s == 1 or 900_000 <= s <= 999_999)
    sar, opt, info = data._render(1)
    assert not 900_000 <= info["scene_seed"] <= 999_999
    assert sar.shape == opt.shape == (data.POOL_PX, data.POOL_PX)


def test_sample_corr_offsets_are_where_the_content_is():
    rng = np.random.default_rng(0)
    base = rng.random((2, 512, 512)).astype(np.float16)
    pool = data.PatchPool(base, base.copy(), [{}, {}])  # identical "modalities"
    b = data.sample_corr(pool, rng, 6, augment=False)
    for k in range(6):
        r, c = 64 + int(b.offset[k, 0]), 64 + int(b.offset[k, 1])
        np.testing.assert_array_equal(b.search[k, 0, r:r + 128, c:c + 128], b.template[k, 0])
    assert np.all(np.abs(b.offset) <= 32)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pool = data.build_pool(1000, 2, workers=1)
    b = data.sample_corr(pool, rng, 4, augment=False)
    m = nets.CorrASL("lite")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    s, t, c = torch.from_numpy(b.search), torch.from_numpy(b.template), torch.from_numpy(b.cell).float()
    losses = []
    for _ in range(8):
        loss = nets.matching_loss_per_pair(m(s, t), c, "ce").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_onnx_export_matches_torch(tmp_path):
    """torch vs onnxruntime on random and simulated inputs, for every exported graph type."""
    ort = pytest.importorskip("onnxruntime")
    from models.training import export

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    pool = data.build_pool(1000, 1, workers=1)
    sim = data.to_input(pool.sar[0].astype(np.float32))[None, None, :256, :256]
    cases = [
        (nets.CorrASL("lite").sar.eval(), "image", [np.random.default_rng(2).normal(size=(2, 1, 256, 256)), sim]),
        (export._Goodness(nets.Goodness("lite")).eval(), "image", [rng.normal(size=(1, 1, 320, 256)), sim]),
        (export._ORN(nets.ORN("lite")).eval(), "heatmap", [rng.normal(size=(3, 65, 65)) * 100]),
    ]
    for k, (mod, name, inputs) in enumerate(cases):
        p = tmp_path / f"m{k}.onnx"
        ex = torch.from_numpy(inputs[0].astype(np.float32))
        export._export(mod, ex, name, "out", p, {"name": f"m{k}", "version": "t"}, spatial_dynamic=name == "image")
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        assert json.loads(meta["name"]) == f"m{k}"
        for x in inputs:
            x = x.astype(np.float32)
            with torch.no_grad():
                want = mod(torch.from_numpy(x)).numpy()
            got = sess.run(None, {name: x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
