"""The ONNX runtime layer: correlation maths, file verification, provider choice, metadata checks.

The shipped models are used where present (they are committed); every refusal case works on a
copy in a temp folder so the real files are never touched.
"""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from engine.errors import ModelError
from engine.runtime import correlate, registry
from engine.runtime.registry import MODELS_DIR, NETWORKS, available_sizes, load_manifest, sha256_of, verify
from engine.runtime.session import make_session

SIZES = available_sizes()
needs_models = pytest.mark.skipif(not SIZES, reason="no complete model set in models/ (run the training stages)")


def test_fft_correlation_equals_direct_sum(rng):
    s = rng.normal(size=(2, 5, 20, 18)).astype(np.float32)
    t = rng.normal(size=(2, 5, 7, 9)).astype(np.float32)
    a = correlate.fft_correlate(s, t)
    b = correlate.direct_correlate(s, t)
    assert a.shape == (2, 14, 10)
    np.testing.assert_allclose(a, b, atol=2e-4 * np.abs(b).max())
    # a template cut from the search is found at its cut position
    t2 = s[:, :, 4:11, 6:15].copy()
    h = correlate.fft_correlate(s, t2)
    assert [np.unravel_index(np.argmax(x), x.shape) for x in h] == [(4, 6), (4, 6)]


def test_fft_correlation_in_single_precision_and_chunks_matches_double(rng):
    """Engine-sized heatmaps (more pairs than one chunk, 64 channels, 124 vs 60 features) computed in
    float32 chunks equal a float64 whole-batch reference to ~1e-6 of their range."""
    n = correlate.CHUNK + 3
    s = rng.normal(size=(n, 64, 124, 124)).astype(np.float32)
    t = rng.normal(size=(n, 64, 60, 60)).astype(np.float32)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    a = correlate.fft_correlate(s, t)
    S = np.fft.rfft2(s.astype(np.float64), s=(124, 124))
    T = np.fft.rfft2(t.astype(np.float64), s=(124, 124))
    ref = np.fft.irfft2((S * np.conj(T)).sum(1), s=(124, 124))[:, :65, :65]
    assert a.shape == (n, 65, 65) and a.dtype == np.float32
    np.testing.assert_allclose(a, ref, atol=1e-5 * np.abs(ref).max())


def test_fft_correlation_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="do not pair"):
        correlate.fft_correlate(np.zeros((1, 3, 8, 8)), np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="larger"):
        correlate.fft_correlate(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 8, 8)))


@needs_models
def test_shipped_files_match_manifest_and_model_card():
    man = load_manifest()
    card = (MODELS_DIR / "MODEL_CARD.md").read_text()
    for size in SIZES:
        for net in NETWORKS:
            mf = man[(net, size)]
            assert sha256_of(mf.path) == mf.sha256
            assert mf.sha256 in card, f"{mf.path.name}'s sha256 is not in MODEL_CARD.md"


def _copy_models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    for p in MODELS_DIR.iterdir():
        if p.is_file() and (p.suffix == ".onnx" or p.name == "manifest.json"):
            shutil.copy(p, d / p.name)
    return d


def _rewrite_manifest(d, name, size, path):
    doc = json.loads((d / "manifest.json").read_text())
    for r in doc["models"]:
        if r["name"] == name and r["size"] == size:
            r["sha256"] = sha256_of(path)
    (d / "manifest.json").write_text(json.dumps(doc))


@needs_models
def test_tampered_model_is_refused(tmp_path):
    d = _copy_models(tmp_path)
    size = SIZES[0]
    p = d / f"orn_{size}.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    mf = load_manifest(d)[("orn", size)]
    with pytest.raises(ModelError, match="does not match its recorded checksum"):
        verify(mf)
    from engine.runtime.deep import DeepModels

    with pytest.raises(ModelError, match="orn_.*checksum"):
        DeepModels(size, models_dir=d)


@needs_models
def test_corrupt_model_with_matching_checksum_is_refused(tmp_path):
    d = _copy_models(tmp_path)
    size = SIZES[0]
    p = d / f"orn_{size}.onnx"
    p.write_bytes(p.read_bytes()[:1000])  # truncated
    _rewrite_manifest(d, "orn", size, p)
    from engine.runtime.deep import DeepModels

    with pytest.raises(ModelError, match="could not be loaded.*corrupt or not an ONNX model"):
        DeepModels(size, models_dir=d)


