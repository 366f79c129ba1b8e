"""The "SAR-Optical Matcher" dock: choose layers and options, run a match, review and use the result.

The dock is a thin adapter: it turns widget state into ``MatchParams``, runs the engine in a QgsTask,
shows the engine's result, and delegates editing to ``ReviewSession`` and exports to the engine's
writers. Two tabs keep it compact: *Match* (inputs and options) and *Review* (summary, tie-point
table, exports, corrected layer). Progress, stage text and Cancel stay visible below both.
"""
from __future__ import annotations

import html
import math
import os
from typing import Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import (
    QgsCollapsibleGroupBox,
    QgsDockWidget,
    QgsDoubleSpinBox,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsRasterBandComboBox,
    QgsScrollArea,
    QgsSpinBox,
)
from qgis.PyQt.QtCore import QSortFilterProxyModel, Qt
from qgis.PyQt.QtGui import QStandardItemModel
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QTableView,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..engine.errors import MatcherError
from ..engine.params import MatchParams
from .aoi import MODES as AOI_MODES
from .aoi import AoiDrawer, AoiError, compute_aoi
from .dependencies import deep_models, deep_unavailable_reason, model_set_items
from .export import export_gcps, gcp_vrt_name, points_name
from .layers import LayerError, guess_sar_optical, insert_above, load_tie_layers, pixel_size_m, raster_path
from .notice import Notice
from .review import ReviewSession, TiePointModel
from .settings import DockSettings
from .tasks import EngineTask, MatchTask, WarpTask

METHODS = (("structural", "Structural (oriented gradients)"), ("ncc", "Normalised cross-correlation"),
           ("mi", "Mutual information"), ("deep", "Deep (Hughes' three networks)"))
TRANSFORMS = (("shift", "Shift (translation only)"), ("affine", "Affine"), ("poly1", "Polynomial 1"),
              ("poly2", "Polynomial 2"), ("poly3", "Polynomial 3"), ("tps", "Thin plate spline"),
              ("projective", "Projective"))
NO_MODELS = "models not installed"
TITLE = "SAR-Optical Matcher"

_KEEP: set = set()
"""Tasks still running after their dock went away: referenced here until they finish, because a
QgsTask whose Python object is garbage-collected mid-run crashes QGIS."""


def _icon(name: str):
    return QgsApplication.getThemeIcon(name)


def _fmt(v: float, unit: str = "", digits: int = 2) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}{unit}"


