"""Area-of-interest choices of the dock, turned into the engine's ``aoi`` + ``aoi_crs``.

The engine takes a rectangle in any CRS and intersects it with the overlap of the two rasters, so
every choice here only has to produce a rectangle and the CRS it is expressed in; the engine
reprojects it. A drawn rectangle is kept in the canvas CRS it was drawn in, so changing the project
CRS afterwards does not silently move it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsGeometry,
    QgsMapLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsMapToolExtent, QgsRubberBand
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtGui import QColor

MODES = (
    ("overlap", "Full overlap of the two layers"),
    ("canvas", "Current map canvas extent"),
    ("layer", "Extent of a layer"),
    ("drawn", "Rectangle drawn on the map"),
    ("polygons", "Extent of polygon features"),
)


@dataclass
class Aoi:
    rect: Optional[tuple[float, float, float, float]]
    crs: Optional[str]
    """Authority id (e.g. 'EPSG:32633') when there is one, else WKT; both are understood by rasterio."""

    @property
    def is_full(self) -> bool:
        return self.rect is None


class AoiError(ValueError):
    """The chosen AOI cannot be computed (no layer, empty selection, nothing drawn...)."""


def crs_string(crs: QgsCoordinateReferenceSystem) -> str:
    return crs.authid() if crs.authid() and not crs.authid().startswith("USER:") else crs.toWkt()


def rect_tuple(r: QgsRectangle) -> tuple[float, float, float, float]:
    return (r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum())


def compute_aoi(mode: str, canvas=None, layer: Optional[QgsMapLayer] = None, selected_only: bool = True,
                drawn: Optional[tuple[QgsRectangle, QgsCoordinateReferenceSystem]] = None) -> Aoi:
    """The rectangle and CRS for ``mode``; raises ``AoiError`` with a user message if it has none."""
    if mode == "overlap":
        return Aoi(None, None)
    if mode == "canvas":
        if canvas is None:
            raise AoiError("No map canvas is available for the canvas extent.")
        r = canvas.extent()
        return _checked(r, canvas.mapSettings().destinationCrs(), "The map canvas extent is empty.")
    if mode == "layer":
        if layer is None:
            raise AoiError("Choose the layer whose extent is the area of interest.")
        return _checked(layer.extent(), layer.crs(), f"Layer '{layer.name()}' has an empty extent.")
    if mode == "polygons":
        if not isinstance(layer, QgsVectorLayer) or layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
            raise AoiError("Choose a polygon layer for the area of interest.")
        if selected_only and layer.selectedFeatureCount():
            r = layer.boundingBoxOfSelected()
        else:
            r = QgsRectangle()
            r.setMinimal()
            for f in layer.getFeatures():
                if f.hasGeometry():
                    r.combineExtentWith(f.geometry().boundingBox())
        return _checked(r, layer.crs(), f"Layer '{layer.name()}' has no polygon to take an extent from.")
    if mode == "drawn":
        if drawn is None:
            raise AoiError("Draw the area of interest on the map first (button 'Draw on map').")
        return _checked(drawn[0], drawn[1], "The drawn rectangle is empty.")
    raise AoiError(f"Unknown area-of-interest mode '{mode}'.")


def _checked(r: QgsRectangle, crs: QgsCoordinateReferenceSystem, msg: str) -> Aoi:
    if r is None or r.isNull() or r.isEmpty() or not r.isFinite():
        raise AoiError(msg)
    return Aoi(rect_tuple(r), crs_string(crs))


class AoiDrawer(QObject):
    """Lets the user drag a rectangle on the canvas and keeps it visible as a rubber band.

    Wraps ``QgsMapToolExtent`` (the tool the Processing extent widget uses) so the interaction is the
    native one; the previous map tool is restored when the rectangle is done.
    """

    drawn = pyqtSignal(QgsRectangle)

    def __init__(self, canvas, parent=None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.tool = QgsMapToolExtent(canvas)
        self.tool.extentChanged.connect(self._finished)
        self._previous = None
        self.rect: Optional[QgsRectangle] = None
        self.crs: Optional[QgsCoordinateReferenceSystem] = None
        self.band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
        self.band.setStrokeColor(QColor(255, 140, 0))
        self.band.setFillColor(QColor(255, 140, 0, 30))
        self.band.setWidth(2)

    def start(self) -> None:
        self._previous = self.canvas.mapTool()
        self.canvas.setMapTool(self.tool)

    def set_rect(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        self.rect, self.crs = QgsRectangle(rect), crs
        self.band.setToGeometry(QgsGeometry.fromRect(rect), None)
        self.drawn.emit(self.rect)

    def show(self, visible: bool) -> None:
        self.band.setVisible(visible and self.rect is not None)

    def value(self):
        return (self.rect, self.crs) if self.rect is not None else None

    def _finished(self, rect: QgsRectangle) -> None:
        self.tool.clearRubberBand()
        if self._previous is not None and self._previous is not self.tool:
            self.canvas.setMapTool(self._previous)
        else:
            self.canvas.unsetMapTool(self.tool)
        if rect.isEmpty():
            return
        self.set_rect(rect, self.canvas.mapSettings().destinationCrs())

    def cleanup(self) -> None:
        if self.canvas.mapTool() is self.tool:
            self.canvas.unsetMapTool(self.tool)
        self.band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        scene = self.canvas.scene()
        if scene is not None:
            scene.removeItem(self.band)
        self.band = None
