"""PyQGIS adapter over the engine: dock widget, tasks, layers, export. Imports only qgis.PyQt."""
