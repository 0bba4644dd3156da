"""The RxRx1 FID/KID composite against the authors' formula (issue 15): their evaluation mixes the
six channels in model space [-1, 1] with their (6, 3) colour weights, clamps to [-1, 1], maps to
[0, 1] and floors to 8 bits. Recomputed here independently, in model space, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from training import metrics as M
from training.evaluation.measure import rgb_description

# The authors' weights as their code writes them: one row per input channel (1-based c1..c6), one
# column per output colour (R, G, B); each column sums to 2.
AUTHORS_6_TO_3 = np.array([
    [0, 0, 1],
    [0, 1, 0],
    [1, 0, 0],
    [0, 0.5, 0.5],
    [0.5, 0, 0.5],
    [0.5, 0.5, 0],
])


def authors_composite(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 6, H, W) -> their [0, 1] RGB, step by step as their evaluation does it."""
    x = pixels.astype(np.float64) / 255.0 * 2.0 - 1.0                  # stored pixels -> model space
    rgb = np.clip(np.einsum("bchw,cn->bnhw", x, AUTHORS_6_TO_3), -1, 1)  # mix, clamp to [-1, 1]
    rgb = np.clip(rgb * 0.5 + 0.5, 0, 1)                               # map to [0, 1]
    return np.floor(rgb * 255 + 1e-9) / 255                            # 8 bits (the epsilon: float64 rounding only)


def test_the_default_rxrx1_composite_is_the_authors():
    rng = np.random.default_rng(5)
    six = rng.integers(0, 256, (3, 6, 16, 16), dtype=np.uint8)
    six[0, :, :4] = 255  # saturated and dark corners, where the clamps act
    six[1, :, :4] = 0
    ours = M.to_inception_rgb(six, M.rgb_matrix("rxrx1", 6)).numpy()
    np.testing.assert_allclose(ours, authors_composite(six), atol=1e-7)
    assert np.allclose(AUTHORS_6_TO_3.T, M.rgb_matrix("rxrx1", 6))
    # the old composite, clip(W p, 0, 1), is brighter by half the range wherever it is not clamped
    old = M.to_inception_rgb(six, M.rgb_matrix("rxrx1", 6), "clip").numpy()
    assert (old - ours).mean() > 0.2 and ours.min() == 0.0 and ours.max() == 1.0


def test_both_composites_agree_where_channels_are_kept_as_they_are():
    rng = np.random.default_rng(6)
    for data_format, channels in (("bbbc021", 3), ("cpg0000", 5), ("plain", 1), ("plain", 2)):
        cells = rng.integers(0, 256, (2, channels, 8, 8), dtype=np.uint8)
        matrix = M.rgb_matrix(data_format, channels)
        authors, clip = (M.to_inception_rgb(cells, matrix, c).numpy() for c in M.RGB_COMPOSITES)
        np.testing.assert_array_equal(authors, clip)
    with pytest.raises(ValueError, match="RGB composite must be one of"):
        M.to_inception_rgb(cells, matrix, "srgb")


def test_the_metrics_json_says_which_composite():
    assert "model space" in rgb_description("rxrx1", 6) and "authors" in rgb_description("rxrx1", 6)
    assert "--rgb-composite clip" in rgb_description("rxrx1", 6, "clip")
