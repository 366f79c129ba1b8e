"""Review of a run's tie points: status edits, deletion and the live refit of the transform.

The tie-point layer (the engine's GeoPackage) is the single source of truth. Every edit goes through
the layer's edit buffer inside one edit command that also rewrites the residuals, so QGIS's own Undo
reverts an edit together with the residuals it caused, nothing is written to disk until the user
saves, and the input rasters are never touched. The transform and statistics shown in the dock are
recomputed from the layer's current (edited) state after every change, including undo/redo and
rollback, so the dock, the attribute table and the map always agree.

The displacement-arrow layer is a derived view (a virtual layer over the tie-point layer, see
``layers.ARROW_QUERY``): it shows the edit buffer, so points and arrows change together, stay unsaved
together and share one undo history. The GeoPackage's own ``displacements`` table (for readers outside
QGIS) is brought in line only when the tie points are saved.

Edits made with QGIS's own tools (deleting or moving points on the map, the attribute table) refresh
the dock too; their residuals are written into the layer when it is saved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer
from qgis.PyQt.QtCore import QAbstractTableModel, QModelIndex, QObject, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QBrush, QColor

from ..engine.errors import MatcherError
from ..engine.geometry import fit_transform, residual_norms
from ..engine.types import TiePoint, TieSet

INLIER, FLAGGED = "inlier", "flagged"
GREEN, RED = QColor(26, 150, 65), QColor(215, 25, 28)
REVIEW_REASON = "flagged by reviewer"


@dataclass
class ReviewStats:
    n_points: int = 0
    n_inliers: int = 0
    n_flagged: int = 0
    rmse_px: float = math.nan
    shift_m: tuple[float, float] = (math.nan, math.nan)
    transform_kind: str = ""
    fit_error: str = ""
    """Why the transform could not be fitted (too few inliers...), empty when it was."""
    rows: list[dict] = field(default_factory=list)


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


class ReviewSession(QObject):
    """Edits and live statistics for one run's tie-point layer."""

    changed = pyqtSignal()

    def __init__(self, ties: QgsVectorLayer, arrows: Optional[QgsVectorLayer], kind: str, pixel_size: float,
                 crs_wkt: str, opt_path: str, sar_path: str, opt_layer_id: str = "", run_dir: str = "",
                 parent=None) -> None:
        super().__init__(parent)
        self.ties, self.arrows = ties, arrows
        self.kind, self.pixel_size, self.crs_wkt = kind, float(pixel_size or 1.0), crs_wkt
        self.opt_path, self.sar_path, self.opt_layer_id, self.run_dir = opt_path, sar_path, opt_layer_id, run_dir
        self.transform = None
        self.stats = ReviewStats(transform_kind=kind)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.refresh)
        for sig in (ties.editCommandEnded, ties.afterRollBack, ties.afterCommitChanges, ties.featuresDeleted,
                    ties.featureAdded, ties.attributeValueChanged, ties.editingStarted, ties.geometryChanged,
                    ties.committedFeaturesRemoved, ties.committedAttributeValuesChanges,
                    ties.committedGeometriesChanges):
            sig.connect(self._schedule)
        ties.undoStack().indexChanged.connect(self._schedule)
        ties.beforeCommitChanges.connect(self._before_commit)
        ties.afterCommitChanges.connect(self._mirror_gpkg_arrows)
        ties.willBeDeleted.connect(self._detach)
        if arrows is not None:
            arrows.willBeDeleted.connect(self._drop_arrows)
        self.refresh()

    # ------------------------------------------------------------------ state
    def alive(self) -> bool:
        return self.ties is not None

    def _detach(self) -> None:
        self.ties = None
        self.arrows = None
        self._timer.stop()
        self.changed.emit()

    def _drop_arrows(self) -> None:
        self.arrows = None

    def _schedule(self, *args) -> None:
        if self.ties is not None:
            self._timer.start()

    def features(self) -> list[QgsFeature]:
        return list(self.ties.getFeatures()) if self.ties is not None else []

    @staticmethod
    def _sar_xy(f: QgsFeature) -> tuple[float, float]:
        """The tie point's SAR (true) position: its geometry, which a point moved on the map changes,
        else its sar_x/sar_y attributes."""
        g = f.geometry()
        if g is not None and not g.isNull() and not g.isEmpty():
            p = g.asPoint()
            return p.x(), p.y()
        return _num(f["sar_x"]), _num(f["sar_y"])

    def _arrays(self, feats: list[QgsFeature]):
        src = np.array([[_num(f["opt_x"]), _num(f["opt_y"])] for f in feats], float).reshape(-1, 2)
        dst = np.array([self._sar_xy(f) for f in feats], float).reshape(-1, 2)
        inl = np.array([f["status"] == INLIER for f in feats], bool)
        return src, dst, inl

    def fit(self, feats: Optional[list[QgsFeature]] = None):
        """(transform, residuals px for every feature, error message) from the inliers' current state."""
        feats = self.features() if feats is None else feats
        src, dst, inl = self._arrays(feats)
        fin = np.all(np.isfinite(src), axis=1) & np.all(np.isfinite(dst), axis=1)
        try:
            t = fit_transform(self.kind, src[inl & fin], dst[inl & fin])
        except MatcherError as exc:
            return None, np.full(len(feats), np.nan), str(exc)
        res = np.full(len(feats), np.nan)
        if fin.any():
            res[fin] = residual_norms(t, src[fin], dst[fin]) / self.pixel_size
        return t, res, ""

    def refresh(self) -> None:
        """Recompute the transform and statistics from the layer and resync the arrows."""
        if self.ties is None:
            return
        feats = self.features()
        t, res, err = self.fit(feats)
        self.transform = t
        st = ReviewStats(n_points=len(feats), transform_kind=self.kind, fit_error=err)
        rows = []
        inl_res, dxs, dys = [], [], []
        for f, r in zip(feats, res):
            status = f["status"]
            dx, dy = _num(f["dx_m"]), _num(f["dy_m"])
            # The live residual under the current fit (equal to the stored one after our own edits, and
            # still right when the status was edited elsewhere, e.g. in the attribute table).
            live = float(r) if t is not None else _num(f["residual_px"])
            rows.append({"fid": f.id(), "id": f["id"], "status": status, "residual_px": live,
                         "disp_m": _num(f["disp_m"]), "score": _num(f["score"]), "quality": _num(f["quality"]),
                         "reason": f["flag_reason"] or ""})
            if status == INLIER:
                st.n_inliers += 1
                inl_res.append(r)
                dxs.append(dx)
                dys.append(dy)
        st.n_flagged = st.n_points - st.n_inliers
        if inl_res and t is not None:
            st.rmse_px = float(np.sqrt(np.nanmean(np.square(inl_res))))
        if dxs:
            st.shift_m = (float(np.nanmedian(dxs)), float(np.nanmedian(dys)))
        st.rows = rows
        self.stats = st
        if self.arrows is not None:
            self.arrows.triggerRepaint()
        self.changed.emit()

    # ------------------------------------------------------------------ edits
    def _begin(self, text: str) -> None:
        if not self.ties.isEditable():
            self.ties.startEditing()
        self.ties.beginEditCommand(text)

    def _write_residuals(self) -> None:
        feats = self.features()
        _t, res, _err = self.fit(feats)
        idx = self.ties.fields().indexOf("residual_px")
        for f, r in zip(feats, res):
            old = f["residual_px"]
            new = float(r) if math.isfinite(r) else None
            oldf = _num(old)
            if new is None and not math.isfinite(oldf):
                continue
            if new is not None and math.isfinite(oldf) and abs(new - oldf) < 1e-9:
                continue
            self.ties.changeAttributeValue(f.id(), idx, new, old)

    def set_status(self, fids: list[int], status: Optional[str] = None) -> int:
        """Set (or, with ``status=None``, toggle) the status of features ``fids``; returns how many changed."""
        if self.ties is None or not fids:
            return 0
        si = self.ties.fields().indexOf("status")
        ri = self.ties.fields().indexOf("flag_reason")
        self._begin("Change tie point status")
        n = 0
        for fid in fids:
            f = self.ties.getFeature(fid)
            if not f.isValid():
                continue
            old = f["status"]
            new = status or (FLAGGED if old == INLIER else INLIER)
            if new == old:
                continue
            self.ties.changeAttributeValue(fid, si, new, old)
            self.ties.changeAttributeValue(fid, ri, REVIEW_REASON if new == FLAGGED else "", f["flag_reason"])
            n += 1
        self._write_residuals()
        self.ties.endEditCommand()
        return n

    def delete_flagged(self) -> int:
        if self.ties is None:
            return 0
        return self.delete([f.id() for f in self.features() if f["status"] != INLIER], "flagged ")

    def delete(self, fids: list[int], what: str = "") -> int:
        """Delete tie points ``fids`` (and so their arrows) in one undoable edit; returns how many."""
        if self.ties is None:
            return 0
        fids = [fid for fid in fids if self.ties.getFeature(fid).isValid()]
        if not fids:
            return 0
        self._begin(f"Delete {len(fids)} {what}tie points")
        self.ties.deleteFeatures(fids)
        self._write_residuals()
        self.ties.endEditCommand()
        return len(fids)

    def undo(self) -> None:
        if self.ties is not None and self.ties.undoStack().canUndo():
            self.ties.undoStack().undo()

    def save(self) -> bool:
        if self.ties is None or not self.ties.isEditable():
            return True
        return self.ties.commitChanges()

    def has_edits(self) -> bool:
        return self.ties is not None and self.ties.isEditable() and self.ties.isModified()

    # ------------------------------------------------------------------ engine view
    def tieset(self) -> TieSet:
        """The current (edited) tie points as an engine TieSet, for exports."""
        pts = []
        for f in self.features():
            pts.append(TiePoint(
                id=int(f["id"]), opt_col=_num(f["opt_col"]), opt_row=_num(f["opt_row"]),
                opt_x=_num(f["opt_x"]), opt_y=_num(f["opt_y"]), sar_col=_num(f["sar_col"]),
                sar_row=_num(f["sar_row"]), sar_x=_num(f["sar_x"]), sar_y=_num(f["sar_y"]),
                score=_num(f["score"]), quality=_num(f["quality"]), goodness=_num(f["goodness"]),
                orn_prob=_num(f["orn_prob"]), cov=(_num(f["cov_rr"]), _num(f["cov_rc"]), _num(f["cov_cc"])),
                status=f["status"] or INLIER, flag_reason=f["flag_reason"] or "",
                residual_px=_num(f["residual_px"]),
            ))
        return TieSet(points=pts, crs_wkt=self.crs_wkt, pixel_size=self.pixel_size)

    # ------------------------------------------------------------------ saving
    def _before_commit(self) -> None:
        """Whatever edited the layer (the dock or QGIS's own tools), the saved residuals and SAR
        coordinates are those of the saved points under the refitted transform."""
        if self.ties is None or not self.ties.isEditable():
            return
        xi, yi = self.ties.fields().indexOf("sar_x"), self.ties.fields().indexOf("sar_y")
        for f in self.features():
            x, y = self._sar_xy(f)
            for idx, new, old in ((xi, x, _num(f["sar_x"])), (yi, y, _num(f["sar_y"]))):
                if idx >= 0 and math.isfinite(new) and not math.isclose(new, old, rel_tol=0, abs_tol=1e-9):
                    self.ties.changeAttributeValue(f.id(), idx, new, f.attribute(idx))
        self._write_residuals()

    def _mirror_gpkg_arrows(self) -> None:
        """After the tie points are saved, make the GeoPackage's ``displacements`` table match them."""
        if self.ties is None:
            return
        gpkg = self.ties.source().split("|")[0]
        table = QgsVectorLayer(f"{gpkg}|layername=displacements", "displacements", "ogr")
        if table.isValid():
            self._sync_arrows(self.features(), table)

    def _sync_arrows(self, feats: list[QgsFeature], a: QgsVectorLayer) -> None:
        prov = a.dataProvider()
        fidx = {n: a.fields().indexOf(n) for n in ("id", "status", "disp_m", "residual_px")}
        want = {int(f["id"]): f for f in feats}
        have = {int(g["id"]): g for g in prov.getFeatures()}
        drop = [g.id() for k, g in have.items() if k not in want]
        changes, geoms = {}, {}
        for k, g in have.items():
            f = want.get(k)
            if f is None:
                continue
            upd = {}
            if g["status"] != f["status"]:
                upd[fidx["status"]] = f["status"]
            r_new, r_old = _num(f["residual_px"]), _num(g["residual_px"])
            if not (math.isclose(r_new, r_old, abs_tol=1e-9) or (math.isnan(r_new) and math.isnan(r_old))):
                upd[fidx["residual_px"]] = None if math.isnan(r_new) else r_new
            if upd:
                changes[g.id()] = upd
            end = g.geometry().asPolyline()[-1] if not g.geometry().isEmpty() else None
            x, y = self._sar_xy(f)
            if end is not None and (abs(end.x() - x) > 1e-9 or abs(end.y() - y) > 1e-9):
                geoms[g.id()] = QgsGeometry.fromPolylineXY([QgsPointXY(_num(f["opt_x"]), _num(f["opt_y"])),
                                                            QgsPointXY(x, y)])
        add = []
        for k, f in want.items():
            if k in have:
                continue
            pts = [_num(f["opt_x"]), _num(f["opt_y"]), *self._sar_xy(f)]
            if not all(map(math.isfinite, pts)):
                continue
            g = QgsFeature(a.fields())
            g.setGeometry(QgsGeometry.fromPolylineXY([QgsPointXY(pts[0], pts[1]), QgsPointXY(pts[2], pts[3])]))
            g["id"], g["status"], g["disp_m"] = f["id"], f["status"], f["disp_m"]
            g["residual_px"] = f["residual_px"]
            add.append(g)
        if drop:
            prov.deleteFeatures(drop)
        if changes:
            prov.changeAttributeValues(changes)
        if geoms:
            prov.changeGeometryValues(geoms)
        if add:
            prov.addFeatures(add)


