"""Exceptions the engine raises.

Every failure a user can trigger has its own class so the CLI, the QGIS plugin and batch runners can
show a specific message (and tests can assert on the class) instead of a traceback.
"""
from __future__ import annotations


class MatcherError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the message to show."""


class InputError(MatcherError):
    """An input raster, AOI or parameter is unusable (missing file, not a raster, no CRS...)."""


class NoOverlapError(InputError):
    """The SAR and optical rasters (or the AOI) do not overlap enough to match anything."""


class OutputError(MatcherError):
    """An output cannot be written (unwritable folder, output path equal to an input...)."""


class TooFewPointsError(MatcherError):
    """Not enough tie points survive for the requested transform."""


class ModelError(MatcherError):
    """A model file is missing, corrupt, tampered with or incompatible."""


class CancelledError(MatcherError):
    """The run was cancelled through its cancel token; partial outputs have been removed."""
