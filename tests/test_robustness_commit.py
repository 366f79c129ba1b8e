"""Robustness round 2 (issue 14, D2/D4/D11): result sets switch all at once, signals clean up, one run per folder.

D2: a failed commit (any rename of the new set, or moving any old file aside, fails) leaves the
previous result set whole, byte for byte, and no temporary. D4: SIGTERM cancels like Ctrl-C
(exit 143, partial outputs removed); temporaries a killed run left (SIGKILL) are removed by the
next run. D11: a second run into a folder that a live run holds is refused with a clear message;
a stale lock is taken over; a batch with a bad manifest leaves no ``--out`` folder it created.

Each case builds a small simulated scene (``simulate_pair``), runs the engine (``write_results``,
``python -m engine match`` in-process or as a subprocess, ``python -m engine batch``) and checks
the folder exactly (hidden files included) and that the inputs are unchanged.
"""
from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from engine.cli import main as cli_main
from engine.errors import OutputError
from engine.outputs.lock import LOCK_NAME, OutputLock
from engine.params import MatchParams
from engine.pipeline import match_pair
from engine.simulate import MisregParams, SceneParams, simulate_pair
from engine.write_results import write_results

from helpers import files_under, fingerprint

ROOT = Path(__file__).resolve().parents[1]
SET = ["checkerboard_after.png", "checkerboard_before.png", "opt.tif.points", "opt_corrected.tif", "summary.json",
       "tie_points.gpkg"]
TMP_RE = re.compile(r"\.tmp-[0-9a-f]{12}")


