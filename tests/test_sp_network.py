"""CorrASL with a structural prior (issue 13): the untrained network *is* the structural matcher, its
ONNX export runs in the engine with geometry from metadata, the loss and augmentation are right, and the
declared real splits keep training and benchmark apart."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from engine.errors import ModelError  # noqa: E402
from engine.matchers import get_matcher  # noqa: E402
from engine.matchers.ncc import ncc_volume  # noqa: E402
from engine.matchers.structural import _fill_invalid, dense_descriptor  # noqa: E402
from engine.runtime.sp import SPFeatures, read_geometry  # noqa: E402
from models.training.sp_nets import CENTRE_CELL, CorrASLSP, StructuralPrior, percentile90  # noqa: E402
from models.training.sp_train import heatmap_loss  # noqa: E402


def _image(seed: int, shape=(256, 256)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 2.0) * 3 - 1
    a[shape[0] // 3: shape[0] // 2, :] += 0.4  # a straight edge, like a field border
    return np.clip(a, 0, 1).astype(np.float32)


@pytest.mark.parametrize("modality", ["sar", "optical"])
def test_prior_equals_structural_descriptor(modality):
    img = _image(1)
    ref = dense_descriptor(img, modality)
    with torch.no_grad():
        out = StructuralPrior(modality)(torch.tensor(img)[None, None], torch.ones(1, 1, *img.shape))[0].numpy()
    assert np.abs(out - ref).max() < 2e-4
    assert np.abs(ref).max() > 0.5   # not trivially zero


def test_prior_equals_structural_descriptor_with_mask():
    img = _image(2)
    mask = np.ones(img.shape, bool)
    mask[:50, :] = False
    mask[200:, 180:] = False
    ref = dense_descriptor(img, "optical", mask=mask)
    filled = _fill_invalid(np.where(mask, img, 0.0), mask, 1.0).astype(np.float32)
    with torch.no_grad():
        out = StructuralPrior("optical")(torch.tensor(filled)[None, None],
                                         torch.tensor(mask, dtype=torch.float32)[None, None])[0].numpy()
    assert np.abs(out - ref).max() < 2e-4
    assert np.all(out[:, ~mask] == 0)


def test_percentile_matches_numpy_over_valid_pixels():
    rng = np.random.default_rng(3)
    x = rng.random((2, 1, 40, 30)).astype(np.float32)
    v = (rng.random((2, 1, 40, 30)) > 0.3).astype(np.float32)
    got = percentile90(torch.tensor(x), torch.tensor(v)).numpy().reshape(-1)
    want = [np.percentile(x[i, 0][v[i, 0] > 0], 90) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_untrained_heatmap_is_the_structural_zncc():
    img = _image(4)
    net = CorrASLSP("sp")
    s = torch.tensor(img)[None, None]
    t = torch.tensor(img[70:198, 50:178].copy())[None, None]
    with torch.no_grad():
        h = net(s, t, torch.ones_like(s), torch.ones_like(t))[0].numpy()
    ref = ncc_volume(dense_descriptor(img, "sar"), dense_descriptor(img[70:198, 50:178], "optical"))
    assert h.shape == (129, 129)
    assert np.abs(h - ref).max() < 1e-3
    # template cut at (+6, -14) px from the window centre: the peak is there
    assert np.unravel_index(h.argmax(), h.shape) == (CENTRE_CELL + 6, CENTRE_CELL - 14)


def test_loss_prefers_the_true_peak():
    H = 129
    truth = torch.tensor([[3.25, -7.5]])
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(H, dtype=torch.float32), indexing="ij")

    def peaked(r, c):
        return torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0)[None] * 0.8

    good = heatmap_loss(peaked(CENTRE_CELL + 3.25, CENTRE_CELL - 7.5), truth, torch.tensor(3.0))
    near = heatmap_loss(peaked(CENTRE_CELL + 5.0, CENTRE_CELL - 7.5), truth, torch.tensor(3.0))
    far = heatmap_loss(peaked(CENTRE_CELL - 20.0, CENTRE_CELL + 11.0), truth, torch.tensor(3.0))
    assert float(good) < float(near) < float(far)


def test_flip_augmentation_keeps_the_truth():
    """A left-right flipped pair keeps its truth convention: the structural matcher finds it."""
    from models.training.sp_data import Coregistered, augment_pair

    img = _image(5, (512, 512))
    src = Coregistered("t", [(img, img, None)])
    rng = np.random.default_rng(0)
    match = get_matcher("structural")
    for _ in range(12):   # about half of them flipped
        p = augment_pair(src(rng, False), rng)
        m = match(p.search, p.template)
        assert np.hypot(*(np.array(m.offset) - p.truth)) < 1.0, (m.offset, p.truth)


@pytest.fixture(scope="module")
def sp_export(tmp_path_factory):
    pytest.importorskip("onnx")
    from models.training.sp_export import export

    out = tmp_path_factory.mktemp("sp")
    export(out / "no-checkpoint.pt", "sp", out, "sp")   # untrained: the structural prior alone
    return out


def test_exported_features_run_in_the_engine(sp_export):
    f = SPFeatures(sp_export / "corrasl_sar_sp.onnx", sp_export / "corrasl_opt_sp.onnx", "cpu", threads=1)
    assert f.geometry.search_px == 256 and f.geometry.template_px == 128 and f.geometry.heatmap == 129
    img = _image(6, (200, 330))
    mask = np.ones(img.shape, bool)
    mask[:, :20] = False
    for modality in ("sar", "optical"):
        feats = f.describe(img, modality, mask)
        ref = dense_descriptor(img, modality, mask=mask)
        assert feats.shape == (16, 200, 330)
        assert np.abs(feats[:9] - ref).max() < 2e-4
        assert np.abs(feats[9:]).max() == 0.0      # residual channels start at zero


def test_exported_network_matches_like_structural(sp_export):
    from engine.simulate.patches import random_params, render_patch
    from engine.preprocess import optical_to_gray, optical_to_unit, sar_to_unit

    rng = np.random.default_rng(11)
    sp, op, sar = random_params(rng, size=384)
    pp = render_patch(sp, op, sar, rng)
    s, _ = sar_to_unit(pp.sar, scale="linear")
    o, _ = optical_to_unit(optical_to_gray(pp.optical))
    f = SPFeatures(sp_export / "corrasl_sar_sp.onnx", sp_export / "corrasl_opt_sp.onnx", "cpu", threads=1)
    structural = get_matcher("structural")
    for dr, dc in ((0, 0), (9, -17), (-21, 5)):
        win = s[64:320, 64:320]
        tpl = o[128 + dr:256 + dr, 128 + dc:256 + dc]
        a, b = f.match_patch(win, tpl), structural(win, tpl)
        assert np.allclose(a.offset, b.offset, atol=0.02), (a.offset, b.offset)
        assert abs(a.quality - b.quality) < 0.02


@pytest.mark.parametrize("key,value,msg", [
    ("feature_stride", 2, "feature_stride=2"),
    ("cell_px", 2.0, "cell_px=2.0"),
    ("similarity", "dot", "similarity='dot'"),
    ("receptive_px", None, "lacks the geometry metadata receptive_px"),
    ("heatmap", 65, "inconsistent CorrASL-SP geometry"),
])
def test_geometry_metadata_is_validated(key, value, msg):
    from models.training.sp_export import geometry

    meta = json.loads(json.dumps(geometry("sp")))
    assert read_geometry(meta, "corrasl_sar").heatmap == 129
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    with pytest.raises(ModelError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        read_geometry(meta, "corrasl_sar")


def test_real_splits_are_disjoint_and_the_bench_reads_test_sides_only(tmp_path, monkeypatch):
    from bench import realdata

    doc = realdata.real_splits()
    s = doc["srif_aligned"]
    assert s["train"] and s["test"] and not set(s["train"]) & set(s["test"])
    assert doc["airborne_lzk2211"]["train_max_x"] < doc["airborne_lzk2211"]["test_min_x"]
    a, b = doc["whu_opt_sar_sample"]["train_rows"]
    c, d = doc["whu_opt_sar_sample"]["test_rows"]
    assert b <= c
    # a fake srif folder with one train and one test chip: the bench lists the test one only
    root = tmp_path / "realdata"
    (root / "srif_aligned").mkdir(parents=True)
    for i in (s["train"][0], s["test"][0]):
        (root / "srif_aligned" / f"{i}_sar.png").write_bytes(b"")
    assert realdata.srif_ids(root) == [s["test"][0]]


@pytest.fixture(scope="module")
def sp_set(sp_export, tmp_path_factory):
    """A models folder with an 'sp' set: the untrained CorrASL-SP export, an untrained ORN-SP and the
    shipped lite-s1s2 goodness networks, installed the way ``sp_export --install`` does."""
    import shutil

    from engine.runtime.registry import MODELS_DIR
    from models.training.sp_export import export_orn, install
    from models.training.sp_orn import ORNSP

    d = tmp_path_factory.mktemp("models")
    man = json.loads((MODELS_DIR / "manifest.json").read_text())
    for r in man["models"]:
        if r["size"] == "lite-s1s2" and r["name"].startswith("goodness"):
            shutil.copy(MODELS_DIR / r["file"], d / r["file"])
    (d / "manifest.json").write_text(json.dumps({"models": [r for r in man["models"] if r["size"] == "lite-s1s2"
                                                            and r["name"].startswith("goodness")]}))
    for f in sp_export.glob("corrasl_*_sp.onnx"):
        shutil.copy(f, d / f.name)
    torch.manual_seed(0)
    torch.save({"model": ORNSP().state_dict(), "extra": {"pos_px": 1.0, "neg_px": 2.5}}, d / "orn.pt")
    export_orn(d / "orn.pt", d, "sp")
    recs = install("sp", "lite-s1s2", models_dir=d)
    assert {(r["name"], r["size"]) for r in recs} == {(n, "sp") for n in
                                                      ("corrasl_sar", "corrasl_opt", "orn", "goodness_sar", "goodness_opt")}
    return d


def test_deep_pipeline_with_an_sp_set_is_the_structural_matcher_at_init(sp_set, tmp_path):
    """Untrained CorrASL-SP in the deep pipeline: same candidates and offsets as the structural matcher
    (features once per descriptor block), plus an ORN reliability on every match."""
    from dataclasses import replace

    from engine.params import MatchParams
    from engine.pipeline import match_pair
    from engine.runtime.deep import DeepModels
    from engine.simulate.pair import simulate_pair
    from engine.simulate.params import MisregParams, SceneParams

    pair = simulate_pair(str(tmp_path), "s", scene=SceneParams(size=640, kind="suburban", seed=5),
                         misreg=MisregParams(shift=(6.0, -4.0)))
    models = DeepModels("sp", "cpu", models_dir=sp_set, threads=1)
    assert models.kind == "sp" and models.sp.geometry.heatmap == 129
    assert models.input_map["corrasl_sar"] == (0.0, 1.0) and models.input_map["goodness_sar"] == (0.5, 4.0)
    base = MatchParams(candidates="structure", n_target=40)
    deep = match_pair(pair.sar, pair.optical, replace(base, method="deep", model_size="sp"), models=models)
    ref = match_pair(pair.sar, pair.optical, replace(base, method="structural"))
    a = np.array([[p.sar_x, p.sar_y] for p in deep.tieset.points])
    b = np.array([[p.sar_x, p.sar_y] for p in ref.tieset.points])
    assert a.shape == b.shape and len(a) >= 20
    assert np.abs(a - b).max() < 0.05 * float(np.max(deep.tieset.pixel_size)) + 1e-9
    orn = np.array([p.orn_prob for p in deep.tieset.points])
    assert np.all((orn >= 0) & (orn <= 1))


def test_an_sp_set_with_a_foreign_orn_is_refused(sp_set, tmp_path):
    import shutil

    from engine.runtime.deep import DeepModels

    d = tmp_path / "models"
    shutil.copytree(sp_set, d)
    from engine.runtime.registry import MODELS_DIR
    shutil.copy(MODELS_DIR / "orn_lite-s1s2.onnx", d / "orn_sp.onnx")   # the 2 px CorrASL's ORN in its place
    doc = json.loads((d / "manifest.json").read_text())
    from engine.runtime.registry import sha256_of
    for r in doc["models"]:
        if r["name"] == "orn" and r["size"] == "sp":
            r["sha256"] = sha256_of(d / "orn_sp.onnx")
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="do not belong together|does not judge 65 x 65 ZNCC crops"):
        DeepModels("sp", "cpu", models_dir=d, threads=1)


def test_orn_sp_export_matches_torch_and_reads_peak_height(sp_set):
    import onnxruntime as ort

    from models.training.sp_orn import ORNSP

    orn = ORNSP()
    orn.load_state_dict(torch.load(sp_set / "orn.pt", weights_only=False)["model"])
    orn.eval()
    yy, xx = np.mgrid[:65, :65]
    sharp = (0.9 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 4.0) + 0.05).astype(np.float32)
    flat = np.full((65, 65), 0.3, np.float32)
    x = np.stack([sharp, flat])
    s = ORNSP.scalars(torch.tensor(x)).numpy()
    assert s[0, 0] == pytest.approx(0.95, abs=1e-3) and s[0, 1] < 0.1   # peak vs best value off the peak
    assert s[1, 0] == pytest.approx(0.3) and s[1, 1] == pytest.approx(0.3)
    sess = ort.InferenceSession(str(sp_set / "orn_sp.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"heatmap": x})[0]
    with torch.no_grad():
        want = orn(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_card_section_states_the_measured_numbers(sp_set, tmp_path):
    from models.training.sp_card import BEGIN, END, render

    torch.save({"model": {}, "step": 120, "extra": {"seconds": 1800.0, "batch": 8, "lr": 5e-4, "mix": {"srif": 1.0}}},
               tmp_path / "corrasl_sp.pt")
    row = lambda a, b: {"accuracy": a, "within_3px": b, "n": 10}  # noqa: E731
    bench = {"real": {"sets": {"srif_aligned": {"n_pairs": 10, "all": {"structural": row(13.3, 73.3),
                                                                      "corrasl_sp": row(16.7, 76.7)},
                                                "kept": {"structural": row(13.8, 75.9)}}}}}
    text = render("sp", bench, models_dir=sp_set, checkpoints=tmp_path)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    assert "steps of batch 8" in text and "step 120 (30 CPU-min)" in text
    assert "| srif_aligned | 10 | 13.3 | 73.3 | 16.7 | 76.7 | – | – | 13.8 | 75.9 (10)" in text
    assert "orn_sp.onnx" in text   # the installed files with their sha256
