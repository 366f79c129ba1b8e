"""Background tasks: the engine runs in QgsTasks so QGIS stays responsive and the run can be cancelled.

The tasks only ever receive file paths and plain engine objects: QGIS layers are not thread safe and
must not be touched from ``run()``. Progress goes through ``setProgress`` (thread safe) and a stage
signal, which Qt queues to the main thread. ``finished()`` runs in the main thread and hands the
outcome to a callback; every engine error is caught and stored as a message, so a failure never
surfaces as a Python traceback dialog.
"""
from __future__ import annotations

import os
import shutil
import time
import traceback
from typing import Callable, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..engine.errors import CancelledError, MatcherError
from ..engine.params import MatchParams
from ..engine.progress import CancelToken

LOG_TAG = "SAR-Optical Matcher"


def run_folder(out_dir: str, opt_path: str) -> str:
    """A new, unused folder for one run's outputs, so a re-run never overwrites a GeoPackage that is
    still open in QGIS from the previous one."""
    stem = os.path.splitext(os.path.basename(opt_path))[0]
    base = os.path.join(out_dir, f"{stem}_{time.strftime('%Y%m%d_%H%M%S')}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}_{k}"
    return path


class EngineTask(QgsTask):
    """Shared plumbing: progress/stage reporting, cancel token, error capture, completion callback."""

    stageChanged = pyqtSignal(str)  # noqa: N815 - Qt naming

    def __init__(self, description: str, on_done: Optional[Callable[["EngineTask"], None]] = None) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.on_done = on_done
        self.error: Optional[str] = None
        self.was_cancelled = False
        self.elapsed = 0.0
        self.stage = ""
        self.token = CancelToken(is_cancelled=self.isCanceled)

    def report(self, fraction: float, stage: str) -> None:
        self.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        if stage != self.stage:
            self.stage = stage
            self.stageChanged.emit(stage)

    def run(self) -> bool:
        t0 = time.perf_counter()
        try:
            self.work()
            return True
        except CancelledError:
            self.was_cancelled = True
            self.error = "Cancelled: no output was written."
        except MatcherError as exc:
            self.error = str(exc)
        except MemoryError:
            self.error = ("Out of memory: the area of interest is too large for this computer; choose a "
                          "smaller area of interest.")
        except Exception as exc:  # noqa: BLE001 - shown as a message, details go to the log panel
            self.error = f"Unexpected error ({type(exc).__name__}: {exc}). Details are in the Log Messages panel."
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
        finally:
            self.elapsed = time.perf_counter() - t0
        self.cleanup()
        return False

    def work(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what a failed or cancelled run left behind (engine writes are atomic already)."""

    def finished(self, ok: bool) -> None:  # noqa: FBT001 - QgsTask API
        if not ok and self.error is None:
            # Cancelled before run() started, or terminated by QGIS.
            self.was_cancelled = self.isCanceled()
            self.error = "Cancelled: no output was written." if self.was_cancelled else "The task was terminated."
        if self.on_done is not None:
            self.on_done(self)


class MatchTask(EngineTask):
    """match_pair + write_results into a new run folder under ``out_dir``."""

    def __init__(self, sar_path: str, opt_path: str, params: MatchParams, out_dir: str,
                 on_done: Optional[Callable[[EngineTask], None]] = None) -> None:
        super().__init__(f"Matching {os.path.basename(opt_path)} to {os.path.basename(sar_path)}", on_done)
        self.sar_path, self.opt_path, self.params, self.out_dir = sar_path, opt_path, params, out_dir
        self.run_dir = run_folder(out_dir, opt_path)
        self._made: list[str] = []
        self.result = None
        self.paths = None

    def work(self) -> None:
        from ..engine.outputs.lock import OutputLock
        from ..engine.pipeline import match_pair
        from ..engine.write_results import ensure_writable_dir, write_results

        for d in (self.out_dir, self.run_dir):
            if not os.path.isdir(d):
                ensure_writable_dir(d)
                self._made.append(d)
        with OutputLock(self.run_dir):  # like the CLI: the run holds its folder from the start
            self.result = match_pair(self.sar_path, self.opt_path, self.params,
                                     progress=lambda f, s: self.report(0.95 * f, s), cancel=self.token)
            self.paths = write_results(self.result, self.run_dir, corrected=False, checkerboard=True,
                                       progress=lambda f, s: self.report(0.95 + 0.05 * f, s), cancel=self.token)
        self.report(1.0, "Done")

    def cleanup(self) -> None:
        # write_results already removed its files; drop the folders this run created if they are empty.
        for d in reversed(self._made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        if os.path.isdir(self.run_dir) and not os.listdir(self.run_dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)


class WarpTask(EngineTask):
    """Writes the corrected optical GeoTIFF with the (reviewed) transform."""

    def __init__(self, src_path: str, dst_path: str, transform, crs_wkt: str,
                 on_done: Optional[Callable[[EngineTask], None]] = None) -> None:
        super().__init__(f"Writing {os.path.basename(dst_path)}", on_done)
        self.src_path, self.dst_path, self.transform, self.crs_wkt = src_path, dst_path, transform, crs_wkt

    def work(self) -> None:
        from ..engine.outputs.warp import warp_with_transform

        if os.path.abspath(self.dst_path) == os.path.abspath(self.src_path):
            raise MatcherError("The corrected layer cannot overwrite the original raster; choose another file.")
        os.makedirs(os.path.dirname(os.path.abspath(self.dst_path)), exist_ok=True)
        warp_with_transform(self.src_path, self.dst_path, self.transform, self.crs_wkt,
                            progress=self.report, cancel=self.token)
        self.report(1.0, "Done")
