"""The Controls section's plate source in a real napari viewer (under Xvfb): a LoadData CSV, or a
plate map with its images folder, on the real plate fixtures (tests/fixtures/plates/SOURCES.md);
the ticked wells' cells become the controls, and input errors land on the status line."""

from __future__ import annotations

import numpy as np
from data_helpers import FIXTURES
from plugin_helpers import channel_model_file
from test_widget import generate, load, result_of, wait_idle

from napari_cellflux.generation.controls import crops_from_plate
from napari_cellflux.models.channels import DATASET_CHANNELS, parse_channels
from napari_cellflux.models.model_file import load_model_file

CPG = FIXTURES / "plates" / "cpg0000-BR00116991"
NF1 = FIXTURES / "plates" / "nf1-schwann"
NF1_PATTERN = r"(?P<well>[A-P]\d{1,2})_01_(?P<channel>\d)_(?P<site>\d+)_\w+_001\.tif"
NF1_CHANNELS = "DAPI=1,GFP=2,RFP=3"  # the file names' channel numbers
JUMP_UM = 0.598


def use_plate_map(widget, images=NF1):
    controls = widget.controls
    controls.choose("plate")
    controls.plate_file.value = NF1 / "platemap.csv"
    controls.plate_images.value = images
    controls.name_pattern.setCurrentText(NF1_PATTERN)
    controls.plate_channels.setText(NF1_CHANNELS)
    return controls


def contains(stack: np.ndarray, crop: np.ndarray) -> bool:
    return any(np.array_equal(crop, other) for other in stack)


def test_plate_map_controls_come_from_the_ticked_wells_only(viewer_and_widget, qtbot, tmp_path):
    _, widget = viewer_and_widget
    path = channel_model_file(tmp_path / "nf1.safetensors", parse_channels("DAPI:blue,GFP:green,RFP:red"), 96)
    load(qtbot, widget, path)
    controls = use_plate_map(widget)
    listed = [controls.wells.item(i).text() for i in range(controls.wells.count())]
    assert listed == ["D06: NF1 wild type (control)", "B07: NF1 null", "D07: NF1 null"]
    assert controls.chosen_wells() == ["D06"]  # the plate map's controls, by default
    controls.choose_wells({"D06", "B07"})
    model = load_model_file(path, "cpu")
    per_well = {w: crops_from_plate(NF1 / "platemap.csv", [w], model, images=NF1, name_pattern=NF1_PATTERN,
                                    channels=NF1_CHANNELS) for w in ("D06", "B07", "D07")}
    chosen = len(per_well["D06"]) + len(per_well["B07"])
    generate(qtbot, widget, steps=2, cells=chosen)
    result = result_of(widget)
    assert result is not None, widget.status.text()
    assert result.controls.shape == (chosen, 3, 96, 96)
    picked = np.concatenate([per_well["D06"], per_well["B07"]])
    assert all(contains(picked, crop) and not contains(per_well["D07"], crop) for crop in result.controls)
    assert any(contains(per_well["D06"], c) for c in result.controls) and any(contains(per_well["B07"], c) for c in result.controls)


def test_loaddata_controls(viewer_and_widget, qtbot, tmp_path):
    _, widget = viewer_and_widget
    path = channel_model_file(tmp_path / "cpg.safetensors", DATASET_CHANNELS["cpg0000"], 96, JUMP_UM, "test")
    load(qtbot, widget, path)
    controls = widget.controls
    controls.choose("plate")
    controls.plate_file.value = CPG / "load_data.csv"
    assert controls.chosen_wells() == ["A01"] and not controls._images_row.isVisible()  # a LoadData CSV marks none: all
    expected = crops_from_plate(CPG / "load_data.csv", ["A01"], load_model_file(path, "cpu"))
    assert expected.shape[1:] == (5, 96, 96) and expected.dtype == np.uint8
    generate(qtbot, widget, steps=2, cells=2)
    assert result_of(widget) is not None, widget.status.text()
    np.testing.assert_array_equal(result_of(widget).controls, expected[:2])


def test_plate_errors_on_the_status_line(viewer_and_widget, qtbot, tmp_path):
    _, widget = viewer_and_widget
    load(qtbot, widget, channel_model_file(tmp_path / "nf1.safetensors", parse_channels("DAPI,GFP,RFP"), 96))
    missing = tmp_path / "no-such-folder"
    use_plate_map(widget, images=missing)
    generate(qtbot, widget, steps=2, cells=2)
    text = widget.status.text()
    assert f"the images folder {missing} does not exist" in text and "platemap.csv" in text, text
    assert result_of(widget) is None
    widget.controls.choose_wells(set())
    widget.generate_button.click()
    wait_idle(qtbot, widget)
    assert "tick the control wells" in widget.status.text()
    widget.controls.plate_file.value = tmp_path / "absent.csv"
    assert "absent.csv does not exist" in widget.controls.wells_note.text() and widget.controls.wells.count() == 0


def test_a_fields_pixel_size_comes_from_its_layer_or_the_box(viewer_and_widget, qtbot, tmp_path):
    import tifffile
    from skimage.transform import rescale

    from napari_cellflux.generation.controls import crops_from_field

    viewer, widget = viewer_and_widget
    path = channel_model_file(tmp_path / "cpg.safetensors", DATASET_CHANNELS["cpg0000"], 96, JUMP_UM, "test")
    load(qtbot, widget, path)
    controls = widget.controls
    controls.choose("sample")
    assert not controls._pixel_size_row.isVisibleTo(widget)  # only fields and plates have one
    names = [c.name for c in DATASET_CHANNELS["cpg0000"]]  # DNA, ER, RNA, AGP, Mito
    numbers = {"Mito": 1, "AGP": 2, "RNA": 3, "ER": 4, "DNA": 5}
    native = [tifffile.imread(CPG / f"r01c01f01p01-ch{numbers[n]}sk1fk1fl1.tiff") for n in names]
    fine = [np.round(rescale(p.astype(np.float32), 2, order=1, preserve_range=True)).astype(np.uint16) for p in native]
    # as napari-cellflux's reader opens a field whose TIFF records 0.299 µm pixels
    layers = [viewer.add_image(p, name=f"fine [{n}]", scale=(JUMP_UM / 2,) * 2, units=("µm", "µm"))
              for p, n in zip(fine, names)]
    controls.choose("field")
    controls.field_layers.select(layers)
    assert controls._pixel_size_row.isVisibleTo(widget)
    model = load_model_file(path, "cpu")
    job = controls.job(model, 0, 8)
    assert job.args[-1] == JUMP_UM / 2  # the layer's own µm scale
    np.testing.assert_array_equal(job(), crops_from_field(fine, model, "fine", pixel_size_um=JUMP_UM / 2))
    controls.pixel_size.setValue(JUMP_UM)  # typed: it wins over the layer's scale
    assert controls.job(model, 0, 8).args[-1] == JUMP_UM
    controls.pixel_size.setValue(0)
    for layer in layers:
        layer.scale, layer.units = (1, 1), ("pixel", "pixel")
    assert controls.job(model, 0, 8).args[-1] is None  # unknown: crops_from_field warns
