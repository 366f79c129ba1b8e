"""Processing provider: makes the engine usable from the Toolbox, the model designer and ``processing.run``."""
from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import BatchMatchAlgorithm, MatchAlgorithm, WarpAlgorithm

PROVIDER_ID = "sar_optical_matcher"


class MatcherProvider(QgsProcessingProvider):
    def __init__(self, plugin_dir: str) -> None:
        super().__init__()
        self.plugin_dir = plugin_dir

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "SAR-Optical Matcher"

    def icon(self) -> QIcon:
        return QIcon(os.path.join(self.plugin_dir, "resources", "icon.svg"))

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        self.addAlgorithm(MatchAlgorithm())
        self.addAlgorithm(WarpAlgorithm())
        self.addAlgorithm(BatchMatchAlgorithm())
