"""The plugin object QGIS creates: the menu/toolbar action, the dock and the Processing provider.

Engine-dependent modules are imported only after the dependency check passes, so a QGIS whose Python
lacks rasterio or scipy still loads the plugin and shows the exact install command instead of an
import traceback.
"""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsApplication
from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QLabel, QVBoxLayout, QWidget

from . import deps
from .dependencies import install_hint, missing_packages

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MENU = "&SAR-Optical Matcher"
TITLE = "SAR-Optical Matcher"


class SarOpticalMatcherPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        # The optional packages installed by the dependency manager (onnxruntime, Dask) become importable
        # before anything imports the engine; appended, so QGIS's own numpy/GDAL always win.
        deps.activate(deps.default_target(QgsApplication.qgisSettingsDirPath()))
        self.action: QAction | None = None
        self.deps_action: QAction | None = None
        self.deps_dialog = None
        self.dock: QgsDockWidget | None = None
        self.provider = None

    # ------------------------------------------------------------------ QGIS hooks
    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        """Register the Processing provider (QGIS calls this for plugins with hasProcessingProvider=yes)."""
        if self.provider is not None or missing_packages():
            return
        from .provider import MatcherProvider

        self.provider = MatcherProvider(PLUGIN_DIR)
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        icon = QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.svg"))
        self.action = QAction(icon, TITLE, self.iface.mainWindow())
        self.action.setObjectName("SarOpticalMatcherAction")
        self.action.setToolTip("Match an optical raster to a SAR raster and correct its georeference")
        self.action.setCheckable(True)
        self.action.toggled.connect(self._toggle_dock)
        self.iface.addToolBarIcon(self.action)          # the Plugins toolbar: shown in a fresh profile
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.deps_action = QAction(QgsApplication.getThemeIcon("/propertyicons/plugin.svg"),
                                   "Install dependencies…", self.iface.mainWindow())
        self.deps_action.setObjectName("SarOpticalMatcherDepsAction")
        self.deps_action.setToolTip("Install onnxruntime (Deep matching) and Dask (Batch match) into the plugin's "
                                    "folder of this QGIS profile, online or from a folder of wheels")
        self.deps_action.triggered.connect(self.show_dependencies)
        self.iface.addPluginToRasterMenu(MENU, self.deps_action)
        self.initProcessing()

    def show_dependencies(self):
        """Open (or raise) the dependency manager's dialog; returns it."""
        from .deps_dialog import DependencyDialog

        if self.deps_dialog is None:
            self.deps_dialog = DependencyDialog(parent=self.iface.mainWindow())
        else:
            self.deps_dialog.refresh()
        self.deps_dialog.show()
        self.deps_dialog.raise_()
        return self.deps_dialog

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.dock is not None:
            if hasattr(self.dock, "shutdown"):
                self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.deps_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.deps_action)
            self.deps_action.deleteLater()
            self.deps_action = None
        if self.deps_dialog is not None:
            self.deps_dialog.cancel()
            self.deps_dialog.deleteLater()
            self.deps_dialog = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None

    # ------------------------------------------------------------------ dock
    def _toggle_dock(self, checked: bool) -> None:
        if self.dock is None:
            if not checked:
                return
            self.dock = self._make_dock()
            self.dock.closed.connect(lambda: self.action is not None and self.action.setChecked(False))
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        if checked:
            self.dock.show()
            self.dock.raise_()
        else:
            self.dock.hide()

    def _make_dock(self) -> QgsDockWidget:
        missing = missing_packages()
        if missing:
            return self._missing_dock(missing)
        from .dock import MatcherDock

        return MatcherDock(self.iface, PLUGIN_DIR, self.iface.mainWindow())

    def _missing_dock(self, missing: list[str]) -> QgsDockWidget:
        hint = install_hint(missing)
        self.iface.messageBar().pushMessage(TITLE, hint, Qgis.MessageLevel.Warning, 0)
        dock = QgsDockWidget(TITLE, self.iface.mainWindow())
        dock.setObjectName("SarOpticalMatcherDock")
        body = QWidget()
        layout = QVBoxLayout(body)
        label = QLabel(hint)
        label.setObjectName("installHint")
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(label)
        layout.addStretch(1)
        dock.setWidget(body)
        return dock
