"""Robustness round 2 (issue 14, items D5-D10): every misuse of the command line is refused with
``error: <specific message>`` and exit status 2, never a traceback; inputs are left unchanged and
nothing is left behind (no output folder, no temporary).

Table-driven like ``test_robustness``: each case writes its inputs into the test's own folder and
returns the ``python -m engine ...`` arguments; the run happens in-process through
``engine.cli.main`` (argparse errors are ``SystemExit(2)``). Cases marked ``work=False`` must be
refused before any matching starts: the candidate search is replaced by a trap for them.
"""
from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine

import engine.pipeline
from engine.batch import runner
from engine.cli import main as cli_main
from engine.runtime import registry
from engine.simulate.pair import simulate_pair_arrays
from engine.simulate.params import MisregParams, SarParams, SceneParams
from engine.simulate.sar import sar_to_output

from helpers import write_geotiff

SIZE = 640
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Scene:
    sigma0: np.ndarray
    optical: np.ndarray
    sar_tf: Affine
    opt_tf: Affine
    crs: str

    def sar(self, d: Path, arr=None, name="sar.tif", **kw) -> str:
        return write_geotiff(d / name, sar_to_output(self.sigma0, "db") if arr is None else arr,
                             kw.pop("tf", self.sar_tf), crs=kw.pop("crs", self.crs), **kw)

    def opt(self, d: Path, arr=None, name="opt.tif", **kw) -> str:
        return write_geotiff(d / name, self.optical if arr is None else arr, kw.pop("tf", self.opt_tf),
                             crs=kw.pop("crs", self.crs), **kw)


@pytest.fixture(scope="module")
def scene() -> Scene:
    arr = simulate_pair_arrays(SceneParams(size=SIZE, kind="suburban", seed=5), sar=SarParams(output="linear"),
                               misreg=MisregParams(shift=(6.0, -4.0)))
    return Scene(sigma0=arr.sar_sigma0, optical=arr.optical, sar_tf=arr.sar_transform, opt_tf=arr.optical_transform,
                 crs=arr.crs_wkt)


def tree(folder: Path) -> dict[str, Optional[str]]:
    """{relative path: sha256 (None for a folder)} of everything under ``folder``, hidden files included."""
    out: dict[str, Optional[str]] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def match_args(sar: str, opt: str, out: Path, *extra: str) -> list[str]:
    return ["match", "--sar", sar, "--optical", opt, "--out", str(out), "--quiet", "--n-target", "40",
            "--transform", "shift", *extra]


def manifest(d: Path, scene: Scene) -> str:
    sar, opt = scene.sar(d), scene.opt(d)
    p = d / "pairs.csv"
    p.write_text(f"name,sar,optical\npair1,{sar},{opt}\n")
    return str(p)


@dataclass
class Ctx:
    d: Path
    out: Path
    scene: Scene
    mp: pytest.MonkeyPatch
    finalizers: list = field(default_factory=list)


# ============================================================================ the cases


def _plain(*extra: str):
    def build(c: Ctx) -> list[str]:
        return match_args(c.scene.sar(c.d), c.scene.opt(c.d), c.out, *extra)
    return build


def _vsi_missing(c: Ctx):  # D5: a real miss behind a GDAL virtual path still says so clearly
    with zipfile.ZipFile(c.d / "pair.zip", "w") as z:
        z.write(c.scene.opt(c.d), "opt.tif")
    return match_args(f"/vsizip/{c.d}/pair.zip/sar.tif", str(c.d / "opt.tif"), c.out)


def _http_server(c: Ctx):  # D6: a web server (e.g. the dashboard port) given as the scheduler
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    c.finalizers += [srv.shutdown, srv.server_close]
    c.mp.setattr(runner, "SCHEDULER_TIMEOUT_S", 2.0, raising=False)
    return ["batch", manifest(c.d, c.scene), "--out", str(c.out), "--quiet",
            "--scheduler", f"tcp://127.0.0.1:{srv.server_address[1]}"]


def _garbage_responder(c: Ctx):  # D6: a server that greets with its own protocol (SSH, SMTP, HTTP...)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
                    time.sleep(0.5)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    c.finalizers += [stop.set, lsock.close]
    c.mp.setattr(runner, "SCHEDULER_TIMEOUT_S", 2.0, raising=False)
    return ["batch", manifest(c.d, c.scene), "--out", str(c.out), "--quiet",
            "--scheduler", f"127.0.0.1:{lsock.getsockname()[1]}"]


