"""The napari plugin in a real napari viewer (under Xvfb): manifest, sample data, generation,
layers, the t slider, cancel, export and input errors. Tiny model, few steps: 2 CPU cores.
Side by side columns, the scale bar, the badge and the dock's polish: test_widget_side_by_side.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from npe2 import PluginManifest
from plugin_helpers import DEMO, PLUGIN
from qtpy.QtCore import Qt

from napari_cellflux._napari.writer import LAYER_KEY

CHANNELS = ("DNA", "cytoskeleton", "cytoplasm")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def model_file():
    """The tests generate with the bundled demo model (3 channels, 32 x 32 crops)."""
    return DEMO


def wait_idle(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def load(qtbot, widget, path):
    widget.model.choose_file(path)
    widget.model.load.click()
    wait_idle(qtbot, widget)
    assert widget._model is not None, widget.status.text()


def use_layers(widget, key, layers):
    widget.controls.choose(key)
    picker = widget.controls.crop_layers if key == "crops" else widget.controls.field_layers
    picker.select(layers)


def progress_bars() -> list:
    from napari.utils import progress

    return list(progress._all_instances)


def result_of(widget):
    """The newest run's GenerationResult (None before any)."""
    return widget.columns.runs[-1].result if widget.columns.runs else None


def generate(qtbot, widget, steps=4, cells=4):
    widget.sampling.solver.setCurrentText("euler")
    widget.sampling.grid.setCurrentText("uniform")  # grid times 0, 1/steps, ..., 1
    widget.sampling.steps.setValue(steps)
    widget.sampling.cells.setValue(cells)
    widget.generate_button.click()
    wait_idle(qtbot, widget)


def test_manifest_is_valid_and_its_python_names_import():
    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["CellFlux"]
    assert {s.key for s in contributions.sample_data} == {"controls", "field"}
    assert contributions.writers[0].filename_extensions == [".cellflux.tif"]


