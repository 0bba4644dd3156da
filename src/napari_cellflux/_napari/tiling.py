"""Tiling stacks of cells into near-square grids, one image per channel, for display.

Pure numpy, no Qt: the plugin shows a trajectory (T, N, C, H, W) as C layers of shape
(T, rows * H, cols * W), so napari's dims slider walks the time axis while every cell stays at
the same grid position as the control it came from.
"""

from __future__ import annotations

import math

import numpy as np

from napari_cellflux.errors import InputError

GAP = 2  # px of background between tiles, so touching cells stay distinguishable


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding ``n`` cells, wider than tall when not square."""
    if n < 1:
        raise InputError(f"need at least one cell to lay out, got {n}")
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile(cells: np.ndarray, gap: int = GAP) -> np.ndarray:
    """(..., N, H, W) cells -> (..., rows * (H + gap) - gap, cols * (W + gap) - gap) grid.

    Cell i sits at row i // cols, column i % cols; unused tiles and gaps are 0 (background).
    """
    cells = np.asarray(cells)
    if cells.ndim < 3:
        raise InputError(f"cells must be (..., N, H, W), got shape {cells.shape}")
    *lead, n, h, w = cells.shape
    rows, cols = grid_shape(n)
    grid = np.zeros((*lead, rows * (h + gap) - gap, cols * (w + gap) - gap), dtype=cells.dtype)
    for i in range(n):
        top, left = (i // cols) * (h + gap), (i % cols) * (w + gap)
        grid[..., top:top + h, left:left + w] = cells[..., i, :, :]
    return grid


def channel_grids(cells: np.ndarray, gap: int = GAP) -> list[np.ndarray]:
    """(..., N, C, H, W) -> one tiled grid per channel, each (..., grid_height, grid_width).

    Works for controls (N, C, H, W) and for trajectories (T, N, C, H, W) alike.
    """
    cells = np.asarray(cells)
    if cells.ndim < 4:
        raise InputError(f"cells must be (..., N, C, H, W), got shape {cells.shape}")
    return [tile(cells[..., c, :, :], gap) for c in range(cells.shape[-3])]
