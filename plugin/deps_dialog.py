"""The *Install dependencies* dialog over plugin/deps.py: what is missing, an Install button, offline
install from a folder of wheels, a progress bar, pip's log and the result of the check that follows.

pip runs in a worker thread (a subprocess of QGIS's Python), so QGIS stays responsive; its lines reach
the dialog through a queued Qt signal. After a successful install the packages import at once (the
plugin folder is put on ``sys.path``), so no restart is needed.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

from qgis.core import QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from . import deps

SETTING_WHEELHOUSE = "SarOpticalMatcher/deps/wheelhouse"


def target_dir():
    """The plugin-owned dependency folder of the current QGIS profile."""
    return deps.default_target(QgsApplication.qgisSettingsDirPath())


class _Bridge(QObject):
    line = pyqtSignal(str)
    progress = pyqtSignal(float, str)
    finished = pyqtSignal(object)


class DependencyDialog(QDialog):
    """Modal-free dialog; ``features`` are the ones offered (default: every optional feature)."""

    installed = pyqtSignal(object)
    """Emitted with the InstallResult when an install succeeded."""

    def __init__(self, features: Sequence[str] = ("deep", "batch"), parent=None, target=None,
                 reason: str = "") -> None:
        super().__init__(parent)
        self.setObjectName("SarOpticalMatcherDependencies")
        self.setWindowTitle("SAR-Optical Matcher: install dependencies")
        self.features = list(features)
        self.target = target or target_dir()
        self.result: Optional[deps.InstallResult] = None
        self._cancel = False
        self._thread: Optional[threading.Thread] = None
        self._bridge = _Bridge()  # no parent: the worker thread may outlive a closed dialog
        self._bridge.line.connect(self._append, Qt.ConnectionType.QueuedConnection)
        self._bridge.progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self._bridge.finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)

        lay = QVBoxLayout(self)
        self.intro = QLabel()
        self.intro.setWordWrap(True)
        self.intro.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.intro)
        self.checks = {}
        for key in self.features:
            f = deps.FEATURES[key]
            cb = QCheckBox()
            cb.setObjectName(f"feature_{key}")
            self.checks[key] = cb
            lay.addWidget(cb)
        self.offline = QCheckBox("Install from a folder of wheels (offline; made with 'make wheelhouse')")
        self.offline.setObjectName("offline")
        self.wheelhouse = QgsFileWidget()
        self.wheelhouse.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        saved = QgsSettings().value(SETTING_WHEELHOUSE, "", type=str)
        self.wheelhouse.setFilePath(saved)
        self.offline.setChecked(bool(saved))
        self.wheelhouse.setEnabled(bool(saved))
        self.offline.toggled.connect(self.wheelhouse.setEnabled)
        lay.addWidget(self.offline)
        lay.addWidget(self.wheelhouse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.stage = QLabel("")
        lay.addWidget(self.progress)
        lay.addWidget(self.stage)
        self.log = QPlainTextEdit()
        self.log.setObjectName("log")
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setMinimumHeight(180)
        lay.addWidget(self.log, 1)
        self.outcome = QLabel("")
        self.outcome.setObjectName("outcome")
        self.outcome.setWordWrap(True)
        self.outcome.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.outcome)
        row = QHBoxLayout()
        self.install_button = QPushButton("Install")
        self.install_button.setObjectName("install")
        self.install_button.clicked.connect(self.start)
        self.check_button = QPushButton("Check again")
        self.check_button.setToolTip("Import and run the installed packages (onnxruntime session, CUDA, Dask)")
        self.check_button.clicked.connect(self.check)
        self.cancel_button = QPushButton("Cancel install")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        row.addWidget(self.install_button)
        row.addWidget(self.check_button)
        row.addWidget(self.cancel_button)
        row.addStretch(1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        row.addWidget(buttons)
        lay.addLayout(row)
        self.resize(720, 520)
        self.refresh(reason)

    # ------------------------------------------------------------------ state
    def refresh(self, reason: str = "") -> None:
        deps.activate(self.target)
        lines = []
        for key, cb in self.checks.items():
            f = deps.FEATURES[key]
            miss = deps.missing(key)
            cb.setText(f"{f.title}: " + (f"missing {', '.join(miss)} — {f.size}; {f.why}" if miss
                                         else "installed"))
            cb.setChecked(bool(miss))
            cb.setEnabled(bool(miss) and not self.busy)
            if miss:
                lines.append(f.title)
        head = (reason + "<br>") if reason else ""
        if lines:
            self.intro.setText(head + "Some features need Python packages QGIS's Python does not have. They are "
                               "installed with QGIS's own Python into the plugin's folder of your profile, "
                               f"<code>{self.target}</code>, and never replace QGIS's numpy or GDAL. "
                               "Delete that folder to undo.")
        else:
            self.intro.setText(head + f"Every optional feature is installed (in <code>{self.target}</code> or "
                               "QGIS's Python). <i>Check again</i> runs them.")
        self.install_button.setEnabled(bool(lines) and not self.busy)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def chosen(self) -> list[str]:
        return [k for k, cb in self.checks.items() if cb.isChecked() and cb.isEnabled()]

    def chosen_wheelhouse(self) -> Optional[str]:
        if not self.offline.isChecked():
            return None
        return self.wheelhouse.filePath().strip() or None

    # ------------------------------------------------------------------ actions
    def start(self, python: Optional[str] = None) -> bool:
        """Start installing the checked features in the background; False if nothing to do."""
        feats = self.chosen()
        if self.busy or not feats:
            return False
        wh = self.chosen_wheelhouse()
        if self.offline.isChecked() and not wh:
            self.outcome.setText("Choose the folder of wheels, or untick the offline install.")
            return False
        QgsSettings().setValue(SETTING_WHEELHOUSE, wh or "")
        self._cancel = False
        self.log.clear()
        self.outcome.setText("")
        self.install_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        for cb in self.checks.values():
            cb.setEnabled(False)
        b = self._bridge

        def work():
            res = deps.install(feats, self.target, wh, progress=lambda f, s: b.progress.emit(f, s),
                               log=b.line.emit, python=python if isinstance(python, str) else None,
                               cancelled=lambda: self._cancel)
            b.finished.emit(res)

        self._thread = threading.Thread(target=work, name="som-deps-install", daemon=True)
        self._thread.start()
        return True

    def cancel(self) -> None:
        self._cancel = True

    def check(self) -> None:
        deps.activate(self.target)
        self.log.clear()
        ok = True
        for key in self.features:
            v = deps.verify(key)
            ok &= v.ok
            for line in v.lines:
                self._append(line)
            self._append(v.summary)
        self.outcome.setText("All checks passed." if ok else "A check failed: see the log.")

    def reject(self) -> None:
        if self.busy:
            self._cancel = True
        super().reject()

    # ------------------------------------------------------------------ worker signals
    def _append(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _on_progress(self, frac: float, stage: str) -> None:
        self.progress.setValue(int(round(100 * frac)))
        self.stage.setText(stage)

    def _on_finished(self, res) -> None:
        self.result = res
        self._thread = None
        self.cancel_button.setEnabled(False)
        color = "green" if res.ok else "#b00"
        self.outcome.setText(f"<b style='color:{color}'>{'Done' if res.ok else 'Not installed'}:</b> "
                             f"{res.message}")
        self.refresh()
        if res.ok:
            self.installed.emit(res)


def ensure(feature: str, parent=None, reason: str = "") -> bool:
    """True if ``feature`` can run now; otherwise open the dialog (non-blocking) and return False."""
    deps.activate(target_dir())
    if not deps.missing(feature):
        return True
    dlg = DependencyDialog([feature], parent, reason=reason or deps.describe_missing(feature))
    dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    dlg.show()
    ensure.last = dlg
    return False


ensure.last = None
