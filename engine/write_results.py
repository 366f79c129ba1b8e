"""Writes a run's outputs as one all-or-nothing set.

Every file is first written under a temporary name next to its final one; only when all of them
exist are they renamed into place. If anything fails or the run is cancelled, the temporaries are
removed and the folder is as it was: the previous run's complete outputs (if any) are kept, never a
mix of old and new results or a half-written file. Inputs are never overwritten.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import preprocess
from .errors import OutputError
from .outputs.atomic import _remove_with_sidecars, check_output_path, temp_sibling
from .outputs.checkerboard import write_checkerboard_png
from .outputs.gpkg import write_tiepoints_gpkg
from .outputs.lock import OutputLock, remove_stale_temporaries
from .outputs.points_file import write_optical_points
from .outputs.warp import warp_with_transform
from .pipeline import MatchResult
from .progress import CancelToken, ProgressCallback
from .raster_io import _read_onto, open_raster

CHECKER_MAX = 2048


@dataclass
class OutputPaths:
    points: str
    gpkg: str
    summary: str
    corrected: Optional[str] = None
    checker_before: Optional[str] = None
    checker_after: Optional[str] = None


def output_paths(result: MatchResult, out_dir: str, corrected: bool, checkerboard: bool) -> OutputPaths:
    return output_paths_for(result.pair.opt_info.path, out_dir, corrected, checkerboard)


def points_name(optical: str) -> str:
    """The ``.points`` file name of the optical raster ``optical``: its file name, extension included,
    plus ``.points`` (``opt.jp2`` → ``opt.jp2.points``, ``wv_opt.tiff`` → ``wv_opt.tiff.points``): the
    only name QGIS's Georeferencer loads by itself when it opens that raster."""
    return os.path.basename(str(optical).rstrip("/")) + ".points"


def output_paths_for(optical: str, out_dir: str, corrected: bool, checkerboard: bool) -> OutputPaths:
    """The output files of a run on the optical raster ``optical`` (known before the run)."""
    stem = os.path.splitext(os.path.basename(str(optical).rstrip("/")))[0]
    j = lambda name: os.path.join(out_dir, name)  # noqa: E731
    return OutputPaths(
        points=j(points_name(optical)),
        gpkg=j("tie_points.gpkg"), summary=j("summary.json"),
        corrected=j(f"{stem}_corrected.tif") if corrected else None,
        checker_before=j("checkerboard_before.png") if checkerboard else None,
        checker_after=j("checkerboard_after.png") if checkerboard else None,
    )


_SIDE_CAR_ROOM = len(".aux.xml")
"""The longest suffix GDAL may add to an output's (temporary) name while writing it."""


