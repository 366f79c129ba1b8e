"""plugin/deps.py, the optional-dependency manager (onnxruntime for Deep, Dask for Batch match), and its
dialog: the pip commands it builds, what it refuses, the dock and Processing hooks, and (slow, needs a
folder of wheels) a real offline install from the ZIP into a clean QGIS profile with Debian's Python."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, load_plugin_package

from plugin_helpers import clear_project, open_plugin, reset_settings

pkg = load_plugin_package()
from sar_optical_matcher.plugin import deps  # noqa: E402  (the package QGIS imports)

QGIS_PYTHON = "/usr/bin/python3"
WHEELHOUSE = Path(os.environ.get("SOM_TEST_WHEELHOUSE", ROOT / ".pytest_cache" / "som-wheelhouse"))
"""Built once (scripts/wheelhouse.py) and reused; set SOM_TEST_WHEELHOUSE to use another folder."""


# ===================================================================== pure logic
def test_target_is_a_plugin_owned_folder_per_python_version(tmp_path):
    t = deps.default_target(tmp_path / "profiles" / "default", (3, 11))
    assert t == tmp_path / "profiles" / "default" / "python" / "dependencies" / "sar_optical_matcher" / "py311"
    assert not deps.activate(t)                     # not there yet: nothing added
    t.mkdir(parents=True)
    before = list(sys.path)
    try:
        assert deps.activate(t) and deps.activate(t)
        assert sys.path[:len(before)] == before     # appended once, never in front of QGIS's packages
        assert sys.path.count(str(t)) == 1 and sys.path[-1] == str(t)
    finally:
        sys.path[:] = before


def test_missing_looks_at_the_given_path(tmp_path):
    assert deps.missing("deep", [str(tmp_path)]) == ["onnxruntime"]
    assert deps.missing("batch", [str(tmp_path)]) == ["dask", "distributed"]
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("")
    (tmp_path / "dask.py").write_text("")
    assert deps.missing("deep", [str(tmp_path)]) == []
    assert deps.missing("batch", [str(tmp_path)]) == ["distributed"]
    msg = deps.describe_missing("deep") or "x"           # the venv has onnxruntime: nothing to say there
    assert msg == "x" or "Install dependencies" in msg


def test_features_match_requirements_txt():
    reqs = {re.split(r"[<>=\[ ]", ln)[0]: ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}
    for f in deps.FEATURES.values():
        for r in f.requirements:
            assert reqs[re.split(r"[<>=\[ ]", r)[0]] == r, r
    assert deps.FEATURES["deep"].requirements == ("onnxruntime-gpu>=1.17",)   # never the CPU 'onnxruntime'


def test_pip_commands_are_offline_constrained_and_targeted(tmp_path):
    wh, t, c, rep = tmp_path / "wh", tmp_path / "target", tmp_path / "c.txt", tmp_path / "r.json"
    res = deps.resolve_command("/usr/bin/python3", ["onnxruntime-gpu>=1.17"], c, rep, wh)
    assert res[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    for flag in ("--dry-run", "--report", str(rep), "--constraint", str(c), "--no-index", "--find-links", str(wh),
                 "--upgrade-strategy", "only-if-needed"):
        assert flag in res
    assert "--target" not in res                   # the resolution sees what QGIS's Python already has
    inst = deps.install_command("/usr/bin/python3", t, ["onnxruntime-gpu==1.20.1", "flatbuffers==24.3.25"], c, wh)
    assert inst[inst.index("--target") + 1] == str(t)
    for flag in ("--no-deps", "--no-index", "--constraint", "--upgrade"):
        assert flag in inst
    assert inst[-2:] == ["onnxruntime-gpu==1.20.1", "flatbuffers==24.3.25"]
    online = deps.install_command("/usr/bin/python3", t, ["x==1"], c)
    assert "--no-index" not in online and "--find-links" not in online and "--prefer-binary" in online
    fb = deps.fallback_command("/usr/bin/python3", t, ["dask[distributed]>=2023.1"], c, wh)
    assert "--no-deps" not in fb and "--target" in fb and "--no-index" in fb
    env = deps.pip_env(t, {"PYTHONPATH": "/x", "PIP_USER": "1", "PIP_TARGET": "/elsewhere"})
    assert env["PYTHONPATH"] == os.pathsep.join([str(t), "/x"]) and "PIP_USER" not in env and "PIP_TARGET" not in env


def test_constraints_pin_qgis_numpy_on_top_of_the_project_pins():
    import numpy

    pins = deps.protected_pins()
    assert f"numpy=={numpy.__version__}" in pins
    assert all(deps.canonical(p.split("==")[0]) in deps.PROTECTED for p in pins)
    lines = deps.constraint_lines(pins, ROOT / "constraints.txt")
    assert "numpy<2" in lines and f"numpy=={numpy.__version__}" in lines
    assert not any(ln.startswith("#") for ln in lines)


def test_wheelhouse_script_downloads_binary_wheels_under_the_constraints(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import wheelhouse
    finally:
        sys.path.pop(0)
    reqs = wheelhouse.requirements(["deep", "batch"])
    assert reqs == ["onnxruntime-gpu>=1.17", "dask[distributed]>=2023.1"]
    cmd = wheelhouse.command("/usr/bin/python3", tmp_path, reqs)
    assert cmd[:4] == ["/usr/bin/python3", "-m", "pip", "download"]
    assert "--only-binary=:all:" in cmd and str(ROOT / "constraints.txt") in cmd and str(tmp_path) in cmd
    assert "wheelhouse:" in (ROOT / "Makefile").read_text()


def test_package_ships_constraints_for_the_installer(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.split(" (")[0]
    names = zipfile.ZipFile(out).namelist()
    for must in ("constraints.txt", "plugin/deps.py", "plugin/deps_dialog.py"):
        assert f"sar_optical_matcher/{must}" in names


def test_find_python_finds_the_interpreter_beside_a_qgis_binary(tmp_path):
    qgis_bin = tmp_path / "qgis"
    qgis_bin.write_text("")
    py = deps.find_python(str(qgis_bin))
    out = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.strip() == str(sys.version_info[:2])


def test_tiny_model_is_valid_onnx_and_verify_runs_a_session():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = onnx.load_from_string(deps.tiny_onnx_model())
    onnx.checker.check_model(model)
    v = deps.verify("deep")
    assert v.ok, v.lines
    assert v.provider in ("cpu", "cuda") and v.cuda == (v.provider == "cuda")
    assert any(ln.startswith("CUDA:") for ln in v.lines)


def _fake_python(tmp_path, plan, rc_install=0, resolve_output="", report_supported=True) -> str:
    """A stand-in for QGIS's Python: answers pip's dry run with ``plan`` and logs every call."""
    log = tmp_path / "calls.jsonl"
    script = tmp_path / "fakepython"
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in plan]}
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        args = sys.argv[1:]
        open({str(log)!r}, "a").write(json.dumps(args) + "\\n")
        if "--dry-run" in args:
            if not {report_supported!r}:
                print("no such option: --report"); sys.exit(2)
            print({resolve_output!r})
            open(args[args.index("--report") + 1], "w").write({json.dumps(report)!r})
            sys.exit(0 if not {resolve_output!r} else 1)
        print("Processing x.whl")
        sys.exit({rc_install})
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _calls(tmp_path):
    return [json.loads(ln) for ln in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_install_installs_exactly_the_resolved_plan_without_deps(tmp_path):
    py = _fake_python(tmp_path, [("onnxruntime-gpu", "1.31.1"), ("flatbuffers", "25.1")])
    lines, steps = [], []
    res = deps.install("deep", tmp_path / "t", tmp_path, progress=lambda f, s: steps.append(f), log=lines.append,
                       python=py, verify_after=False)
    assert res.ok, res.message
    resolve, inst = _calls(tmp_path)
    assert "--dry-run" in resolve and resolve[-1] == "onnxruntime-gpu>=1.17"
    assert inst[-2:] == ["onnxruntime-gpu==1.31.1", "flatbuffers==25.1"] and "--no-deps" in inst
    assert "--no-index" in inst and inst[inst.index("--find-links") + 1] == str(tmp_path)
    assert steps == sorted(steps) and steps[-1] == 1.0
    assert any("Kept as installed: " in ln and "numpy==" in ln for ln in lines)


def test_install_refuses_to_replace_qgis_numpy(tmp_path):
    py = _fake_python(tmp_path, [("onnxruntime-gpu", "9.0"), ("numpy", "2.3.0")])
    res = deps.install("deep", tmp_path / "t", None, python=py, verify_after=False)
    assert not res.ok and "numpy" in res.message and "refused" in res.message
    assert len(_calls(tmp_path)) == 1                   # nothing installed


def test_install_explains_an_incomplete_wheelhouse_and_a_missing_one(tmp_path):
    py = _fake_python(tmp_path, [], resolve_output="ERROR: No matching distribution found for onnxruntime-gpu>=1.17")
    res = deps.install("deep", tmp_path / "t", tmp_path, python=py, verify_after=False)
    assert not res.ok and "make wheelhouse" in res.message
    res = deps.install("deep", tmp_path / "t", tmp_path / "nope", python=py, verify_after=False)
    assert not res.ok and "does not exist" in res.message


def test_old_pip_falls_back_and_prunes_protected_packages(tmp_path):
    py = _fake_python(tmp_path, [], report_supported=False)
    t = tmp_path / "t"
    for name in ("numpy", "numpy-1.26.4.dist-info", "numpy.libs", "dask"):
        (t / name).mkdir(parents=True)
    res = deps.install("batch", t, None, python=py, verify_after=False)
    assert res.ok, res.message
    assert "--no-deps" not in _calls(tmp_path)[-1]
    assert sorted(p.name for p in t.iterdir()) == ["dask"]


def test_nothing_to_install_when_everything_is_there(tmp_path):
    py = _fake_python(tmp_path, [])
    lines = []
    res = deps.install("batch", tmp_path / "t", None, python=py, log=lines.append)
    assert len(_calls(tmp_path)) == 1 and "Nothing to install: everything is already there." in lines
    assert res.ok == (not deps.missing("batch"))


# ===================================================================== Qt hooks
@pytest.fixture
def plugin(qgis_iface):
    reset_settings()
    p = open_plugin(qgis_iface)
    yield p
    p.unload()
    clear_project()
    reset_settings()


def test_menu_entry_opens_the_dialog(plugin, qgis_iface):
    dlg = plugin.show_dependencies()
    assert dlg.isVisible() and set(dlg.checks) == {"deep", "batch"}
    assert str(dlg.target).endswith(os.path.join("python", "dependencies", "sar_optical_matcher",
                                                 f"py{sys.version_info[0]}{sys.version_info[1]}"))
    dlg.check()                                       # the venv has both: every check passes
    assert dlg.outcome.text() == "All checks passed."
    assert "CPU session: ran a test model correctly." in dlg.log.toPlainText()


def test_dialog_installs_in_the_background_and_reports(plugin, tmp_path, monkeypatch, qgis_iface):
    from plugin_helpers import wait_until

    from sar_optical_matcher.plugin import deps_dialog

    monkeypatch.setattr(deps, "missing", lambda f, path=None: ["onnxruntime"] if f == "deep" else [])
    dlg = deps_dialog.DependencyDialog(["deep"], target=tmp_path / "t")
    assert dlg.checks["deep"].isChecked() and dlg.install_button.isEnabled()
    assert "missing onnxruntime" in dlg.checks["deep"].text()
    dlg.offline.setChecked(True)
    dlg.wheelhouse.setFilePath(str(tmp_path))
    assert dlg.start(python=_fake_python(tmp_path, [("onnxruntime-gpu", "1.31.1")]))
    wait_until(lambda: dlg.result is not None, 60)
    assert "onnxruntime-gpu==1.31.1" in dlg.log.toPlainText() and dlg.progress.value() == 100
    assert dlg.result.verification is not None       # the check ran after the (fake) install


def test_dock_opens_the_installer_when_deep_lacks_onnxruntime(plugin, qgis_iface, monkeypatch):
    from sar_optical_matcher.plugin import deps_dialog

    d = plugin.dock
    if not d.models:
        pytest.skip("no models installed: Deep is not offered")
    monkeypatch.setattr(deps, "missing", lambda f, path=None: ["onnxruntime"] if f == "deep" else [])
    d.method.setCurrentIndex(d.method.findData("deep"))
    d.method.activated.emit(d.method.currentIndex())     # the user picks Deep
    dlg = deps_dialog.ensure.last
    assert isinstance(dlg, deps_dialog.DependencyDialog) and dlg.isVisible() and dlg.features == ["deep"]
    with pytest.raises(Exception, match="Install dependencies"):
        d.current_params()
    dlg.close()


def test_processing_names_the_menu_entry_when_dask_is_missing(monkeypatch):
    from qgis.core import QgsProcessingException

    from sar_optical_matcher.plugin import algorithms

    monkeypatch.setattr(deps, "missing", lambda f, path=None: ["dask", "distributed"] if f == "batch" else [])
    with pytest.raises(QgsProcessingException, match="Raster ▸ SAR-Optical Matcher ▸ Install dependencies"):
        algorithms._require("batch")
    algorithms._require("deep")


# ===================================================================== the real thing
QGIS_SIDE = r"""
import json, os, sys, time
profile, plugins, scene_dir, run_deep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
app = QgsApplication([], True, profile)
app.initQgis()
sys.path.insert(0, plugins)                      # as QGIS puts the profile's python/plugins on sys.path
import qgis.utils
from unittest import mock
from qgis.gui import QgisInterface, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow
iface = mock.Mock(spec=QgisInterface)          # what qgis.testing.mocked.get_iface builds (it needs 'mock')
window = QMainWindow()
canvas = QgsMapCanvas(window)
iface.mainWindow.return_value = window
iface.mapCanvas.return_value = canvas
bar = QgsMessageBar(window)
iface.messageBar.return_value = bar
qgis.utils.iface = iface
assert qgis.utils.loadPlugin("sar_optical_matcher"), "plugin did not load"
assert qgis.utils.startPlugin("sar_optical_matcher"), "plugin did not start"
plugin = qgis.utils.plugins["sar_optical_matcher"]
from sar_optical_matcher.plugin import deps
out = {"settings": QgsApplication.qgisSettingsDirPath(), "sys_path_tail": sys.path[-3:],
       "missing": {f: deps.missing(f) for f in deps.FEATURES}}
