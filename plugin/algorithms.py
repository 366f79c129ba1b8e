"""Processing algorithms: "Match SAR and optical rasters", "Warp raster with tie points" and "Batch match
(manifest)".

Like the dock they only translate parameters: the engine does the work, its progress goes to the
feedback object and its cancel token polls ``feedback.isCanceled``. Engine errors become
``QgsProcessingException`` with the engine's message, which Processing shows in its log.
"""
from __future__ import annotations

import math

import numpy as np
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorLayer,
)

from ..engine.errors import MatcherError
from ..engine.params import METHODS, TRANSFORMS, MatchParams
from ..engine.progress import CancelToken
from .aoi import crs_string
from .layers import LayerError, raster_path

RESAMPLINGS = ("nearest", "bilinear", "cubic", "lanczos")
GROUP_HELP = ("The SAR raster's georeference is taken as the truth; the optical raster is never modified.")


def _progress(feedback, start: float = 0.0, span: float = 1.0):
    def cb(fraction: float, stage: str) -> None:
        feedback.setProgress(100.0 * (start + span * fraction))
        if stage != getattr(cb, "last", None):
            cb.last = stage
            feedback.setProgressText(stage)
    return cb


def _token(feedback) -> CancelToken:
    return CancelToken(is_cancelled=feedback.isCanceled)


def _path(layer, role: str) -> str:
    try:
        return raster_path(layer, role)
    except LayerError as exc:
        raise QgsProcessingException(str(exc)) from exc


def _require(feature: str) -> None:
    """Refuse, naming the menu entry that installs them, when the feature's optional packages are missing."""
    from . import deps

    if deps.missing(feature):
        raise QgsProcessingException(deps.describe_missing(feature))


class _Base(QgsProcessingAlgorithm):
    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def createInstance(self):  # noqa: N802
        return type(self)()


