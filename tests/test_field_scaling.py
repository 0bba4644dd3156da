"""The widget's whole-field path gives the model cells like its control path: cells cut from the
bundled field sample match the bundled control cells in brightness and texture."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from plugin_helpers import tiny_model
from scipy import ndimage

from napari_cellflux.data.extract import extract_cells
from napari_cellflux.data.intensity import IntensityScaling, scale_to_uint8
from napari_cellflux.data.samples import synthetic_controls, synthetic_field
from napari_cellflux.errors import InputError
from napari_cellflux.generation.controls import crops_from_field, extraction_config


def texture(cells: np.ndarray) -> np.ndarray:
    """(C,) mean absolute Laplacian per channel: fine structure, which percentile stretching inflates."""
    return np.array([np.abs(ndimage.laplace(cells[:, c].astype(np.float32), mode="nearest")).mean()
                     for c in range(cells.shape[1])])


def test_field_cells_look_like_the_sample_controls():
    controls = synthetic_controls(200).astype(np.float32)
    field = synthetic_field()
    cut = crops_from_field([field.image], tiny_model(), "field").astype(np.float32)
    brightness = cut.mean(axis=(0, 2, 3)) / controls.mean(axis=(0, 2, 3))
    detail = texture(cut) / texture(controls)
    # Measured 1.20 / 1.06 / 1.05 and 1.25 / 1.08 / 1.07: the DNA crops sit on nuclei, so a
    # little brighter than whole-cell averages; per-field percentiles gave 1.9-2.8 and 2-4.1.
    assert np.all((0.8 < brightness) & (brightness < 1.35)), brightness
    assert np.all((0.8 < detail) & (detail < 1.4)), detail
    stretched = extract_cells(field.image, replace(extraction_config(32), scaling=IntensityScaling())).crops
    assert (stretched.astype(np.float32).mean(axis=(0, 2, 3)) / controls.mean(axis=(0, 2, 3))).min() > 1.5


def test_bit_depth_scaling_uses_the_cameras_full_range():
    image = np.array([[[0, 1000], [3000, 4095]]], dtype=np.uint16)  # a 12-bit frame in uint16
    pixels, record = scale_to_uint8(image, IntensityScaling("bit_depth"))
    assert record["high"] == [4095.0] and pixels.max() == 255 and pixels[0, 0, 1] == round(1000 / 4095 * 255)
    assert scale_to_uint8(image.astype(np.uint8) // 16, IntensityScaling("bit_depth"))[1]["high"] == [255.0]
    with pytest.raises(InputError, match="camera"):
        scale_to_uint8(np.full((1, 2, 2), -1.0), IntensityScaling("bit_depth"))


def test_auto_scaling_takes_the_bit_depth_of_counts_and_percentiles_of_floats():
    counts = np.array([[[0, 1000], [3000, 4095]]], dtype=np.uint16)
    assert scale_to_uint8(counts, IntensityScaling("auto"))[1]["mode"] == "bit_depth"
    floats, record = scale_to_uint8(counts.astype(np.float32), IntensityScaling("auto"))
    assert record["mode"] == "percentile" and floats.max() == 255