# ============================================================================ shared scene and bookkeeping


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A small simulated pair (inputs named sar.tif / opt.tif) and its match result."""
    d = tmp_path_factory.mktemp("commit_in")
    pair = simulate_pair(str(d), "s", scene=SceneParams(size=512, kind="suburban", seed=30),
                         misreg=MisregParams(shift=(6.0, -4.0)))
    sar, opt = d / "sar.tif", d / "opt.tif"
    os.replace(pair.sar, sar)
    os.replace(pair.optical, opt)
    res = match_pair(str(sar), str(opt), MatchParams(n_target=40, transform="shift"))
    assert res.stats.n_inliers >= 8
    return res


@pytest.fixture(scope="module")
def old_set(scene, tmp_path_factory) -> Path:
    """A complete previous result set (all six files), copied by each test that needs one."""
    d = tmp_path_factory.mktemp("old_set") / "out"
    write_results(scene, str(d), extra_summary={"run": "old"})
    assert files_under(d) == SET
    return d


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)  # same bytes and mtimes
    assert fingerprint(dst) == fingerprint(src)
    return dst


def temporaries(folder: Path) -> list[str]:
    return [f for f in files_under(folder) if TMP_RE.search(f) or f.endswith(LOCK_NAME)]


def inputs_of(res) -> Path:
    return Path(res.pair.opt_info.path).parent


def match_args(res, out: Path, *extra: str) -> list[str]:
    return ["match", "--sar", res.pair.sar_info.path, "--optical", res.pair.opt_info.path, "--out", str(out),
            "--n-target", "40", "--transform", "shift", *extra]


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(args)
    return rc, capsys.readouterr().err


# ============================================================================ D2: all-or-nothing commit


def _fail_once(when: Callable[[str, str], bool]):
    """An ``os.replace`` that raises PermissionError the first time ``when(src, dst)`` holds."""
    real = os.replace
    hit: list = []

    def fake(src, dst, *a, **kw):
        s, d = os.fspath(src), os.fspath(dst)
        if not hit and when(s, d):
            hit.append((s, d))
            raise PermissionError(13, "Permission denied", s)
        return real(src, dst, *a, **kw)

    return fake, hit


@dataclass
class CommitFault:
    id: str
    file: str
    """The result file whose rename fails."""
    phase: str
    """'new': renaming the new file onto its name fails; 'old': moving the old file aside fails (a
    file QGIS holds open on Windows, an immutable file)."""


COMMIT_FAULTS = [CommitFault(f"{phase}_{name}", name, phase) for name in SET for phase in ("new", "old")]


@pytest.mark.parametrize("case", COMMIT_FAULTS, ids=[c.id for c in COMMIT_FAULTS])
def test_a_failed_commit_keeps_the_previous_set_whole(case, scene, old_set, tmp_path, monkeypatch):
    out = copy_set(old_set, tmp_path / "out")
    before, inputs = fingerprint(out), fingerprint(inputs_of(scene))
    final = str(out / case.file)
    if case.phase == "new":
        fake, hit = _fail_once(lambda s, d: d == final and TMP_RE.search(os.path.basename(s)) is not None)
    else:
        fake, hit = _fail_once(lambda s, d: s == final)
    monkeypatch.setattr(os, "replace", fake)
    with pytest.raises(OutputError, match=rf"Cannot put the new results in place in '{re.escape(str(out))}' "
                                          rf"\({re.escape(case.file)}: Permission denied\); the previous results "
                                          r"there are kept unchanged\. Close any program"):
        write_results(scene, str(out), extra_summary={"run": "new"})
    assert hit, "the faulty rename never happened"
    assert fingerprint(out) == before                     # the old set, whole: no new file, no temporary, no lock
    assert json.loads((out / "summary.json").read_text())["run"] == "old"
    assert fingerprint(inputs_of(scene)) == inputs
    monkeypatch.undo()
    write_results(scene, str(out), extra_summary={"run": "new"})   # and the next run replaces it whole
    assert files_under(out) == SET
    assert json.loads((out / "summary.json").read_text())["run"] == "new"
    assert all(fingerprint(out)[f] != before[f] for f in SET)


def test_an_immutable_summary_keeps_the_previous_set_whole(scene, old_set, tmp_path):
    """A real failure (no monkeypatching): ``chattr +i summary.json`` forbids renaming it."""
    out = copy_set(old_set, tmp_path / "out")
    summary = out / "summary.json"
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(summary)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot make a file immutable here (chattr +i needs root on ext4/xfs/btrfs)")
    try:
        before = fingerprint(out)
        with pytest.raises(OutputError, match=r"\(summary\.json: Operation not permitted\); the previous results"):
            write_results(scene, str(out), extra_summary={"run": "new"})
        assert fingerprint(out) == before
    finally:
        subprocess.run(["chattr", "-i", str(summary)], check=True)


# ============================================================================ D4: signals and leftovers

SLOW_WRITE = """
import os, runpy, sys, time
import engine.write_results as w
def slow(result, dst, progress, cancel):
    open(dst, "wb").write(b"half a raster")     # a temporary corrected raster exists now
    for _ in range(1200):                        # ... and is being written for up to a minute
        cancel.check()
        time.sleep(0.05)
