"""The optional-dependency manager: installs what *Deep* and *Batch match* need into a plugin-owned
folder of the QGIS profile, with QGIS's own Python, online or offline from a folder of wheels.

Pure logic (no Qt, no qgis import), so it is tested without a GUI; plugin/deps_dialog.py is its face.

Why these choices:

* **A plugin-owned folder** (``<profile>/python/dependencies/sar_optical_matcher/py3XX``) instead of
  QGIS's site-packages: no administrator rights, one folder to delete to undo everything, and one per
  Python version, because compiled wheels of one Python do not load in another (a QGIS upgrade then
  simply asks again instead of crashing).
* **Appended to ``sys.path``**, never prepended: whatever QGIS's Python already has (numpy, GDAL,
  scipy, rasterio, PyQt) always wins, so nothing this manager installs can shadow it.
* **Resolve first, then install ``--no-deps`` exactly what is missing.** ``pip install --target``
  ignores what is installed and would put a second numpy (and more) into the folder. So pip first
  resolves with QGIS's installed packages visible (``--dry-run --report``), the packages QGIS must
  keep are pinned to their installed versions (``numpy==1.24.2``...) on top of the project's
  ``constraints.txt``, and only the packages the report lists are installed, by exact version.
* **Offline**: ``--no-index --find-links <wheelhouse>`` (a folder made by ``make wheelhouse``).
* **Verified**: after installing, onnxruntime must really run a session (an in-memory two-node ONNX
  graph), and the report says whether CUDA works; Dask must compute.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

PLUGIN_ID = "sar_optical_matcher"
PLUGIN_DIR = Path(__file__).resolve().parents[1]
CONSTRAINTS = PLUGIN_DIR / "constraints.txt"
"""The project's pins (numpy<2, ...), shipped in the ZIP by scripts/package.py."""


@dataclass(frozen=True)
class Feature:
    key: str
    title: str
    modules: tuple[str, ...]
    """Top-level modules that must import for the feature to run."""
    requirements: tuple[str, ...]
    """What pip installs (kept in step with requirements.txt; a test checks it)."""
    why: str
    size: str


FEATURES = {
    "deep": Feature(
        "deep", "Deep matching", ("onnxruntime",), ("onnxruntime-gpu>=1.17",),
        "runs the shipped networks (method 'Deep'); the GPU build also runs on the CPU where CUDA is missing",
        "about 260 MB"),
    "batch": Feature(
        "batch", "Batch match (manifest)", ("dask", "distributed"), ("dask[distributed]>=2023.1",),
        "runs many pairs on a Dask cluster (Processing: 'Batch match (manifest)')", "about 5 MB"),
}

PROTECTED = ("numpy", "scipy", "gdal", "rasterio", "pyqt5", "pyqt5-sip", "sip", "qscintilla", "shapely",
             "pyproj", "matplotlib", "pandas", "fiona", "h5py", "netcdf4", "psycopg2", "owslib")
"""Packages QGIS (or its GDAL) brings and other plugins rely on: pinned to the installed version during
resolution and never written into the plugin folder."""

MENU_ENTRY = "Raster ▸ SAR-Optical Matcher ▸ Install dependencies…"
"""Where the user finds the dialog (the plugin's Raster menu entry); named in error messages."""


class DepsError(Exception):
    """An install that cannot go on; the message says what to do."""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ===================================================================== where
def default_target(settings_dir: str | os.PathLike, version: Sequence[int] = sys.version_info) -> Path:
    """The plugin-owned folder in the QGIS profile (``QgsApplication.qgisSettingsDirPath()``)."""
    return Path(settings_dir) / "python" / "dependencies" / PLUGIN_ID / f"py{version[0]}{version[1]}"


def activate(target: str | os.PathLike) -> bool:
    """Put ``target`` at the end of ``sys.path`` (once); True if it is on the path afterwards.

    Called at plugin start, before anything imports onnxruntime or dask, and after an install, so the
    new packages import without restarting QGIS."""
    t = str(Path(target))
    if not os.path.isdir(t):
        return False
    if t not in sys.path:
        sys.path.append(t)
    importlib.invalidate_caches()
    return True