import numpy, onnxruntime, dask
out.update(numpy=numpy.__file__, numpy_version=numpy.__version__, onnxruntime=onnxruntime.__file__,
           dask=dask.__file__)
v = deps.verify("deep")
out.update(verify_ok=v.ok, provider=v.provider, cuda=v.cuda, lines=v.lines)
b = deps.verify("batch")
out.update(batch_ok=b.ok)
if run_deep:
    from sar_optical_matcher.engine.simulate.pair import demo_pair
    pair = demo_pair(scene_dir)   # the bundled demo's scene (2048 px), as `make demo` makes it
    sar = QgsRasterLayer(str(pair.sar), "sar"); opt = QgsRasterLayer(str(pair.optical), "optical")
    QgsProject.instance().addMapLayers([sar, opt])
    plugin.action.trigger()
    d = plugin.dock
    d.sar_combo.setLayer(sar); d.opt_combo.setLayer(opt)
    d.method.setCurrentIndex(d.method.findData("deep"))   # the dock's default transform (affine)
    d.out_dir.setFilePath(os.path.join(scene_dir, "run"))
    def wait(pred, timeout):
        t0 = time.monotonic()
        while not pred():
            app.processEvents(); time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit("timeout")
        app.processEvents()
    task = d.run_match()
    assert task is not None, [i.text() for i in bar.items()]
    wait(lambda: QgsApplication.taskManager().countActiveTasks() == 0 and d.task is None, 600)
    out["deep_error"] = getattr(task, "error", None) and str(task.error)
    out["deep_inliers"] = d.session.stats.n_inliers if d.session else None
    w = d.create_corrected(os.path.join(scene_dir, "corrected.tif"))
    wait(lambda: d.warp_task is None, 300)
    lyr = d.corrected_layer()
    out["corrected"] = lyr.source() if lyr is not None and lyr.isValid() else None
    QgsProject.instance().removeAllMapLayers()
