"""SAR-Optical Matcher engine: pure Python (numpy, scipy, rasterio, GDAL). No QGIS, no torch.

Entry points: ``match_pair`` (one run, with progress callback and cancel token), ``write_results``
(all outputs, atomically) and the CLI ``python -m engine``.
"""
from .version import __version__  # noqa: F401
