"""Robustness of the QGIS plugin (issue 7): engine errors inside the background task become messages,
cancelling at any stage leaves nothing behind, and unloading the plugin mid-run cancels the task
without blocking QGIS's main thread. Table-driven, headless (pytest-qgis)."""
from __future__ import annotations

import hashlib
import importlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsProject, QgsTask

from conftest import load_plugin_package
from helpers import write_geotiff
from plugin_helpers import add_raster, clear_project, open_plugin, reset_settings, scene, wait_until

PKG = load_plugin_package().__name__


def mod(name: str):
    """A module of the plugin package as QGIS imports it (its own copy of the engine)."""
    return importlib.import_module(f"{PKG}.{name}")


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def fingerprint(paths) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), Path(p).stat().st_mtime_ns) for p in paths}


def run_task(task, timeout: float = 90.0) -> tuple[float, int]:
    """Start ``task`` in QGIS's task manager and process events until it has finished. Returns the
    longest time the main thread went without processing events (it must stay responsive) and the
    task's final status (read in its completion callback: the manager deletes the task afterwards)."""
    done = []
    task.on_done = lambda t: done.append((t, t.status()))
    QgsApplication.taskManager().addTask(task)
    gap = wait_until(lambda: bool(done), timeout)
    assert len(done) == 1 and done[0][0] is task          # the completion callback ran once
    return gap, done[0][1]


# ============================================================================ engine errors in the task


def _bad_sar(kind: str):
    def build(d: Path, sc) -> str:
        import rasterio

        with rasterio.open(sc.sar) as ds:
            arr, tf, crs = ds.read(1), ds.transform, ds.crs
        if kind == "missing":
            return str(d / "missing.tif")
        if kind == "constant":
            return write_geotiff(d / "constant.tif", np.full_like(arr, -7.5), tf, crs=crs)
        if kind == "complex":
            a = np.sqrt(np.abs(arr)).astype(np.float32)
            return write_geotiff(d / "slc.tif", (a + 1j * a).astype(np.complex64), tf, crs=crs, dtype="complex64")
        if kind == "far":
            from rasterio.transform import Affine

            return write_geotiff(d / "far.tif", arr, tf * Affine.translation(10_000, 0), crs=crs)
        if kind == "not_raster":
            (d / "notes.tif").write_text("not a raster")
            return str(d / "notes.tif")
        raise ValueError(kind)
    return build


def _models_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(mod("engine.runtime.registry"), "MODELS_DIR", tmp_path / "no_models")


TASK_ERRORS = [
    # (id, SAR builder or None for the scene's, params, setup, output folder under a file?, message)
    ("sar_missing", _bad_sar("missing"), {}, None, False, r"The SAR raster '.*missing\.tif' does not exist"),
    ("not_a_raster", _bad_sar("not_raster"), {}, None, False, r"is not a readable raster"),
    ("no_overlap", _bad_sar("far"), {}, None, False, r"do not overlap"),
    ("complex_sar", _bad_sar("complex"), {}, None, False, r"complex SAR is not supported; detect it first"),
    ("constant_sar", _bad_sar("constant"), {}, None, False, r"the SAR image is constant \(value -7\.5\)"),
    ("too_few_points", None, {"n_target": 2, "transform": "affine"}, None, False,
     r"affine needs at least 3 tie points, got 2"),
    ("deep_models_not_installed", None, {"method": "deep"}, _models_missing, False,
     r"the deep models are not installed"),
    ("unwritable_output_folder", None, {}, None, True, r"Cannot create the output folder .*Not a directory"),
]


@pytest.mark.parametrize("case", TASK_ERRORS, ids=[c[0] for c in TASK_ERRORS])
def test_match_task_turns_engine_errors_into_messages_and_leaves_nothing(case, qgis_app, tmp_path, monkeypatch):
    _id, build, kw, setup, out_under_file, message = case
    sc = scene()
    d = tmp_path / "in"
    d.mkdir()
    sar = build(d, sc) if build else sc.sar
    if setup:
        setup(monkeypatch, tmp_path)
    out = tmp_path / "out"
    if out_under_file:
        (tmp_path / "file.txt").write_text("x")
        out = tmp_path / "file.txt" / "results"
    inputs = [p for p in (sar, sc.optical) if Path(p).is_file()]
    before = fingerprint(inputs)
    MatchParams = mod("engine.params").MatchParams
    task = mod("plugin.tasks").MatchTask(sar, sc.optical, MatchParams(**{"n_target": 40, "transform": "shift", **kw}),
                                         str(out))
    gap, status = run_task(task)
    assert task.error is not None and re.search(message, task.error), task.error
    assert not task.error.startswith("Unexpected error") and "Traceback" not in task.error
    assert not task.was_cancelled and status == QgsTask.TaskStatus.Terminated
    assert files_under(out) == [] and not out.exists()   # no run folder, no file, not even the folder
    assert fingerprint(inputs) == before
    assert gap < 1.0                                       # the engine ran off the main thread


# ============================================================================ cancel at every stage


CANCEL_AT = ["Reading rasters", "Finding candidates", "Matching", "Fitting geometry", "Writing tie points"]