def _truth(content: Optional[str]):  # D7
    def build(c: Ctx):
        t = c.d / "truth.json"
        if content is not None:
            t.write_text(content)
        return match_args(c.scene.sar(c.d), c.scene.opt(c.d), c.out, "--truth", str(t))
    return build


def _long_optical_name(c: Ctx):  # D7: 240 characters: the outputs' temporary names would exceed 255
    return match_args(c.scene.sar(c.d), c.scene.opt(c.d, name="o" * 236 + ".tif"), c.out)


def _model_file_is_a_folder(c: Ctx):  # D7
    models = c.d.parent / "models"
    recs = []
    for name in registry.NETWORKS:
        (models / f"{name}_lite.onnx").mkdir(parents=True)
        recs.append({"name": name, "size": "lite", "file": f"{name}_lite.onnx", "sha256": "0" * 64})
    (models / registry.MANIFEST).write_text(json.dumps({"models": recs}))
    c.mp.setattr(registry, "MODELS_DIR", models)
    return _plain("--method", "deep")(c)


def _simulate(*extra: str):  # D7
    def build(c: Ctx):
        return ["simulate", "--out", str(c.out), *extra]
    return build


def _loopback_down(c: Ctx):  # D7: no TCP/IP socket can be made (loopback interface down)
    real = socket.socket

    class NoInet(real):
        def __init__(self, family=-1, *a, **kw):
            if family in (socket.AF_INET, socket.AF_INET6, -1):
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            super().__init__(family, *a, **kw)

    args = ["batch", manifest(c.d, c.scene), "--out", str(c.out), "--quiet", "--workers", "1"]
    c.mp.setattr(socket, "socket", NoInet)
    return args


def _zero_dn_scattered(c: Ctx):  # D8: zeros of a linear SAR have no dB value
    a = c.scene.sigma0.copy()
    r, cc = np.random.default_rng(0).integers(0, SIZE, (2, 2000))
    a[r, cc] = 0.0
    return match_args(c.scene.sar(c.d, a), c.scene.opt(c.d), c.out)


def _gcp_sar(c: Ctx):  # D8
    tf = c.scene.sar_tf
    gcps = [GroundControlPoint(row, col, *(tf * (col, row))) for row, col in ((0, 0), (0, SIZE), (SIZE, 0))]
    p = c.d / "sar.tif"
    with rasterio.open(p, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="float32", gcps=gcps,
                       crs="EPSG:32633") as ds:
        ds.write(sar_to_output(c.scene.sigma0, "db")[None].astype(np.float32))
    return match_args(str(p), c.scene.opt(c.d), c.out)


def _aoi_in_wrong_crs(c: Ctx):  # D8: UTM metres declared as lon/lat
    x0, y0 = c.scene.sar_tf.c, c.scene.sar_tf.f
    return _plain("--aoi", f"{x0 + 100},{y0 - 1500},{x0 + 1500},{y0 - 100}", "--aoi-crs", "EPSG:4326")(c)


def _too_few_structural(c: Ctx):  # D8: no ORN in a structural run
    return _plain("--n-target", "2", "--transform", "affine")(c)


def _shift_without_consensus(c: Ctx):  # D8: a shift run is not told to 'use shift'
    return _plain("--ransac-threshold", "1e-9")(c)


def _manifest_is_a_folder(c: Ctx):  # D8
    (c.d / "pairs").mkdir()
    return ["batch", str(c.d / "pairs"), "--out", str(c.out), "--quiet"]


def _optical_on_another_continent(c: Ctx):  # D8: extents in lon/lat, not in the SAR's UTM zone
    tf = Affine(2.5e-5, 0, -60.0, 0, -2.5e-5, -15.0)
    return match_args(c.scene.sar(c.d), c.scene.opt(c.d, tf=tf, crs="EPSG:4326"), c.out)


def _hard_link(c: Ctx):  # D9
    sar = c.scene.sar(c.d)
    os.link(sar, c.d / "linked.tif")
    return match_args(sar, str(c.d / "linked.tif"), c.out)


def _batch(*extra: str):  # D9
    def build(c: Ctx):
        return ["batch", manifest(c.d, c.scene), "--out", str(c.out), "--quiet", *extra]
    return build


