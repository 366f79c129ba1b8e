"""Test helpers shared by the suite.

The repo root is the QGIS plugin package. Tests import the engine as top-level ``engine`` (as the CLI
does) and, for plugin tests, load the root as the package ``sar_optical_matcher`` (as QGIS does), so
both import paths are exercised.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLUGIN_PKG = "sar_optical_matcher"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def load_plugin_package():
    """Import the repo root as a package, the way QGIS imports an installed plugin folder."""
    if PLUGIN_PKG in sys.modules:
        return sys.modules[PLUGIN_PKG]
    spec = importlib.util.spec_from_file_location(
        PLUGIN_PKG, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PLUGIN_PKG] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