@pytest.mark.parametrize("stage", CANCEL_AT)
def test_match_task_cancelled_at_each_stage_removes_everything(stage, qgis_app, tmp_path):
    sc = scene()
    before = fingerprint([sc.sar, sc.optical])
    out = tmp_path / "out"
    MatchParams = mod("engine.params").MatchParams
    task = mod("plugin.tasks").MatchTask(sc.sar, sc.optical, MatchParams(n_target=40, transform="shift"), str(out))
    report = task.report
    at: list[float] = []
    seen: list[str] = []

    def cancelling_report(fraction, text):     # runs in the task's thread, like the engine's callbacks
        seen.append(text)
        if text.startswith(stage) and not at:
            at.append(time.monotonic())
            task.cancel()                       # what the Cancel button / the task manager does
        report(fraction, text)

    task.report = cancelling_report
    _gap, status = run_task(task)
    assert at, f"the task never reached {stage!r}: {seen}"
    assert time.monotonic() - at[0] < 10.0
    assert task.was_cancelled and task.error == "Cancelled: no output was written."
    assert status == QgsTask.TaskStatus.Terminated
    assert not out.exists()                    # run folder and output folder removed, nothing written
    assert fingerprint([sc.sar, sc.optical]) == before


# ============================================================================ unloading mid-run


@pytest.fixture
def plugin(qgis_iface):
    reset_settings()
    qgis_iface.messageBar().clear_messages()
    p = open_plugin(qgis_iface)
    yield p
    if p.dock is not None:
        p.unload()
    clear_project()


def test_unloading_the_plugin_mid_run_cancels_the_task_without_blocking_qgis(plugin, qgis_iface, tmp_path):
    sc = scene()
    d = plugin.dock
    d.sar_combo.setLayer(add_raster(sc.sar, "SAR"))
    d.opt_combo.setLayer(add_raster(sc.optical, "Optical"))
    d.out_dir.setFilePath(str(tmp_path / "out"))
    d.n_target.setValue(300)
    before = fingerprint([sc.sar, sc.optical])
    task = d.run_match()
    assert task is not None
    stages: list[str] = []
    ended: list[str] = []
    task.stageChanged.connect(stages.append)
    task.taskTerminated.connect(lambda: ended.append("terminated"))
    task.taskCompleted.connect(lambda: ended.append("completed"))
    gap_running = wait_until(lambda: any(s.startswith("Matching") for s in stages), 60)
    assert task.status() == QgsTask.TaskStatus.Running
    t0 = time.monotonic()
    plugin.unload()                            # QGIS closing, or the plugin being reloaded, mid-run
    unload_s = time.monotonic() - t0
    assert plugin.dock is None and plugin.action is None
    gap_after = wait_until(lambda: bool(ended), 30)
    ended_s = time.monotonic() - t0
    assert ended == ["terminated"] and task.was_cancelled
    assert task.error == "Cancelled: no output was written."
    assert unload_s < 1.0                      # unload does not wait for the engine
    assert ended_s < 10.0                      # the engine noticed the cancel promptly
    assert gap_running < 1.0 and gap_after < 1.0   # the main thread kept processing events throughout
    assert QgsApplication.taskManager().countActiveTasks() == 0
    assert files_under(tmp_path / "out") == []
    assert sorted(lyr.name() for lyr in QgsProject.instance().mapLayers().values()) == ["Optical", "SAR"]
    assert fingerprint([sc.sar, sc.optical]) == before


# ============================================================================ Processing


PROCESSING_ERRORS = [
    ("sar_missing", lambda d, sc: {"SAR": str(d / "missing.tif")},
     r"Could not load source layer for SAR: .*missing\.tif not found"),
    ("aoi_outside", lambda d, sc: {"EXTENT": "600000,601000,6000000,6001000 [EPSG:32633]"}, r"outside the overlap"),
    ("too_few_points", lambda d, sc: {"N_TARGET": 2, "TRANSFORM": 1}, r"affine needs at least 3 tie points"),
    ("constant_sar", lambda d, sc: {"SAR": _bad_sar("constant")(d, sc)}, r"the SAR image is constant"),
]


@pytest.fixture(scope="module")
def processing_plugin(qgis_iface, qgis_processing):
    reset_settings()
    p = open_plugin(qgis_iface)
    yield p
    p.unload()
    clear_project()


@pytest.mark.parametrize("case", PROCESSING_ERRORS, ids=[c[0] for c in PROCESSING_ERRORS])
def test_processing_match_errors_are_processing_exceptions(case, processing_plugin, tmp_path):
    import processing

    _id, extra, message = case
    sc = scene()
    d = tmp_path / "in"
    d.mkdir()
    params = {"SAR": sc.sar, "OPTICAL": sc.optical, "TRANSFORM": 0, "N_TARGET": 40,
              "OUTPUT_FOLDER": str(tmp_path / "out"), **extra(d, sc)}
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("sar_optical_matcher:match", params, feedback=QgsProcessingFeedback())
    assert [f for f in files_under(tmp_path / "out")] == []   # no output file (at most the empty folder)
