"""Model sets (simulator-only and fine-tuned variants), the declared real fine-tuning split, and the
training-data pieces behind the fine-tuned set."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.errors import ModelError
from engine.runtime import registry
from engine.runtime.registry import MODELS_DIR, available_sizes, default_set, load_manifest

torch = pytest.importorskip("torch", reason="training tests need the training requirements (make setup-training)")

from models.training import data, realpool  # noqa: E402

SETS = available_sizes()


# ------------------------------------------------------------------ the declared s1s2_volkov split

def test_split_is_disjoint_and_covers_the_dataset():
    split = realpool.load_split()
    train, test = set(split["train"]), set(split["test"])
    assert not train & test
    assert len(train) == 55 and len(test) == 25
    d = realpool.realdata_dir()
    if d is None:
        pytest.skip("../shared/realdata/s1s2_volkov absent: the split's coverage cannot be checked")
    stems = {p.name[:-len("_sar.tif")] for p in d.glob("*_sar.tif")}
    assert train | test == stems


def test_split_sides_share_no_ground():
    """No test fragment overlaps a training fragment on the ground (the split is by place)."""
    d = realpool.realdata_dir()
    if d is None:
        pytest.skip("../shared/realdata/s1s2_volkov absent")
    meta = json.loads((d / "metadata.json").read_text())
    split = realpool.load_split()

    def box(rec):
        xs = [x for x, _ in rec["corners_EPSG:3395"]]
        ys = [y for _, y in rec["corners_EPSG:3395"]]
        return min(xs), max(xs), min(ys), max(ys)

    boxes = {rec["fragment_filename"][:3]: box(rec) for rec in meta}
    for a in split["test"]:
        ax0, ax1, ay0, ay1 = boxes[a]
        for b in split["train"]:
            bx0, bx1, by0, by1 = boxes[b]
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), (a, b)


def test_benchmark_scores_only_the_test_fragments():
    from bench.realdata import realdata_root, volkov_stems

    root = realdata_root()
    if root is None or not (root / "s1s2_volkov").is_dir():
        pytest.skip("../shared/realdata/s1s2_volkov absent")
    stems = volkov_stems(root)
    assert stems == sorted(realpool.load_split()["test"])


def test_overlapping_split_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["001", "002"], "test": ["002"]}))
    monkeypatch.setattr(realpool, "SPLIT_FILE", bad)
    with pytest.raises(ValueError, match="overlap"):
        realpool.load_split()


# ------------------------------------------------------------------ label refinement

def test_residual_shift_recovers_a_known_misregistration():
    """The per-fragment label refinement finds a shift put into a co-registered simulated pair."""
    from scipy import ndimage

    from engine.preprocess import optical_to_gray, optical_to_unit, sar_to_unit
    from engine.simulate.params import SceneParams
    from engine.simulate.patches import random_params, render_patch

    rng = np.random.default_rng(3)
    sp, op, sar_p = random_params(rng, size=768)
    sp = SceneParams(size=768, gsd=2.0, kind="suburban", seed=sp.seed)
    pp = render_patch(sp, op, sar_p, rng)
    sar, sv = sar_to_unit(pp.sar, scale="linear")
    opt, ov = optical_to_unit(optical_to_gray(pp.optical))
    base, agree0 = realpool.residual_shift(sar.astype(np.float32), opt.astype(np.float32), sv & ov,
                                           np.random.default_rng(0))
    true = np.array([2.0, -3.0])
    moved = np.clip(ndimage.shift(opt, true, order=3, mode="nearest"), 0, 1).astype(np.float32)
    est, agree = realpool.residual_shift(sar.astype(np.float32), moved, sv & ov, np.random.default_rng(0))
    assert agree >= realpool.MIN_AGREE
    # optical content moved by +true now sits in the SAR at -true from where it appears in the optical
    np.testing.assert_allclose(est - base, -true, atol=0.6)
    # and the correction build_real_pool applies (shift the optical by the estimate) undoes it
    fixed = np.clip(ndimage.shift(moved, est - base, order=3, mode="nearest"), 0, 1).astype(np.float32)
    after, _ = realpool.residual_shift(sar.astype(np.float32), fixed, sv & ov, np.random.default_rng(0))
    assert np.hypot(*(after - base)) < 0.5


# ------------------------------------------------------------------ training-batch pieces

def test_left_right_only_flips_keep_up_and_down():
    """flips="h" never mirrors rows: a pool brighter at the bottom stays brighter at the bottom."""
    ramp = np.repeat(np.linspace(0, 1, 512, dtype=np.float32)[:, None], 512, 1)
    pool = data.PatchPool(np.stack([ramp] * 2).astype(np.float16), np.stack([ramp] * 2).astype(np.float16), [{}, {}])
    rng = np.random.default_rng(0)
    for flips, expect_all_down in (("h", True), ("hv", False)):
        b = data.sample_corr(pool, rng, 40, augment=True, flips=flips)
        down = [s[0, -20:].mean() > s[0, :20].mean() for s in b.search]
        if expect_all_down:
            assert all(down)
        else:
            assert 5 < sum(down) < 35  # about half flipped


def test_concat_batches_keeps_pairs_together():
    rng = np.random.default_rng(1)
    base = rng.random((2, 512, 512)).astype(np.float16)
    pool = data.PatchPool(base, base.copy(), [{}, {}])
    a = data.sample_corr(pool, rng, 3, augment=False)
    b = data.sample_corr(pool, rng, 2, augment=False)
    c = data.concat_batches(a, b)
    assert c.search.shape == (5, 1, 256, 256) and c.template.shape == (5, 1, 128, 128)
    np.testing.assert_array_equal(c.offset[3:], b.offset)
    np.testing.assert_array_equal(c.cell[:3], a.cell)


# ------------------------------------------------------------------ model sets in the engine

def _fake_sets(tmp_path, sets, default=None):
    d = tmp_path / "models"
    d.mkdir()
    recs = []
    for s in sets:
        for n in registry.NETWORKS:
            f = d / f"{n}_{s}.onnx"
            f.write_bytes(b"x")
            recs.append({"name": n, "size": s, "file": f.name, "sha256": registry.sha256_of(f)})
    doc = {"models": recs}
    if default:
        doc["default"] = default
    (d / "manifest.json").write_text(json.dumps(doc))
    return d


def test_default_set_follows_the_manifest(tmp_path):
    d = _fake_sets(tmp_path, ["lite", "lite-s1s2"], default="lite-s1s2")
    assert available_sizes(d) == ["lite", "lite-s1s2"]
    assert default_set(d) == "lite-s1s2"


def test_default_set_falls_back_when_the_named_one_is_missing(tmp_path):
    d = _fake_sets(tmp_path, ["full", "lite"], default="lite-s1s2")
    assert default_set(d) == "full"
    (tmp_path / "empty").mkdir()
    assert default_set(tmp_path / "empty") is None


def test_unknown_set_is_refused_with_the_installed_ones(tmp_path):
    from engine.runtime.deep import DeepModels

    d = _fake_sets(tmp_path, ["lite"])
    with pytest.raises(ModelError, match=r"no 'lite-s2' models installed \(available: lite\)"):
        DeepModels("lite-s2", models_dir=d)


@pytest.mark.skipif(not SETS, reason="no complete model set in models/")
def test_models_command_lists_and_verifies(tmp_path, monkeypatch, capsys):
    from engine import cli

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for s in SETS:
        assert s in out
    assert f"{default_set()}  (default)" in out
    assert out.count(" ok") == 5 * len(SETS)
    # a tampered copy: the command names the file and fails
    d = tmp_path / "models"
    shutil.copytree(MODELS_DIR, d, ignore=shutil.ignore_patterns("training", "__pycache__", "*.py"))
    victim = d / f"orn_{SETS[0]}.onnx"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(registry, "MODELS_DIR", d)
    assert cli.main(["models"]) == 1
    assert f"{victim.name}" in capsys.readouterr().out


@pytest.mark.skipif(len(SETS) < 2, reason="only one model set installed")
def test_each_set_belongs_together_and_differs_in_corrasl():
    """Every set loads (its five files agree on version and set name); a fine-tuned set has its own
    CorrASL weights and the base set's goodness/ORN weights."""
    from engine.runtime.deep import DeepModels

    man = load_manifest()
    for s in SETS:
        m = DeepModels(s)
        assert m.size == s
    for s in SETS:
        if "-" not in s:
            continue
        base = s.split("-")[0]
        assert man[("corrasl_sar", s)].sha256 != man[("corrasl_sar", base)].sha256
        rng = np.random.default_rng(0)
        img = rng.random((256, 256)).astype(np.float32)
        ga = DeepModels(s).goodness_map(img, "sar")
        gb = DeepModels(base).goodness_map(img, "sar")
        np.testing.assert_allclose(ga, gb, atol=1e-6)