def check_outputs(sar: str, optical: str, out_dir: str, corrected: bool = True, checkerboard: bool = True) -> None:
    """Before any work: ``OutputError`` when an output of this run would overwrite an input, or its
    name (or the temporary name it is written under) is too long for the folder's file system."""
    paths = output_paths_for(optical, out_dir, corrected, checkerboard)
    try:
        limit = os.pathconf(out_dir, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # Windows has no pathconf
        limit = 255
    for p in asdict(paths).values():
        if not p:
            continue
        check_output_path(p, [sar, optical])
        need = len(temp_sibling(p).name) + _SIDE_CAR_ROOM
        if need > limit:
            name = os.path.basename(p)
            raise OutputError(
                f"The output file name '{name[:24]}…{name[-16:]}' ({len(name)} characters) is too long for the "
                f"output folder '{out_dir}': while it is written it needs {need} characters, the file system "
                f"allows {limit}. The outputs are named after the optical raster: rename the optical raster "
                f"(or copy it) to a name at least {need - limit} characters shorter.")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or an OutputError carrying GDAL/SQLite's words) means the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc).lower()
    return any(k in text for k in ("no space left on device", "disk is full", "disk quota exceeded"))


def disk_full_error(out_dir: str) -> OutputError:
    free = ""
    try:
        free = f" ({shutil.disk_usage(out_dir).free // 1024} KB free)"
    except OSError:
        pass
    return OutputError(f"The disk is full: cannot write the outputs to {out_dir}{free}. Free some space there or "
                       "choose another output folder; nothing was changed in it.")


def _thumb_step(shape: tuple[int, ...]) -> int:
    return max(int(np.ceil(max(shape) / CHECKER_MAX)), 1)


def write_results(result: MatchResult, out_dir: str, corrected: bool = True, checkerboard: bool = True,
                  extra_summary: Optional[dict] = None, progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, lock: bool = True) -> OutputPaths:
    """Write the run's outputs into ``out_dir`` as one set (see the module docstring), holding the
    folder's ``OutputLock`` (nested when the caller holds it already); hidden temporaries that a
    killed run left there are removed first. ``lock=False``: the caller vouches that no other run
    writes to ``out_dir`` and cleans it itself (a batch holds the lock of the folder above)."""
    ensure_writable_dir(out_dir)  # OutputError, not a raw OSError, for a folder that cannot be made
    if not lock:
        return _write_results_locked(result, out_dir, corrected, checkerboard, extra_summary, progress, cancel)
    with OutputLock(out_dir) as held:
        remove_stale_temporaries(out_dir, before=held.acquired_at)
        return _write_results_locked(result, out_dir, corrected, checkerboard, extra_summary, progress, cancel)


def _write_results_locked(result: MatchResult, out_dir: str, corrected: bool, checkerboard: bool,
                          extra_summary: Optional[dict], progress: Optional[ProgressCallback],
                          cancel: Optional[CancelToken]) -> OutputPaths:
    cancel = cancel or CancelToken()
    progress = progress or (lambda f, s: None)
    paths = output_paths(result, out_dir, corrected, checkerboard)
    inputs = [result.pair.sar_info.path, result.pair.opt_info.path]
    for p in asdict(paths).values():
        if p:
            check_output_path(p, inputs)
    staged: list[tuple[str, str]] = []  # (temporary, final): nothing replaces a final file before all exist

    def stage(final: str) -> str:
        tmp = str(temp_sibling(final))
        staged.append((tmp, final))
        return tmp

    try:
        progress(0.0, "Writing tie points")
        # Source coordinates in the optical raster's own CRS (not the SAR working CRS): as QGIS reads them.
        write_optical_points(stage(paths.points), result.tieset, result.pair.opt_info.transform)
        write_tiepoints_gpkg(stage(paths.gpkg), result.tieset)
        cancel.check()
        sar_thumb = None
        if paths.checker_before:
            # Read at checkerboard size from the files: the run keeps no full-scene image.
            thumb = _thumbnail_grid(result)
            sar_thumb = _sar_unit_on(result, thumb)
            opt_thumb = _optical_unit_on(result.pair.opt_info, list(result.pair.opt_bands), thumb, result.stretch)
            write_checkerboard_png(stage(paths.checker_before), sar_thumb, opt_thumb)
            if paths.checker_after and not paths.corrected and result.transform is not None:
                # No corrected raster in this run (the dock, --no-corrected): the same optical
                # quick-look moved by the fitted transform, so both checkerboards are always there.
                write_checkerboard_png(stage(paths.checker_after), sar_thumb,
                                       _moved_by(result.transform, opt_thumb, thumb))
        if paths.corrected:
            progress(0.2, "Warping the optical raster")
            corrected_tmp = stage(paths.corrected)
            _write_corrected(result, corrected_tmp,
                             lambda f, *_: progress(0.2 + 0.7 * f, "Warping the optical raster"), cancel)
            if paths.checker_after:
                thumb = _thumbnail_grid(result)
                if sar_thumb is None:
                    sar_thumb = _sar_unit_on(result, thumb)
                info = open_raster(corrected_tmp, "corrected optical")
                after = _optical_unit_on(info, list(range(1, min(info.count, 3) + 1)), thumb, None)
                write_checkerboard_png(stage(paths.checker_after), sar_thumb, after)
        summary = result.summary()
        summary["outputs"] = {k: v for k, v in asdict(paths).items() if v}
        summary.update(corrected_crs_summary(result))
        if extra_summary:
            summary.update(extra_summary)
        with open(stage(paths.summary), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, default=_json_default)
        cancel.check()
        _commit(staged)
        progress(1.0, "Outputs written")
    except BaseException as exc:
        for tmp, _final in staged:
            _remove_with_sidecars(Path(tmp))
        if isinstance(exc, (OSError, OutputError)) and disk_full(exc):  # not SQLite's dump of every statement
            raise disk_full_error(out_dir) from exc
        if isinstance(exc, OSError):  # permission denied, name too long...: a problem the user can act on
            raise OutputError(f"Cannot write the outputs to {out_dir}: {exc.strerror or exc}") from exc
        raise
    return paths


def _commit(staged: list[tuple[str, str]]) -> None:
    """Switch the folder from its previous result set to the staged one, all at once or not at all.

    Every old file the new set replaces (with its GDAL side-car) is first renamed aside, the old
    ``summary.json`` first; then every staged file (with its side-car) is renamed onto its final
    name, ``summary.json`` last: it is the commit mark, so a run killed half-way leaves no summary
    and a batch re-runs the pair instead of trusting a mix. Renames stay in one folder (atomic). If
    any rename fails (a file open in another program on Windows, an immutable file...), the new
    files are removed and the old ones renamed back: the folder holds the previous set, whole."""
    order = sorted(staged, key=lambda s: os.path.basename(s[1]) == "summary.json")  # the summary last
    old = [p for _tmp, f in reversed(order) for p in (f, f + ".aux.xml") if os.path.lexists(p)]
    aside: list[tuple[str, str]] = []  # (final, backup) of the previous set
    placed: list[str] = []  # new files already under their final name
    current = ""
    try:
        for current in old:
            backup = str(temp_sibling(current))
            os.replace(current, backup)
            aside.append((current, backup))
        for tmp, current in order:
            if os.path.exists(tmp + ".aux.xml"):
                os.replace(tmp + ".aux.xml", current + ".aux.xml")
                placed.append(current + ".aux.xml")
            os.replace(tmp, current)
            placed.append(current)
    except BaseException as exc:
        kept = _roll_back(placed, aside)
        if not isinstance(exc, OSError):
            raise
        folder = os.path.dirname(current) or "."
        msg = (f"Cannot put the new results in place in '{folder}' ({os.path.basename(current)}: "
               f"{exc.strerror or exc}); the previous results there are kept unchanged. Close any program "
               "that has them open (QGIS on Windows locks open files) and run again.")
        if kept:
            msg += " Could not restore " + ", ".join(f"{os.path.basename(f)} (kept as {os.path.basename(b)})"
                                                     for f, b in kept) + "."
        raise OutputError(msg) from exc
    for _final, backup in aside:
        _remove_with_sidecars(Path(backup))


def _roll_back(placed: list[str], aside: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Undo a partial ``_commit``: remove the new files, rename the old ones back. Returns the old
    files that could not be restored, as (final, backup)."""
    for p in reversed(placed):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
        except OSError:  # cannot happen for a file this run just renamed; keep going regardless
            pass
    kept = []
    for final, backup in reversed(aside):
        try:
            os.replace(backup, final)
        except OSError:
            kept.append((final, backup))
    return kept


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def corrected_crs_summary(result: MatchResult) -> dict:
    """summary.json's word on the corrected raster's CRS: it is written in the SAR's working CRS, so
    when the optical is stored in another CRS the corrected raster is reprojected, not only moved.
    Said as a note (not a warning: the result is not doubtful for it)."""
    grid, opt = result.pair.grid.crs, result.pair.opt_info.crs
    differs = opt is None or not (grid == opt)
    out = {"corrected_crs": grid.to_string(), "optical_crs": opt.to_string() if opt is not None else None,
           "corrected_crs_differs": bool(differs), "notes": []}
    if differs:
        out["notes"].append(
            f"The corrected optical raster is in {grid.to_string()} (the SAR's CRS), not in the optical's own "
            f"{opt.to_string() if opt is not None else 'CRS (none)'}: it is reprojected there, not only moved.")
    return out


def _moved_by(transform, unit: np.ndarray, thumb) -> np.ndarray:
    """``unit`` (an optical quick-look on ``thumb``, nominal georeference) as it lies once corrected:
    each thumbnail pixel at true position T shows the optical at the nominal position N with
    transform(N) = T (fixed-point iteration: corrections are small against the scene)."""
    from scipy import ndimage

    h, w = unit.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    a = thumb.transform
    cols, rows = cols.ravel(), rows.ravel()
    true = np.column_stack([a.a * cols + a.b * rows + a.c, a.d * cols + a.e * rows + a.f])
    nominal = true.copy()
    for _ in range(8):
        step = true - transform.apply(nominal)
        nominal += step
        if np.nanmax(np.abs(step)) < abs(a.a) * 1e-3:
            break
    inv = ~a
    c = inv.a * nominal[:, 0] + inv.b * nominal[:, 1] + inv.c - 0.5
    r = inv.d * nominal[:, 0] + inv.e * nominal[:, 1] + inv.f - 0.5
    out = ndimage.map_coordinates(np.nan_to_num(unit.astype(np.float32)), [r, c], order=1, mode="constant", cval=0.0)
    return out.reshape(h, w).astype(np.float32)


def _write_corrected(result: MatchResult, dst: str, progress, cancel: CancelToken) -> None:
    """Warp with the fitted transform; GDAL reprojects the GCP grid itself when the CRSs differ."""
    wkt = result.pair.grid.crs.to_wkt()
    warp_with_transform(result.pair.opt_info.path, dst, result.transform, wkt, progress=progress, cancel=cancel)


def _thumbnail_grid(result: MatchResult):
    """The checkerboard grid: at most CHECKER_MAX px a side, pixel k centred on pixel k·step of the
    matching grid (what striding the grid by ``step`` would sample)."""
    from rasterio.transform import Affine

    from .raster_io import Grid

    grid = result.pair.grid
    step = _thumb_step((grid.height, grid.width))
    half = (step - 1) / 2.0
    return Grid(crs=grid.crs, width=-(-grid.width // step), height=-(-grid.height // step),
                transform=grid.transform * Affine.translation(-half, -half) * Affine.scale(step))


def _sar_unit_on(result: MatchResult, thumb) -> np.ndarray:
    """The SAR on the thumbnail grid, point-sampled and stretched like the matching tiles."""
    from rasterio.enums import Resampling

    st = result.stretch
    arr, valid = _read_onto(result.pair.sar_info, [result.pair.sar_band], thumb, Resampling.bilinear,
                            point_sample=True)
    if not valid.any():
        return np.zeros(valid.shape, np.float32)
    unit, _ = preprocess.sar_to_unit(arr[0], scale=st.sar_scale, clip=(st.sar_lo, st.sar_hi), valid_mask=valid)
    return unit


def _optical_unit_on(info, bands: list[int], thumb, stretch) -> np.ndarray:
    """An optical raster on the thumbnail grid (point-sampled), stretched with ``stretch`` or, for
    the corrected raster (None), robustly on its own."""
    from rasterio.enums import Resampling

    arr, valid = _read_onto(info, bands, thumb, Resampling.bilinear, point_sample=True)
    if not valid.any():
        return np.zeros(valid.shape, np.float32)
    gray = preprocess.optical_to_gray(arr)
    clip = None if stretch is None else (stretch.opt_lo, stretch.opt_hi)
    unit, _ = preprocess.optical_to_unit(gray, valid, clip=clip)
    return unit


def ensure_writable_dir(out_dir: str) -> None:
    """Create ``out_dir`` if needed; ``OutputError`` when it is a file or cannot be created/written."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"The output folder '{out_dir}' is a file, not a folder; choose a folder "
                          "(an input raster is never overwritten).")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder '{out_dir}': {exc.strerror}.") from exc
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"The output folder '{out_dir}' is not writable.")
