"""Bridges between QGIS layers and the file paths the engine works on, and result-layer handling.

The engine reads files with rasterio/GDAL, so a layer is usable only when its GDAL provider points at
a file (or a /vsi path): web services and memory rasters are refused with a clear message instead of
failing deep inside the engine.
"""
from __future__ import annotations

import math
import os
import re
from typing import Optional

from qgis.core import (
    Qgis,
    QgsDistanceArea,
    QgsExpressionContextUtils,
    QgsGeometryGeneratorSymbolLayer,
    QgsLayerTreeGroup,
    QgsLineSymbol,
    QgsMapLayer,
    QgsPointXY,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsUnitTypes,
    QgsVectorLayer,
)

RESOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")
TIE_STYLE = os.path.join(RESOURCES, "tie_points.qml")
ARROW_STYLE = os.path.join(RESOURCES, "displacements.qml")
GROUP_PREFIX = "SAR-Optical Matcher"


class LayerError(ValueError):
    """A layer cannot be used as an engine input; ``str()`` is the user message."""


def raster_path(layer: Optional[QgsMapLayer], role: str) -> str:
    """The file a raster layer reads, or ``LayerError`` explaining why it has none."""
    if layer is None:
        raise LayerError(f"Choose a {role} raster layer.")
    if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise LayerError(f"The {role} layer '{layer.name()}' is not a valid raster layer.")
    if layer.providerType() != "gdal":
        raise LayerError(f"The {role} layer '{layer.name()}' comes from the '{layer.providerType()}' provider; "
                         "only file-based (GDAL) rasters can be matched. Save it as a GeoTIFF first.")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or layer.source()
    if not (path.startswith("/vsi") or os.path.exists(path)):
        raise LayerError(f"The {role} layer '{layer.name()}' reads '{path}', which is not a file on disk.")
    return path


_SAR_WORDS = re.compile(r"(?:^|[^a-z0-9])(sar|s1|s1a|s1b|s1c|grd|slc|vv|vh|hh|hv|sigma0|gamma0|beta0|db|"
                        r"terrasar|tsx|iceye|capella|radarsat|cosmo|csk|alos|palsar)(?:$|[^a-z0-9])")
_FLOAT_TYPES = (Qgis.DataType.Float32, Qgis.DataType.Float64)


def _layer_words(layer: QgsMapLayer) -> str:
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    return f"{layer.name()} {os.path.basename(parts.get('path') or '')}".lower().replace("_", " ")


def sar_likelihood(layer: QgsRasterLayer) -> int:
    """How much ``layer`` looks like a SAR image: a single band (+2), floating point (backscatter or dB,
    +1), a SAR word in its name or file name ('sar', 's1', 'vv', 'vh', 'hh', 'db'..., +3). 0 = not SAR."""
    score = 3 if _SAR_WORDS.search(_layer_words(layer)) else 0
    if layer.bandCount() == 1:
        score += 2
        if layer.dataProvider() is not None and layer.dataProvider().dataType(1) in _FLOAT_TYPES:
            score += 1
    elif layer.bandCount() >= 3:
        score -= 3
    return max(score, 0)


def guess_sar_optical(layers: list[QgsMapLayer]) -> tuple[Optional[QgsRasterLayer], Optional[QgsRasterLayer]]:
    """The likely (SAR, optical) pair among ``layers`` (in layer-tree order, top first): the SAR is the
    most SAR-like raster (single band, float/dB, a SAR word in the name), the optical the first other
    raster with 3+ bands (else any other raster). Never the same layer twice; None where none fits."""
    rasters = [lyr for lyr in layers if isinstance(lyr, QgsRasterLayer) and lyr.isValid()]
    scored = [(sar_likelihood(lyr), -i, lyr) for i, lyr in enumerate(rasters)]
    sar = max(scored, key=lambda t: t[:2])[2] if scored and max(t[0] for t in scored) > 0 else None
    rest = [lyr for lyr in rasters if lyr is not sar]
    multi = [lyr for lyr in rest if lyr.bandCount() >= 3 and sar_likelihood(lyr) == 0]
    opt = (multi or [lyr for lyr in rest if lyr.bandCount() >= 3] or rest or [None])[0]
    if sar is None:
        others = [lyr for lyr in rasters if lyr is not opt]
        sar = others[0] if others else None
    return sar, opt


def pixel_size_m(layer: QgsRasterLayer) -> float:
    """Ground size of one raster pixel in metres (ellipsoidal for geographic CRSs)."""
    res = abs(layer.rasterUnitsPerPixelX()) or 1.0
    crs = layer.crs()
    if not crs.isGeographic():
        f = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters)
        return res * (f if f and math.isfinite(f) else 1.0)
    d = QgsDistanceArea()
    d.setSourceCrs(crs, QgsProject.instance().transformContext())
    d.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
    c = layer.extent().center()
    m = d.measureLine(QgsPointXY(c.x(), c.y()), QgsPointXY(c.x() + res, c.y()))
    return m if m > 0 else res * 111320.0


def results_group(title: str) -> QgsLayerTreeGroup:
    """A fresh group at the top of the layer tree for one run's layers."""
    root = QgsProject.instance().layerTreeRoot()
    return root.insertGroup(0, f"{GROUP_PREFIX} – {title}")


def add_to_group(group: QgsLayerTreeGroup, layer: QgsMapLayer, index: int = -1) -> None:
    QgsProject.instance().addMapLayer(layer, False)
    if index < 0:
        group.addLayer(layer)
    else:
        group.insertLayer(index, layer)