def _output_is_an_input(c: Ctx):  # D10: 'scene.tif' corrects to 'scene_corrected.tif', here the SAR
    sar, opt = c.scene.sar(c.d, name="scene_corrected.tif"), c.scene.opt(c.d, name="scene.tif")
    return match_args(sar, opt, c.d)


@dataclass
class Misuse:
    id: str
    build: Callable[[Ctx], list[str]]
    message: str
    """Regular expression the text after 'error: ' must match."""
    work: bool = False
    """Whether matching may start (False: the misuse must be caught before any work)."""
    absent: tuple[str, ...] = ()
    """Regular expressions the message must not contain."""


CASES = [
    # D5
    Misuse("vsi_path_that_does_not_exist", _vsi_missing,
           r"The SAR raster '/vsizip/.*pair\.zip/sar\.tif' does not exist or GDAL cannot open it"),
    # D6
    Misuse("scheduler_is_a_web_server", _http_server,
           r"did not answer as a Dask scheduler within 2 s.*8786"),
    Misuse("scheduler_speaks_another_protocol", _garbage_responder,
           r"is not a Dask scheduler: it answered b'HTTP/1\.0 200 OK"),
    # D7
    Misuse("truth_file_missing", _truth(None), r"The truth file '.*truth\.json' does not exist"),
    Misuse("truth_file_not_json", _truth("{not json"), r"The truth file '.*truth\.json' is not a simulator truth"),
    Misuse("optical_file_name_240_characters", _long_optical_name,
           r"output file name .* is too long .*rename the optical raster"),
    Misuse("max_offset_nan", _plain("--max-offset", "nan"), r"--max-offset\) must be a positive number.*got nan"),
    Misuse("max_offset_inf", _plain("--max-offset", "inf"), r"--max-offset\) must be a positive number.*got inf"),
    Misuse("optical_bands_not_integers", _plain("--optical-bands", "1,x"),
           r"argument --optical-bands: .*comma-separated band numbers"),
    Misuse("model_file_is_a_folder", _model_file_is_a_folder, r"model file corrasl_sar_lite\.onnx .*is a folder"),
    Misuse("simulate_size_0", _simulate("--size", "0"), r"argument --size: .*at least 16"),
    Misuse("simulate_shift_not_numbers", _simulate("--shift", "a,b"), r"argument --shift: .*'dx,dy'"),
    Misuse("batch_with_loopback_down", _loopback_down, r"Cannot start a local Dask cluster.*loopback"),
    # D8
    Misuse("zero_dn_in_a_linear_sar", _zero_dn_scattered,
           r"spread through it.*zero or negative SAR values.*'linear'", work=True,
           absent=(r"invalid pixels \(nodata, NaN or Inf\)",)),
    Misuse("gcp_georeferenced_sar", _gcp_sar, r"ground control points \(GCPs\).*gdalwarp",
           absent=(r"no coordinate reference system",)),
    Misuse("aoi_in_the_wrong_crs", _aoi_in_wrong_crs, r"area of interest .* is not valid in EPSG:4326.*--aoi-crs",
           absent=(r"\binf\b",)),
    Misuse("too_few_points_structural", _too_few_structural,
           r"affine needs at least 3 tie points, got 2; use 'shift'.*lower --min-quality", work=True,
           absent=(r"ORN",)),
    Misuse("shift_without_consensus", _shift_without_consensus,
           r"no shift model is supported by at least 2 tie points .*raise the residual threshold", work=True,
           absent=(r"use 'shift'",)),
    Misuse("manifest_is_a_folder", _manifest_is_a_folder, r"The manifest '.*pairs' is a folder, not a manifest file"),
    Misuse("no_overlap_on_another_continent", _optical_on_another_continent,
           r"SAR extent lon/lat \(14\.34\d+, 48\.84\d+, 14\.36\d+, 48\.85\d+\), optical extent lon/lat "
           r"\(-60, -15\.016, -59\.984, -15\)"),
    # D9
    Misuse("max_offset_zero", _plain("--max-offset", "0"), r"--max-offset\) must be a positive number.*got 0"),
    Misuse("max_offset_negative", _plain("--max-offset", "-5"), r"--max-offset\) must be a positive number.*got -5"),
    Misuse("min_quality_nan", _plain("--min-quality", "nan"), r"--min-quality\) must be a finite number.*got nan"),
    Misuse("aoi_crs_without_aoi", _plain("--aoi-crs", "EPSG:4326"), r"--aoi-crs.* without an area of interest"),
    Misuse("batch_workers_0", _batch("--workers", "0"), r"--workers\) must be at least 1, got 0"),
    Misuse("batch_tile_pixels_negative", _batch("--tile-pixels", "-1"),
           r"--tile-pixels\) must be a positive number of megapixels, got -1"),
    Misuse("batch_tile_pixels_nan", _batch("--tile-pixels", "nan"),
           r"--tile-pixels\) must be a positive number of megapixels, got nan"),
    Misuse("same_file_through_a_hard_link", _hard_link, r"The SAR and the optical inputs are the same file"),
    # D10
    Misuse("output_overwrites_an_input", _output_is_an_input, r"scene_corrected\.tif is the same file as the input"),
    Misuse("ransac_threshold_zero", _plain("--ransac-threshold", "0"),
           r"--ransac-threshold\) must be a positive number of pixels, got 0"),
    Misuse("ransac_threshold_nan", _plain("--ransac-threshold", "nan"),
           r"--ransac-threshold\) must be a positive number of pixels, got nan"),
]


