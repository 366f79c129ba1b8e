"""Batch matching at archive scale on Dask (``python -m engine batch MANIFEST --out DIR``).

* ``manifest``: the CSV/YAML list of pairs and their per-pair options, validated up front;
* ``tasks``: what runs on a Dask worker (a whole pair, or one tile of a large pair's two passes,
  the global candidate selection, the final fit and write); workers read the inputs from their
  paths and keep the deep models loaded once per worker process;
* ``runner``: submits the tasks to a local cluster or an existing scheduler, with retries, resume
  (pairs whose outputs are complete are skipped) and a live progress bar;
* ``summary``: the batch summary table (CSV, and a GeoPackage of the pair footprints).

Dask is needed only by ``runner``; the other modules import without it.
"""
from __future__ import annotations

from .manifest import PairJob, load_manifest, parse_manifest_rows  # noqa: F401