class MatchAlgorithm(_Base):
    SAR, SAR_BAND, OPTICAL, OPTICAL_BANDS = "SAR", "SAR_BAND", "OPTICAL", "OPTICAL_BANDS"
    METHOD, TRANSFORM, MAX_OFFSET, N_TARGET, EXTENT = "METHOD", "TRANSFORM", "MAX_OFFSET", "N_TARGET", "EXTENT"
    TEMPLATE_SIZE, SEARCH_SIZE = "TEMPLATE_SIZE", "SEARCH_SIZE"
    OUTPUT_FOLDER, CORRECTED = "OUTPUT_FOLDER", "CORRECTED"

    def name(self) -> str:
        return "match"

    def displayName(self) -> str:  # noqa: N802
        return "Match SAR and optical rasters"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Finds tie points between a SAR raster and an optical raster of the same place, flags unreliable "
                "ones and fits the transform that corrects the optical georeference. Writes tie_points.gpkg, a "
                ".points file for the Georeferencer and summary.json into the output folder, and optionally the "
                "corrected optical GeoTIFF. " + GROUP_HELP)

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        d = MatchParams()
        self.addParameter(QgsProcessingParameterRasterLayer(self.SAR, "SAR raster (reference)"))
        self.addParameter(QgsProcessingParameterBand(self.SAR_BAND, "SAR band", 1, self.SAR, optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.OPTICAL, "Optical raster (to correct)"))
        self.addParameter(QgsProcessingParameterBand(self.OPTICAL_BANDS, "Optical bands (default: 1–3 as grey)",
                                                     None, self.OPTICAL, optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", list(METHODS),
                                                     defaultValue=METHODS.index(d.method)))
        self.addParameter(QgsProcessingParameterEnum(self.TRANSFORM, "Transform", list(TRANSFORMS),
                                                     defaultValue=TRANSFORMS.index(d.transform)))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_OFFSET, "Maximum offset in SAR pixels (0: automatic, about ±64 px)",
            QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.N_TARGET, "Target number of tie points", QgsProcessingParameterNumber.Type.Integer, d.n_target,
            minValue=1))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area of interest (default: full overlap)",
                                                       optional=True))
        for name, label, val in ((self.TEMPLATE_SIZE, "Template size (px)", d.template_size),
                                 (self.SEARCH_SIZE, "Search window (px)", d.search_size)):
            p = QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Type.Integer, val, minValue=16)
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.CORRECTED, "Corrected optical raster",
                                                                  optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputVectorLayer("TIE_POINTS", "Tie points",
                                                      QgsProcessing.SourceType.TypeVectorPoint))
        self.addOutput(QgsProcessingOutputFile("POINTS_FILE", "GCPs for the Georeferencer (.points)"))
        self.addOutput(QgsProcessingOutputFile("SUMMARY", "Run summary (JSON)"))
        for key, label in (("N_CANDIDATES", "Candidates"), ("N_MATCHED", "Matched"), ("N_INLIERS", "Inliers"),
                           ("N_FLAGGED", "Flagged"), ("RMSE_PX", "Residual RMSE (px)"),
                           ("SHIFT_X_M", "Recovered shift east (m)"), ("SHIFT_Y_M", "Recovered shift north (m)")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..engine.outputs.lock import OutputLock
        from ..engine.outputs.warp import warp_with_transform
        from ..engine.pipeline import match_pair
        from ..engine.write_results import ensure_writable_dir, write_results

        sar = _path(self.parameterAsRasterLayer(parameters, self.SAR, context), "SAR")
        opt = _path(self.parameterAsRasterLayer(parameters, self.OPTICAL, context), "optical")
        bands = self.parameterAsInts(parameters, self.OPTICAL_BANDS, context) or None
        aoi = aoi_crs = None
        if parameters.get(self.EXTENT):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context)
            if not rect.isNull() and not rect.isEmpty():
                crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
                aoi = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
                aoi_crs = crs_string(crs) if crs.isValid() else None
        max_off = self.parameterAsDouble(parameters, self.MAX_OFFSET, context)
        params = MatchParams(
            method=METHODS[self.parameterAsEnum(parameters, self.METHOD, context)],
            transform=TRANSFORMS[self.parameterAsEnum(parameters, self.TRANSFORM, context)],
            max_offset_px=max_off if max_off > 0 else None,
            n_target=self.parameterAsInt(parameters, self.N_TARGET, context),
            template_size=self.parameterAsInt(parameters, self.TEMPLATE_SIZE, context),
            search_size=self.parameterAsInt(parameters, self.SEARCH_SIZE, context),
            aoi=aoi, aoi_crs=aoi_crs,
            sar_band=self.parameterAsInt(parameters, self.SAR_BAND, context) or 1, opt_bands=bands,
        )
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        corrected = self.parameterAsOutputLayer(parameters, self.CORRECTED, context) \
            if parameters.get(self.CORRECTED) else None
        if params.method == "deep":
            _require("deep")
        token = _token(feedback)
        try:
            ensure_writable_dir(folder)
            with OutputLock(folder):  # one run per folder: a second one is refused, never interleaved
                result = match_pair(sar, opt, params, progress=_progress(feedback, 0.0, 0.85), cancel=token)
                paths = write_results(result, folder, corrected=False, checkerboard=False,
                                      progress=_progress(feedback, 0.85, 0.05), cancel=token)
                if corrected:
                    warp_with_transform(opt, corrected, result.transform, result.tieset.crs_wkt,
                                        progress=_progress(feedback, 0.9, 0.1), cancel=token)
        except MatcherError as exc:
            raise QgsProcessingException(str(exc)) from exc
        st = result.stats
        feedback.pushInfo(f"{st.n_candidates} candidates, {st.n_matched} matched, {st.n_inliers} inliers, "
                          f"{st.n_flagged} flagged; residual RMSE {st.rmse_px:.2f} px; shift "
                          f"({st.shift_m[0]:.2f}, {st.shift_m[1]:.2f}) m.")
        # Warnings (engine.verdict: a result that may be wrong, or a note on the inputs) in the log's
        # warning style; QGIS before 3.16 has no pushWarning and shows them as non-fatal errors.
        warn = getattr(feedback, "pushWarning", None) or (lambda w: feedback.reportError(w, fatalError=False))
        for w in result.warnings:
            warn(f"Warning: {w}")
        out = {
            self.OUTPUT_FOLDER: folder, "TIE_POINTS": f"{paths.gpkg}|layername=tie_points",
            "POINTS_FILE": paths.points, "SUMMARY": paths.summary,
            "N_CANDIDATES": st.n_candidates, "N_MATCHED": st.n_matched, "N_INLIERS": st.n_inliers,
            "N_FLAGGED": st.n_flagged, "RMSE_PX": st.rmse_px, "SHIFT_X_M": st.shift_m[0], "SHIFT_Y_M": st.shift_m[1],
        }
        if corrected:
            out[self.CORRECTED] = corrected
        return out