def test_generate_from_sample_controls_then_slide_and_export(viewer_and_widget, qtbot, model_file, tmp_path):
    viewer, widget = viewer_and_widget
    samples = viewer.open_sample(PLUGIN, "controls")
    assert [layer.name for layer in samples] == [f"control cells [{c}]" for c in CHANNELS]
    load(qtbot, widget, model_file)
    assert "3 channels (DNA, cytoskeleton, cytoplasm); 32 x 32 px crops;" in widget.model.info.text()
    tips = {widget.perturbation.names.item(i).text(): widget.perturbation.names.item(i).toolTip()
            for i in range(widget.perturbation.names.count())}
    assert tips.pop("DMSO").startswith("The control (untreated)") and not any(tips.values())
    widget.perturbation.search.setText("COL")
    listed = [widget.perturbation.names.item(i).text() for i in range(widget.perturbation.names.count())]
    assert listed[0] == "colchicine" and "PP-2" not in listed
    widget.perturbation.choose("colchicine")
    use_layers(widget, "crops", samples)
    assert widget.mode.mode() == "morph"  # the widget's default: watch each cell change
    generate(qtbot, widget, steps=4, cells=5)

    controls = [viewer.layers[f"controls [{c}]"] for c in CHANNELS]
    generated = [viewer.layers[f"colchicine [{c}]"] for c in CHANNELS]
    result = generated[0].metadata[LAYER_KEY]
    # 5 cells -> a 2 x 3 grid of 32-px tiles with 2-px gaps; 5 frames: the controls, then 4 Euler steps
    assert [layer.data.shape for layer in controls + generated] == [(66, 100)] * 6
    assert result.frames.shape == (5, 5, 3, 32, 32) and result.mode == "morph"
    assert [layer.colormap.name for layer in generated] == [c.color for c in result.channels]
    assert {layer.blending for layer in controls + generated} == {"additive"}
    assert generated[0].translate[-1] > controls[0].translate[-1] + 100  # to the right of the controls
    assert controls[0].translate[-1] > samples[0].extent.world[1][-1]  # and of the sample layers
    np.testing.assert_array_equal(controls[1].data[:32, :32], samples[1].data[0])  # cell 0, channel 1
    slider = widget.result.slider
    assert (slider.minimum(), slider.maximum(), slider.value()) == (0, 4, 4)  # the perturbed cells (t = 1) first
    assert not np.array_equal(generated[0].data, controls[0].data)

    # t = 0 is the real controls; each frame of the slider is a grid state, named in the label
    slider.setValue(0)
    assert widget.result.time_label.text() == "controls (t = 0) · frame 0/4"
    for control, layer in zip(controls, generated):
        np.testing.assert_array_equal(layer.data, control.data)
    slider.setValue(1)
    assert widget.result.time_label.text() == "t = 0.250 · frame 1/4"
    shown = np.asarray(generated[0]._slice.image.raw)
    np.testing.assert_array_equal(shown, generated[0].data)
    assert not np.array_equal(generated[0].data, controls[0].data)

    # export: every frame, then only the current t, read back as Fiji would
    widget.export.file.value = tmp_path / "run.tif"
    widget.export.tiff_button.click()
    wait_idle(qtbot, widget)
    with tifffile.TiffFile(tmp_path / "run.tif") as tif:
        assert tif.series[0].shape == (5, 5, 3, 32, 32) and tif.series[0].axes == "TZCYX"
        info = json.loads(tif.imagej_metadata["Info"])
    assert info["perturbation"] == "colchicine" and info["model_sha256"] == result.trajectory.metadata["model_sha256"]
    assert (info["seed"], info["solver"], info["steps"], info["mode"]) == (0, "euler", 4, "morph")
    slider.setValue(3)
    widget.export.choice.setCurrentIndex(1)
    widget.export.file.value = tmp_path / "t075"  # .tif is added
    widget.export.tiff_button.click()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "t075.tif"), result.frames[3])
    assert not list(tmp_path.glob(".*.part"))  # atomic writes leave no temporary files

    # File > Save Selected Layers with the plugin's writer
    viewer.layers.selection = set(generated)
    viewer.layers.save(str(tmp_path / "saved.cellflux.tif"), selected=True, plugin=PLUGIN)
    assert tifffile.imread(tmp_path / "saved.cellflux.tif").shape == (5, 5, 3, 32, 32)


def test_cancel_mid_run_leaves_no_partial_layer(viewer_and_widget, qtbot, model_file, monkeypatch):
    from napari_cellflux._napari import jobs

    monkeypatch.setattr(jobs, "ASK_BEFORE_S", float("inf"))  # a busy machine must not turn this into a dialog
    viewer, widget = viewer_and_widget
    cells = np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32), dtype=np.uint8)
    crops = viewer.add_image(cells, name="crops")
    load(qtbot, widget, model_file)
    use_layers(widget, "crops", [crops])
    widget.sampling.steps.setValue(1000)
    widget.generate_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() > 2, timeout=TIMEOUT_MS)  # running, UI responsive
    assert widget.cancel_button.isEnabled()
    # steps done and time left: on the dock's bar and in napari's activity panel
    activity = widget._activity
    assert activity.total == widget.progress.maximum() == 1000 and 0 < activity.n <= widget.progress.value()
    assert activity.desc.startswith("CellFlux") and "steps · about" in widget.progress.text()
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["crops"]
    assert widget.status.text() == "Cancelled; no layers were added."
    assert widget.progress.maximum() == 1 and not widget.cancel_button.isEnabled()
    assert widget._activity is None and activity not in progress_bars()  # the activity panel's bar is gone


def test_wrong_channel_count_is_reported_with_the_layer_name(viewer_and_widget, qtbot, model_file):
    from napari.utils.notifications import notification_manager

    viewer, widget = viewer_and_widget
    two = viewer.add_image(np.zeros((4, 2, 32, 32), np.uint8), name="two channels")
    load(qtbot, widget, model_file)
    use_layers(widget, "crops", [two])
    generate(qtbot, widget)
    expected = "layer 'two channels': shape (4, 2, 32, 32) has no axis of 3 channels; the model takes 3 channels"
    assert expected in widget.status.text()
    assert expected in notification_manager.records[-1].message
    assert len(viewer.layers) == 1

    widget.controls.choose("crops")
    widget.controls.crop_layers.select([])
    widget.generate_button.click()  # checked before any thread starts
    assert widget.status.text() == "Controls: select the crop layer(s) holding the control cells in the list"
    widget.controls.choose("file")
    widget.generate_button.click()
    assert widget.status.text() == "Controls: choose a file first"


