"""Writers (and round-trip readers) for everything a run produces: GCP files, tie-point layers,
corrected rasters and quick-look images. All writes are atomic (see ``atomic.atomic_path``)."""
from .atomic import atomic_path, check_output_path
from .checkerboard import checkerboard, stretch_to_uint8, write_checkerboard_png
from .gpkg import read_tiepoints_gpkg, write_tiepoints_gpkg
from .points_file import PointsFile, optical_geotransform, read_points, write_optical_points, write_points
from .warp import (
    compose_geotransform,
    shift_georeference,
    transform_gcps,
    warp_with_gcps,
    warp_with_transform,
    write_gcp_vrt,
)

__all__ = [
    "PointsFile",
    "atomic_path",
    "check_output_path",
    "checkerboard",
    "compose_geotransform",
    "optical_geotransform",
    "read_points",
    "read_tiepoints_gpkg",
    "shift_georeference",
    "stretch_to_uint8",
    "transform_gcps",
    "warp_with_gcps",
    "warp_with_transform",
    "write_checkerboard_png",
    "write_gcp_vrt",
    "write_optical_points",
    "write_points",
    "write_tiepoints_gpkg",
]