def missing(feature: str, path: Optional[Sequence[str]] = None) -> list[str]:
    """The modules of ``feature`` that cannot be found (on ``path``, default ``sys.path``)."""
    f = FEATURES[feature]
    out = []
    for mod in f.modules:
        if mod in sys.modules and path is None:
            continue
        if path is None:
            found = importlib.util.find_spec(mod) is not None
        else:
            found = importlib.machinery.PathFinder.find_spec(mod, list(path)) is not None
        if not found:
            out.append(mod)
    return out


def describe_missing(feature: str) -> str:
    f = FEATURES[feature]
    mods = missing(feature)
    if not mods:
        return ""
    return (f"{f.title} needs the Python package(s) {', '.join(mods)}, which QGIS's Python does not have. "
            f"Install them with {MENU_ENTRY} (into the plugin's own folder of your QGIS profile, "
            f"{f.size}; works offline from a folder of wheels).")


def find_python(executable: str = sys.executable) -> str:
    """The Python interpreter QGIS embeds, as a program pip can run.

    Inside QGIS ``sys.executable`` is the qgis binary (Linux, macOS) or qgis-bin.exe (Windows), so the
    interpreter is looked for next to it and under ``sys.exec_prefix``, and accepted only if it is the
    same major.minor version as the running Python. ``SOM_PYTHON`` overrides the search."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    env = os.environ.get("SOM_PYTHON")
    cands: list[str] = [env] if env else []
    exe = Path(executable) if executable else None
    if exe and re.match(r"python[\d.]*(\.exe)?$", exe.name, re.I):
        cands.append(str(exe))
    names = (f"python{want}", f"python{sys.version_info[0]}", "python", "python.exe", "python3.exe")
    dirs = []
    for base in (sys.exec_prefix, sys.base_exec_prefix):
        dirs += [Path(base) / "bin", Path(base)]
    if exe:
        dirs += [exe.parent, exe.parent / "bin", exe.parent.parent / "bin", exe.parent.parent / "apps" / "Python3"]
    for d in dirs:
        cands += [str(d / n) for n in names]
    for n in names[:2]:
        w = shutil.which(n)
        if w:
            cands.append(w)
    seen = set()
    for c in cands:
        if c in seen or not os.path.isfile(c) or not os.access(c, os.X_OK):
            continue
        seen.add(c)
        try:
            out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == want:
            return c
    raise DepsError(f"Could not find QGIS's Python {want} interpreter (looked next to {executable} and in "
                    f"{sys.exec_prefix}); set the environment variable SOM_PYTHON to its path.")


# ===================================================================== pip commands
def protected_pins(target: Optional[str | os.PathLike] = None) -> list[str]:
    """``name==version`` for every protected package installed outside ``target`` (this Python)."""
    import importlib.metadata as md

    t = str(Path(target).resolve()) if target else None
    pins = {}
    for dist in md.distributions():
        name = canonical(dist.metadata.get("Name") or "")
        if name not in PROTECTED or name in pins:
            continue
        loc = str(Path(str(dist.locate_file(""))).resolve())
        if t and loc.startswith(t):
            continue
        v = dist.version or ""
        if re.fullmatch(r"[0-9][0-9A-Za-z.+!_-]*", v):
            pins[name] = f"{name}=={v}"
    return [pins[k] for k in sorted(pins)]


def constraint_lines(pins: Sequence[str], constraints: Optional[Path] = CONSTRAINTS) -> list[str]:
    lines = []
    if constraints is not None and Path(constraints).is_file():
        lines += [ln.strip() for ln in Path(constraints).read_text().splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    return lines + list(pins)


def _source_args(wheelhouse: Optional[str | os.PathLike]) -> list[str]:
    if wheelhouse:
        return ["--no-index", "--find-links", str(wheelhouse)]
    return ["--prefer-binary"]


def resolve_command(python: str, requirements: Sequence[str], constraints_file: str | os.PathLike,
                    report: str | os.PathLike, wheelhouse: Optional[str | os.PathLike] = None) -> list[str]:
    """pip's dry run that lists what is missing, QGIS's installed packages (and the target, put on
    PYTHONPATH by :func:`pip_env`) counting as installed."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--dry-run", "--report", str(report), "--upgrade-strategy", "only-if-needed",
            "--constraint", str(constraints_file), *_source_args(wheelhouse), *requirements]


