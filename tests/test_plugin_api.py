"""The headless pieces behind the napari plugin: control sources, sample data, results, writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from plugin_helpers import tiny_model

from napari_cellflux._napari.writer import LAYER_KEY, write_trajectory
from napari_cellflux.data.samples import synthetic_controls, synthetic_field
from napari_cellflux.generation.controls import crops_from_arrays, crops_from_field, crops_from_file, extraction_config
from napari_cellflux.generation.result import generate_from_pixels


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cells():
    return synthetic_controls(6, seed=3)


def test_synthetic_controls_are_demo_sized_uint8_cells(cells):
    assert cells.shape == (6, 3, 32, 32) and cells.dtype == np.uint8
    assert cells.std() > 5  # drawn cells, not a blank


def test_crops_from_one_stack_in_either_channel_order(model, cells):
    np.testing.assert_array_equal(crops_from_arrays([cells], model, "layer 'a'"), cells)
    np.testing.assert_array_equal(crops_from_arrays([np.moveaxis(cells, 1, -1)], model, "layer 'a'"), cells)


def test_crops_from_one_layer_per_channel(model, cells):
    per_channel = [cells[:, c] for c in range(3)]
    np.testing.assert_array_equal(crops_from_arrays(per_channel, model, "layers"), cells)


def test_wrong_channel_count_names_the_input_and_the_model_channels(model, cells):
    with pytest.raises(ValueError, match=r"layer 'two': shape \(6, 2, 32, 32\) has no axis of 3 channels; the model takes 3"):
        crops_from_arrays([cells[:, :2]], model, "layer 'two'")
    field = synthetic_field(seed=1)
    with pytest.raises(ValueError, match=r"layers: 2 channel\(s\), but the model takes 3 channels \(DNA, cytoskeleton, cytoplasm\)"):
        crops_from_field([field.image[0], field.image[1]], model, "layers")


def test_wrong_crop_size_and_pixel_range_are_explained(model, cells):
    with pytest.raises(ValueError, match="cells are 16 x 16 px, but the model takes 32 x 32 crops"):
        crops_from_arrays([cells[..., :16, :16]], model, "layer 'small'")
    with pytest.raises(ValueError, match=r"layer 'raw': pixel values range from 0 to \d+, but the model takes stored pixels in 0\.\.255"):
        crops_from_arrays([cells.astype(np.uint16) * 16], model, "layer 'raw'")


def test_single_channel_layers_of_different_shapes_are_refused(model, cells):
    with pytest.raises(ValueError, match="differ in shape"):
        crops_from_arrays([cells[:, 0], cells[:3, 1], cells[:, 2]], model, "layers")


def test_crops_from_a_file(model, cells, tmp_path):
    path = tmp_path / "crops.npy"
    np.save(path, cells)
    np.testing.assert_array_equal(crops_from_file(path, model), cells)


def test_field_cells_are_cut_at_the_model_size_with_or_without_labels(model):
    field = synthetic_field(seed=1)
    segmented = crops_from_field([field.image], model, "layer 'field'")
    given = crops_from_field([field.image[c] for c in range(3)], model, "layers", labels=field.labels)
    assert segmented.shape[1:] == given.shape[1:] == (3, 32, 32)
    assert len(segmented) >= 10 and len(given) >= 10
    assert extraction_config(96).min_area == 100 and extraction_config(32).crop_size == 32


def test_a_field_without_nuclei_names_the_input(model):
    with pytest.raises(ValueError, match="layer 'dark': .*no nuclei found"):
        crops_from_field([np.full((3, 128, 128), 7, np.uint16)], model, "layer 'dark'")


def test_result_export_whole_trajectory_and_one_state(model, cells, tmp_path):
    result = generate_from_pixels(model, cells, n_cells=4, device="cpu", perturbation="colchicine", seed=5)
    t = model.sampling.steps + 1
    assert result.pixels.shape == (t, 4, 3, 32, 32) and result.controls.shape == (4, 3, 32, 32)
    assert result.frames.shape == (t + 1, 4, 3, 32, 32)  # the controls, then x_init and the grid states
    assert result.label == "colchicine"

    whole = result.write_tiff(tmp_path / "all.tif")
    with tifffile.TiffFile(whole) as tif:
        assert tif.series[0].shape == (t + 1, 4, 3, 32, 32) and tif.series[0].axes == "TZCYX"
        info = json.loads(tif.imagej_metadata["Info"])
        assert tif.imagej_metadata["Labels"][:3] == [f"controls (t = 0), cell 0, {c}" for c in ("DNA", "cytoskeleton", "cytoplasm")]
    assert info["model_sha256"] == model.sha256 and info["seed"] == 5 and info["perturbation"] == "colchicine"
    assert (info["solver"], info["steps"], info["guidance"]) == ("euler", 4, 0.2)
    assert info["frames"] == result.frame_names and info["mode"] == "sample"
    np.testing.assert_array_equal(tifffile.imread(whole)[0], cells[:4])

    one = result.write_tiff(tmp_path / "one.tif", index=-1)
    np.testing.assert_array_equal(tifffile.imread(one), result.pixels[-1])
    with pytest.raises(IndexError, match="has 6 frames"):
        result.write_tiff(tmp_path / "bad.tif", index=6)


def test_an_unseen_compound_by_smiles(model, cells):
    result = generate_from_pixels(model, cells, n_cells=2, device="cpu", smiles="CC(=O)Oc1ccccc1C(=O)O")
    assert result.trajectory.metadata["condition"] == "smiles"
    assert result.label == "CC(=O)Oc1ccccc1C(=O)O"


def test_writer_needs_generated_layers_of_one_run(model, cells, tmp_path):
    result = generate_from_pixels(model, cells, n_cells=2, device="cpu", perturbation="PP-2")
    layer = (np.zeros((2, 2)), {"metadata": {LAYER_KEY: result}}, "image")
    plain = (np.zeros((2, 2)), {"metadata": {}}, "image")
    written = write_trajectory(str(tmp_path / "x.cellflux.tif"), [plain, layer, layer])
    assert tifffile.imread(written[0]).shape == result.frames.shape
    with pytest.raises(ValueError, match="none of the layers"):
        write_trajectory(str(tmp_path / "y.cellflux.tif"), [plain])
    other = (np.zeros((2, 2)), {"metadata": {LAYER_KEY: generate_from_pixels(model, cells, n_cells=2, device="cpu")}}, "image")
    with pytest.raises(ValueError, match="different CellFlux runs"):
        write_trajectory(str(tmp_path / "z.cellflux.tif"), [layer, other])