class WarpAlgorithm(_Base):
    INPUT, TIE_POINTS, POINTS_FILE = "INPUT", "TIE_POINTS", "POINTS_FILE"
    TRANSFORM, RESAMPLING, INLIERS_ONLY, OUTPUT = "TRANSFORM", "RESAMPLING", "INLIERS_ONLY", "OUTPUT"

    def name(self) -> str:
        return "warp"

    def displayName(self) -> str:  # noqa: N802
        return "Warp raster with tie points"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Corrects a raster's georeference with tie points: either the tie-point layer written by "
                "'Match SAR and optical rasters' (fields opt_x, opt_y, sar_x, sar_y, status) or a Georeferencer "
                ".points file. The chosen transform is fitted to the enabled points and applied with GDAL "
                "(a pure shift or affine only rewrites the geotransform, without resampling).")

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster to correct"))
        self.addParameter(QgsProcessingParameterVectorLayer(self.TIE_POINTS, "Tie-point layer",
                                                            [QgsProcessing.SourceType.TypeVectorPoint], optional=True))
        self.addParameter(QgsProcessingParameterFile(self.POINTS_FILE, "…or a .points GCP file",
                                                     extension="points", optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.TRANSFORM, "Transform", list(TRANSFORMS),
                                                     defaultValue=TRANSFORMS.index("affine")))
        self.addParameter(QgsProcessingParameterEnum(self.RESAMPLING, "Resampling", list(RESAMPLINGS),
                                                     defaultValue=1))
        self.addParameter(QgsProcessingParameterBoolean(self.INLIERS_ONLY, "Use only inliers / enabled points",
                                                        True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Corrected raster"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..engine.geometry import fit_transform, residual_norms, rmse
        from ..engine.outputs.warp import warp_with_transform

        src = _path(self.parameterAsRasterLayer(parameters, self.INPUT, context), "input")
        kind = TRANSFORMS[self.parameterAsEnum(parameters, self.TRANSFORM, context)]
        resampling = RESAMPLINGS[self.parameterAsEnum(parameters, self.RESAMPLING, context)]
        inliers_only = self.parameterAsBool(parameters, self.INLIERS_ONLY, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        layer = self.parameterAsVectorLayer(parameters, self.TIE_POINTS, context)
        points = self.parameterAsFile(parameters, self.POINTS_FILE, context)
        try:
            if layer is not None:
                s, d, crs_wkt = self._from_layer(layer, inliers_only)
            elif points:
                s, d, crs_wkt = self._from_points(points, src, inliers_only)
            else:
                raise QgsProcessingException("Give either a tie-point layer or a .points file.")
            feedback.pushInfo(f"Fitting a {kind} transform to {len(s)} tie points.")
            t = fit_transform(kind, s, d)
            feedback.pushInfo(f"Residual RMSE {rmse(residual_norms(t, s, d)):.3f} map units.")
            warp_with_transform(src, out, t, crs_wkt, resampling=resampling, progress=_progress(feedback),
                                cancel=_token(feedback))
        except MatcherError as exc:
            raise QgsProcessingException(str(exc)) from exc
        return {self.OUTPUT: out}

    @staticmethod
    def _from_layer(layer, inliers_only: bool):
        names = set(layer.fields().names())
        need = {"opt_x", "opt_y", "sar_x", "sar_y"}
        if not need <= names:
            raise QgsProcessingException("The tie-point layer needs the fields opt_x, opt_y, sar_x and sar_y "
                                         "(the 'tie_points' layer written by the matcher).")
        s, d = [], []
        for f in layer.getFeatures(QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry)):
            if inliers_only and "status" in names and f["status"] != "inlier":
                continue
            vals = [f[k] for k in ("opt_x", "opt_y", "sar_x", "sar_y")]
            try:
                vals = [float(v) for v in vals]
            except (TypeError, ValueError):
                continue
            if all(map(math.isfinite, vals)):
                s.append(vals[:2])
                d.append(vals[2:])
        return np.array(s, float).reshape(-1, 2), np.array(d, float).reshape(-1, 2), layer.crs().toWkt()

    @staticmethod
    def _from_points(path: str, raster: str, inliers_only: bool):
        """Source points in the raster's CRS; destination in the file's #CRS (else the raster's)."""
        from osgeo import gdal, osr

        from ..engine.outputs.points_file import read_points

        pf = read_points(path)
        ds = gdal.Open(raster)
        src_wkt = ds.GetProjection()
        ds = None
        keep = pf.enabled if inliers_only else np.ones(len(pf), bool)
        s, d = pf.source_xy[keep], pf.map_xy[keep]
        dst_wkt = pf.crs_wkt or src_wkt
        a, b = osr.SpatialReference(), osr.SpatialReference()
        a.SetFromUserInput(src_wkt)
        b.SetFromUserInput(dst_wkt)
        if not a.IsSame(b):
            # The transform must map between coordinates of one CRS: bring the source points into it.
            for r in (a, b):
                r.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            ct = osr.CoordinateTransformation(a, b)
            s = np.array([p[:2] for p in ct.TransformPoints([tuple(map(float, p)) for p in s])], float).reshape(-1, 2)
        return s, d, QgsCoordinateReferenceSystem.fromWkt(dst_wkt).toWkt() or dst_wkt


class BatchMatchAlgorithm(_Base):
    """Thin adapter over ``engine.batch``: a manifest run on a local Dask cluster inside QGIS."""

    MANIFEST, OUTPUT_FOLDER, WORKERS, TILE_MPX, FORCE = "MANIFEST", "OUTPUT_FOLDER", "WORKERS", "TILE_MPX", "FORCE"

    def name(self) -> str:
        return "batch"

    def displayName(self) -> str:  # noqa: N802
        return "Batch match (manifest)"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Matches every SAR/optical pair listed in a manifest (CSV or YAML: sar, optical, optional name, "
                "AOI and per-pair options such as method, transform, n_target) on a local Dask cluster. Each "
                "pair's outputs go to <output folder>/<name>/ exactly as 'Match SAR and optical rasters' writes "
                "them; batch_summary.csv and batch_summary.gpkg (pair footprints) list every pair's status, tie "
                "points, inliers, residual RMSE and shift. A failing pair does not stop the batch; pairs already "
                "done are skipped when the batch is run again. Inside QGIS the workers are threads; for worker "
                "processes or several machines use 'python -m engine batch' (see the README). " + GROUP_HELP)

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        import os

        from ..engine.batch.runner import DEFAULT_TILE_PIXELS

        self.addParameter(QgsProcessingParameterFile(self.MANIFEST, "Manifest (CSV or YAML)",
                                                     fileFilter="Manifests (*.csv *.yaml *.yml)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.WORKERS, "Workers", QgsProcessingParameterNumber.Type.Integer, min(os.cpu_count() or 1, 4),
            minValue=1))
        p = QgsProcessingParameterNumber(self.TILE_MPX, "Split pairs larger than (megapixels) into tile tasks",
                                         QgsProcessingParameterNumber.Type.Double, DEFAULT_TILE_PIXELS / 1e6,
                                         minValue=0.0)
        p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(p)
        self.addParameter(QgsProcessingParameterBoolean(self.FORCE, "Re-run pairs already done", False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputFile("SUMMARY", "Batch summary (CSV)"))
        self.addOutput(QgsProcessingOutputVectorLayer("FOOTPRINTS", "Pair footprints",
                                                      QgsProcessing.SourceType.TypeVectorPolygon))
        for key, label in (("N_DONE", "Pairs done"), ("N_FAILED", "Pairs failed"), ("N_SKIPPED", "Pairs skipped")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..engine.batch.runner import make_client, run_batch

        _require("batch")
        manifest = self.parameterAsFile(parameters, self.MANIFEST, context)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        workers = self.parameterAsInt(parameters, self.WORKERS, context)
        tile_px = int(self.parameterAsDouble(parameters, self.TILE_MPX, context) * 1e6)
        force = self.parameterAsBool(parameters, self.FORCE, context)
        try:
            # Worker threads: a QGIS process cannot spawn Python worker processes (its executable is QGIS).
            client = make_client(workers=workers, processes=False)
        except ImportError as exc:
            raise QgsProcessingException(f"Batch matching needs Dask: {exc}") from exc
        except MatcherError as exc:
            raise QgsProcessingException(str(exc)) from exc
        try:
            rep = run_batch(manifest, folder, client=client, tile_pixels=tile_px, force=force,
                            progress=_progress(feedback), cancel=_token(feedback), log=feedback.pushInfo)
        except MatcherError as exc:
            raise QgsProcessingException(str(exc)) from exc
        finally:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
        for o in rep.outcomes:
            if o.status == "failed":
                feedback.reportError(f"{o.name}: {o.error}", fatalError=False)
        out = {self.OUTPUT_FOLDER: folder, "SUMMARY": rep.csv, "N_DONE": rep.count("done"),
               "N_FAILED": rep.count("failed"), "N_SKIPPED": rep.count("skipped")}
        if rep.gpkg:
            out["FOOTPRINTS"] = f"{rep.gpkg}|layername=pairs"
        return out