class TiePointModel(QAbstractTableModel):
    """Rows of the review table, read from a ReviewSession's latest refresh."""

    COLUMNS = (("id", "ID"), ("status", "Status"), ("residual_px", "Residual (px)"),
               ("disp_m", "Shift (m)"), ("quality", "Peak quality"), ("score", "Score"), ("reason", "Reason"))

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[dict] = []

    def set_rows(self, rows: list[dict]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section][1]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        key = self.COLUMNS[index.column()][0]
        v = row[key]
        if role == Qt.ItemDataRole.DisplayRole:
            if isinstance(v, float):
                return "" if math.isnan(v) else (f"{v:.2f}" if key != "score" else f"{v:.3f}")
            return str(v)
        if role == Qt.ItemDataRole.UserRole:  # sort key
            return v if not (isinstance(v, float) and math.isnan(v)) else float("inf")
        if role == Qt.ItemDataRole.ForegroundRole and key == "status":
            return QBrush(GREEN if v == INLIER else RED)
        if role == Qt.ItemDataRole.TextAlignmentRole and key not in ("status", "reason"):
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        if role == Qt.ItemDataRole.ToolTipRole and row["reason"]:
            return row["reason"]
        return None

    def fid(self, row: int) -> int:
        return self.rows[row]["fid"]
