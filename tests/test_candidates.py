"""Candidate positions: regular grid and structure-driven, with margins, masks and spreading."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.candidates import grid_candidates, structure_candidates, windows_valid
from engine.errors import InputError


def _window_all_valid(mask, r, c, m):
    return r - m >= 0 and c - m >= 0 and mask[r - m : r + m + 1, c - m : c + m + 1].all()


def test_grid_spacing_margins_and_centering():
    pos = grid_candidates((500, 700), spacing=100, margin=128)
    rows, cols = np.unique(pos[:, 0]), np.unique(pos[:, 1])
    # usable rows 128..371: 3 rows 100 apart, centred (21 px before, 22 after) -> 149, 249, 349
    np.testing.assert_array_equal(rows, [149, 249, 349])
    # usable cols 128..571: 5 cols, leftover 43 px split 21/22 -> 149..549
    np.testing.assert_array_equal(cols, [149, 249, 349, 449, 549])
    assert len(pos) == 15 and pos.dtype.kind == "i"
    assert grid_candidates((200, 200), spacing=50, margin=128).shape == (0, 2)
    with pytest.raises(InputError):
        grid_candidates((100, 100), spacing=0, margin=10)


def test_grid_respects_valid_mask_exactly():
    rng = np.random.default_rng(0)
    mask = np.ones((400, 420), bool)
    mask[:120, :150] = False  # nodata corner
    mask[300, 300] = False  # a single bad pixel
    mask[rng.integers(0, 400, 3), rng.integers(0, 420, 3)] = False
    margin = 40
    full = grid_candidates(mask.shape, 30, margin)
    kept = grid_candidates(mask.shape, 30, margin, valid_mask=mask)
    kept_set = {tuple(p) for p in kept}
    assert 0 < len(kept) < len(full)
    for r, c in full:
        assert ((r, c) in kept_set) == _window_all_valid(mask, r, c, margin)
    # A tolerance for a few invalid pixels keeps windows touching only the single bad pixel.
    tolerant = grid_candidates(mask.shape, 30, margin, valid_mask=mask, max_invalid_frac=0.001)
    assert len(tolerant) > len(kept)
    assert windows_valid(mask, kept, margin).all()


@pytest.fixture(scope="module")
def texture():
    rng = np.random.default_rng(1)
    return ndimage.gaussian_filter(rng.random((600, 600)), 2)


def test_structure_candidates_cover_every_cell_of_uniform_texture(texture):
    margin, cell = 64, 96
    pos, scores = structure_candidates(texture, None, n_target=50, margin=margin, cell=cell, template=64)
    assert len(pos) == 50 and len(scores) == 50
    assert np.all(np.diff(scores) <= 0)  # best first
    assert pos.min() >= margin and pos.max() <= 600 - 1 - margin
    cells = {tuple(c) for c in pos // cell}
    # All 36 cells intersect the usable area [64, 535]; each gets a candidate.
    assert cells == {(i, j) for i in range(6) for j in range(6)}
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    assert d[~np.eye(len(pos), dtype=bool)].min() >= 32  # default min_distance = template // 2


def test_structure_candidates_min_distance_and_per_cell(texture):
    pos, _ = structure_candidates(
        texture, texture, n_target=200, margin=64, cell=150, template=64, per_cell=3, min_distance=50
    )
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    assert d[~np.eye(len(pos), dtype=bool)].min() >= 50
    _, counts = np.unique(pos // 150, axis=0, return_counts=True)
    assert counts.max() <= 3
    assert len(pos) == 3 * 16  # 16 cells, all with room for 3 candidates 50 px apart


def test_structure_candidates_prefer_structure_and_respect_mask(texture):
    opt = texture.copy()
    opt[:, :300] = 0.5  # featureless left half (water)
    sar = texture + 0.05 * np.random.default_rng(2).standard_normal(texture.shape)
    mask = np.ones(opt.shape, bool)
    mask[450:, 350:] = False  # nodata block
    margin = 64
    pos, scores = structure_candidates(opt, sar, n_target=40, margin=margin, valid_mask=mask, template=64)
    assert len(pos) > 10
    # The left half has no 2-D structure: nothing whose template (+-32 px) lies entirely in it.
    assert np.all(pos[:, 1] >= 300 - 32)
    for r, c in pos:
        assert _window_all_valid(mask, r, c, margin)
    assert np.all(scores > 0)


def test_structure_candidates_sar_energy_breaks_ties(texture):
    # Identical optical structure everywhere; SAR only has detail in the bottom half.
    sar = np.full(texture.shape, 0.5)
    sar[300:] = texture[300:]
    pos, _ = structure_candidates(texture, sar, n_target=10, margin=64, cell=600, template=64, per_cell=10)
    assert np.mean(pos[:, 0] >= 300) >= 0.9
    pos_opt_only, _ = structure_candidates(
        texture, sar, n_target=10, margin=64, cell=600, template=64, per_cell=10, sar_weight=0.0
    )
    assert np.mean(pos_opt_only[:, 0] >= 300) < 0.9