plugin.unload()
print("RESULT " + json.dumps(out))
sys.stdout.flush()
os._exit(0)   # exitQgis with raster layers and a mocked iface may segfault; the result is printed
"""


def _clean_env(home: Path) -> dict:
    """An environment that does not see the venv: only the system PATH, a throwaway HOME, no user site."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "PYTHONNOUSERSITE": "1",
            "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(home)}


def _wheelhouse() -> Path:
    if list(WHEELHOUSE.glob("onnxruntime_gpu-*.whl")) and list(WHEELHOUSE.glob("distributed-*.whl")):
        return WHEELHOUSE
    if not os.path.exists(QGIS_PYTHON):
        pytest.skip(f"{QGIS_PYTHON} (QGIS's Python on Debian) is not here")
    proc = subprocess.run([QGIS_PYTHON, str(ROOT / "scripts" / "wheelhouse.py"), "--out", str(WHEELHOUSE),
                           "--python", QGIS_PYTHON], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.skip("no wheelhouse can be built here (pip download failed, offline?): "
                    + (proc.stdout + proc.stderr).strip().splitlines()[-1][:300])
    return WHEELHOUSE


def test_offline_install_from_the_zip_into_a_clean_profile(tmp_path):
    if not os.path.exists(QGIS_PYTHON):
        pytest.skip(f"{QGIS_PYTHON} (QGIS's Python on Debian) is not here")
    wh = _wheelhouse()
    zpath = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(tmp_path / "dist")],
                           capture_output=True, text=True, check=True).stdout.split(" (")[0]
    profile = tmp_path / "QGIS3" / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(zpath).extractall(plugins)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    ver = subprocess.run([QGIS_PYTHON, "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    target = profile / "python" / "dependencies" / "sar_optical_matcher" / f"py{ver}"
    # 1. The dependency manager of the unzipped plugin, with Debian's Python, offline.
    install = subprocess.run(
        [QGIS_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from sar_optical_matcher.plugin import deps; sys.exit(deps.main(sys.argv[2:]))",
         str(plugins), "install", "deep", "batch", "--target", str(target), "--wheelhouse", str(wh)],
        env=_clean_env(home), capture_output=True, text=True, timeout=900)
    log = install.stdout + install.stderr
    assert install.returncode == 0, log[-4000:]
    assert "--no-index" in log and "Deep matching is ready" in log and "Batch matching is ready" in log
    assert not (target / "numpy").exists() and not list(target.glob("numpy-*"))   # QGIS's numpy stays alone
    assert (target / "onnxruntime").is_dir() and (target / "dask").is_dir()
    # A second run finds everything there.
    again = subprocess.run(
        [QGIS_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from sar_optical_matcher.plugin import deps; sys.exit(deps.main(sys.argv[2:]))",
         str(plugins), "install", "deep", "batch", "--target", str(target), "--wheelhouse", str(wh)],
        env=_clean_env(home), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "Nothing to install" in again.stdout, again.stdout[-3000:]
    # 2. QGIS's Python loads the plugin as QGIS does; the packages come from the profile's folder.
    run_deep = "0" if os.environ.get("SOM_SKIP_DEEP_RUN") else "1"
    qgis = subprocess.run([QGIS_PYTHON, "-c", QGIS_SIDE, str(profile), str(plugins), str(tmp_path / "scene"), run_deep],
                          env=_clean_env(home), capture_output=True, text=True, timeout=1200)
    res = [ln for ln in qgis.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res, (qgis.stdout + qgis.stderr)[-4000:]
    out = json.loads(res[-1][7:])
    assert Path(out["settings"]).resolve() == profile.resolve()
    assert out["missing"] == {"deep": [], "batch": []}
    assert out["onnxruntime"].startswith(str(target)) and out["dask"].startswith(str(target))
    assert out["numpy"].startswith("/usr/lib/python3/dist-packages/") and int(out["numpy_version"].split(".")[0]) < 2
    assert out["verify_ok"] and out["batch_ok"], out["lines"]
    assert out["provider"] in ("cpu", "cuda")
    print("verify:", *out["lines"], sep="\n  ")
    if run_deep == "1":
        assert not out["deep_error"], out["deep_error"]
        assert out["deep_inliers"] and out["deep_inliers"] >= 3, out
        assert out["corrected"] and os.path.exists(out["corrected"]), out
