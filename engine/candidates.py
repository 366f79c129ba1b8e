"""Where to try matching: template centre positions on the common (SAR) pixel grid.

Two strategies:

* ``grid_candidates``: a regular grid, the unbiased choice (and what a benchmark wants).
* ``structure_candidates``: positions whose *template-sized* neighbourhood has 2-D structure in the
  optical image (minimum eigenvalue of the window-summed structure tensor, i.e. Shi-Tomasi at
  template scale: a patch with edges in only one direction can slide along them) and gradient
  energy in the SAR image (something to lock onto through the speckle). The score is the
  geometric mean of both, each divided by its median over the image so neither unit dominates.
  Picking the global top-N would cluster all candidates in the one busiest district, which is
  bad for fitting a transform, so the area is tiled into ``cell`` x ``cell`` cells and selection
  goes round-robin: every cell's best position first (strongest cells first), then every cell's
  second best, ..., with at most ``per_cell`` per cell and a minimum spacing between candidates.

Both only return positions whose whole search window (``margin`` = search // 2 around the
centre, inclusive, so a window of 2*margin+1 px) lies inside the image and on valid pixels; the
template window is contained in it.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InputError


def _check_shape(shape: tuple[int, int], margin: int) -> tuple[int, int]:
    if len(shape) != 2:
        raise InputError(f"expected a 2-D image shape, got {shape}")
    if margin < 0:
        raise InputError(f"margin must be >= 0, got {margin}")
    return int(shape[0]), int(shape[1])


def _axis_positions(n: int, margin: int, spacing: int) -> np.ndarray:
    """Evenly spaced positions in [margin, n-1-margin], centred in that range."""
    lo, hi = margin, n - 1 - margin
    if hi < lo:
        return np.zeros(0, dtype=int)
    count = (hi - lo) // spacing + 1
    start = lo + ((hi - lo) - (count - 1) * spacing) // 2
    return start + spacing * np.arange(count)


def windows_valid(
    valid_mask: np.ndarray, positions: np.ndarray, margin: int, max_invalid_frac: float = 0.0
) -> np.ndarray:
    """Bool (N,): is the (2*margin+1)^2 window around each (row, col) inside and valid enough?"""
    vm = np.asarray(valid_mask, dtype=bool)
    h, w = vm.shape
    pos = np.asarray(positions, dtype=int).reshape(-1, 2)
    ok = (pos[:, 0] >= margin) & (pos[:, 0] <= h - 1 - margin)
    ok &= (pos[:, 1] >= margin) & (pos[:, 1] <= w - 1 - margin)
    limit = max_invalid_frac * (2 * margin + 1) ** 2
    for k in np.flatnonzero(ok):
        r, c = pos[k]
        win = vm[r - margin : r + margin + 1, c - margin : c + margin + 1]
        ok[k] = (win.size - np.count_nonzero(win)) <= limit
    return ok


def grid_positions(shape: tuple[int, int], spacing: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the regular candidate grid of ``grid_candidates`` (before the validity test)."""
    h, w = _check_shape(tuple(shape), margin)
    if spacing < 1:
        raise InputError(f"grid spacing must be >= 1 px, got {spacing}")
    return _axis_positions(h, margin, int(spacing)), _axis_positions(w, margin, int(spacing))


def grid_candidates(
    shape: tuple[int, int],
    spacing: int,
    margin: int,
    valid_mask: Optional[np.ndarray] = None,
    max_invalid_frac: float = 0.0,
) -> np.ndarray:
    """Regular grid of template centres, (N, 2) int (row, col), row-major order.

    The grid is centred in the usable area [margin, size-1-margin] of each axis. With a
    ``valid_mask`` (True = usable pixel in both images) a position is kept only if at most
    ``max_invalid_frac`` of its (2*margin+1)^2 search window is invalid (default: none).
    """
    h, w = _check_shape(tuple(shape), margin)
    rows, cols = grid_positions((h, w), spacing, margin)
    pos = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2).astype(int)
    if valid_mask is None or pos.size == 0:
        return pos
    vm = np.asarray(valid_mask, dtype=bool)
    if vm.shape != (h, w):
        raise InputError(f"valid_mask shape {vm.shape} does not match {shape}")
    keep = grid_windows_valid(vm, rows, cols, margin, max_invalid_frac)
    return pos[keep.ravel()]


