"""The domain check: statistics of a model's training controls, and new control cells compared with
them before generating (the bundled samples pass; copied channels, a real field in the demo,
16-bit values scaled wrongly and another stain warn), in the API, the CLI, screens and the widget."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from plugin_helpers import FAST, tiny_model

from napari_cellflux import api
from napari_cellflux.cli import main
from napari_cellflux.data.samples import synthetic_controls, synthetic_field
from napari_cellflux.generation.controls import crops_from_field
from napari_cellflux.generation.result import generate_from_pixels
from napari_cellflux.generation.screen import read_manifest, run_screen
from napari_cellflux.models.domain import NOT_CHECKED, DomainWarning, compare, control_statistics

REAL_FIELD = Path(__file__).resolve().parent / "fixtures" / "domain" / "nf1_D6_dapi_256.tif"  # SOURCE.md there
CHANNELS = ["DNA", "cytoskeleton", "cytoplasm"]


@pytest.fixture(scope="module")
def demo():
    """The bundled demo, loaded through the zoo, which attaches its shipped statistics."""
    return api.load_model("demo", device="cpu")


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return synthetic_controls(64)


def domain_warnings(run) -> tuple[object, list[str]]:
    """run()'s value and the DomainWarning messages it raised (each one, even when repeated)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = run()
    return value, [str(w.message) for w in caught if issubclass(w.category, DomainWarning)]


def test_statistics_are_json_and_identical_cells_compare_ok(samples):
    statistics = control_statistics(samples, CHANNELS)
    assert json.loads(json.dumps(statistics)) == statistics
    assert statistics["version"] == 1 and statistics["channels"] == CHANNELS and statistics["dna_channel"] == 0
    assert len(statistics["correlation"]) == 3 and len(statistics["cell_mean_intensity"][0]) == 7
    report = compare(statistics, samples)
    assert report.ok and report.checked and report.findings == [] and report.cells == 64
    assert all(m["ok"] for m in report.measures)
    scaled = control_statistics(samples, CHANNELS, pixel_size_um=0.5)
    assert scaled["nuclear_area_um2"] == [pytest.approx(a * 0.25, abs=1e-3) for a in scaled["nuclear_area_px"]]
    assert compare(scaled, samples, pixel_size_um=0.5).ok
    findings = compare(scaled, samples, pixel_size_um=1.0).findings  # the same pixels, said to be twice as large
    assert len(findings) == 1 and findings[0].startswith("nuclei are 4.0x the training controls' area") and "µm²" in findings[0]