w._write_corrected = slow
sys.argv = ["engine"] + sys.argv[1:]
runpy.run_module("engine", run_name="__main__")
"""
"""``python -m engine`` whose corrected-raster write takes a minute (and checks for a cancel as GDAL does)."""


def spawn(args: list[str], slow_write: bool = False) -> subprocess.Popen:
    cmd = [sys.executable] + (["-c", SLOW_WRITE] if slow_write else ["-m", "engine"]) + args
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            proc.communicate()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _writing(out: Path) -> Callable[[], bool]:
    return lambda: out.exists() and any(n.startswith(".opt_corrected.tmp-") for n in os.listdir(out))


def _locked(out: Path) -> Callable[[], bool]:
    return lambda: (out / LOCK_NAME).exists()


@dataclass
class SignalCase:
    id: str
    previous: bool
    """The folder holds a previous complete set."""
    slow_write: bool
    when: Callable[[Path], Callable[[], bool]]
    """When to send the signal (the run holds its folder / is writing the corrected raster)."""
    sig: int


SIGNAL_CASES = [
    SignalCase("sigterm_while_matching", False, False, _locked, signal.SIGTERM),
    SignalCase("sigterm_while_writing", False, True, _writing, signal.SIGTERM),
    SignalCase("sigterm_while_rewriting_a_previous_set", True, True, _writing, signal.SIGTERM),
]


@pytest.mark.parametrize("case", SIGNAL_CASES, ids=[c.id for c in SIGNAL_CASES])
def test_sigterm_cancels_like_ctrl_c(case, scene, old_set, tmp_path):
    out = copy_set(old_set, tmp_path / "out") if case.previous else tmp_path / "out"
    before, inputs = fingerprint(out), fingerprint(inputs_of(scene))
    proc = spawn(match_args(scene, out), slow_write=case.slow_write)
    wait_for(case.when(out), proc, "the run got under way")
    proc.send_signal(case.sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated: stopped by SIGTERM. Partial outputs were removed." in err and "Traceback" not in err
    assert fingerprint(out) == before                     # nothing new, nothing left (no .tmp-, no lock)
    assert out.exists() == case.previous                  # a folder the run created is removed again
    assert fingerprint(inputs_of(scene)) == inputs


def test_sigterm_cancels_a_batch_like_ctrl_c(scene, tmp_path):
    pytest.importorskip("distributed")
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,sar,optical,n_target,transform\n"
                        + "".join(f"p{i},{scene.pair.sar_info.path},{scene.pair.opt_info.path},40,shift\n"
                                  for i in range(3)))
    out = tmp_path / "out"
    proc = spawn(["batch", str(manifest), "--out", str(out), "--workers", "1", "--threads", "--quiet"])
    wait_for(_locked(out), proc, "the batch held its folder")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated: stopped by SIGTERM. Completed pairs are kept and a re-run resumes the rest." in err
    assert "Traceback" not in err
    assert temporaries(out) == []                         # the lock is released, no temporary is left


def test_a_run_killed_while_writing_is_cleaned_up_by_the_next_run(scene, old_set, tmp_path, capsys):
    out = copy_set(old_set, tmp_path / "out")
    proc = spawn(match_args(scene, out), slow_write=True)
    wait_for(_writing(out), proc, "the corrected raster was being written")
    proc.kill()                                           # SIGKILL: no handler runs
    proc.communicate()
    left = temporaries(out)
    assert LOCK_NAME in left and any(n.startswith(".opt_corrected.tmp-") for n in left), left
    rc, err = run_cli(capsys, match_args(scene, out, "--quiet"))
    assert rc == 0, err                                   # the dead run's lock is stale: taken over
    assert files_under(out) == SET                        # its temporaries are gone, the new set is whole


@dataclass
class Leftover:
    id: str
    name: str
    removed: bool


LEFTOVERS = [
    Leftover("corrected_raster", ".opt_corrected.tmp-0123456789ab.tif", True),
    Leftover("corrected_side_car", ".opt_corrected.tmp-0123456789ab.tif.aux.xml", True),
    Leftover("gpkg", ".tie_points.tmp-00112233aabb.gpkg", True),
    Leftover("gpkg_journal", ".tie_points.tmp-00112233aabb.gpkg-journal", True),
    Leftover("points", ".opt.tif.tmp-a1b2c3d4e5f6.points", True),
    Leftover("summary_backup", ".summary.tmp-a1b2c3d4e5f6.json", True),
    Leftover("checkerboard", ".checkerboard_after.tmp-a1b2c3d4e5f6.png", True),
    Leftover("another_programs_temporary", ".notes.tmp-0123456789ab.txt", False),
    Leftover("a_users_file", "my.tmp-0123456789ab.tif", False),
    Leftover("not_our_hex", ".opt_corrected.tmp-xyz.tif", False),
]


@pytest.mark.parametrize("case", LEFTOVERS, ids=[c.id for c in LEFTOVERS])
def test_stale_temporaries_are_removed_by_the_next_run(case, scene, old_set, tmp_path):
    """Beside each case's file, a killed run's corrected raster, which must always go."""
    out = copy_set(old_set, tmp_path / "out")
    old = time.time() - 3600
    for name in {case.name, ".opt_corrected.tmp-fedcba987654.tif"}:
        (out / name).write_bytes(b"left by a killed run")
        os.utime(out / name, (old, old))
    write_results(scene, str(out))
    assert (out / case.name).exists() != case.removed
    assert files_under(out) == sorted(SET + ([] if case.removed else [case.name]))


# ============================================================================ D11: one run per folder


@pytest.fixture
def live_pid():
    """A live process of this host (not this one)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _lock_file(out: Path, pid: int, host: Optional[str] = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                             "started": time.time() - 5, "token": "0" * 16}))


