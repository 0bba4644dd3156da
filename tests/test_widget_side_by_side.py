"""The widget's result columns and polish in a real napari viewer (under Xvfb): runs of one set of
controls side by side with titles on the canvas, one t for all, Clear results, layers opened
later, the scale bar, the demo badge, the mode and its noise field, tooltips, the scrollable dock,
the t label before a run and the export targets. Tiny random model, 2-4 steps: 2 CPU cores."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
from plugin_helpers import DEMO, PLUGIN, channel_model_file, guided_model, tiny_model_file
from qtpy.QtWidgets import QScrollArea
from test_widget import generate, load, wait_idle

from napari_cellflux._napari.columns import TITLES
from napari_cellflux._napari.result_box import NO_RESULT
from napari_cellflux.data.samples import synthetic_channels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def run(qtbot, widget, perturbation, steps=2, cells=4, mode="morph"):
    widget.mode.setCurrentIndex(widget.mode.findData(mode))
    widget.perturbation.choose(perturbation)
    generate(qtbot, widget, steps=steps, cells=cells)
    assert widget.columns.runs, widget.status.text()


def x_range(layers) -> tuple[float, float]:
    return min(layer.extent.world[0][-1] for layer in layers), max(layer.extent.world[1][-1] for layer in layers)


def test_the_t_label_agrees_with_the_slider_before_a_run(viewer_and_widget):
    _, widget = viewer_and_widget
    slider = widget.result.slider
    assert slider.value() == slider.minimum() == 0 and not slider.isEnabled()
    assert widget.result.time_label.text() == NO_RESULT == "t = 0 (no result yet)"
    assert not widget.export.tiff_button.isEnabled() and not widget.result.clear_button.isEnabled()


def test_two_perturbations_side_by_side_with_titles_then_clear(viewer_and_widget, qtbot, tiny):
    viewer, widget = viewer_and_widget
    load(qtbot, widget, tiny)
    run(qtbot, widget, "colchicine")
    run(qtbot, widget, "PP-2")
    assert "PP-2 added as column 2" in widget.status.text()
    first, second = widget.columns.runs
    assert first.result.trajectory.metadata["perturbation"] == "colchicine" and second.result.label == "PP-2"
    np.testing.assert_array_equal(first.result.controls, second.result.controls)  # the same cells
    columns = [[viewer.layers[f"{name} [{c.name}]"] for c in first.result.channels]
               for name in ("controls", "colchicine", "PP-2")]
    ranges = [x_range(layers) for layers in columns]
    assert all(right < next_left for (_, right), (next_left, _) in zip(ranges, ranges[1:]))  # left to right
    titles = viewer.layers[TITLES]
    assert list(titles.text.values) == ["controls", "colchicine", "PP-2"]
    corners = titles.data[:, -1] + titles.translate[-1]
    np.testing.assert_allclose(corners, [left for left, _ in ranges])  # each above its column
    assert (titles.data[:, 0] < 0).all()  # above the grids (y grows downwards)
    assert widget.result.columns.text() == "Columns: controls | colchicine | PP-2"

    # one t for all: at t = 0 both show the controls, at t = 1 each its own perturbed cells
    widget.result.slider.setValue(0)
    for layers in columns[1:]:
        np.testing.assert_array_equal(layers[0].data, columns[0][0].data)
    widget.result.slider.setValue(widget.result.slider.maximum())
    assert not np.array_equal(columns[1][0].data, columns[2][0].data)


    widget.result.clear_button.click()
    assert not widget.columns.runs and not [layer for layer in viewer.layers]
    assert widget.result.time_label.text() == NO_RESULT and not widget.result.slider.isEnabled()
    assert not widget.export.tiff_button.isEnabled() and widget.export.run.count() == 0


def test_a_rerun_takes_its_column_and_other_controls_start_a_new_comparison(viewer_and_widget, qtbot, tiny):
    viewer, widget = viewer_and_widget
    load(qtbot, widget, tiny)
    run(qtbot, widget, "colchicine")
    run(qtbot, widget, "colchicine")  # the same perturbation and mode takes its column again
    assert [r.title for r in widget.columns.runs] == ["colchicine"] and "replaced" in widget.status.text()
    assert [layer.name for layer in viewer.layers].count("colchicine [DNA]") == 1
    widget.sampling.seed.setValue(1)  # other synthetic sample cells
    run(qtbot, widget, "PP-2")
    assert [r.title for r in widget.columns.runs] == ["PP-2"]
    assert "previous columns were cleared" in widget.status.text()
    assert "colchicine [DNA]" not in viewer.layers and list(viewer.layers[TITLES].text.values) == ["controls", "PP-2"]


def test_modes_side_by_side_map_one_t_to_each_runs_nearest_frame(viewer_and_widget, qtbot, tiny):
    _, widget = viewer_and_widget
    load(qtbot, widget, tiny)
    assert widget.mode.mode() == "morph" and not widget.sampling.noise.isEnabled()
    assert "noise level 0" in widget.sampling.noise.toolTip()
    run(qtbot, widget, "colchicine", steps=2)
    run(qtbot, widget, "colchicine", steps=2, mode="sample")
    assert widget.sampling.noise.isEnabled()
    morph, sample = widget.columns.runs
    assert sample.title == "colchicine (sampled)"
    assert len(morph.result.frame_names) == 3 and len(sample.result.frame_names) == 4  # + the noised start
    # t: controls, the noised start (t = 0), 0.5, 1; morph's t = 0 is its controls
    np.testing.assert_array_equal(widget.columns.table, [[0, 0, 1, 2], [0, 1, 2, 3]])
    widget.result.slider.setValue(1)
    assert widget.result.time_label.text().startswith("noised start (t = 0")
    channel = sample.result.channels[0].name
    shown = widget._viewer.layers[f"colchicine (sampled) [{channel}]"].data
    assert not np.array_equal(shown, widget._viewer.layers[f"controls [{channel}]"].data)  # noise on it
    np.testing.assert_array_equal(widget._viewer.layers[f"colchicine [{channel}]"].data,
                                  widget._viewer.layers[f"controls [{channel}]"].data)


def test_a_sample_opened_after_a_run_neither_covers_the_result_nor_takes_its_t(viewer_and_widget, qtbot, tiny):
    viewer, widget = viewer_and_widget
    load(qtbot, widget, tiny)
    run(qtbot, widget, "colchicine", steps=4)
    mine = widget.columns.layers
    samples = viewer.open_sample(PLUGIN, "controls")  # (16, 32, 32) stacks at the origin
    assert x_range(samples)[1] < x_range(widget.columns.layers)[0]  # the result moved right of them
    assert {layer.ndim for layer in mine} == {2}  # no dims axis napari could share
    generated = viewer.layers["colchicine [DNA]"]
    before = generated.data.copy()
    viewer.dims.set_current_step(0, 7)  # the samples' own axis
    np.testing.assert_array_equal(generated.data, before)
    assert widget.result.slider.value() == widget.result.slider.maximum()
    widget.result.slider.setValue(0)  # the widget's t still drives the result alone
    np.testing.assert_array_equal(generated.data, viewer.layers["controls [DNA]"].data)
    assert viewer.dims.current_step[0] == 7


def test_scale_bar_in_micrometres_where_the_pixel_size_is_known(viewer_and_widget, qtbot, tmp_path, tiny):
    viewer, widget = viewer_and_widget
    load(qtbot, widget, channel_model_file(tmp_path / "scaled.safetensors", synthetic_channels(3), 32, 0.65, "test"))
    generate(qtbot, widget, steps=2, cells=4)
    assert widget.columns.runs, widget.status.text()
    assert viewer.scale_bar.visible and [str(u) for u in viewer.layers.units] == ["micrometer"] * 2
    assert all(tuple(layer.scale) == (0.65, 0.65) for layer in widget.columns.layers)

    widget.result.clear_button.click()
    load(qtbot, widget, tiny)  # no pixel size: pixels, and no scale bar
    run(qtbot, widget, "colchicine")
    assert not viewer.scale_bar.visible and all(tuple(layer.scale) == (1, 1) for layer in widget.columns.layers)


def test_the_demo_is_badged_as_synthetic(viewer_and_widget, qtbot, tiny):
    _, widget = viewer_and_widget
    badge = widget.model.demo_badge
    assert badge.isHidden()
    load(qtbot, widget, DEMO)
    assert not badge.isHidden() and "designed, not learned from real cells" in badge.text()
    load(qtbot, widget, tiny)
    assert badge.isHidden()


def test_autoguidance_field_follows_the_model_and_the_mode(viewer_and_widget, qtbot, tiny, tmp_path):
    from napari_cellflux._napari.sampling_box import MORPH_AUTOGUIDANCE_TIP, NO_GUIDE_TIP
    from napari_cellflux.models.model_file import save_model

    _, widget = viewer_and_widget
    field = widget.sampling.autoguidance
    load(qtbot, widget, tiny)  # no guide network: nothing to set
    widget.mode.setCurrentIndex(widget.mode.findData("sample"))
    assert not field.isEnabled() and field.toolTip() == NO_GUIDE_TIP
    save_model(guided_model(autoguidance=1.5), tmp_path / "guided.safetensors")
    load(qtbot, widget, tmp_path / "guided.safetensors")
    assert field.isEnabled() and field.value() == 1.5 and "v_guide" in field.toolTip()
    run(qtbot, widget, "colchicine", mode="sample")
    assert widget.columns.runs[-1].result.trajectory.metadata["autoguidance"] == 1.5
    widget.mode.setCurrentIndex(widget.mode.findData("morph"))
    assert not field.isEnabled() and field.toolTip() == MORPH_AUTOGUIDANCE_TIP
    run(qtbot, widget, "colchicine")
    assert widget.columns.runs[-1].result.trajectory.metadata["autoguidance"] == 0.0


def test_guidance_field_shows_each_modes_guidance_until_the_user_sets_one(viewer_and_widget, qtbot, tmp_path):
    from dataclasses import replace

    from napari_cellflux.models.model_file import save_model

    _, widget = viewer_and_widget
    field = widget.sampling.guidance
    model = guided_model()
    model.sampling = replace(model.sampling, guidance=0.2, morph_guidance=0.1)
    save_model(model, tmp_path / "two.safetensors")
    widget.mode.setCurrentIndex(widget.mode.findData("morph"))
    load(qtbot, widget, tmp_path / "two.safetensors")
    assert field.value() == 0.1
    run(qtbot, widget, "colchicine")
    assert widget.columns.runs[-1].result.trajectory.metadata["guidance"] == 0.1
    widget.mode.setCurrentIndex(widget.mode.findData("sample"))
    assert field.value() == 0.2
    run(qtbot, widget, "PP-2", mode="sample")
    assert widget.columns.runs[-1].result.trajectory.metadata["guidance"] == 0.2
    field.setValue(0.35)  # the user's own guidance stays through a change of mode, and is the morph's
    widget.mode.setCurrentIndex(widget.mode.findData("morph"))
    assert field.value() == 0.35
    widget.result.clear_button.click()  # a rerun of colchicine would take its column
    run(qtbot, widget, "colchicine")
    assert widget.columns.runs[-1].result.trajectory.metadata["guidance"] == 0.35


def test_dock_order_tooltips_and_scrolling(viewer_and_widget, qtbot):
    _, widget = viewer_and_widget
    content = widget.scroll.widget()
    assert isinstance(widget.scroll, QScrollArea)
    order = [content.layout().indexOf(w) for w in (widget.model, widget.controls, widget.perturbation, widget.sampling)]
    assert order == sorted(order) and -1 not in order  # the model is chosen before the controls
    assert all(w.toolTip() for w in widget.sampling.fields.values())
    assert all(widget.mode.itemData(i, 3) for i in range(widget.mode.count()))  # 3: Qt's ToolTipRole
    widget.show()
    widget.resize(widget.width(), 300)  # a short dock
    widget.controls.choose("field")
    widget.sampling.expand(animate=False)
    qtbot.waitUntil(lambda: widget.sampling.isExpanded())
    visible = [content.layout().itemAt(i).widget() for i in range(content.layout().count())]
    boxes = [w.geometry() for w in visible if w is not None and w.isVisible()]
    assert all(a.bottom() < b.top() for a, b in zip(boxes, boxes[1:]))  # stacked, none drawn over another
    assert content.height() > widget.scroll.viewport().height()  # scrolls instead of squeezing


def test_export_targets_and_the_gif(viewer_and_widget, qtbot, tiny, tmp_path):
    _, widget = viewer_and_widget
    load(qtbot, widget, tiny)
    run(qtbot, widget, "colchicine", steps=2, cells=3)
    export = widget.export
    export.file.line_edit.value = ""
    export.tiff_button.click()
    assert widget.status.text().startswith("Export: give a file name ending in .tif")
    export.file.value = tmp_path
    export.tiff_button.click()
    assert f"Export {tmp_path} is a folder" in widget.status.text()
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tif"))  # not <folder>.tif beside the folder

    export.file.value = tmp_path / "morph.tif"  # the GIF takes the name with its own suffix
    export.cells.setText("0, 2")
    export.gif_button.click()
    wait_idle(qtbot, widget)
    gif = iio.imread(tmp_path / "morph.gif", index=None)
    assert gif.shape[0] == len(widget.columns.runs[0].result.frame_names) and gif.shape[-1] in (3, 4)
    export.cells.setText("5")
    export.gif_button.click()
    assert widget.status.text() == "Export: cells '5': the run has 3 cells, numbered 0 to 2"
    export.cells.setText("a")
    export.gif_button.click()
    assert "write cell numbers like 0,3,5 or 0-3" in widget.status.text()


def test_the_phenotype_of_each_new_run_is_measured_in_the_dock(viewer_and_widget, qtbot):
    _, widget = viewer_and_widget
    load(qtbot, widget, DEMO)
    run(qtbot, widget, "colchicine", steps=2, cells=12)
    panel = widget.phenotype_panel
    qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
    assert panel.phenotype is not None, panel.status.text()
    assert widget.phenotype.title() == "Phenotype of colchicine" and panel.export_button.isEnabled()
    assert len(panel.phenotype.along_t) == len(widget.columns.runs[0].result.times)  # measured along t
    run(qtbot, widget, "PP-2", steps=2, cells=12)
    qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
    assert widget.phenotype.title() == "Phenotype of PP-2" and panel.phenotype is not None
