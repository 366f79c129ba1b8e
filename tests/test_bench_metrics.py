"""The benchmark metrics on hand-made errors whose results were worked out by hand below."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import (MAP_THRESHOLDS, l2_errors, mean_average_precision, patch_metrics, precision_at,
                           within)

# Six pairs: five answered with these L2 errors (px), one unanswered (NaN).
ERR = np.array([0.5, 1.0, 1.5, 2.5, 10.0, np.nan])


def test_l2_errors_from_offsets():
    pred = np.array([[3.0, 4.0], [1.0, 1.0], [np.nan, np.nan]])
    truth = np.array([[0.0, 0.0], [1.0, 2.5], [0.0, 0.0]])
    e = l2_errors(pred, truth)
    assert e[0] == pytest.approx(5.0)
    assert e[1] == pytest.approx(1.5)
    assert math.isnan(e[2])


def test_within_counts_unanswered_as_misses():
    assert within(ERR, 1.0) == pytest.approx(100 * 2 / 6)   # 0.5 and 1.0 (inclusive)
    assert within(ERR, 2.0) == pytest.approx(100 * 3 / 6)
    assert within(ERR, 3.0) == pytest.approx(100 * 4 / 6)


def test_precision_at_thresholds_by_hand():
    # t=1: {0.5, 1.0} -> std 0.25
    assert precision_at(ERR, 1) == pytest.approx(0.25)
    # t=2: {0.5, 1, 1.5} -> var = (0.25 + 0 + 0.25)/3
    assert precision_at(ERR, 2) == pytest.approx(math.sqrt(0.5 / 3))
    # t=3..9: {0.5, 1, 1.5, 2.5}, mean 1.375, squared deviations sum 2.1875
    assert precision_at(ERR, 9) == pytest.approx(math.sqrt(2.1875 / 4))
    # t>=10: all five, mean 3.1, squared deviations 6.76+4.41+2.56+0.36+47.61 = 61.7
    assert precision_at(ERR, 32) == pytest.approx(math.sqrt(61.7 / 5))


def test_map_by_hand():
    expected = (0.25 + math.sqrt(0.5 / 3) + 7 * math.sqrt(2.1875 / 4) + 23 * math.sqrt(61.7 / 5)) / 32
    assert mean_average_precision(ERR) == pytest.approx(expected)
    assert len(MAP_THRESHOLDS) == 32 and MAP_THRESHOLDS[0] == 1 and MAP_THRESHOLDS[-1] == 32


def test_map_empty_threshold_rule():
    # Nothing answered: every threshold contributes t/2 -> mean(1..32)/2 = 8.25.
    assert mean_average_precision(np.array([np.nan, np.nan])) == pytest.approx(8.25)
    # One match at 5 px: t=1..4 empty (0.5+1+1.5+2), t>=5 a single value (std 0).
    assert mean_average_precision(np.array([5.0])) == pytest.approx(5.0 / 32)


def test_patch_metrics_summary():
    m = patch_metrics(ERR)
    assert m.n == 6 and m.n_answered == 5
    assert m.accuracy == pytest.approx(33.3333, abs=1e-3)
    assert m.within_2px == pytest.approx(50.0)
    assert m.within_3px == pytest.approx(66.6667, abs=1e-3)
    assert m.mean_l2 == pytest.approx(3.1)
    assert m.median_l2 == pytest.approx(1.5)
    assert m.n_kept is None


def test_patch_metrics_with_filter():
    err = np.array([0.5, 3.0, 20.0, 0.8])
    m = patch_metrics(err, keep=np.array([True, False, False, True]))
    assert m.n == 2 and m.n_kept == 2 and m.kept_frac == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(100.0)
    assert m.mean_l2 == pytest.approx(0.65)
    # Both kept errors are within every t: std of {0.5, 0.8} = 0.15 at every threshold.
    assert m.mAP == pytest.approx(0.15)
    with pytest.raises(ValueError):
        patch_metrics(err, keep=np.array([True]))


def test_patch_pairs_carry_the_true_offset():
    """The truth the metrics score against: on identical images NCC must find every offset exactly."""
    from scipy import ndimage

    from bench.metrics import l2_errors
    from bench.patches import SEARCH, TEMPLATE, pairs_from_coregistered
    from engine.matchers import get_matcher

    rng = np.random.default_rng(5)
    img = ndimage.gaussian_filter(rng.random((600, 600)), 1.5)
    img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)
    pairs = pairs_from_coregistered(img, img, None, 8, rng, "test", "test")
    assert len(pairs) == 8
    assert all(p.search.shape == (SEARCH, SEARCH) and p.template.shape == (TEMPLATE, TEMPLATE) for p in pairs)
    truth = np.array([p.truth for p in pairs])
    assert np.abs(truth).max() <= 32 and np.any(truth != np.rint(truth))  # sub-pixel offsets present
    match = get_matcher("ncc")
    pred = np.array([match(p.search, p.template).offset for p in pairs])
    assert l2_errors(pred, truth).max() < 0.15
