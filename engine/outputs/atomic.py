"""Atomic output files and up-front output-path checks.

Why atomic: a run can be cancelled, crash or hit a full disk half-way through writing a GeoTIFF or
GeoPackage. Writing to a temporary sibling and ``os.replace``-ing it into place means the final
path either holds the previous complete file or the new complete file, never a truncated one that
QGIS would open and show as garbage. The temporary lives in the *same folder* so the rename stays
on one filesystem (atomic) and keeps the final suffix, because GDAL/OGR drivers choose the format
from it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Sequence, Union

from ..errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]

_SIDECAR_SUFFIXES = (".aux.xml", "-journal", "-wal", "-shm", ".ovr", ".msk")
"""Files GDAL/SQLite may create next to a dataset (PAM metadata, GPKG journals, overviews, masks)."""


def temp_sibling(final_path: PathLike) -> Path:
    """A fresh hidden name next to ``final_path`` with the same suffix: ``.<stem>.tmp-<hex><suffix>``."""
    final = Path(final_path)
    return final.with_name(f".{final.stem}.tmp-{secrets.token_hex(6)}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final_path: PathLike) -> Iterator[str]:
    """Yield a temporary path to write to; move it onto ``final_path`` only if the block succeeds.

    On any exception (cancel included) the temporary and its GDAL side-cars are deleted and the
    exception propagates (an ``OSError`` as ``OutputError``); an existing ``final_path`` is left
    untouched. Writers must close their datasets inside the block (GDAL flushes on close).
    """
    final = Path(final_path)
    tmp = temp_sibling(final)
    try:
        yield str(tmp)
        if not tmp.exists():
            raise OutputError(f"Nothing was written to {final} (the writer produced no file).")
        os.replace(tmp, final)
    except OSError as exc:
        # Disk full, permission denied, path too long...: a problem the user can act on.
        _remove_with_sidecars(tmp)
        raise OutputError(f"Cannot write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_with_sidecars(tmp)
        raise
    # The dataset's PAM side-car belongs to the new file; a stale one would describe the old file.
    tmp_aux, final_aux = Path(str(tmp) + ".aux.xml"), Path(str(final) + ".aux.xml")
    if tmp_aux.exists():
        os.replace(tmp_aux, final_aux)
    else:
        with contextlib.suppress(FileNotFoundError):
            final_aux.unlink()
    _remove_with_sidecars(tmp)


def _remove_with_sidecars(tmp: Path) -> None:
    for p in [tmp] + [Path(str(tmp) + s) for s in _SIDECAR_SUFFIXES]:
        # Any OSError: clean-up must never replace the error being reported (e.g. ENAMETOOLONG).
        with contextlib.suppress(OSError):
            p.unlink()


def check_output_path(path: PathLike, inputs: Sequence[PathLike] = ()) -> Path:
    """Refuse, with a specific message, an output that would overwrite an input or cannot be written.

    Checked before any work starts so a long run does not fail at the very end. Symlinks and
    relative paths are resolved, so ``./a.tif`` and a link to ``a.tif`` count as the same file.
    Returns the output path as a ``Path``.
    """
    if path is None or str(path).strip() == "":
        raise OutputError("No output path given.")
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"The output path {out} is a folder; give a file name.")
    out_real = Path(os.path.realpath(out))
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        inp_path = Path(inp).expanduser()
        same = False
        if out.exists() and inp_path.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp_path)
        if not same:
            same = os.path.normcase(str(out_real)) == os.path.normcase(os.path.realpath(inp_path))
        if same:
            raise OutputError(
                f"The output {out} is the same file as the input {inp}; choose another output name "
                "so the input is not overwritten."
            )
    folder = out_real.parent
    if not folder.exists():
        raise OutputError(f"The output folder {folder} does not exist; create it or choose another folder.")
    if not folder.is_dir():
        raise OutputError(f"The output folder {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder {folder} is not writable; choose another folder.")
    return out
