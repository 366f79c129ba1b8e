"""Small GDAL helpers shared by the writers: error capture and progress/cancel bridging.

Why not ``gdal.UseExceptions()``: in GDAL 3.6 it flips a process-wide flag, which inside QGIS would
change behaviour for every other plugin and thread. Instead each call is wrapped in a
*thread-local* error handler (``gdal.PushErrorHandler``) that records messages, and failures are
detected from return values.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Any, Callable, Iterator, Optional

from osgeo import gdal

from ..errors import CancelledError, OutputError
from ..progress import CancelToken, ProgressCallback


class GdalErrors:
    """Collects CE_Failure/CE_Fatal messages raised while the handler is pushed."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, err_class: int, err_no: int, msg: str) -> None:
        if err_class >= gdal.CE_Failure:
            self.messages.append(str(msg).strip())

    def text(self) -> str:
        return "; ".join(m for m in self.messages if m) or "unknown GDAL error"


@contextlib.contextmanager
def gdal_errors() -> Iterator[GdalErrors]:
    handler = GdalErrors()
    gdal.PushErrorHandler(handler)
    try:
        yield handler
    finally:
        gdal.PopErrorHandler()


def vsimem_path(suffix: str) -> str:
    return f"/vsimem/sarmatcher-{uuid.uuid4().hex}{suffix}"


def make_gdal_callback(
    progress: Optional[ProgressCallback], cancel: Optional[CancelToken], stage: str,
    start: float = 0.0, end: float = 1.0,
) -> Callable[..., int]:
    """A GDAL progress callback that forwards progress and returns 0 (abort) once cancelled."""

    def cb(complete: float, message: Any = None, data: Any = None) -> int:
        if cancel is not None and cancel.cancelled:
            return 0
        if progress is not None:
            progress(start + (end - start) * min(max(float(complete), 0.0), 1.0), stage)
        return 1

    return cb


def raise_if_cancelled(cancel: Optional[CancelToken]) -> None:
    if cancel is not None and cancel.cancelled:
        raise CancelledError("Cancelled by the user; the partial output was removed.")


def fail(what: str, errors: GdalErrors, cancel: Optional[CancelToken] = None) -> None:
    """Raise CancelledError when the failure came from a cancel, OutputError otherwise."""
    raise_if_cancelled(cancel)
    raise OutputError(f"{what} failed: {errors.text()}")