class _Deadline(Exception):
    pass


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_misuse_is_refused_with_a_message(case, scene, tmp_path, monkeypatch, capsys):
    d = tmp_path / "in"
    d.mkdir()
    c = Ctx(d=d, out=tmp_path / "out", scene=scene, mp=monkeypatch)
    try:
        args = case.build(c)
        before = tree(tmp_path)
        if not case.work:
            def trap(*a, **kw):
                raise AssertionError("matching started before the misuse was refused")
            monkeypatch.setattr(engine.pipeline, "find_candidates_tiled", trap)

        def expire(signum, frame):
            raise _Deadline("the command did not return within 45 s")

        old = signal.signal(signal.SIGALRM, expire)
        signal.alarm(45)
        capsys.readouterr()
        t0 = time.perf_counter()
        try:
            rc = cli_main(args)
        except SystemExit as exc:  # argparse
            rc = exc.code
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        seconds = time.perf_counter() - t0
        cap = capsys.readouterr()
        monkeypatch.undo()
    finally:
        for f in c.finalizers:
            f()
    text = cap.out + cap.err
    assert "Traceback" not in text and "ERROR 1:" not in text, text
    assert rc == 2, text
    assert "error: " in cap.err, text
    message = cap.err.split("error: ", 1)[1]
    assert re.search(case.message, message, re.S), message
    for pattern in case.absent:
        assert not re.search(pattern, message), message
    assert len(message) < 700, message                    # one clear message, not a dump
    assert tree(tmp_path) == before                       # inputs unchanged, nothing left (no output folder)
    assert seconds < 40


# ============================================================================ D5: GDAL virtual paths work


def test_gdal_virtual_paths_are_opened_by_gdal(scene, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = scene.sar(d), scene.opt(d)
    with zipfile.ZipFile(d / "pair.zip", "w") as z:
        z.write(sar, "sar.tif")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = cli_main(match_args(f"/vsizip/{d}/pair.zip/sar.tif", opt, out, "--no-checkerboard"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sar"] == f"/vsizip/{d}/pair.zip/sar.tif" and summary["inliers"] >= 8


# ============================================================================ D8: a full disk


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(sys.platform != "linux" or not _can_mount_tmpfs(),
                    reason="needs unshare and a user namespace to mount a small tmpfs")
def test_full_disk_says_disk_full_with_the_folder(scene, tmp_path):
    """The outputs go to a 40 KB tmpfs (mounted in a private namespace): the tie-point file fits,
    the GeoPackage does not. Before: a 4 KB dump of every failed SQLite statement."""
    d = tmp_path / "in"
    d.mkdir()
    sar, opt = scene.sar(d), scene.opt(d)
    before = tree(d)
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    cmd = " ".join(match_args(sar, opt, out, "--no-corrected", "--no-checkerboard"))
    script = (f"mount -t tmpfs -o size=40k tmpfs {disk} && {sys.executable} -m engine {cmd}; rc=$?; "
              f"echo LEFT: $(ls -A {disk}); exit $rc")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text and "ERROR 1:" not in text and "sqlite3" not in text, text
    message = r.stderr.split("error: ", 1)[1]
    assert re.match(rf"The disk is full: cannot write the outputs to {re.escape(str(out))} ", message), message
    assert len(message) < 400, message
    assert "LEFT: \n" in r.stdout or r.stdout.rstrip().endswith("LEFT:"), r.stdout   # no output folder left
    assert tree(d) == before