@needs_models
def test_missing_file_and_missing_manifest(tmp_path):
    d = _copy_models(tmp_path)
    size = SIZES[0]
    (d / f"goodness_sar_{size}.onnx").unlink()
    assert available_sizes(d) == [s for s in SIZES if s != size]
    with pytest.raises(ModelError, match="missing"):
        verify(load_manifest(d)[("goodness_sar", size)])
    (d / "manifest.json").unlink()
    with pytest.raises(ModelError, match="not installed"):
        load_manifest(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt"):
        load_manifest(d)


@needs_models
def test_metadata_mismatch_is_refused(tmp_path):
    import onnx

    d = _copy_models(tmp_path)
    size = SIZES[0]
    p = d / f"corrasl_sar_{size}.onnx"
    m = onnx.load(str(p))
    for prop in m.metadata_props:
        if prop.key == "cell_px":
            prop.value = json.dumps(4.0)
    onnx.save(m, str(p))
    _rewrite_manifest(d, "corrasl_sar", size, p)
    from engine.runtime.deep import DeepModels

    with pytest.raises(ModelError, match="cell_px=4.0.*expects 2.0"):
        DeepModels(size, models_dir=d)


@needs_models
def test_cuda_request_falls_back_to_cpu_with_warning():
    mf = load_manifest()[("orn", SIZES[0])]
    import onnxruntime as ort

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = make_session(verify(mf), provider="cuda")
    assert s.provider == s.ort_session.get_providers()[0].replace("ExecutionProvider", "").lower()
    if "CUDAExecutionProvider" not in s.ort_session.get_providers():
        assert s.provider == "cpu"
        assert any("CUDA was requested" in str(x.message) for x in w)
    assert "CPUExecutionProvider" in ort.get_available_providers()
    with pytest.raises(ModelError, match="unknown provider"):
        make_session(verify(mf), provider="tpu")


@needs_models
def test_batching_gives_the_same_heatmaps(rng):
    from engine.runtime.deep import DeepModels

    m = DeepModels(SIZES[0])
    s = rng.random((5, 256, 256)).astype(np.float32)
    t = rng.random((5, 128, 128)).astype(np.float32)
    together = m.heatmaps(s, t)
    one_by_one = np.concatenate([m.heatmaps(s[i:i + 1], t[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-3)
    assert together.shape == (5, 65, 65)
    r = m.reliability(together)
    assert r.shape == (5,) and np.all((r >= 0) & (r <= 1))


@needs_models
def test_region_features_equal_patch_features(rng):
    """SAR features of a big region, cropped, equal the features of the window cut from it (away from
    the window border): what lets the pipeline compute SAR features once per region."""
    from engine.runtime.deep import DeepModels

    m = DeepModels(SIZES[0])
    img = rng.random((512, 512)).astype(np.float32)
    big = m.sar_features(img[None])[0]
    win = m.sar_features(img[None, 128:384, 64:320])[0]
    # pixel offset (128, 64) = feature offset (64, 32); compare an interior block (edge effects of padding)
    a = big[:, 64 + 20:64 + 100, 32 + 20:32 + 100]
    b = win[:, 20:100, 20:100]
    assert np.median(np.abs(a - b)) < 0.02


def test_registry_without_models_dir(tmp_path):
    assert available_sizes(tmp_path) == []
    from engine.runtime.deep import DeepModels

    with pytest.raises(ModelError, match="not installed"):
        DeepModels(models_dir=tmp_path)
    assert registry.NETWORKS[0] == "corrasl_sar"


def test_out_of_memory_retries_with_smaller_batches():
    """A session that fails above 3 samples per call: the batch halves until it fits, results unchanged."""
    from engine.runtime.deep import DeepModels, is_out_of_memory

    calls = []

    class FakeSession:
        def run(self, x):
            calls.append(len(x))
            if len(x) > 3:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")
            return x * 2

    m = DeepModels.__new__(DeepModels)
    m.sessions = {"orn": FakeSession()}
    m.max_batch, m.warnings, m.provider = {}, [], "cuda"
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    np.testing.assert_array_equal(m._run("orn", x, batch=16), x * 2)
    assert calls[:3] == [16, 8, 4] and set(calls[3:]) <= {2}
    assert m.max_batch["orn"] == 2 and "batch reduced to 2" in m.warnings[-1]
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))

    class AlwaysOOM:
        def run(self, x):
            raise RuntimeError("Failed to allocate memory for requested buffer")

    m.sessions = {"orn": AlwaysOOM()}
    with pytest.raises(ModelError, match="not enough memory.*one sample"):
        m._run("orn", x, batch=4)

    class Broken:
        def run(self, x):
            raise RuntimeError("invalid input shape")

    m.sessions = {"orn": Broken()}
    with pytest.raises(RuntimeError, match="invalid input shape"):
        m._run("orn", x)


@needs_models
def test_blocked_goodness_map_equals_one_pass(rng):
    """A large image's goodness map computed block by block (bounded memory) is the one-pass map."""
    from engine.runtime.deep import DeepModels

    m = DeepModels(SIZES[0])
    img = rng.random((1000, 1130)).astype(np.float32)
    img[200:600, 300:900] = np.linspace(0, 1, 600)[None, :]  # structure across block borders
    whole = m.goodness_map(img, "sar", block=4096)
    blocked = m.goodness_map(img, "sar", block=256)
    assert whole.shape == blocked.shape == (29, 33)
    np.testing.assert_allclose(blocked, whole, atol=1e-5)