def test_whole_field_with_labels_and_an_unseen_compound(viewer_and_widget, qtbot, model_file):
    viewer, widget = viewer_and_widget
    layers = viewer.open_sample(PLUGIN, "field")
    channels, labels = layers[:3], layers[3]
    load(qtbot, widget, model_file)
    use_layers(widget, "field", channels)
    widget.controls.labels.setCurrentText(labels.name)
    widget.perturbation.smiles.setText("CC(=O)Oc1ccccc1C(=O)O")
    generate(qtbot, widget, steps=2, cells=6)
    # a readable name on the canvas and the layers; the SMILES in full in the metadata and tooltip
    generated = viewer.layers["SMILES 1: CC(=O)Oc1c… [DNA]"]
    assert generated.data.shape == (2 * 34 - 2, 3 * 34 - 2)
    assert generated.metadata[LAYER_KEY].trajectory.metadata["smiles"] == "CC(=O)Oc1ccccc1C(=O)O"
    assert generated.metadata["full_name"] == "SMILES 1: CC(=O)Oc1ccccc1C(=O)O"
    assert list(widget.columns._titles.text.values) == ["controls", "SMILES 1: CC(=O)Oc1c…"]
    assert widget.export.run.itemData(0, Qt.ItemDataRole.ToolTipRole) == "SMILES 1: CC(=O)Oc1ccccc1C(=O)O"

    widget.perturbation.smiles.setText("not a molecule")
    generate(qtbot, widget, steps=2)
    assert "SMILES 'not a molecule' could not be parsed" in widget.status.text()
    assert "SMILES 1: CC(=O)Oc1c… [DNA]" in viewer.layers  # the previous result stays


def test_bundled_demo_is_listed_first_and_generates(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    assert widget.model.choice.itemData(0) == "demo"
    widget.model.load.click()
    wait_idle(qtbot, widget)
    generate(qtbot, widget, steps=4, cells=4)  # synthetic sample cells are the default source
    assert result_of(widget) is not None, widget.status.text()


@pytest.mark.slow
def test_opening_the_widget_does_not_import_torch():
    """napari starts fast: torch is first imported by the worker that loads a model."""
    code = (
        "import sys, napari\n"
        "viewer = napari.Viewer(show=False)\n"
        f"viewer.window.add_plugin_dock_widget({PLUGIN!r}, 'CellFlux')\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "print('matplotlib imported:', 'matplotlib' in sys.modules)\n"
        "viewer.close()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "torch imported: False" in run.stdout, run.stdout + run.stderr
    assert "matplotlib imported: False" in run.stdout, run.stdout  # the phenotype panel plots only after a run


@pytest.mark.parametrize("answer", ["Yes", "No"])
def test_a_long_run_is_put_to_the_user_first(viewer_and_widget, qtbot, model_file, monkeypatch, answer):
    from qtpy.QtWidgets import QMessageBox

    from napari_cellflux._napari import jobs

    viewer, widget = viewer_and_widget
    asked = []
    monkeypatch.setattr(jobs, "ASK_BEFORE_S", 0.0)  # every run counts as long
    monkeypatch.setattr(QMessageBox, "question", lambda parent, title, text: asked.append(text)
                        or getattr(QMessageBox.StandardButton, answer))
    load(qtbot, widget, model_file)
    generate(qtbot, widget)
    wait_idle(qtbot, widget)
    assert len(asked) == 1 and "this run will take about" in asked[0].lower() and "few-step settings" in asked[0]
    generated = [layer for layer in viewer.layers if LAYER_KEY in layer.metadata]
    if answer == "Yes":
        assert generated and result_of(widget) is not None
    else:
        assert not generated and widget.status.text().startswith("Not started: about")