def grid_windows_valid(
    valid_mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, margin: int, max_invalid_frac: float = 0.0
) -> np.ndarray:
    """Bool (len(rows), len(cols)): window test of ``windows_valid`` for a grid of positions.

    Row-wise separable counting (column counts per grid row, then 1-D cumulative sums): cheap
    even for large scenes, no full-size integral image. Positions must lie in
    [margin, size-1-margin].
    """
    vm = np.asarray(valid_mask, dtype=bool)
    rows, cols = np.asarray(rows, int), np.asarray(cols, int)
    limit = max_invalid_frac * (2 * margin + 1) ** 2
    out = np.zeros((len(rows), len(cols)), dtype=bool)
    for k, r in enumerate(rows):
        bad_cols = np.count_nonzero(~vm[r - margin : r + margin + 1], axis=0)
        csum = np.concatenate([[0], np.cumsum(bad_cols)])
        out[k] = (csum[cols + margin + 1] - csum[cols - margin]) <= limit
    return out


def _block_sum(a: np.ndarray, step: int) -> np.ndarray:
    """Sum over non-overlapping step x step blocks (trailing partial blocks dropped)."""
    h, w = (a.shape[0] // step) * step, (a.shape[1] // step) * step
    return a[:h, :w].reshape(h // step, step, w // step, step).sum(axis=(1, 3), dtype=np.float64)


def structure_score_parts(
    img_opt: np.ndarray,
    img_sar: Optional[np.ndarray],
    template: int,
    step: int,
    valid_mask: Optional[np.ndarray] = None,
    grad_sigma_optical: float = 1.0,
    grad_sigma_sar: float = 2.0,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The two raw ingredients of the score, on the ``step`` grid: (optical lam_min, SAR energy).

    Kept apart from their normalisation (``combine_structure_parts`` divides each by its median over
    the whole image) because each cell depends only on a neighbourhood of about
    ``structure_support(template, step)`` px: tiles of a scene can compute them separately, and the
    scene-wide medians are applied once the tiles are stitched. ``img_sar`` None: no energy map.
    Invalid pixels contribute no gradients.
    """
    opt = np.asarray(img_opt, dtype=np.float32)
    valid = np.ones(opt.shape, bool) if valid_mask is None else np.asarray(valid_mask, bool)
    opt = np.where(valid & np.isfinite(opt), opt, 0.0).astype(np.float32)
    inner = ndimage.binary_erosion(valid, iterations=max(2, int(3 * grad_sigma_sar)), border_value=1)
    gy = ndimage.gaussian_filter(opt, grad_sigma_optical, order=(1, 0))
    gx = ndimage.gaussian_filter(opt, grad_sigma_optical, order=(0, 1))
    gy *= inner
    gx *= inner
    k = _box_cells(template, step)
    box = lambda a: ndimage.uniform_filter(_block_sum(a, step), size=k, mode="constant") * (k * k)
    sxx, syy, sxy = box(gx * gx), box(gy * gy), box(gx * gy)
    lam_min = 0.5 * (sxx + syy) - np.sqrt(0.25 * (sxx - syy) ** 2 + sxy * sxy)
    lam_min = np.maximum(lam_min, 0.0)
    if img_sar is None:
        return lam_min, None
    sar = np.asarray(img_sar, dtype=np.float32)
    if sar.shape != opt.shape:
        raise InputError(f"SAR image shape {sar.shape} differs from optical {opt.shape}")
    sar = np.where(valid & np.isfinite(sar), sar, 0.0).astype(np.float32)
    e = (
        ndimage.gaussian_filter(sar, grad_sigma_sar, order=(1, 0)) ** 2
        + ndimage.gaussian_filter(sar, grad_sigma_sar, order=(0, 1)) ** 2
    ) * inner
    energy = np.maximum(box(e), 0.0)  # uniform_filter round-off can go slightly negative
    return lam_min, energy


def _box_cells(template: int, step: int) -> int:
    """Side (in cells) of the odd box that sums the structure tensor over a template-sized window."""
    k = max(1, int(round(template / step)))
    return k + 1 - k % 2  # odd box so it is centred on the cell


def structure_support(template: int, step: int, grad_sigma_sar: float = 2.0) -> int:
    """How far (px) from a cell centre the pixels that its score depends on can lie.

    The box of cells, plus the Gaussian derivative kernels (truncated at 4 sigma), plus the
    erosion of the validity mask. A tile whose read window reaches this far beyond its core gives
    the core cells exactly the score a whole-scene computation gives them."""
    k = _box_cells(template, step)
    return (k // 2 + 1) * step + int(4 * grad_sigma_sar + 0.5) + max(2, int(3 * grad_sigma_sar)) + 1


def combine_structure_parts(lam_min: np.ndarray, energy: Optional[np.ndarray], sar_weight: float = 0.5) -> np.ndarray:
    """Score from the raw parts: each divided by its median (over positive cells) so neither unit
    dominates, then their weighted geometric mean (optical only when ``energy`` is None)."""
    score = lam_min / max(float(np.median(lam_min[lam_min > 0])) if (lam_min > 0).any() else 1.0, 1e-30)
    if energy is not None and sar_weight > 0:
        med = float(np.median(energy[energy > 0])) if (energy > 0).any() else 1.0
        score = score ** (1.0 - sar_weight) * (energy / max(med, 1e-30)) ** sar_weight
    return score


def structure_score_map(
    img_opt: np.ndarray,
    img_sar: Optional[np.ndarray],
    template: int,
    step: int,
    valid_mask: Optional[np.ndarray] = None,
    sar_weight: float = 0.5,
    grad_sigma_optical: float = 1.0,
    grad_sigma_sar: float = 2.0,
) -> np.ndarray:
    """Matchability score of template-sized windows, on a grid with ``step`` px spacing.

    Cell [i, j] is the window centred at pixel (i*step + step//2, j*step + step//2). Invalid pixels
    contribute no gradients.
    """
    sar = img_sar if (img_sar is not None and sar_weight > 0) else None
    lam_min, energy = structure_score_parts(img_opt, sar, template, step, valid_mask, grad_sigma_optical,
                                            grad_sigma_sar)
    return combine_structure_parts(lam_min, energy, sar_weight)


def cell_centres(n_cells: int, step: int) -> np.ndarray:
    """Pixel position (row or column) of the centre of each of ``n_cells`` score cells."""
    return np.arange(n_cells) * step + step // 2


def structure_defaults(margin: int, template: Optional[int], step: Optional[int]) -> tuple[int, int]:
    """(template, step) with the defaults ``structure_candidates`` documents."""
    template = int(template or max(margin, 8))
    step = int(step or max(1, template // 8))
    return template, step


def windows_ok_map(valid: np.ndarray, score_shape: tuple[int, int], step: int, margin: int,
                   origin: tuple[int, int] = (0, 0), full_shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Bool map over score cells: is the cell's (2*margin+1)² window inside the image and valid?

    ``valid`` may be a window of a larger image (``full_shape``) starting at pixel ``origin``
    (a multiple of ``step``); cells are then those of the window's score map, and only cells whose
    window lies inside both the full image and ``valid`` can be True.
    """
    h, w = full_shape or valid.shape
    r0, c0 = origin
    rows = cell_centres(score_shape[0], step) + r0
    cols = cell_centres(score_shape[1], step) + c0
    row_in = (rows >= margin) & (rows <= h - 1 - margin) & (rows - r0 >= margin) & (rows - r0 <= valid.shape[0] - 1 - margin)
    col_in = (cols >= margin) & (cols <= w - 1 - margin) & (cols - c0 >= margin) & (cols - c0 <= valid.shape[1] - 1 - margin)
    out = np.zeros(score_shape, bool)
    ri, ci = np.flatnonzero(row_in), np.flatnonzero(col_in)
    if len(ri) and len(ci):
        out[np.ix_(ri, ci)] = grid_windows_valid(valid, rows[ri] - r0, cols[ci] - c0, margin)
    return out


def structure_candidates(
    img_opt: np.ndarray,
    img_sar: Optional[np.ndarray],
    n_target: int,
    margin: int,
    valid_mask: Optional[np.ndarray] = None,
    cell: Optional[int] = None,
    template: Optional[int] = None,
    per_cell: Optional[int] = None,
    min_distance: Optional[float] = None,
    step: Optional[int] = None,
    sar_weight: float = 0.5,
    min_rel_score: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n_target`` well-spread, structure-rich template centres.

    Args:
        img_opt, img_sar: co-registered (same grid) optical and SAR images, [0, 1]; SAR may be None.
        margin: search window half size; positions keep their whole window inside and valid.
        cell: side (px) of the spreading cells; default chosen so there are ~n_target/2 cells.
        template: template size (px) used as the structure scale; default ``margin``.
        per_cell: max candidates per cell; default ceil(n_target / number of usable cells).
        min_distance: min Euclidean distance (px) between candidates; default template // 2.
        step: evaluation stride (px); default max(1, template // 8). Positions lie on it.
        min_rel_score: positions scoring below this fraction of the 90th-percentile score are
            never picked (featureless water, fields, nodata borders).

    Returns ``(positions (N, 2) int (row, col), scores (N,))``, best first.
    """
    opt = np.asarray(img_opt)
    h, w = _check_shape(opt.shape, margin)
    if n_target < 1:
        return np.zeros((0, 2), int), np.zeros(0)
    template, step = structure_defaults(margin, template, step)
    valid = np.ones((h, w), bool) if valid_mask is None else np.asarray(valid_mask, bool)
    if valid.shape != (h, w):
        raise InputError(f"valid_mask shape {valid.shape} does not match the image shape {(h, w)}")

    score = structure_score_map(opt, img_sar, template, step, valid, sar_weight)
    win_ok = windows_ok_map(valid, score.shape, step, margin) if valid_mask is not None else None
    return select_structure_candidates(score, step, (h, w), margin, n_target, win_ok=win_ok, cell=cell,
                                       template=template, per_cell=per_cell, min_distance=min_distance,
                                       min_rel_score=min_rel_score)


def select_structure_candidates(
    score: np.ndarray,
    step: int,
    shape: tuple[int, int],
    margin: int,
    n_target: int,
    win_ok: Optional[np.ndarray] = None,
    cell: Optional[int] = None,
    template: Optional[int] = None,
    per_cell: Optional[int] = None,
    min_distance: Optional[float] = None,
    min_rel_score: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """The spread-out selection of ``structure_candidates`` from a score map of an image of ``shape``.

    Separate from the scoring so the selection can run once over a scene whose score map was
    assembled tile by tile: the spread, the per-cell cap and the spacing are then those of the whole
    scene, and every candidate is chosen exactly once. ``win_ok`` (same shape as ``score``) marks
    cells whose search window is inside and valid; None skips that test.
    """
    h, w = int(shape[0]), int(shape[1])
    if n_target < 1:
        return np.zeros((0, 2), int), np.zeros(0)
    template, step = structure_defaults(margin, template, step)
    min_distance = float(template // 2 if min_distance is None else min_distance)
    rows = cell_centres(score.shape[0], step)
    cols = cell_centres(score.shape[1], step)
    row_in = (rows >= margin) & (rows <= h - 1 - margin)
    col_in = (cols >= margin) & (cols <= w - 1 - margin)
    inside = row_in[:, None] & col_in[None, :]
    if not inside.any():
        return np.zeros((0, 2), int), np.zeros(0)

    floor = max(min_rel_score * float(np.percentile(score[inside], 90)), 0.0)
    usable = inside & (score > floor)
    if win_ok is not None:
        usable &= win_ok
    ii, jj = np.nonzero(usable)
    if len(ii) == 0:
        return np.zeros((0, 2), int), np.zeros(0)
    pos = np.stack([rows[ii], cols[jj]], axis=1)
    vals = score[ii, jj]

    if cell is None:
        area = float(max(h - 2 * margin, 1) * max(w - 2 * margin, 1))
        cell = max(step, int(math.sqrt(area / max(1.0, n_target / 2.0))))
    cell = int(cell)
    ncols_cells = w // cell + 1
    cell_rc = pos // cell
    cell_id = cell_rc[:, 0] * ncols_cells + cell_rc[:, 1]
    by_cell = np.lexsort((-vals, cell_id))  # grouped by cell, best first within each
    ids, first = np.unique(cell_id[by_cell], return_index=True)
    groups = np.split(by_cell, first[1:])
    if per_cell is None:
        per_cell = max(1, math.ceil(n_target / len(ids)))
    cell_order = np.argsort([-vals[g[0]] for g in groups], kind="stable")

    # Round-robin over cells: every cell's best admissible position (strongest cells first), then
    # every cell's second, ...: a busy district cannot use up n_target while other cells get
    # nothing. Spacing is checked only against picks in the neighbouring cells.
    ring = int(math.ceil(min_distance / cell))
    picked: dict[int, list[int]] = {}
    chosen: list[int] = []
    for _ in range(per_cell):
        added = False
        for gi in cell_order:
            if len(chosen) >= n_target:
                break
            grp = groups[gi]
            cid = int(ids[gi])
            cr, cc = divmod(cid, ncols_cells)
            near = [
                q
                for dr in range(-ring, ring + 1)
                for dc in range(-ring, ring + 1)
                for q in picked.get((cr + dr) * ncols_cells + (cc + dc), [])
            ]
            admissible = np.ones(len(grp), bool)
            if near:
                d = np.hypot(*(pos[grp][:, None, :] - pos[near][None, :, :]).transpose(2, 0, 1))
                admissible = d.min(axis=1) >= min_distance
            if not admissible.any():
                continue
            idx = int(grp[np.argmax(admissible)])  # best admissible (group is sorted by score)
            chosen.append(idx)
            picked.setdefault(cid, []).append(idx)
            added = True
        if not added or len(chosen) >= n_target:
            break
    sel = np.asarray(chosen, dtype=int)
    sel = sel[np.argsort(-vals[sel], kind="stable")]
    return pos[sel].astype(int).reshape(-1, 2), vals[sel].astype(float)
