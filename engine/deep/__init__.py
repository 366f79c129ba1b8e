"""The deep pipeline stages (Hughes' framework) over the tiling of ``engine.tiling``.

* ``goodness``: scene goodness maps from the two goodness networks, fused (min/max), soft-NMS, peaks
  with spread -> candidate locations;
* ``matcher``: CorrASL heatmaps for the candidates in batches, sub-pixel peaks, secondary peaks,
  covariance, ORN reliability.
"""