def install_command(python: str, target: str | os.PathLike, pins: Sequence[str],
                    constraints_file: str | os.PathLike, wheelhouse: Optional[str | os.PathLike] = None) -> list[str]:
    """pip installing exactly ``pins`` (``name==version``) into ``target``, nothing else."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--target", str(target), "--no-deps", "--upgrade", "--upgrade-strategy", "only-if-needed",
            "--no-compile", "--constraint", str(constraints_file), *_source_args(wheelhouse), *pins]


def fallback_command(python: str, target: str | os.PathLike, requirements: Sequence[str],
                     constraints_file: str | os.PathLike, wheelhouse: Optional[str | os.PathLike] = None) -> list[str]:
    """For a pip without ``--report`` (before 22.2): install with dependencies; the protected packages
    that land in ``target`` are removed afterwards (:func:`prune_protected`)."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--target", str(target), "--upgrade", "--upgrade-strategy", "only-if-needed", "--no-compile",
            "--constraint", str(constraints_file), *_source_args(wheelhouse), *requirements]


def pip_env(target: str | os.PathLike, base: Optional[dict] = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    env.pop("PIP_TARGET", None)
    env.pop("PIP_USER", None)
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("PIP_ROOT_USER_ACTION", "ignore")   # QGIS run as root (containers): no venv advice in the log
    return env


def plan_from_report(report: dict) -> list[tuple[str, str]]:
    """(name, version) of each distribution pip's report would install."""
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        out.append((canonical(meta["name"]), meta["version"]))
    return out


def prune_protected(target: str | os.PathLike) -> list[str]:
    """Remove protected packages from ``target`` (fallback path only); returns what was removed."""
    removed = []
    t = Path(target)
    if not t.is_dir():
        return removed
    for p in t.iterdir():
        stem = canonical(re.split(r"-\d", p.name.split(".dist-info")[0])[0].split(".libs")[0])
        if stem in PROTECTED or (stem == "osgeo" and "gdal" in PROTECTED):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
            removed.append(p.name)
    return removed


# ===================================================================== running
@dataclass
class InstallResult:
    ok: bool
    installed: list[str] = field(default_factory=list)
    message: str = ""
    verification: Optional["Verification"] = None


Log = Callable[[str], None]
Progress = Callable[[float, str], None]


def _run(cmd: list[str], env: dict, log: Log, cancelled: Callable[[], bool],
         on_line: Optional[Callable[[str], None]] = None) -> tuple[int, str]:
    log("$ " + " ".join(_quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            encoding="utf-8", errors="replace", bufsize=1)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            log(line)
            tail = (tail + [line])[-40:]
            if on_line:
                on_line(line)
        if cancelled():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise DepsError("Cancelled.")
    return proc.wait(), "\n".join(tail)


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w@%+=:,./<>\[\]-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def _pip_failure(tail: str, python: str, wheelhouse) -> str:
    if "No module named pip" in tail:
        return (f"QGIS's Python ({python}) has no pip. On Debian/Ubuntu: sudo apt install python3-pip; "
                "elsewhere reinstall QGIS with its Python (OSGeo4W: the python3-pip package).")
    if wheelhouse and ("No matching distribution" in tail or "Could not find a version" in tail):
        return (f"The wheel folder {wheelhouse} lacks a package or a version this Python can use (see the log). "
                "Build it on a machine like this one with 'make wheelhouse' (same OS, CPU and Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}).")
    if any(s in tail for s in ("Temporary failure in name resolution", "Failed to establish a new connection",
                               "NewConnectionError", "ProxyError", "Network is unreachable")):
        return ("pip cannot reach the package index (offline, proxy or firewall). Use a folder of wheels "
                "('make wheelhouse' on a connected machine) and choose it as the offline source.")
    if "ResolutionImpossible" in tail or "conflict" in tail.lower():
        return "pip found no versions that fit QGIS's installed packages (see the log for the conflict)."
    last = [ln for ln in tail.splitlines() if ln.strip()]
    return "pip failed: " + (last[-1] if last else "no output") + " (see the log)."


def install(feature: str | Sequence[str], target: str | os.PathLike, wheelhouse: Optional[str | os.PathLike] = None,
            progress: Optional[Progress] = None, log: Optional[Log] = None, python: Optional[str] = None,
            cancelled: Optional[Callable[[], bool]] = None, verify_after: bool = True,
            constraints: Optional[Path] = CONSTRAINTS) -> InstallResult:
    """Install what ``feature`` ('deep', 'batch' or a list) needs into ``target``; then verify it.

    Never raises for an expected failure: the result's ``message`` says what happened and what to do."""
    feats = [feature] if isinstance(feature, str) else list(feature)
    log = log or (lambda s: None)
    progress = progress or (lambda f, s: None)
    cancelled = cancelled or (lambda: False)
    target = Path(target)
    reqs = [r for f in feats for r in FEATURES[f].requirements]
    try:
        if wheelhouse and not Path(wheelhouse).is_dir():
            raise DepsError(f"The wheel folder {wheelhouse} does not exist.")
        progress(0.02, "Finding QGIS's Python")
        python = python or find_python()
        log(f"QGIS's Python: {python}")
        log(f"Target folder: {target}")
        log("Source: " + (f"folder of wheels {wheelhouse} (offline)" if wheelhouse else "the Python package index"))
        target.mkdir(parents=True, exist_ok=True)
        env = pip_env(target)
        work = Path(tempfile.mkdtemp(prefix="som-deps-"))
        try:
            pins = protected_pins(target)
            cfile = work / "constraints.txt"
            cfile.write_text("\n".join(constraint_lines(pins, constraints)) + "\n")
            log("Kept as installed: " + (", ".join(pins) or "-"))
            progress(0.08, "Resolving what is missing")
            rep = work / "report.json"
            rc, tail = _run(resolve_command(python, reqs, cfile, rep, wheelhouse), env, log, cancelled)
            fallback = rc != 0 and ("no such option: --report" in tail or "no such option: --dry-run" in tail)
            if rc != 0 and not fallback:
                raise DepsError(_pip_failure(tail, python, wheelhouse))
            if fallback:
                log("This pip cannot report a plan; installing with dependencies and removing protected packages.")
                progress(0.3, "Installing")
                rc, tail = _run(fallback_command(python, target, reqs, cfile, wheelhouse), env, log, cancelled)
                if rc != 0:
                    raise DepsError(_pip_failure(tail, python, wheelhouse))
                removed = prune_protected(target)
                if removed:
                    log("Removed from the target (QGIS's own copies stay in use): " + ", ".join(removed))
                plan = [("(with dependencies)", "")]
            else:
                plan = plan_from_report(json.loads(rep.read_text()))
                bad = [n for n, _v in plan if n in PROTECTED]
                if bad:
                    raise DepsError("Installing would replace QGIS's own " + ", ".join(bad) + "; refused. "
                                    "Update QGIS, or install older package versions by hand.")
                if not plan:
                    log("Nothing to install: everything is already there.")
                else:
                    log("To install: " + ", ".join(f"{n} {v}" for n, v in plan))
                    shadow = [n for n, _v in plan if _installed_outside(n, target)]
                    if shadow:
                        log("Warning: QGIS's Python has older " + ", ".join(shadow) + ", which stay in front of "
                            "the plugin folder; the check below tells whether the feature still works.")
                    done = [0]

                    def on_line(line: str) -> None:
                        if line.startswith(("Collecting", "Processing", "Downloading", "Looking in")):
                            done[0] += 1
                            progress(0.15 + 0.6 * min(done[0] / max(len(plan), 1), 1.0), line[:80])

                    progress(0.15, "Installing " + ", ".join(n for n, _ in plan))
                    rc, tail = _run(install_command(python, target, [f"{n}=={v}" for n, v in plan], cfile,
                                                    wheelhouse), env, log, cancelled, on_line)
                    if rc != 0:
                        raise DepsError(_pip_failure(tail, python, wheelhouse))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        activate(target)
        result = InstallResult(True, [f"{n} {v}".strip() for n, v in plan], "Installed.")
        if verify_after:
            progress(0.85, "Checking that it runs")
            checks = [verify(f) for f in feats]
            v = checks[0]
            for c in checks[1:]:
                v = v.merge(c)
            result.verification = v
            result.ok = v.ok
            for line in v.lines:
                log(line)
            result.message = v.summary
        progress(1.0, "Done" if result.ok else "Failed")
        return result
    except DepsError as exc:
        log(f"ERROR: {exc}")
        progress(1.0, "Failed")
        return InstallResult(False, [], str(exc))
    except Exception as exc:  # an unexpected failure must reach the dialog, not vanish in a thread
        log(f"ERROR: {type(exc).__name__}: {exc}")
        progress(1.0, "Failed")
        return InstallResult(False, [], f"{type(exc).__name__}: {exc}")


def _installed_outside(name: str, target: Path) -> bool:
    import importlib.metadata as md

    t = str(target.resolve())
    for dist in md.distributions():
        if canonical(dist.metadata.get("Name") or "") == name:
            if not str(Path(str(dist.locate_file(""))).resolve()).startswith(t):
                return True
    return False


# ===================================================================== verification
@dataclass
class Verification:
    ok: bool
    lines: list[str] = field(default_factory=list)
    summary: str = ""
    cuda: Optional[bool] = None
    provider: str = ""
    files: dict = field(default_factory=dict)

    def merge(self, other: "Verification") -> "Verification":
        return Verification(self.ok and other.ok, self.lines + other.lines,
                            " ".join(s for s in (self.summary, other.summary) if s),
                            self.cuda if self.cuda is not None else other.cuda,
                            self.provider or other.provider, {**self.files, **other.files})


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def tiny_onnx_model() -> bytes:
    """A valid ONNX model, y = x + x on a float32 [1, 4] tensor, written as protobuf bytes by hand
    (the onnx package is not a run-time dependency)."""
    def value_info(name: str) -> bytes:
        shape = _field(1, _field(1, 1)) + _field(1, _field(1, 4))             # dims 1, 4
        tensor = _field(1, 1) + _field(2, shape)                                # elem_type FLOAT
        return _field(1, name) + _field(2, _field(1, tensor))
    node = _field(1, "x") + _field(1, "x") + _field(2, "y") + _field(3, "add") + _field(4, "Add")
    graph = _field(1, node) + _field(2, "som_check") + _field(11, value_info("x")) + _field(12, value_info("y"))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(2, "sar_optical_matcher") + _field(7, graph) + _field(8, opset)


def verify(feature: str) -> Verification:
    """Import the feature's packages and run them for real; never raises."""
    try:
        return _verify_deep() if feature == "deep" else _verify_batch()
    except Exception as exc:
        f = FEATURES[feature]
        return Verification(False, [f"{f.title}: check failed: {type(exc).__name__}: {exc}"],
                            f"{f.title} does not work yet: {type(exc).__name__}: {exc}")


def _verify_deep() -> Verification:
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Verification(False, [f"onnxruntime cannot be imported: {exc}"],
                            f"Deep matching does not work yet: onnxruntime cannot be imported ({exc}).")
    lines = [f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}",
             f"numpy {np.__version__} from {os.path.dirname(np.__file__)}"]
    available = list(ort.get_available_providers())
    lines.append("Available providers: " + ", ".join(available))
    model = tiny_onnx_model()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    if not np.allclose(y, 2 * x):
        return Verification(False, lines + [f"CPU session returned {y}"], "onnxruntime runs but computes wrongly.")
    lines.append("CPU session: ran a test model correctly.")
    cuda = False
    if "CUDAExecutionProvider" in available:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        try:
            ort.set_default_logger_severity(4)
            s2 = ort.InferenceSession(model, sess_options=so,
                                      providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            cuda = s2.get_providers()[0] == "CUDAExecutionProvider" and np.allclose(s2.run(None, {"x": x})[0], 2 * x)
        except Exception as exc:
            lines.append(f"CUDA session failed: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            ort.set_default_logger_severity(3)
    if cuda:
        lines.append("CUDA: works (the networks run on the GPU).")
    elif "CUDAExecutionProvider" in available:
        lines.append("CUDA: not usable here (no NVIDIA GPU, or the CUDA/cuDNN libraries onnxruntime-gpu needs are "
                     "missing); the networks run on the CPU.")
    else:
        lines.append("CUDA: not in this onnxruntime build; the networks run on the CPU.")
    provider = "cuda" if cuda else "cpu"
    return Verification(True, lines, f"Deep matching is ready (onnxruntime {ort.__version__}, "
                        f"{'CUDA GPU' if cuda else 'CPU'}).", cuda, provider,
                        {"onnxruntime": ort.__file__, "numpy": np.__file__})


def _verify_batch() -> Verification:
    try:
        import dask
        import distributed
    except ImportError as exc:
        return Verification(False, [f"Dask cannot be imported: {exc}"],
                            f"Batch matching does not work yet: Dask cannot be imported ({exc}).")
    import dask.bag

    total = dask.bag.from_sequence(range(10), npartitions=2).map(lambda v: v * v).sum().compute(scheduler="sync")
    ok = total == 285
    lines = [f"dask {dask.__version__} from {os.path.dirname(dask.__file__)}",
             f"distributed {distributed.__version__} from {os.path.dirname(distributed.__file__)}",
             "Dask: computed a test graph." if ok else f"Dask computed {total} instead of 285."]
    return Verification(ok, lines, f"Batch matching is ready (dask {dask.__version__})." if ok
                        else "Dask runs but computes wrongly.", files={"dask": dask.__file__})


def status_lines(target: str | os.PathLike) -> list[str]:
    """One line per feature for the dialog: ready, or what is missing."""
    out = []
    for f in FEATURES.values():
        m = missing(f.key)
        out.append(f"{f.title}: " + ("installed" if not m else f"missing {', '.join(m)} ({f.size})"))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line for scripting and tests: python3 -m <plugin>.plugin.deps install|verify|missing ..."""
    import argparse

    ap = argparse.ArgumentParser(description="SAR-Optical Matcher optional dependencies")
    ap.add_argument("action", choices=("install", "verify", "missing"))
    ap.add_argument("features", nargs="*", help="deep and/or batch (default: both)")
    ap.add_argument("--target", required=True)
    ap.add_argument("--wheelhouse")
    ap.add_argument("--python")
    a = ap.parse_args(argv)
    feats = a.features or ["deep", "batch"]
    unknown = [f for f in feats if f not in FEATURES]
    if unknown:
        ap.error(f"unknown feature(s) {', '.join(unknown)}; use {' or '.join(FEATURES)}")
    activate(a.target)
    if a.action == "missing":
        for f in feats:
            print(f, " ".join(missing(f)) or "-")
        return 0
    if a.action == "verify":
        vs = [verify(f) for f in feats]
        for v in vs:
            print("\n".join(v.lines))
        return 0 if all(v.ok for v in vs) else 1
    t0 = time.monotonic()
    res = install(feats, a.target, a.wheelhouse, log=print, python=a.python)
    print(("OK: " if res.ok else "FAILED: ") + res.message + f" ({time.monotonic() - t0:.0f} s)")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