ARROW_SCALE_VAR = "som_arrow_scale"
"""Layer variable of the arrow layer: how many times the arrows are drawn longer than the displacement."""
ARROW_QUERY = ("SELECT t.id AS id, t.status AS status, t.disp_m AS disp_m, t.residual_px AS residual_px, "
               "make_line(make_point(t.opt_x, t.opt_y), t.geometry) AS geometry FROM ties AS t")
"""The arrows are derived from the tie-point layer itself (a virtual layer reads it through QGIS, edit
buffer included): a deletion or status edit shows at once, stays unsaved with the points, and the two
layers can never disagree. Each arrow runs from the optical position to the tie point (SAR position)."""


def arrow_scale(ties: QgsVectorLayer) -> int:
    """An exaggeration (1, 2, 5, 10, 20, 50...) that makes the median inlier displacement about 1/12 of
    the tie points' extent, so the arrows are visible at the scale the whole result is looked at."""
    disp = [math.hypot(f["sar_x"] - f["opt_x"], f["sar_y"] - f["opt_y"]) for f in ties.getFeatures()
            if f["status"] == "inlier" and None not in (f["sar_x"], f["opt_x"], f["sar_y"], f["opt_y"])]
    disp = sorted(d for d in disp if math.isfinite(d) and d > 0)
    ext = ties.extent()
    size = max(ext.width(), ext.height())
    if not disp or not math.isfinite(size) or size <= 0:
        return 1
    want = size / 12.0 / disp[len(disp) // 2]
    k = 1
    while k < want and k < 100000:
        k = k * 5 // 2 if str(k).startswith("2") else k * 2   # 1, 2, 5, 10, 20, 50, 100...
    return k


def arrow_layer_name(scale: int) -> str:
    return f"Displacements ×{scale} (optical → SAR)" if scale > 1 else "Displacements (optical → SAR)"


def make_arrow_layer(ties: QgsVectorLayer, scale: Optional[int] = None) -> QgsVectorLayer:
    """The displacement arrows of ``ties`` as a virtual layer (see ``ARROW_QUERY``), styled from
    resources/ with the arrows drawn ``scale`` times their length, head on the tie point."""
    from urllib.parse import quote

    scale = arrow_scale(ties) if scale is None else int(scale)
    srid = ties.crs().postgisSrid()
    uri = (f"?layer_ref={quote(ties.id())}:ties&query={quote(ARROW_QUERY)}&geometry=geometry:2:{srid}&uid=id")
    arrows = QgsVectorLayer(uri, arrow_layer_name(scale), "virtual")
    if not arrows.isValid():
        return arrows
    arrows.setCrs(ties.crs())
    arrows.loadNamedStyle(ARROW_STYLE)
    QgsExpressionContextUtils.setLayerVariable(arrows, ARROW_SCALE_VAR, scale)
    _exaggerate(arrows)
    return arrows


def _exaggerate(arrows: QgsVectorLayer) -> None:
    """Wrap every arrow symbol in a geometry generator that stretches the line ``@som_arrow_scale``
    times back from its end, so the head stays on the tie point."""
    end, start = "end_point($geometry)", "start_point($geometry)"
    k = f"coalesce(@{ARROW_SCALE_VAR}, 1)"
    expr = (f"make_line(translate({end}, {k} * (x({start}) - x({end})), {k} * (y({start}) - y({end}))), {end})")
    renderer = arrows.renderer()
    if renderer is None:
        return
    for cat_index, cat in enumerate(getattr(renderer, "categories", lambda: [])()):
        sym = cat.symbol()
        gen = QgsGeometryGeneratorSymbolLayer.create({"geometryModifier": expr, "SymbolType": "Line"})
        gen.setSubSymbol(sym.clone())                   # (a list of layers is not handed over in 3.22's API)
        new = QgsLineSymbol()
        new.changeSymbolLayer(0, gen)
        renderer.updateCategorySymbol(cat_index, new)


def load_tie_layers(gpkg: str, title: str) -> tuple[QgsVectorLayer, QgsVectorLayer, QgsLayerTreeGroup]:
    """Add the run's tie points and their displacement arrows (styled from resources/) in their own
    group, the arrows above the points so the arrowheads are drawn over the point markers."""
    ties = QgsVectorLayer(f"{gpkg}|layername=tie_points", "Tie points", "ogr")
    if not ties.isValid():
        raise LayerError(f"The tie-point GeoPackage '{gpkg}' could not be opened by QGIS.")
    ties.loadNamedStyle(TIE_STYLE)
    group = results_group(title)
    add_to_group(group, ties)
    arrows = make_arrow_layer(ties)
    if not arrows.isValid():
        QgsProject.instance().removeMapLayer(ties.id())
        QgsProject.instance().layerTreeRoot().removeChildNode(group)
        raise LayerError(f"The displacement arrows of '{gpkg}' could not be derived by QGIS: "
                         f"{arrows.error().summary()}")
    add_to_group(group, arrows, 0)
    group.setExpanded(True)
    return ties, arrows, group


def insert_above(layer: QgsMapLayer, reference: Optional[QgsMapLayer]) -> None:
    """Add ``layer`` to the project directly above ``reference`` in the layer tree (top if none)."""
    project = QgsProject.instance()
    root = project.layerTreeRoot()
    node = root.findLayer(reference.id()) if reference is not None else None
    project.addMapLayer(layer, False)
    if node is None:
        root.insertLayer(0, layer)
        return
    parent = node.parent()
    parent.insertLayer(parent.children().index(node), layer)
