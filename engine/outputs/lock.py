"""One run per output folder: a lock file, and the clean-up of temporaries that dead runs left.

Two runs writing to one folder would interleave their result sets (run A reports its result while
the folder holds run B's). Every entry point that writes results (``python -m engine match``,
``batch``, the QGIS plugin, ``write_results`` itself) holds ``OutputLock(folder)`` while it works:
a ``.som.lock`` file created with ``O_EXCL`` that records the holder's process id and host. A
second run is refused with an ``OutputError`` naming the folder and the holder. A lock whose
process is gone (killed, crashed) on this host is stale and taken over. The lock is re-entrant
within one thread, so ``write_results`` called under the CLI's lock simply nests.

Only the lock holder removes stale temporaries (``remove_stale_temporaries``): a run killed with
SIGKILL, or a crashed QGIS, leaves hidden ``.<stem>.tmp-<12 hex><suffix>`` files (possibly a whole
corrected raster) that nothing else would ever delete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from typing import Optional

from ..errors import OutputError

LOCK_NAME = ".som.lock"
_STARTING_GRACE_S = 30.0
"""An empty or unreadable lock younger than this belongs to a run that is just writing it."""

_held: dict[str, list] = {}  # folder (real path) -> [thread ident, depth, token, time taken]
_held_guard = threading.Lock()

TEMP_RE = re.compile(r"^\.(?P<stem>.+)\.tmp-[0-9a-f]{12}(?P<suffix>(\.[^.-]+)?)(?P<sidecar>(\.aux\.xml|-journal|-wal"
                     r"|-shm|\.ovr|\.msk)?)$")
"""Our temporaries (``atomic.temp_sibling``) and their GDAL/SQLite side-cars."""

RESULT_NAME_RE = re.compile(r"^(summary\.json|tie_points\.gpkg|checkerboard_(before|after)\.png|.+\.points"
                            r"|.+_corrected\.tif|batch_summary\.(csv|gpkg))(\.aux\.xml)?$")
"""Final names whose temporaries a locked run may remove: the files a run writes into its folder."""


def _host() -> str:
    try:
        return socket.gethostname()
    except OSError:  # pragma: no cover
        return ""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (an unknown answer counts as alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        k32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        h = k32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not h:
            return k32.GetLastError() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            if not k32.GetExitCodeProcess(h, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            k32.CloseHandle(h)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def read_lock(folder: str) -> Optional[dict]:
    """The holder recorded in ``folder``'s lock file ({} when unreadable), or None when there is none."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class OutputLock:
    """``with OutputLock(folder):`` hold ``folder`` for this run (the folder must exist)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.key = os.path.normcase(os.path.realpath(folder))
        self.acquired_at = 0.0
        """``time.time()`` when this run took the lock (stale temporaries are older)."""

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "OutputLock":
        me = threading.get_ident()
        with _held_guard:
            held = _held.get(self.key)
            if held is not None:
                if held[0] != me:
                    raise OutputError(f"The output folder '{self.folder}' is in use by another run in this "
                                      "program; wait for it to finish or choose another folder.")
                held[1] += 1
                self.acquired_at = held[3]
                return self
        token = secrets.token_hex(8)
        now = time.time()
        record = json.dumps({"pid": os.getpid(), "host": _host(), "started": now, "token": token})
        for _attempt in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._refuse_or_break()
                continue
            except OSError as exc:
                raise OutputError(f"Cannot lock the output folder '{self.folder}': {exc.strerror or exc}.") from exc
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(record)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.remove(self.path)
                raise OutputError(f"Cannot lock the output folder '{self.folder}': {exc.strerror or exc}.") from exc
            with _held_guard:
                _held[self.key] = [me, 1, token, now]
            self.acquired_at = now
            return self
        raise OutputError(f"Cannot lock the output folder '{self.folder}': its lock file {self.path} keeps "
                          "changing; is another run starting there?")

    def _refuse_or_break(self) -> None:
        """The lock file exists: remove it when its holder is gone, else refuse with who holds it."""
        info = read_lock(self.folder)
        if info is None:
            return  # released meanwhile: try again
        pid, host = info.get("pid"), info.get("host")
        if not info or not isinstance(pid, int):
            try:
                age = time.time() - os.path.getmtime(self.path)
            except OSError:
                return
            if age < _STARTING_GRACE_S:
                raise OutputError(f"The output folder '{self.folder}' is in use by another run that is "
                                  "starting; wait for it to finish or choose another folder.")
            stale = True
        else:
            stale = host == _host() and (pid == os.getpid() or not pid_alive(pid))
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            return
        started = info.get("started")
        when = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
                if isinstance(started, (int, float)) else "")
        where = "" if host == _host() else f" on {host}"
        raise OutputError(f"The output folder '{self.folder}' is in use by another run (pid {pid}{where}{when}); "
                          "wait for it to finish or choose another folder. If no such run is active, delete "
                          f"{self.path}.")

    def release(self) -> None:
        with _held_guard:
            held = _held.get(self.key)
            if held is None or held[0] != threading.get_ident():
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _held[self.key]
            token = held[2]
        info = read_lock(self.folder)
        if info and info.get("token") == token:
            with contextlib.suppress(OSError):
                os.remove(self.path)


def remove_stale_temporaries(folder: str, before: float) -> list[str]:
    """Remove, from ``folder``, our hidden temporaries of result files (``TEMP_RE`` whose final name
    matches ``RESULT_NAME_RE``) last modified before ``before`` (``time.time()``); call it only while
    holding the folder's ``OutputLock``. Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = TEMP_RE.match(name)
        if not m or not RESULT_NAME_RE.match(m["stem"] + m["suffix"]):
            continue
        path = os.path.join(folder, name)
        try:
            if not os.path.isfile(path) or os.path.getmtime(path) >= before:
                continue
            os.remove(path)
            removed.append(name)
        except OSError:
            continue
    return removed