def test_the_dna_channel_is_found_by_name():
    cells = synthetic_controls(8)
    assert control_statistics(cells, ["actin", "Hoechst 33342", "tubulin"])["dna_channel"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bundled_samples_and_field_cut_cells_pass_against_the_demo(demo, seed):
    assert demo.control_statistics["cells"] == 300  # CONTROL_SAMPLE of the train-split DMSO cells of the demo's screen
    cells = crops_from_field([synthetic_field(seed).image], demo, "synthetic field")
    for pixels in (synthetic_controls(64, seed=seed), cells):
        report = compare(demo.control_statistics, pixels)
        assert report.ok, report.findings


def test_a_channel_copied_into_three_is_named(demo, samples):
    copies = np.repeat(samples[:, :1], 3, axis=1)
    report = compare(demo.control_statistics, copies)
    assert not report.ok
    assert report.findings[0].startswith(
        "channels 1 and 2 (cytoskeleton, cytoplasm) are copies of channel 0 (DNA) (r = 1.00; the model's training controls have r = 0.29 and 0.46)"
    )
    assert len(report.findings) == 1  # the copies' own measures would only repeat channel 0's


def test_a_real_field_in_the_demo_warns(demo):
    field = tifffile.imread(REAL_FIELD)  # one real DAPI channel, as a user with one stain might give it
    cells = crops_from_field([field] * 3, demo, "nf1 field")
    report = compare(demo.control_statistics, cells)
    assert not report.ok
    assert any("are copies of channel 0 (DNA)" in f for f in report.findings)
    area = next(f for f in report.findings if f.startswith("nuclei are"))
    assert "x the training controls' area" in area and "wrong scale?" in area


def test_16_bit_values_scaled_wrongly_warn(demo, samples):
    twelve_bit = samples.astype(np.uint16) * 16  # a 12-bit camera's values in a 16-bit file
    dark = (twelve_bit // 256).astype(np.uint8)  # converted as if the full 16 bits were used
    findings = compare(demo.control_statistics, dark).findings
    assert len(findings) == 3 and all("near-black: 16-bit values scaled wrongly?" in f for f in findings)
    assert findings[0].startswith("channel 0 (DNA) intensity (median cell mean)")
    saturated = np.clip(twelve_bit, 0, 255).astype(np.uint8)  # cut off at 8 bits instead of scaled
    findings = compare(demo.control_statistics, saturated).findings
    assert findings and all("of the pixels are saturated (255" in f for f in findings)


def test_another_stain_and_wrong_scale_warn(demo, samples):
    noise = np.random.default_rng(0).normal(0, 8, samples[:, 0].shape)
    nuclear = samples.copy()  # a nuclear stain where the cytoplasm stain belongs
    nuclear[:, 2] = np.clip(samples[:, 0] + noise, 0, 255).astype(np.uint8)
    findings = compare(demo.control_statistics, nuclear).findings
    assert any(f.startswith("channels 0 and 2 (DNA, cytoplasm) correlate with r = ") and "another stain" in f for f in findings)

    zoomed = samples[:, :, 8:24, 8:24].repeat(2, axis=2).repeat(2, axis=3)  # imaged at twice the magnification
    findings = compare(demo.control_statistics, zoomed).findings
    assert any(f.startswith("nuclei are 3.") and "wrong scale?" in f for f in findings)


def test_generation_warns_and_records_the_report(demo, samples, tmp_path):
    copies = np.repeat(samples[:8, :1], 3, axis=1)
    result, messages = domain_warnings(lambda: generate_from_pixels(demo, copies, perturbation="colchicine", sampling=FAST))
    check = result.trajectory.metadata["domain_check"]
    assert not check["ok"] and check["checked"] and messages == check["findings"] == result.domain_messages
    result.write_tiff(tmp_path / "run.tif")
    with tifffile.TiffFile(tmp_path / "run.tif") as tif:
        assert json.loads(tif.imagej_metadata["Info"])["domain_check"] == check

    result, messages = domain_warnings(lambda: generate_from_pixels(demo, samples[:8], perturbation="colchicine", sampling=FAST))
    assert messages == [] and result.trajectory.metadata["domain_check"]["ok"]


def test_a_model_without_statistics_says_not_checked_once(samples, tmp_path):
    model = tiny_model()
    result, messages = domain_warnings(lambda: generate_from_pixels(model, samples[:4], perturbation="colchicine", sampling=FAST))
    assert messages == [NOT_CHECKED] == result.domain_messages
    assert result.trajectory.metadata["domain_check"]["checked"] is False

    report, messages = domain_warnings(lambda: run_screen(
        model, samples[:4], tmp_path / "screen", n_cells=6, chunk_size=2, perturbation="colchicine", sampling=FAST))
    assert messages == [NOT_CHECKED]  # once for the pool, not once per chunk
    assert report.domain_check["note"] == NOT_CHECKED
    assert read_manifest(tmp_path / "screen" / "manifest.json")["domain_check"] == report.domain_check


def test_cli_prints_one_warning_line_per_finding_and_still_writes(samples, tmp_path, capsys):
    controls = tmp_path / "copies.npy"
    np.save(controls, np.repeat(samples[:4, :1], 3, axis=1))
    out = tmp_path / "out.tif"
    code = main(["generate", "--model", "demo", "--controls", str(controls), "--perturbation", "colchicine",
                 "--steps", "2", "--solver", "euler", "--out", str(out), "--quiet"])
    assert code == 0 and out.is_file()
    err = capsys.readouterr().err.splitlines()
    assert err == ["cellflux generate: warning: channels 1 and 2 (cytoskeleton, cytoplasm) are copies of channel 0 (DNA) "
                   "(r = 1.00; the model's training controls have r = 0.29 and 0.46)"]


def test_training_records_the_statistics_of_its_controls(tmp_path):
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from training.config import load_config
    from training.train import train

    screen = make_synthetic_screen(tmp_path / "screen", SyntheticScreenConfig(image_size=16, batches=2, controls_per_batch=8,
                                                                              cells_per_perturbation=4))
    overrides = {"data.root": str(screen), "data.synthetic": "false", "model.image_size": "16", "optim.batch_size": "4",
                 "model.overrides": "{model_channels: 16, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [], norm_groups: 8}",
                 "optim.steps": "1", "run.out": str(tmp_path / "run"), "run.device": "cpu", "morph.steps": "0"}
    result = train(load_config("demo", [f"{k}={v}" for k, v in overrides.items()]), quiet=True)
    statistics = api.load_model(result.model_path).control_statistics
    # train split: 80% of 8 DMSO cells in each of 2 batches
    assert statistics["version"] == 1 and statistics["cells"] == 2 * 6 and statistics["image_size"] == 16
    assert statistics["channels"] == CHANNELS


def test_the_shipped_demo_statistics_are_current():
    from training.demo_statistics import main as demo_statistics

    assert demo_statistics(["--check"]) == 0


@pytest.mark.slow
def test_the_command_behind_the_docs_figures_runs(capsys):
    from benchmarks.domain_check import main as domain_check

    assert domain_check([]) == 0
    out = capsys.readouterr().out
    assert "| nuclear area px |" in out and "groups of 1: 512 groups, findings: 0" in out
    assert "are copies of channel 0 (DNA)" in out  # the test fixture, copied x3


def test_the_widget_lists_the_findings_beside_generate_until_the_next_run(viewer_and_widget, qtbot, samples):
    viewer, widget = viewer_and_widget
    widget.model.load.click()  # the bundled demo, first in the list
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    copies = viewer.add_image(np.repeat(samples[:4, :1], 3, axis=1), name="copies")
    widget.controls.choose("crops")
    widget.controls.crop_layers.select([copies])
    widget.sampling.solver.setCurrentText("euler")
    widget.sampling.steps.setValue(2)
    widget.sampling.cells.setValue(4)
    widget.generate_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert widget.columns.runs, widget.status.text()
    assert not widget.domain_warning.isHidden()
    assert "⚠ channels 1 and 2 (cytoskeleton, cytoplasm) are copies of channel 0 (DNA)" in widget.domain_warning.text()
    assert "color: #ff9f1c" in widget.domain_warning.styleSheet()

    widget.controls.choose("sample")  # the demo's own kind of cells: nothing to say
    widget.generate_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert widget.domain_warning.isHidden() and widget.domain_warning.text() == ""

