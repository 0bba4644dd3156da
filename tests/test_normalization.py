"""Pixel <-> model space (docs/method.md, Data and pre-processing: x = (uint8 + U[0,1)) / 255,
then (x - 0.5) / 0.5)."""

from __future__ import annotations

import numpy as np
import torch

from napari_cellflux.models.normalization import Normalization


def test_to_model_maps_the_uint8_range_to_minus_one_one():
    norm = Normalization()
    x = norm.to_model(np.array([0, 255, 51], dtype=np.uint8))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, 1.0, 51 / 255 * 2 - 1]))


def test_dequantisation_adds_uniform_noise_below_one_grey_level():
    norm = Normalization()
    pixels = np.full((100_000,), 100, dtype=np.uint8)
    x = norm.to_model(pixels, dequantize=True, generator=torch.Generator().manual_seed(0))
    stored = (x * 0.5 + 0.5) * 255  # back to 100 + U[0, 1)
    assert stored.min() >= 100 - 1e-4 and stored.max() < 101 + 1e-4
    assert abs(stored.mean().item() - 100.5) < 0.01


def test_round_trip_and_clipping():
    norm = Normalization()
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    back = norm.to_pixels(norm.to_model(pixels))
    assert back.dtype == np.uint8 and np.array_equal(back, pixels)
    assert norm.to_pixels(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_sixteen_bit_range():
    norm = Normalization(max_value=65535.0)
    pixels = np.array([0, 1000, 65535], dtype=np.uint16)
    back = norm.to_pixels(norm.to_model(pixels))
    assert back.dtype == np.uint16 and np.array_equal(back, pixels)
    assert Normalization.from_dict(norm.to_dict()) == norm
