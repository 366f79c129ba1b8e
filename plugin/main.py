"""The plugin object QGIS creates: registers the menu action and the dock, and cleans up on unload."""
from __future__ import annotations

import os

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QLabel, QVBoxLayout, QWidget

from .dependencies import install_hint, missing_packages

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MENU = "&SAR-Optical Matcher"


class SarOpticalMatcherPlugin:
    """Minimal shell: the dock explains the current state; matching runs from the engine CLI for now."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.dock: QDockWidget | None = None

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        icon = QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.svg"))
        self.action = QAction(icon, "SAR-Optical Matcher", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self._toggle_dock)
        self.iface.addRasterToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def _toggle_dock(self, checked: bool) -> None:
        if self.dock is None:
            self.dock = QDockWidget("SAR-Optical Matcher", self.iface.mainWindow())
            self.dock.setObjectName("SarOpticalMatcherDock")
            body = QWidget()
            layout = QVBoxLayout(body)
            missing = missing_packages()
            text = install_hint(missing) if missing else (
                "The engine is installed. Run matching with: python -m engine match --sar SAR.tif "
                "--optical OPT.tif --out DIR (the Match layers panel is under construction)."
            )
            label = QLabel(text)
            label.setWordWrap(True)
            layout.addWidget(label)
            layout.addStretch(1)
            self.dock.setWidget(body)
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.setVisible(checked)

    def unload(self) -> None:
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