class MatcherDock(QgsDockWidget):
    def __init__(self, iface, plugin_dir: str, parent=None) -> None:
        super().__init__(TITLE, parent)
        self.setObjectName("SarOpticalMatcherDock")
        self.iface = iface
        self.plugin_dir = plugin_dir
        self.canvas = iface.mapCanvas()
        self.settings = DockSettings.load()
        self.models = deep_models(plugin_dir)
        self.no_deep = deep_unavailable_reason(plugin_dir) or NO_MODELS
        self.task: Optional[MatchTask] = None
        self.warp_task: Optional[WarpTask] = None
        self.last_task: Optional[MatchTask] = None
        self.session: Optional[ReviewSession] = None
        self.corrected_layer_id: Optional[str] = None
        self.drawer = AoiDrawer(self.canvas, self)
        self._build()
        self._apply_settings()
        self.drawer.drawn.connect(lambda _r: self._update_aoi_label())
        self._set_busy(False)
        self._update_review()

    # ================================================================= construction
    def _build(self) -> None:
        body = QWidget()
        outer = QVBoxLayout(body)
        outer.setContentsMargins(4, 4, 4, 4)
        self.notice = Notice(body)
        outer.addWidget(self.notice)
        self.tabs = QTabWidget(body)
        self.tabs.addTab(self._scrolled(self._build_match_tab()), "Match")
        self.tabs.addTab(self._scrolled(self._build_review_tab()), "Review")
        outer.addWidget(self.tabs, 1)

        run = QHBoxLayout()
        self.match_button = QPushButton(_icon("/mActionStart.svg"), "Match layers")
        self.match_button.setToolTip("Find tie points between the SAR and the optical layer (runs in the background)")
        self.match_button.clicked.connect(self.run_match)
        self.cancel_button = QPushButton(_icon("/mTaskCancel.svg"), "Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        run.addWidget(self.match_button, 1)
        run.addWidget(self.cancel_button)
        outer.addLayout(run)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setTextVisible(True)
        self.stage = QLabel("Ready.")
        self.stage.setStyleSheet("color: palette(mid);")
        outer.addWidget(self.progress)
        outer.addWidget(self.stage)
        self.setWidget(body)

    @staticmethod
    def _scrolled(w: QWidget) -> QgsScrollArea:
        sa = QgsScrollArea()
        sa.setWidgetResizable(True)
        sa.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        sa.setFrameShape(QgsScrollArea.Shape.NoFrame)
        sa.setWidget(w)
        return sa

    def _build_match_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 4, 0, 0)

        g = QGroupBox("Layers")
        f = QFormLayout(g)
        self.sar_combo = QgsMapLayerComboBox()
        self.sar_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.sar_combo.setAllowEmptyLayer(True)
        self.sar_combo.setToolTip("The SAR image: its georeference is taken as the truth")
        self.sar_band = QgsRasterBandComboBox()
        self.opt_combo = QgsMapLayerComboBox()
        self.opt_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.opt_combo.setAllowEmptyLayer(True)
        self.opt_combo.setToolTip("The optical image whose georeference is corrected (it is never modified)")
        self.opt_band = QgsRasterBandComboBox()
        self.sar_combo.layerChanged.connect(self._sar_changed)
        self.opt_combo.layerChanged.connect(self._opt_changed)
        # Until the user picks a layer, the dock guesses the pair (SAR-like single band, 3+ band optical).
        self._roles_picked = False
        for combo in (self.sar_combo, self.opt_combo):
            combo.activated.connect(self._roles_were_picked)
        f.addRow("SAR (reference)", self.sar_combo)
        f.addRow("SAR band", self.sar_band)
        f.addRow("Optical (to correct)", self.opt_combo)
        f.addRow("Optical bands", self.opt_band)
        lay.addWidget(g)

        g = QGroupBox("Area of interest")
        v = QVBoxLayout(g)
        self.aoi_mode = QComboBox()
        for key, label in AOI_MODES:
            self.aoi_mode.addItem(label, key)
        self.aoi_mode.currentIndexChanged.connect(self._aoi_mode_changed)
        v.addWidget(self.aoi_mode)
        row = QHBoxLayout()
        self.aoi_layer = QgsMapLayerComboBox()
        self.aoi_layer.layerChanged.connect(lambda _l: self._update_aoi_label())
        self.aoi_selected = QCheckBox("Selected only")
        self.aoi_selected.setChecked(True)
        self.aoi_selected.setToolTip("Use only the selected polygons when some are selected")
        self.aoi_draw = QToolButton()
        self.aoi_draw.setIcon(_icon("/mActionRectangleExtent.svg"))
        self.aoi_draw.setText("Draw on map")
        self.aoi_draw.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.aoi_draw.clicked.connect(self.drawer.start)
        row.addWidget(self.aoi_layer, 1)
        row.addWidget(self.aoi_selected)
        row.addWidget(self.aoi_draw)
        v.addLayout(row)
        self.aoi_label = QLabel()
        self.aoi_label.setWordWrap(True)
        self.aoi_label.setStyleSheet("color: palette(mid);")
        v.addWidget(self.aoi_label)
        lay.addWidget(g)

        g = QGroupBox("Matching")
        f = QFormLayout(g)
        self.method = QComboBox()
        for key, label in METHODS:
            self.method.addItem(label, key)
        self._disable_item(self.method, self.method.findData("deep"), not self.models, self.no_deep)
        self.method.setToolTip("Similarity used to compare the optical template with the SAR search window")
        self.method.activated.connect(lambda _i: self._deep_dependencies_ready())
        self.transform = QComboBox()
        for key, label in TRANSFORMS:
            self.transform.addItem(label, key)
        self.transform.setToolTip("Model of the optical georeference error fitted to the tie points")
        self.max_offset = QgsDoubleSpinBox()
        self.max_offset.setRange(0, 100000)
        self.max_offset.setDecimals(1)
        self.max_offset.setSpecialValueText("Auto (±64 px)")
        self.max_offset.setClearValue(0)
        self.max_offset.setToolTip("Largest misregistration you expect; widens the search window (slower)")
        self.max_offset_unit = QComboBox()
        self.max_offset_unit.addItem("px", "px")
        self.max_offset_unit.addItem("m", "m")
        mo = QHBoxLayout()
        mo.addWidget(self.max_offset, 1)
        mo.addWidget(self.max_offset_unit)
        self.n_target = QgsSpinBox()
        self.n_target.setRange(10, 10000)
        self.n_target.setSingleStep(50)
        self.n_target.setClearValue(300)
        self.n_target.setToolTip("How many candidate locations to match (spread over the area)")
        f.addRow("Method", self.method)
        f.addRow("Transform", self.transform)
        f.addRow("Max offset", mo)
        f.addRow("Target tie points", self.n_target)
        lay.addWidget(g)

        self.advanced = QgsCollapsibleGroupBox("Advanced")
        self.advanced.setCollapsed(True)
        f = QFormLayout(self.advanced)
        self.template_size = QgsSpinBox()
        self.template_size.setRange(16, 1024)
        self.template_size.setSingleStep(16)
        self.template_size.setSuffix(" px")
        self.search_size = QgsSpinBox()
        self.search_size.setRange(32, 4096)
        self.search_size.setSingleStep(32)
        self.search_size.setSuffix(" px")
        self.min_quality = QgsDoubleSpinBox()
        self.min_quality.setRange(1.0, 10.0)
        self.min_quality.setDecimals(2)
        self.min_quality.setSingleStep(0.05)
        self.min_quality.setToolTip("Matches whose peak is less distinct than this (best/second best) are flagged")
        self.ransac = QgsDoubleSpinBox()
        self.ransac.setRange(0.1, 100.0)
        self.ransac.setDecimals(1)
        self.ransac.setSuffix(" px")
        self.ransac.setToolTip("Tie points farther than this from the fitted transform are flagged")
        f.addRow("Template size", self.template_size)
        f.addRow("Search window", self.search_size)
        f.addRow("Min. peak quality", self.min_quality)
        f.addRow("Outlier threshold", self.ransac)
        lay.addWidget(self.advanced)

        self.deep_group = QgsCollapsibleGroupBox("Deep matching")
        self.deep_group.setCollapsed(True)
        f = QFormLayout(self.deep_group)
        self.orn_threshold = QgsDoubleSpinBox()
        self.orn_threshold.setRange(0.0, 1.0)
        self.orn_threshold.setSingleStep(0.05)
        self.goodness = QComboBox()
        self.goodness.addItem("Min (precision)", "min")
        self.goodness.addItem("Max (recall)", "max")
        self.device = QComboBox()
        self.device.addItem("Automatic (GPU if usable)", "auto")
        self.device.addItem("CPU", "cpu")
        self.device.addItem("GPU (CUDA)", "cuda")
        self.model_set = QComboBox()
        self.model_set.setToolTip("Which trained networks to use (models/MODEL_CARD.md describes each set)")
        for name, label in model_set_items():
            self.model_set.addItem(label, name)
        f.addRow("ORN threshold", self.orn_threshold)
        f.addRow("Goodness fusion", self.goodness)
        f.addRow("Models", self.model_set)
        f.addRow("Device", self.device)
        for wdg in (self.orn_threshold, self.goodness, self.model_set, self.device):
            wdg.setEnabled(bool(self.models))
            if not self.models:
                wdg.setToolTip(self.no_deep)
        if not self.models:
            self.deep_group.setTitle("Deep matching (unavailable)")   # the reason is in the tooltip: fits 300 px
            self.deep_group.setToolTip(self.no_deep)
        lay.addWidget(self.deep_group)

        g = QGroupBox("Output")
        f = QFormLayout(g)
        self.out_dir = QgsFileWidget()
        self.out_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.out_dir.setDialogTitle("Output folder for tie points and reports")
        self.out_dir.setToolTip("Each run writes into a new sub-folder here (inputs are never modified)")
        f.addRow("Folder", self.out_dir)
        lay.addWidget(g)
        lay.addStretch(1)
        self._fit_narrow(w)
        self.max_offset_unit.setMinimumContentsLength(2)   # "px"/"m": the room goes to the value
        self._layers_form = self.sar_combo.parentWidget().layout()
        self.guess_layers()
        QgsProject.instance().layersAdded.connect(self._layers_changed)
        QgsProject.instance().layersRemoved.connect(self._layers_changed)
        self._sar_changed(self.sar_combo.currentLayer())
        self._opt_changed(self.opt_combo.currentLayer())
        return w

    def _build_review_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 4, 0, 0)

        g = QGroupBox("Result")
        grid = QGridLayout(g)
        self.summary: dict[str, QLabel] = {}
        items = (("candidates", "Candidates"), ("matched", "Matched"), ("inliers", "Inliers"),
                 ("flagged", "Flagged"), ("rmse", "Residual RMSE"), ("shift", "Recovered shift"),
                 ("transform", "Transform"), ("time", "Time"))
        for i, (key, label) in enumerate(items):
            lab = QLabel("–")
            lab.setWordWrap(True)
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.summary[key] = lab
            grid.addWidget(QLabel(label + ":"), i, 0)
            grid.addWidget(lab, i, 1)
        grid.setColumnStretch(1, 1)
        lay.addWidget(g)

        g = QGroupBox("Tie points")
        v = QVBoxLayout(g)
        self.model = TiePointModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(2, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(160)
        self.table.selectionModel().selectionChanged.connect(self._table_selection)
        self.table.doubleClicked.connect(self._zoom_to_row)
        v.addWidget(self.table)
        row = QHBoxLayout()
        self.toggle_button = self._tool("/mActionToggleEditing.svg", "Toggle status",
                                        "Switch the selected tie points between inlier and flagged",
                                        self.toggle_selected)
        self.delete_button = self._tool("/mActionDeleteSelectedFeatures.svg", "Flagged",
                                        "Delete every flagged tie point (undoable)", self.delete_flagged)
        self.delete_selected_button = self._tool("/mActionDeleteSelected.svg", "Selected",
                                                 "Delete the tie points selected in the table or on the map "
                                                 "(undoable; nothing is written until you save)",
                                                 self.delete_selected)
        self.undo_button = self._tool("/mActionUndo.svg", "", "Undo the last edit", self.undo)
        self.save_button = self._tool("/mActionSaveEdits.svg", "", "Save the edits to the tie-point GeoPackage",
                                      self.save_edits)
        # Two short rows rather than one long one: the dock must fit its default width (~300 px).
        row.addWidget(self.toggle_button)
        row.addStretch(1)
        row.addWidget(self.undo_button)
        row.addWidget(self.save_button)
        v.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Delete:"))
        row.addWidget(self.delete_selected_button)
        row.addWidget(self.delete_button)
        row.addStretch(1)
        v.addLayout(row)
        self.review_label = QLabel()
        self.review_label.setWordWrap(True)
        v.addWidget(self.review_label)
        lay.addWidget(g)

        g = QGroupBox("Use the result")
        grid = QGridLayout(g)
        self.export_button = self._tool("/mActionFileSaveAs.svg", "Export GCPs…",
                                        "Write the tie points as a .points file for the QGIS Georeferencer",
                                        self.export_gcps)
        self.corrected_button = self._tool("/mActionAddRasterLayer.svg", "Corrected layer…",
                                           "Warp the optical raster with the reviewed transform into a new GeoTIFF "
                                           "added above the original", self.create_corrected)
        for b in (self.export_button, self.corrected_button):
            b.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.vrt_check = QCheckBox("Also write a GCP VRT")
        self.vrt_check.setToolTip("A .vrt next to the .points file: the optical raster with GCPs attached, "
                                  "for gdalwarp or a quick on-the-fly check in QGIS")
        # One column: the export with its option, then the corrected layer with its comparisons.
        grid.addWidget(self.export_button, 0, 0, 1, 2)
        grid.addWidget(self.vrt_check, 1, 0, 1, 2)
        grid.addWidget(self.corrected_button, 4, 0, 1, 2)
        row = QHBoxLayout()
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(100)
        self.opacity.setToolTip("Opacity of the corrected layer over the original: slide to compare before/after")
        self.opacity.valueChanged.connect(self._set_opacity)
        self.opacity.setEnabled(False)
        row.addWidget(QLabel("Original"))
        row.addWidget(self.opacity, 1)
        row.addWidget(QLabel("Corrected"))
        grid.addLayout(row, 5, 0, 1, 2)
        self.flip_button = QToolButton()
        self.flip_button.setCheckable(True)
        self.flip_button.setIcon(_icon("/mActionShowAllLayers.svg"))
        self.flip_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.flip_button.setText("Before / after")
        self.flip_button.setToolTip("Flip the map between the original (before) and the corrected (after) optical "
                                    "layer over the SAR; the other one is hidden")
        self.flip_button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.flip_button.toggled.connect(lambda on: self.flip_before_after(not on))
        self.flip_button.setEnabled(False)
        grid.addWidget(self.flip_button, 6, 0, 1, 2)
        lay.addWidget(g)
        lay.addStretch(1)
        self._fit_narrow(w)
        return w

    @staticmethod
    def _fit_narrow(w: QWidget) -> None:
        """Let the tab fit the dock's default width (~300 px): combos shrink to a few characters
        (the full text is in the popup), form rows put a long field under its label."""
        for combo in w.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        for form in w.findChildren(QFormLayout):
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

    def _tool(self, icon: str, text: str, tip: str, slot) -> QToolButton:
        b = QToolButton()
        b.setIcon(_icon(icon))
        if text:
            b.setText(text)
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        b.setToolTip(tip)
        b.clicked.connect(slot)
        return b

    @staticmethod
    def _disable_item(combo: QComboBox, index: int, disabled: bool, tooltip: str = NO_MODELS) -> None:
        model = combo.model()
        if index < 0 or not isinstance(model, QStandardItemModel):
            return
        item = model.item(index)
        item.setEnabled(not disabled)
        item.setToolTip(tooltip if disabled else "")

    # ================================================================= settings
    def _apply_settings(self) -> None:
        s = self.settings
        self._select(self.method, s.method if (s.method != "deep" or self.models) else "structural")
        self._select(self.transform, s.transform)
        self.max_offset.setValue(s.max_offset)
        self._select(self.max_offset_unit, s.max_offset_unit)
        self.n_target.setValue(s.n_target)
        self.template_size.setValue(s.template_size)
        self.search_size.setValue(s.search_size)
        self.min_quality.setValue(s.min_quality)
        self.ransac.setValue(s.ransac_threshold_px)
        self._select(self.aoi_mode, s.aoi_mode)
        self.out_dir.setFilePath(s.output_folder)
        self.vrt_check.setChecked(s.write_vrt)
        self.orn_threshold.setValue(s.orn_threshold)
        self._select(self.goodness, s.goodness_fusion)
        self._select(self.device, s.device)
        self._select(self.model_set, s.model_set)
        self._aoi_mode_changed()

    def collect_settings(self) -> DockSettings:
        return DockSettings(
            method=self.method.currentData(), transform=self.transform.currentData(),
            max_offset=self.max_offset.value(), max_offset_unit=self.max_offset_unit.currentData(),
            n_target=self.n_target.value(), template_size=self.template_size.value(),
            search_size=self.search_size.value(), min_quality=self.min_quality.value(),
            ransac_threshold_px=self.ransac.value(), aoi_mode=self.aoi_mode.currentData(),
            output_folder=self.out_dir.filePath(), write_vrt=self.vrt_check.isChecked(),
            orn_threshold=self.orn_threshold.value(), goodness_fusion=self.goodness.currentData(),
            device=self.device.currentData(), model_set=self.model_set.currentData() or "",
        )

    def save_settings(self) -> None:
        self.settings = self.collect_settings()
        self.settings.save()

    @staticmethod
    def _select(combo: QComboBox, value) -> None:
        i = combo.findData(value)
        if i >= 0:
            combo.setCurrentIndex(i)

    # ================================================================= inputs
    def _sar_changed(self, layer) -> None:
        self.sar_band.setLayer(layer)
        self._show_row(self.sar_band, isinstance(layer, QgsRasterLayer) and layer.bandCount() > 1)

    def _opt_changed(self, layer) -> None:
        """The band choice only when it applies: 'Bands 1–3 (or 1–2) as grey' for a multi-band optical,
        no band row at all for a single-band one."""
        n = layer.bandCount() if isinstance(layer, QgsRasterLayer) else 0
        self.opt_band.setShowNotSetOption(n > 1, f"Bands 1–{min(n, 3)} as grey" if n > 1 else "")
        self.opt_band.setLayer(layer)
        self.opt_band.setBand(-1 if n > 1 else 1)         # a new optical starts from its natural rendering
        self._show_row(self.opt_band, n > 1)

    def _show_row(self, field: QWidget, visible: bool) -> None:
        label = self._layers_form.labelForField(field) if hasattr(self, "_layers_form") else None
        for wdg in (field, label):
            if wdg is not None:
                wdg.setVisible(visible)

    def _roles_were_picked(self, *_a) -> None:
        self._roles_picked = True

    def _layers_changed(self, _layers) -> None:
        if not self._roles_picked:
            self.guess_layers()

    def guess_layers(self) -> None:
        """Set the SAR and optical combos to the likely pair (``layers.guess_sar_optical``)."""
        project = QgsProject.instance()
        order = project.layerTreeRoot().layerOrder()
        order += [lyr for lyr in project.mapLayers().values() if lyr not in order]  # not in the tree yet
        sar, opt = guess_sar_optical(order)
        self.sar_combo.setLayer(sar)
        self.opt_combo.setLayer(opt)

    def _aoi_mode_changed(self, *_a) -> None:
        mode = self.aoi_mode.currentData()
        self.aoi_layer.setVisible(mode in ("layer", "polygons"))
        self.aoi_selected.setVisible(mode == "polygons")
        self.aoi_draw.setVisible(mode == "drawn")
        if mode == "polygons":
            self.aoi_layer.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        elif mode == "layer":
            self.aoi_layer.setFilters(QgsMapLayerProxyModel.Filter.All)
        self.drawer.show(mode == "drawn")
        self._update_aoi_label()

    def _update_aoi_label(self) -> None:
        mode = self.aoi_mode.currentData()
        if mode == "overlap":
            text = "The whole area both layers cover."
        elif mode == "canvas":
            text = "The map extent at the moment you click Match layers."
        else:
            try:
                a = self.current_aoi()
                x0, y0, x1, y1 = a.rect
                text = f"{x0:.6g}, {y0:.6g} – {x1:.6g}, {y1:.6g} ({a.crs if len(a.crs) < 40 else 'layer CRS'})"
            except AoiError as exc:
                text = str(exc)
        self.aoi_label.setText(text)

    def current_aoi(self):
        return compute_aoi(self.aoi_mode.currentData(), canvas=self.canvas, layer=self.aoi_layer.currentLayer(),
                           selected_only=self.aoi_selected.isChecked(), drawn=self.drawer.value())

    def current_params(self) -> MatchParams:
        """MatchParams from the widgets; raises LayerError/AoiError/MatcherError with a user message."""
        method = self.method.currentData()
        if method == "deep" and not self.models:
            raise MatcherError(f"The deep method is not available ({self.no_deep}); choose another method.")
        if method == "deep" and not self._deep_dependencies_ready():
            raise MatcherError("Deep matching needs onnxruntime: install it in the dialog that opened "
                               "(Raster ▸ SAR-Optical Matcher ▸ Install dependencies…), then click Match layers again.")
        max_px = None
        if self.max_offset.value() > 0:
            v = self.max_offset.value()
            if self.max_offset_unit.currentData() == "m":
                sar = self.sar_combo.currentLayer()
                if not isinstance(sar, QgsRasterLayer):
                    raise LayerError("Choose the SAR layer first: a maximum offset in metres needs its pixel size.")
                v = v / pixel_size_m(sar)
            max_px = float(v)
        aoi = self.current_aoi()
        opt_band = self.opt_band.currentBand()
        p = MatchParams(
            method=method, transform=self.transform.currentData(), max_offset_px=max_px,
            n_target=self.n_target.value(), template_size=self.template_size.value(),
            search_size=self.search_size.value(), min_quality=self.min_quality.value(),
            ransac_threshold_px=self.ransac.value(), aoi=aoi.rect, aoi_crs=aoi.crs,
            sar_band=max(1, self.sar_band.currentBand()), opt_bands=[opt_band] if opt_band > 0 else None,
            orn_threshold=self.orn_threshold.value(), goodness_fusion=self.goodness.currentData() or "min",
            device=self.device.currentData() or "auto", model_size=self.model_set.currentData() or None,
        )
        p.validate()
        return p

    def _deep_dependencies_ready(self) -> bool:
        """True when Deep can run; otherwise opens the dependency manager (plugin/deps_dialog.py)."""
        if self.method.currentData() != "deep" or not self.models:
            return True
        from .deps_dialog import ensure

        return ensure("deep", self)

    # ================================================================= running
    @property
    def busy(self) -> bool:
        return self.task is not None or self.warp_task is not None

    def _set_busy(self, busy: bool) -> None:
        self.match_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress.setValue(0)

    def message(self, text: str, level=Qgis.MessageLevel.Info, title: str = TITLE, duration: int = 8,
                dock: bool = True) -> None:
        """Show ``text`` in QGIS's message bar and (wrapped, in full) at the top of the dock."""
        if dock:
            self.notice.show_message(text, level)
        keep = level == Qgis.MessageLevel.Critical        # errors stay until dismissed
        self.iface.messageBar().pushMessage(title, text, level, 0 if keep else duration)

    def clear_errors(self) -> None:
        """Take down this dock's error banners (in the dock and QGIS's message bar, where errors stay
        until dismissed): a new run must not stand under the previous one's error."""
        self.notice.clear()
        bar = self.iface.messageBar()
        for item in list(bar.items()) if hasattr(bar, "items") else []:
            if item.level() == Qgis.MessageLevel.Critical and item.title() == TITLE:
                bar.popWidget(item)

    def run_match(self) -> Optional[MatchTask]:
        """Start a match in the background; returns the task, or None (with a message) if it cannot start."""
        if self.busy:
            self.message("A run is already in progress: wait for it to finish or cancel it.", Qgis.MessageLevel.Warning)
            return None
        self.save_settings()
        try:
            sar = raster_path(self.sar_combo.currentLayer(), "SAR")
            opt = raster_path(self.opt_combo.currentLayer(), "optical")
            if self.sar_combo.currentLayer() is self.opt_combo.currentLayer():
                raise LayerError("Choose two different layers: the SAR and the optical layer are the same.")
            params = self.current_params()
            out = self.out_dir.filePath().strip()
            if not out:
                raise LayerError("Choose an output folder.")
        except (LayerError, AoiError, MatcherError) as exc:
            self.message(str(exc), Qgis.MessageLevel.Critical)
            return None
        self.clear_errors()
        task = MatchTask(sar, opt, params, out, on_done=self._match_done)
        self.task = task
        self._task_layers = (self.sar_combo.currentLayer().id(), self.opt_combo.currentLayer().id())
        self.stage.setText("Starting…")
        self._launch(task)
        return task

    def _launch(self, task: EngineTask) -> None:
        """Show ``task``'s progress and stage in the dock and hand it to QGIS's task manager."""
        task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        task.stageChanged.connect(self.stage.setText)
        self._set_busy(True)
        QgsApplication.taskManager().addTask(task)

    def _report_failure(self, task: EngineTask) -> bool:
        """Show why ``task`` failed or was cancelled; False when it succeeded."""
        if not task.error:
            return False
        self.stage.setText("Cancelled." if task.was_cancelled else "Failed.")
        self.message(task.error, Qgis.MessageLevel.Info if task.was_cancelled else Qgis.MessageLevel.Critical)
        return True

    def cancel(self) -> None:
        for t in (self.task, self.warp_task):
            if t is not None:
                t.cancel()
                self.stage.setText("Cancelling…")

    def _match_done(self, task: MatchTask) -> None:
        self.task = None
        self._set_busy(False)
        if self._report_failure(task):
            return
        self.last_task = task
        self.clear_errors()
        try:
            self._show_result(task)
        except (LayerError, MatcherError) as exc:
            self.message(str(exc), Qgis.MessageLevel.Critical)
            return
        st = task.result.stats
        self.stage.setText(f"Done in {task.elapsed:.1f} s.")
        text = (f"{st.n_inliers} inliers, {st.n_flagged} flagged; residual RMSE {_fmt(st.rmse_px, ' px')}; "
                f"shift {_fmt(math.hypot(*st.shift_m), ' m', 1)}.")
        warns = task.result.warnings
        # A run that worked but whose result may be wrong (engine.verdict) must not look green: the dock
        # shows every warning in full, in the warning style, and the message bar says it too.
        self.message(text + (" The result may be wrong: see the warnings." if warns else ""),
                     Qgis.MessageLevel.Warning if warns else Qgis.MessageLevel.Success, dock=False)
        self.progress.setValue(100)
        if warns:
            plural = "s" if len(warns) > 1 else ""
            self.stage.setText(f"Done in {task.elapsed:.1f} s, with {len(warns)} warning{plural}.")
            self.notice.show_message("<br>".join(html.escape(w) for w in warns), Qgis.MessageLevel.Warning)
        for w in warns:
            self.iface.messageBar().pushMessage(TITLE, w, Qgis.MessageLevel.Warning, 10)

    def _show_result(self, task: MatchTask) -> None:
        res = task.result
        if self.session is not None:
            self.session.changed.disconnect(self._update_review)
        opt_layer = QgsProject.instance().mapLayer(self._task_layers[1])
        title = opt_layer.name() if opt_layer is not None else os.path.basename(task.opt_path)
        ties, arrows, _group = load_tie_layers(task.paths.gpkg, title)
        self.session = ReviewSession(ties, arrows, res.params.transform, res.tieset.pixel_size, res.tieset.crs_wkt,
                                     task.opt_path, task.sar_path, self._task_layers[1], task.run_dir, parent=self)
        self.session.changed.connect(self._update_review)
        ties.selectionChanged.connect(self._update_selection_buttons)
        st = res.stats
        self.summary["candidates"].setText(str(st.n_candidates))
        self.summary["matched"].setText(str(st.n_matched))
        self.summary["time"].setText(f"{task.elapsed:.1f} s")
        self._update_review()
        self.tabs.setCurrentIndex(1)

    # ================================================================= review
    def _update_review(self) -> None:
        s = self.session
        has = s is not None and s.alive()
        for b in (self.toggle_button, self.delete_button, self.undo_button, self.save_button, self.export_button,
                  self.corrected_button):
            b.setEnabled(has)
        self._update_selection_buttons()
        if not has:
            self.model.set_rows([])
            self.review_label.setText("Run a match to review its tie points here.")
            return
        st = s.stats
        self.model.set_rows(st.rows)
        self.summary["inliers"].setText(str(st.n_inliers))
        self.summary["flagged"].setText(str(st.n_flagged))
        self.summary["rmse"].setText(_fmt(st.rmse_px, " px"))
        self.summary["transform"].setText(dict(TRANSFORMS).get(st.transform_kind, st.transform_kind))
        dx, dy = st.shift_m                               # median inlier displacement, as the engine reports it
        self.summary["shift"].setText(
            f"{_fmt(math.hypot(dx, dy), ' m', 1)} = {_fmt(math.hypot(dx, dy) / s.pixel_size, ' px', 1)} "
            f"(E {_fmt(dx, '', 1)}, N {_fmt(dy, ' m', 1)})")
        self.delete_button.setEnabled(st.n_flagged > 0)
        self.undo_button.setEnabled(s.ties.undoStack().canUndo())
        self.save_button.setEnabled(s.has_edits())
        self.corrected_button.setEnabled(s.transform is not None and not self.busy)
        if st.fit_error:
            self.review_label.setText(f"<span style='color:#d7191c'>{html.escape(st.fit_error)}</span>")
        else:
            edited = " (unsaved edits)" if s.has_edits() else ""
            self.review_label.setText(f"{st.n_points} tie points{edited}. Residuals are recomputed after every edit.")

    def _update_selection_buttons(self, *_a) -> None:
        s = self.session
        self.delete_selected_button.setEnabled(s is not None and s.alive() and s.ties.selectedFeatureCount() > 0)

    def _selected_fids(self) -> list[int]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return [self.model.fid(r) for r in sorted(rows)]

    def _table_selection(self, *_a) -> None:
        if self.session is not None and self.session.alive():
            self.session.ties.selectByIds(self._selected_fids())

    def _zoom_to_row(self, index) -> None:
        if self.session is None or not self.session.alive():
            return
        fid = self.model.fid(self.proxy.mapToSource(index).row())
        self.canvas.panToFeatureIds(self.session.ties, [fid])
        self.canvas.flashFeatureIds(self.session.ties, [fid])

    def toggle_selected(self, fids: Optional[list[int]] = None) -> int:
        if self.session is None:
            return 0
        fids = fids if isinstance(fids, list) else self._selected_fids()
        if not fids:
            self.message("Select one or more tie points in the table first.", Qgis.MessageLevel.Info)
            return 0
        return self.session.set_status(fids)

    def delete_flagged(self) -> int:
        return self.session.delete_flagged() if self.session is not None else 0

    def delete_selected(self) -> int:
        """Delete the tie points selected in the table or on the map (the table selects on the layer)."""
        s = self.session
        if s is None or not s.alive():
            return 0
        fids = sorted(s.ties.selectedFeatureIds())
        if not fids:
            self.message("Select one or more tie points in the table or on the map first.", Qgis.MessageLevel.Info)
            return 0
        return s.delete(fids, "selected ")

    def undo(self) -> None:
        if self.session is not None:
            self.session.undo()

    def save_edits(self) -> None:
        if self.session is not None and not self.session.save():
            self.message("The edits could not be saved: " + "; ".join(self.session.ties.commitErrors()),
                         Qgis.MessageLevel.Critical)

    # ================================================================= exports
    def export_gcps(self, path: Optional[str] = None, vrt: Optional[bool] = None) -> Optional[str]:
        s = self.session
        if s is None or not s.alive():
            return None
        if not isinstance(path, str):
            default = os.path.join(s.run_dir, points_name(s.opt_path))
            path, _f = QFileDialog.getSaveFileName(self, "Export GCPs for the Georeferencer", default,
                                                   "GCP points (*.points)")
            if not path:
                return None
        if not path.endswith(".points"):
            path += ".points"
        want_vrt = self.vrt_check.isChecked() if vrt is None else vrt
        vrt_path = gcp_vrt_name(path, s.opt_path) if want_vrt else None
        try:
            n, vrt_written = export_gcps(s.tieset(), s.opt_path, path, vrt_path)
        except MatcherError as exc:
            self.message(str(exc), Qgis.MessageLevel.Critical)
            return None
        extra = f" and {os.path.basename(vrt_written)}" if vrt_written else ""
        self.message(f"Wrote {n} GCPs to {os.path.basename(path)}{extra}.", Qgis.MessageLevel.Success)
        return path

    def create_corrected(self, path: Optional[str] = None) -> Optional[WarpTask]:
        s = self.session
        if s is None or not s.alive():
            return None
        if self.busy:
            self.message("A run is already in progress: wait for it to finish or cancel it.", Qgis.MessageLevel.Warning)
            return None
        if s.transform is None:
            self.message(s.stats.fit_error or "No transform to apply.", Qgis.MessageLevel.Critical)
            return None
        if not isinstance(path, str):
            stem = os.path.splitext(os.path.basename(s.opt_path))[0]
            default = os.path.join(s.run_dir, f"{stem}_corrected.tif")
            path, _f = QFileDialog.getSaveFileName(self, "Corrected optical GeoTIFF", default, "GeoTIFF (*.tif)")
            if not path:
                return None
        if not path.lower().endswith((".tif", ".tiff")):
            path += ".tif"
        task = WarpTask(s.opt_path, path, s.transform, s.crs_wkt, on_done=self._warp_done)
        self.warp_task = task
        self.corrected_button.setEnabled(False)
        self._launch(task)
        return task

    def _warp_done(self, task: WarpTask) -> None:
        self.warp_task = None
        self._set_busy(False)
        self._update_review()
        if self._report_failure(task):
            return
        original = QgsProject.instance().mapLayer(self.session.opt_layer_id) if self.session else None
        name = f"{original.name() if original else os.path.basename(task.src_path)} (corrected)"
        layer = QgsRasterLayer(task.dst_path, name)
        if not layer.isValid():
            self.message(f"QGIS cannot open the corrected raster {task.dst_path}.", Qgis.MessageLevel.Critical)
            return
        if isinstance(original, QgsRasterLayer) and original.bandCount() == layer.bandCount():
            layer.setRenderer(original.renderer().clone())
        layer.renderer().setOpacity(self.opacity.value() / 100.0)
        insert_above(layer, original)
        self.corrected_layer_id = layer.id()
        self.opacity.setEnabled(True)
        self.flip_button.setEnabled(True)
        self.stage.setText(f"Corrected layer written in {task.elapsed:.1f} s.")
        self.progress.setValue(100)
        self.message(f"Added '{name}' above the original; use the slider or Before/after to compare.",
                     Qgis.MessageLevel.Success)
        note = self.crs_note(layer, original)
        if note:
            self.notice.show_message(html.escape(note), Qgis.MessageLevel.Info)
            self.iface.messageBar().pushMessage(TITLE, note, Qgis.MessageLevel.Info, 10)

    @staticmethod
    def crs_note(corrected: QgsRasterLayer, original) -> str:
        """A note (not a warning) when the corrected raster is in another CRS than the optical layer."""
        if not isinstance(original, QgsRasterLayer) or corrected.crs() == original.crs():
            return ""
        return (f"The corrected raster is in {corrected.crs().authid() or corrected.crs().description()} (the SAR's "
                f"CRS), not in the optical's {original.crs().authid() or original.crs().description()}: it was "
                "reprojected, not only moved.")

    def flip_before_after(self, after: Optional[bool] = None) -> None:
        """Show either the corrected or the original optical layer over the SAR (the other is hidden)."""
        corrected = self.corrected_layer()
        original = QgsProject.instance().mapLayer(self.session.opt_layer_id) if self.session else None
        if after is None:
            after = not self.flip_button.isChecked()
        root = QgsProject.instance().layerTreeRoot()
        for lyr, show in ((corrected, after), (original, not after)):
            node = root.findLayer(lyr.id()) if lyr is not None else None
            if node is not None:
                node.setItemVisibilityChecked(show)
        self.flip_button.setText("Showing after: click for before" if after else "Showing before: click for after")

    def corrected_layer(self) -> Optional[QgsRasterLayer]:
        return QgsProject.instance().mapLayer(self.corrected_layer_id) if self.corrected_layer_id else None

    def _set_opacity(self, value: int) -> None:
        layer = self.corrected_layer()
        if layer is not None and layer.renderer() is not None:
            layer.renderer().setOpacity(value / 100.0)
            layer.triggerRepaint()

    # ================================================================= teardown
    def shutdown(self) -> None:
        """Called by the plugin's unload: stop tasks safely, remove canvas items, keep settings."""
        self.save_settings()
        for t in (self.task, self.warp_task):
            if t is not None:
                t.on_done = None
                _KEEP.add(t)
                t.taskCompleted.connect(lambda t=t: _KEEP.discard(t))
                t.taskTerminated.connect(lambda t=t: _KEEP.discard(t))
                t.cancel()
        self.task = self.warp_task = None
        self.drawer.cleanup()
        for sig in (QgsProject.instance().layersAdded, QgsProject.instance().layersRemoved):
            try:
                sig.disconnect(self._layers_changed)
            except (TypeError, RuntimeError):
                pass
