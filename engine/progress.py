"""Progress reporting and cancellation shared by the CLI, the QGIS task and batch runners.

The engine never knows who drives it: it calls a ``ProgressCallback`` with a fraction and a stage
label, and polls a ``CancelToken`` between units of work. A QGIS task maps these onto
``setProgress``/``isCanceled``; the CLI maps them onto a terminal bar.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction in [0, 1], stage text)."""


class CancelToken:
    """Thread-safe cancellation flag; ``check()`` raises ``CancelledError`` once cancelled."""

    def __init__(self, is_cancelled: Optional[Callable[[], bool]] = None) -> None:
        self._event = threading.Event()
        self._external = is_cancelled

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        if self._event.is_set():
            return True
        if self._external is not None and self._external():
            self._event.set()
            return True
        return False

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError("Cancelled by the user.")


def _noop(fraction: float, stage: str) -> None:  # pragma: no cover - trivial
    return None


@dataclass
class StageReporter:
    """Maps per-stage progress onto one overall 0..1 bar using fixed stage weights.

    Stages are declared up front so the bar never goes backwards when a stage turns out cheap.
    """

    stages: Sequence[tuple[str, float]]
    callback: ProgressCallback = _noop
    cancel: CancelToken = field(default_factory=CancelToken)

    def __post_init__(self) -> None:
        total = sum(w for _, w in self.stages) or 1.0
        self._starts: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        acc = 0.0
        for name, w in self.stages:
            self._starts[name] = acc / total
            self._weights[name] = w / total
            acc += w

    def update(self, stage: str, fraction: float = 0.0, text: str | None = None) -> None:
        """Report progress inside ``stage`` and honour a pending cancel."""
        self.cancel.check()
        f = min(max(fraction, 0.0), 1.0)
        overall = self._starts[stage] + self._weights[stage] * f
        self.callback(min(overall, 1.0), text or stage)

    def done(self, text: str = "Done") -> None:
        self.callback(1.0, text)


class ConsoleProgressBar:
    """A dependency-free terminal progress bar (stderr) usable as a ProgressCallback."""

    def __init__(self, width: int = 30, stream=None, min_interval: float = 0.1) -> None:
        self.width = width
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_stage = ""

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if not self._tty:
            # Logs and CI: one line per stage instead of carriage-return animation.
            head = stage.split(" ")[0] if stage.startswith("Matching ") else stage
            if head != self._last_stage:
                self._last_stage = head
                self.stream.write(f"[{fraction * 100:5.1f}% {now - self._t0:6.1f}s] {stage}\n")
                self.stream.flush()
            return
        if fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last = now
        n = int(round(fraction * self.width))
        bar = "#" * n + "-" * (self.width - n)
        msg = f"\r[{bar}] {fraction * 100:5.1f}% {now - self._t0:6.1f}s  {stage[:48]:<48}"
        self.stream.write(msg)
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()
