"""Batch matching on Dask (issue 8): same results as the single-pair CLI, failures isolated, resume,
a killed worker, the tiled split of a large pair, manifest validation."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from osgeo import ogr

from engine import cli
from engine.batch import tasks
from engine.batch.manifest import load_manifest, parse_manifest_rows
from engine.errors import InputError
from engine.params import MatchParams
from engine.simulate import MisregParams, SceneParams, simulate_pair
from engine.tiling import TilingOptions

distributed = pytest.importorskip("distributed")
from engine.batch.runner import run_batch  # noqa: E402

OPTS = {"transform": "shift", "n_target": "40"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_scenes")
    return [simulate_pair(str(out), f"p{i}", scene=SceneParams(size=512, kind="suburban", seed=30 + i),
                          misreg=MisregParams(shift=(6.0 - 3 * i, -4.0 + 2 * i))) for i in range(3)]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _row(name, pair, **kw):
    return dict({"name": name, "sar": pair.sar, "optical": pair.optical}, **OPTS, **kw)


def _write_csv(path, rows):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(cols) + "\n")
        for r in rows:
            fh.write(",".join(str(r.get(c, "")) for c in cols) + "\n")
    return str(path)


def _tie_xy(gpkg: str) -> np.ndarray:
    ds = ogr.Open(gpkg)
    rows = [(f.GetField("opt_x"), f.GetField("opt_y"), f.GetField("sar_x"), f.GetField("sar_y"), f.GetField("status"))
            for f in ds.GetLayerByName("tie_points")]
    ds = None
    return np.array([r[:4] for r in rows], float), [r[4] for r in rows]


def _mtimes(folder) -> dict:
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in sorted(os.listdir(folder))}


def _comparable(summary_path: str) -> dict:
    s = json.load(open(summary_path, encoding="utf-8"))
    for k in ("timings_s", "outputs"):
        s.pop(k)
    return s


# ------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------

def test_manifest_csv_and_yaml(tmp_path):
    (tmp_path / "m.csv").write_text(
        "# archive of two pairs\nname,sar,optical,xmin,ymin,xmax,ymax,aoi_crs,method,max-offset,corrected\n"
        "a,s1/a.tif,s2/a.tif,1,2,3,4,EPSG:4326,ncc,40,no\n"
        ",/data/b_sar.tif,/vsicurl/https://example.org/b_opt.tif,,,,,,,,\n")
    a, b = load_manifest(str(tmp_path / "m.csv"), str(tmp_path / "out"))
    assert a.sar == str(tmp_path / "s1" / "a.tif") and a.params.aoi == (1, 2, 3, 4)
    assert a.params.aoi_crs == "EPSG:4326" and a.params.method == "ncc" and a.params.max_offset_px == 40.0
    assert a.corrected is False and a.checkerboard is True
    assert b.name == "b_opt" and b.optical.startswith("/vsicurl/https://") and b.params == MatchParams()
    (tmp_path / "m.yaml").write_text(
        "defaults: {transform: shift, n_target: 50}\n"
        "pairs:\n  - {name: x, sar: a.tif, optical: b.tif, aoi: [0, 0, 10, 10], optical_bands: [3, 2, 1]}\n"
        "  - {name: y, sar: c.tif, optical: d.tif, transform: affine}\n")
    x, y = load_manifest(str(tmp_path / "m.yaml"))
    assert (x.params.transform, x.params.n_target, x.params.opt_bands) == ("shift", 50, [3, 2, 1])
    assert y.params.transform == "affine" and y.params.n_target == 50


@pytest.mark.parametrize("text, match", [
    ("name,sar\na,x.tif\n", r"lacks the column\(s\) optical"),
    ("sar,optical,colour\na.tif,b.tif,red\n", "unknown column.*colour"),
    ("name,sar,optical\nsame,a.tif,b.tif\nsame,c.tif,d.tif\n", "rows 1 and 2 have the same name 'same'"),
    ("sar,optical\nx/a.tif,x/b.tif\ny/a.tif,y/b.tif\n", "same name 'b'"),
    ("sar,optical,method\na.tif,b.tif,magic\n", r"row 1.*Unknown method 'magic'"),
    ("sar,optical,n_target\na.tif,b.tif,many\n", "'n_target' must be an integer"),
    ("sar,optical,xmin,ymin\na.tif,b.tif,1,2\n", "needs all four"),
    ("sar,optical,aoi\na.tif,b.tif,\"3,2,1,0\"\n", "xmin<xmax"),
    ("name,sar,optical\n../up,a.tif,b.tif\n", "cannot be a folder name"),
    ("name,sar,optical\nbatch_summary.csv,a.tif,b.tif\n", "reserved for the batch summary"),
    ("name,sar,optical\na,,b.tif\n", "'sar' path is empty"),
    ("name,sar,optical\n", "lists no pairs"),
])
def test_manifest_errors(tmp_path, text, match):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=match):
        load_manifest(str(tmp_path / "m.csv"))


def test_manifest_yaml_errors(tmp_path):
    with pytest.raises(InputError, match="unknown option 'speed'"):
        parse_manifest_rows([{"sar": "a.tif", "optical": "b.tif", "speed": 3}])
    (tmp_path / "m.yaml").write_text("pairs: {sar: a.tif}\n")
    with pytest.raises(InputError, match="list of pairs"):
        load_manifest(str(tmp_path / "m.yaml"))
    with pytest.raises(InputError, match="does not exist"):
        load_manifest(str(tmp_path / "none.csv"))


def test_models_are_loaded_once_per_worker_process(monkeypatch):
    import engine.runtime.deep as deep

    made = []

    class Fake:
        def __init__(self, size, device):
            made.append((size, device))

    monkeypatch.setattr(deep, "DeepModels", Fake)
    monkeypatch.setattr(tasks, "_MODELS", {})
    a = tasks.get_models("lite", "cpu")
    assert tasks.get_models("lite", "cpu") is a and made == [("lite", "cpu")]
    tasks.get_models("lite", "cuda")
    assert len(made) == 2


# ------------------------------------------------------------------------------------------------
# Batch runs on a 2-process LocalCluster
# ------------------------------------------------------------------------------------------------

def test_batch_equals_cli_isolates_failures_and_resumes(scenes, client, tmp_path):
    a, b, c = scenes
    out = tmp_path / "out"
    first = run_batch(_write_csv(tmp_path / "m1.csv", [_row("a", a), _row("b", b)]), str(out), client=client)
    assert [o.status for o in first.outcomes] == ["done", "done"]

    # Identical to the single-pair CLI with the same parameters.
    assert cli.main(["match", "--sar", a.sar, "--optical", a.optical, "--out", str(tmp_path / "cli"),
                     "--transform", "shift", "--n-target", "40", "--quiet"]) == 0
    assert sorted(os.listdir(out / "a")) == sorted(os.listdir(tmp_path / "cli"))
    pts = os.path.basename(a.optical) + ".points"
    assert (out / "a" / pts).read_bytes() == (tmp_path / "cli" / pts).read_bytes()
    xy_b, st_b = _tie_xy(str(out / "a" / "tie_points.gpkg"))
    xy_c, st_c = _tie_xy(str(tmp_path / "cli" / "tie_points.gpkg"))
    np.testing.assert_array_equal(xy_b, xy_c)
    assert st_b == st_c and len(st_b) >= 10
    assert _comparable(str(out / "a" / "summary.json")) == _comparable(str(tmp_path / "cli" / "summary.json"))

    # Interrupted archive: re-run with more pairs (one of them broken). Done pairs are skipped and
    # not rewritten; the broken pair fails alone.
    before = {n: _mtimes(out / n) for n in ("a", "b")}
    rows = [_row("a", a), _row("b", b), _row("c", c), dict(_row("bad", c), sar=str(tmp_path / "missing.tif"))]
    # (This run connects to the running scheduler by its address, as --scheduler does.)
    second = run_batch(_write_csv(tmp_path / "m2.csv", rows), str(out), scheduler=client.scheduler.address)
    assert [(o.name, o.status) for o in second.outcomes] == [("a", "skipped"), ("b", "skipped"), ("c", "done"),
                                                             ("bad", "failed")]
    assert {n: _mtimes(out / n) for n in ("a", "b")} == before
    assert "missing.tif" in second.outcomes[3].error and "does not exist" in second.outcomes[3].error
    assert not (out / "bad").exists()
    import csv

    table = list(csv.DictReader(open(second.csv, encoding="utf-8")))
    assert [r["status"] for r in table] == ["skipped", "skipped", "done", "failed"]
    summary_c = json.load(open(out / "c" / "summary.json", encoding="utf-8"))
    assert int(table[2]["inliers"]) == summary_c["inliers"] and float(table[2]["rmse_px"]) == pytest.approx(
        summary_c["rmse_px"], abs=1e-4)
    assert float(table[2]["shift_col_px"]) == pytest.approx(summary_c["shift_px"][0], abs=1e-4)
    assert table[3]["error"] and float(table[2]["wall_s"]) > 0
    # The command line: everything done is skipped, the broken pair fails again (exit status 1).
    assert cli.main(["batch", str(tmp_path / "m2.csv"), "--out", str(out), "--scheduler", client.scheduler.address,
                     "--quiet"]) == 1
    assert {n: _mtimes(out / n) for n in ("a", "b")} == before
    assert [r["status"] for r in csv.DictReader(open(second.csv, encoding="utf-8"))] == [
        "skipped", "skipped", "skipped", "failed"]
    ds = ogr.Open(second.gpkg)
    lyr = ds.GetLayerByName("pairs")
    feats = {}
    for f in lyr:
        g = f.GetGeometryRef()
        feats[f.GetField("name")] = g.Clone() if g is not None else None  # the feature owns its geometry
    assert feats["a"] is not None and feats["bad"] is None
    lon, lat = feats["c"].Centroid().GetX(), feats["c"].Centroid().GetY()
    assert -180 <= lon <= 180 and -90 <= lat <= 90 and feats["c"].GetArea() > 0
    ds = None


def test_tiled_split_gives_the_untiled_tie_points(client, tmp_path):
    from engine.pipeline import match_pair
    from engine.write_results import write_results

    pair = simulate_pair(str(tmp_path / "scene"), "big", scene=SceneParams(size=640, kind="suburban", seed=11),
                         misreg=MisregParams(shift=(8.0, -5.0)))
    tiled = TilingOptions(core=512, block=256)  # 2 x 2 tiles on the 640 px grid
    jobs = parse_manifest_rows([{"name": "big", "sar": pair.sar, "optical": pair.optical, **OPTS}])
    rep = run_batch(jobs, str(tmp_path / "out"), client=client, tile_pixels=0, tiling=tiled)
    (o,) = rep.outcomes
    assert o.status == "done" and o.tiles == 4 and o.tasks == 2 * 4 + 3
    # Exactly the single-process run over the same tiles ...
    ref = match_pair(pair.sar, pair.optical, jobs[0].params, tiling=tiled)
    write_results(ref, str(tmp_path / "ref"))
    pts = "big_opt.tif.points"
    assert (tmp_path / "out" / "big" / pts).read_bytes() == (tmp_path / "ref" / pts).read_bytes()
    # ... and the untiled run's tie points (same candidates and statuses, offsets within 0.05 px).
    one = match_pair(pair.sar, pair.optical, jobs[0].params, tiling=TilingOptions(core=4096, block=256))
    assert one.stats.n_tiles == 1
    xy, status = _tie_xy(str(tmp_path / "out" / "big" / "tie_points.gpkg"))
    ref_xy = np.array([[p.opt_x, p.opt_y, p.sar_x, p.sar_y] for p in one.tieset.points])
    np.testing.assert_array_equal(xy[:, :2], ref_xy[:, :2])
    assert np.abs(xy[:, 2:] - ref_xy[:, 2:]).max() / 2.5 < 0.05
    assert status == [p.status for p in one.tieset.points]


def test_a_killed_worker_does_not_stop_the_batch(scenes, client, tmp_path):
    rows = [_row(n, p) for n, p in zip("xyz", scenes)]
    result: dict = {}

    def go():
        result["rep"] = run_batch(parse_manifest_rows(rows), str(tmp_path / "out"), client=client)

    pids = client.run(os.getpid)
    th = threading.Thread(target=go)
    th.start()
    victim = None
    t0 = time.monotonic()
    while victim is None and time.monotonic() - t0 < 30:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("prepare-") for k in keys)]
        if busy:
            time.sleep(0.5)  # let the task get going
            victim = busy[0]
        time.sleep(0.05)
    assert victim is not None
    os.kill(pids[victim], signal.SIGKILL)
    th.join(120)
    assert not th.is_alive()
    rep = result["rep"]
    assert [o.status for o in rep.outcomes] == ["done", "done", "done"]
    for n in "xyz":
        assert os.path.exists(tmp_path / "out" / n / "summary.json")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert pids[victim] not in set(client.run(os.getpid).values())


class _FakeGoodness:
    """Stand-in goodness networks: a cell's goodness is the contrast of its 128 px field (depends only
    on the pixels in the field, like the networks), so tiled and untiled maps agree."""

    size, provider, versions, warnings = "lite", "cpu", {"goodness": "fake"}, []

    def goodness_map(self, unit, modality):
        u = np.asarray(unit, np.float64)
        n_r, n_c = u.shape[0] // 32 - 3, u.shape[1] // 32 - 3
        ii = np.zeros((u.shape[0] + 1, u.shape[1] + 1))
        ii[1:, 1:] = np.abs(np.diff(u, axis=1, prepend=u[:, :1])).cumsum(0).cumsum(1)
        r0, c0 = 32 * np.arange(n_r), 32 * np.arange(n_c)
        s = ii[np.ix_(r0 + 128, c0 + 128)] - ii[np.ix_(r0, c0 + 128)] - ii[np.ix_(r0 + 128, c0)] + ii[np.ix_(r0, c0)]
        return np.clip(s / 128 ** 2 * (8.0 if modality == "sar" else 12.0), 0, 1).astype(np.float32)


def test_tiled_split_with_goodness_candidates(scenes, tmp_path, monkeypatch):
    """The split's pass-1 pieces of the goodness map (deep candidates) stitch into the one-process map:
    same candidates, goodness and tie points as match_pair over the same tiles (tasks run in-process)."""
    from engine.pipeline import match_pair
    from engine.write_results import write_results

    fake = _FakeGoodness()
    monkeypatch.setattr(tasks, "get_models", lambda size, device: fake)
    a = scenes[0]
    tiled = TilingOptions(core=256, block=256)  # 2 x 2 tiles on the 512 px grid
    (job,) = parse_manifest_rows([{"name": "g", "sar": a.sar, "optical": a.optical, "candidates": "goodness",
                                   "goodness_threshold": 0.05, **OPTS}], out_root=str(tmp_path / "out"))
    plan = tasks.prepare(job, 0, tiled)
    assert isinstance(plan, tasks.TilePlan) and len(plan.tiles) == 4
    sel = tasks.select_candidates(plan, *[tasks.candidate_tile(plan, i) for i in range(4)])
    outcome = tasks.finish(plan, sel, *[tasks.match_tile(plan, i, sel) for i in range(4)])
    assert outcome.status == "done", outcome.error
    ref = match_pair(a.sar, a.optical, job.params, tiling=tiled, models=fake)
    write_results(ref, str(tmp_path / "ref"))
    pts = os.path.basename(a.optical) + ".points"
    assert (tmp_path / "out" / "g" / pts).read_bytes() == (tmp_path / "ref" / pts).read_bytes()
    assert len(sel["points"]) == ref.stats.n_candidates >= 5
    np.testing.assert_array_equal(sel["scores"], [p.goodness for p in ref.tieset.points])
    assert outcome.summary["models"] == {"size": "lite", "provider": "cpu", "versions": {"goodness": "fake"}}


def test_a_pair_is_done_only_with_the_same_inputs_parameters_and_outputs(tmp_path):
    from engine.batch.runner import completed_summary

    (job,) = parse_manifest_rows([{"name": "p", "sar": "/d/s.tif", "optical": "/d/o.tif", "transform": "shift",
                                   "corrected": "no", "checkerboard": "no"}], out_root=str(tmp_path))
    folder = tmp_path / "p"
    folder.mkdir()
    outs = {"points": "/elsewhere/o.tif.points", "gpkg": "tie_points.gpkg", "summary": "summary.json"}
    for name in ("o.tif.points", "tie_points.gpkg"):
        (folder / name).write_text("x")
    doc = {"sar": job.sar, "optical": job.optical, "params": job.params.to_dict(), "outputs": outs}
    (folder / "summary.json").write_text(json.dumps(doc))
    assert completed_summary(job) == json.loads(json.dumps(doc))  # outputs are looked up in the pair's folder
    import dataclasses

    assert completed_summary(dataclasses.replace(job, params=MatchParams(transform="affine"))) is None
    assert completed_summary(dataclasses.replace(job, optical="/d/other.tif")) is None
    assert completed_summary(dataclasses.replace(job, corrected=True)) is None
    (folder / "tie_points.gpkg").unlink()
    assert completed_summary(job) is None