def _refused(out: Path, pid: int) -> str:
    return (rf"The output folder '{re.escape(str(out))}' is in use by another run \(pid {pid}, started "
            r"[0-9-]+ [0-9:]+\); wait for it to finish or choose another folder\. If no such run is active, delete "
            + re.escape(str(out / LOCK_NAME)))


@pytest.mark.parametrize("entry", ["cli_match", "write_results", "batch"])
def test_a_second_run_is_refused_while_the_folder_is_held(entry, scene, old_set, tmp_path, live_pid, capsys):
    out = copy_set(old_set, tmp_path / "out")
    _lock_file(out, live_pid)
    before = fingerprint(out)
    if entry == "write_results":
        with pytest.raises(OutputError, match=_refused(out, live_pid)):
            write_results(scene, str(out))
    else:
        if entry == "batch":
            pytest.importorskip("distributed")
            manifest = tmp_path / "m.csv"
            manifest.write_text(f"name,sar,optical\np,{scene.pair.sar_info.path},{scene.pair.opt_info.path}\n")
            args = ["batch", str(manifest), "--out", str(out), "--quiet"]
        else:
            args = match_args(scene, out, "--quiet")
        rc, err = run_cli(capsys, args)
        assert rc == 2, err
        assert re.search("error: " + _refused(out, live_pid), err), err
    assert fingerprint(out) == before                     # untouched, the holder's lock included


def test_a_concurrent_cli_run_is_refused_and_the_first_run_is_unaffected(scene, tmp_path, capsys):
    out = tmp_path / "out"
    first = spawn(match_args(scene, out), slow_write=True)
    wait_for(_writing(out), first, "the first run was writing")
    rc, err = run_cli(capsys, match_args(scene, out, "--quiet"))
    assert rc == 2 and re.search("error: " + _refused(out, first.pid), err), err
    assert [n for n in os.listdir(out) if n.startswith(".opt_corrected.tmp-")], "the second run removed A's file"
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 143
    assert not out.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(scene, old_set, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                           # reaped: its pid is free
    out = copy_set(old_set, tmp_path / "out")
    _lock_file(out, dead.pid)
    rc, err = run_cli(capsys, match_args(scene, out, "--quiet"))
    assert rc == 0, err
    assert files_under(out) == SET                        # the stale lock is gone too


def test_another_thread_of_this_program_holding_the_folder_is_refused(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held, done = threading.Event(), threading.Event()

    def hold():
        with OutputLock(str(out)):
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(30)
        with pytest.raises(OutputError, match=rf"The output folder '{re.escape(str(out))}' is in use by another "
                                              r"run in this program"):
            write_results(scene, str(out))
    finally:
        done.set()
        t.join()
    assert files_under(out) == []


MANIFEST_ERRORS = [
    ("missing_manifest", None, r"The manifest '.*none\.csv' does not exist"),
    ("missing_column", "name,sar\np,a.tif\n", r"optical"),
    ("unknown_option", "name,sar,optical,speed\np,a.tif,b.tif,3\n", r"speed"),
]


@pytest.mark.parametrize("case", MANIFEST_ERRORS, ids=[c[0] for c in MANIFEST_ERRORS])
def test_a_batch_with_a_bad_manifest_leaves_no_output_folder(case, tmp_path, capsys):
    pytest.importorskip("distributed")
    _id, text, message = case
    manifest = tmp_path / ("none.csv" if text is None else "m.csv")
    if text is not None:
        manifest.write_text(text)
    out = tmp_path / "out" / "batch"
    rc, err = run_cli(capsys, ["batch", str(manifest), "--out", str(out), "--quiet"])
    assert rc == 2 and re.search(message, err), err
    assert not (tmp_path / "out").exists()
