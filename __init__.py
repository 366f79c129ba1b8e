"""QGIS entry point: the repo root is the plugin folder.

Nothing heavy is imported here so QGIS can always load the plugin, even when an engine dependency is
missing; the plugin then explains what to install instead of failing at import time.
"""


def classFactory(iface):  # noqa: N802 - name fixed by QGIS
    from .plugin.main import SarOpticalMatcherPlugin

    return SarOpticalMatcherPlugin(iface)
