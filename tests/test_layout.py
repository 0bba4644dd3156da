"""Grid layout of cells for display (Qt-free)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellflux._napari.tiling import channel_grids, grid_shape, tile


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (5, (2, 3)), (10, (3, 4)), (16, (4, 4)), (17, (4, 5))])
def test_grid_is_near_square_and_holds_every_cell(n, shape):
    rows, cols = grid_shape(n)
    assert (rows, cols) == shape
    assert rows * cols >= n and (rows - 1) * cols < n  # no empty row


def test_grid_of_no_cells_is_an_error():
    with pytest.raises(ValueError, match="at least one cell"):
        grid_shape(0)


def test_tile_places_cell_i_at_row_major_position_with_gaps():
    cells = np.arange(1, 6, dtype=np.uint8)[:, None, None] * np.ones((5, 3, 4), np.uint8)  # 5 cells 3 x 4
    grid = tile(cells, gap=1)
    assert grid.shape == (2 * 4 - 1, 3 * 5 - 1)  # 2 rows x 3 cols
    for i in range(5):
        top, left = (i // 3) * 4, (i % 3) * 5
        assert (grid[top:top + 3, left:left + 4] == i + 1).all()
    assert grid[3, :].max() == 0 and grid[:, 4].max() == 0  # gaps are background
    assert grid[4:, 10:].max() == 0  # the unused sixth tile


def test_channel_grids_keep_leading_axes_and_split_channels():
    t, n, c, h, w = 3, 4, 2, 5, 6
    stack = np.random.default_rng(0).integers(0, 255, (t, n, c, h, w), dtype=np.uint8)
    grids = channel_grids(stack, gap=0)
    assert len(grids) == c
    assert grids[0].shape == (t, 2 * h, 2 * w)
    # cell 3 (row 1, col 1), channel 1, time 2
    np.testing.assert_array_equal(grids[1][2, h:, w:], stack[2, 3, 1])
    assert [g.shape for g in channel_grids(stack[0], gap=0)] == [(2 * h, 2 * w)] * c


def test_channel_grids_reject_a_stack_without_cells_and_channels():
    with pytest.raises(ValueError, match=r"\(\.\.\., N, C, H, W\)"):
        channel_grids(np.zeros((4, 4, 4)))
