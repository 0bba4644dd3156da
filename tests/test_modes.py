"""The two generation modes (issue 14): "morph" carries each clean control cell continuously to
the perturbed state, "sample" is the paper's sampling from control + noise; in both, frame 0 of
what is shown and exported is the real controls, and the noised start is named as what it is."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch
from plugin_helpers import FAST, tiny_model, tiny_model_file

from napari_cellflux import api
from napari_cellflux.cli import main
from napari_cellflux.data.samples import synthetic_controls
from napari_cellflux.errors import InputError
from napari_cellflux.generation.result import generate_from_pixels
from napari_cellflux.models.domain import DomainWarning
from napari_cellflux.settings import DEFAULT_MODE, MODE_NAMES, MODES, SamplingConfig, check_mode, check_mode_noise


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cells():
    return synthetic_controls(4, seed=3)


def run(model, cells, mode, sampling=FAST, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)  # the tiny model records no training statistics
        return generate_from_pixels(model, cells, device="cpu", perturbation="colchicine", mode=mode,
                                    sampling=sampling, seed=2, **options)


def step_changes(frames: np.ndarray) -> np.ndarray:
    """(F - 1,) mean absolute change, in grey levels, from each frame to the next."""
    return np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3, 4))


def test_mode_names_and_their_checks():
    assert MODE_NAMES == ("morph", "sample") and DEFAULT_MODE == "sample"
    assert "noise level 0" in MODES["morph"] and "control + noise" in MODES["sample"]
    assert check_mode("morph") == "morph"
    with pytest.raises(InputError, match=r"unknown mode 'morf'; choose one of \['morph', 'sample'\]"):
        check_mode("morf")
    paper = SamplingConfig()
    assert paper.for_mode("morph") == SamplingConfig(noise_level=0.0) and paper.for_mode("sample") == paper
    check_mode_noise("morph", None)
    check_mode_noise("morph", 0.0)
    check_mode_noise("sample", 0.7)
    with pytest.raises(InputError, match="--mode morph starts from the clean controls.*--noise-level 0.5"):
        check_mode_noise("morph", 0.5)


def test_morph_starts_from_the_clean_controls_whatever_the_sampling_says(model, cells):
    assert FAST.noise_level > 0
    result = run(model, cells, "morph")
    np.testing.assert_array_equal(result.frames[0], cells)
    torch.testing.assert_close(result.trajectory.states[0], model.normalization.to_model(cells), rtol=0, atol=0)
    meta = result.trajectory.metadata
    assert result.mode == meta["mode"] == "morph" and meta["noise_level"] == 0.0
    # the start equals the controls, so it is not repeated: controls, then the grid states after t = 0
    assert len(result.frames) == FAST.steps + 1
    np.testing.assert_array_equal(result.frames[1:], result.pixels[1:])
    assert result.frame_names == ["controls (t = 0)", "t = 0.250", "t = 0.500", "t = 0.750", "t = 1 (perturbed)"]
    np.testing.assert_allclose(result.frame_times, [0, 0.25, 0.5, 0.75, 1])


def test_a_model_can_recommend_another_guidance_for_morph(model, cells, tmp_path):
    from dataclasses import replace

    from napari_cellflux.models.model_file import load_model_file, save_model

    two = SamplingConfig(guidance=0.2, morph_guidance=0.05)
    assert two.for_mode("morph") == SamplingConfig(guidance=0.05, noise_level=0.0)
    assert two.for_mode("sample") == SamplingConfig(guidance=0.2)
    # an explicit guidance is the guidance of both modes; other overrides keep the morph's
    assert two.with_overrides(guidance=0.3).for_mode("morph").guidance == 0.3
    assert two.with_overrides(steps=3, guidance=None).for_mode("morph").guidance == 0.05
    with pytest.raises(InputError, match="morph_guidance must be >= 0"):
        SamplingConfig(morph_guidance=-0.1)
    # a morph at morph_guidance is the morph at that guidance, and is recorded as such
    morphed = run(model, cells, "morph", replace(FAST, morph_guidance=0.05))
    assert morphed.trajectory.metadata["guidance"] == 0.05 and morphed.trajectory.metadata["morph_guidance"] is None
    np.testing.assert_array_equal(morphed.pixels, run(model, cells, "morph", replace(FAST, guidance=0.05)).pixels)
    assert not np.array_equal(morphed.pixels, run(model, cells, "morph").pixels)
    sampled = run(model, cells, "sample", replace(FAST, morph_guidance=0.05))
    np.testing.assert_array_equal(sampled.pixels, run(model, cells, "sample").pixels)
    # the model file keeps it; a file without it morphs at its guidance
    path = tmp_path / "two.safetensors"
    save_model(replace(model, sampling=replace(FAST, morph_guidance=0.05)), path)
    assert load_model_file(path).sampling.morph_guidance == 0.05
    assert load_model_file(tiny_model_file(tmp_path / "one.safetensors")).sampling.morph_guidance is None


def test_a_source_noise_network_is_told_each_modes_start(cells, tmp_path):
    """A network built with condition_on_source_noise hears 0 in every morph forward and the
    sampling noise level in every sample forward, and keeps the option through its model file."""
    from dataclasses import replace

    from helpers import randomize, tiny_config

    from napari_cellflux.core.unet import UNet
    from napari_cellflux.models.model_file import load_model_file, save_model

    base = tiny_model()
    unet = randomize(UNet(tiny_config(condition_dim=base.vocabulary.dim, condition_on_source_noise=True)), 0)
    path = tmp_path / "flagged.safetensors"
    save_model(replace(base, unet=unet), path)
    model = load_model_file(path)
    assert model.config.condition_on_source_noise
    heard = []
    model.unet.register_forward_pre_hook(lambda module, args: heard.append(args[4].unique().tolist()))
    run(model, cells, "morph")
    assert heard and all(levels == [0.0] for levels in heard)
    heard.clear()
    run(model, cells, "sample")
    assert heard and all(levels == [FAST.noise_level] for levels in heard)


def test_the_morph_is_continuous_in_t(model, cells):
    coarse = step_changes(run(model, cells, "morph", FAST.with_overrides(steps=8)).frames)
    fine_result = run(model, cells, "morph", FAST.with_overrides(steps=16))
    fine = step_changes(fine_result.frames)
    moved = np.abs(fine_result.frames[-1].astype(np.float64) - cells).mean()
    assert moved > 1  # the cells do change ...
    assert coarse.max() < 0.25 * moved  # ... a little at each step, from the very first one
    assert fine.max() < 0.7 * coarse.max()  # and by less where the steps are smaller: no jump anywhere
    noised = step_changes(run(model, cells, "sample", FAST.with_overrides(steps=8)).frames)
    assert noised[0] > 5 * coarse.max()  # whereas sampling starts with a jump into noise


def test_sample_shows_the_controls_then_the_noised_start(model, cells):
    result = run(model, cells, "sample")
    assert result.mode == "sample" and result.trajectory.metadata["noise_level"] == FAST.noise_level
    np.testing.assert_array_equal(result.frames[0], cells)
    noise = torch.randn(cells.shape, generator=torch.Generator().manual_seed(2))  # as generate draws it from the seed
    x_init = model.normalization.to_model(cells) + FAST.noise_level * noise
    np.testing.assert_array_equal(result.frames[1], model.normalization.to_pixels(x_init))
    np.testing.assert_array_equal(result.frames[1:], result.pixels)
    assert result.frame_names[:2] == ["controls (t = 0)", "noised start (t = 0, control + 0.5 x noise)"]
    assert result.frame_names[-1] == "t = 1 (perturbed)" and len(result.frame_names) == len(result.frames) == FAST.steps + 2
    np.testing.assert_allclose(result.frame_times, [0, 0, 0.25, 0.5, 0.75, 1])


def test_frame_at_finds_the_nearest_frame_and_t0_is_the_controls(model, cells):
    sample, morph = run(model, cells, "sample"), run(model, cells, "morph")
    assert sample.frame_at(0) == morph.frame_at(0) == 0
    assert sample.frame_at(0.3) == 2 and morph.frame_at(0.3) == 1
    assert sample.frame_at(1) == len(sample.frames) - 1 and morph.frame_at(np.float32(0.9)) == len(morph.frames) - 1
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(InputError, match="t must be a number in"):
            sample.frame_at(bad)


def test_edm_grid_and_final_only_frames(model, cells):
    edm = SamplingConfig(solver="euler", grid="edm", steps=4, guidance=0.2, noise_level=0.5)
    result = run(model, cells, "morph", edm)
    assert result.times[0] > 0 and result.frame_times[0] == 0  # the grid starts just after 0; the controls are t = 0
    assert len(result.frames) == len(result.times) and result.frame_names[0] == "controls (t = 0)"
    sample = run(model, cells, "sample", edm)
    assert sample.frame_names[1].startswith(f"noised start (t = {sample.times[0]:.3f}, control + 0.5 x noise")
    final = run(model, cells, "sample", final_only=True)
    assert final.frame_names == ["controls (t = 0)", "t = 1 (perturbed)"]
    np.testing.assert_array_equal(final.frames[0], cells)
    np.testing.assert_array_equal(final.frames[1], final.pixels[-1])


def test_api_mode_and_bad_modes(model, cells):
    x = model.normalization.to_model(cells)
    morph = api.generate(model, x, "colchicine", mode="morph", sampling=FAST, seed=1)
    torch.testing.assert_close(morph.states[0], x, rtol=0, atol=0)
    assert morph.metadata["mode"] == "morph" and morph.metadata["precision"] == "fp32"
    assert api.generate(model, x, "colchicine", sampling=FAST).metadata["mode"] == "sample"
    with pytest.raises(InputError, match="unknown mode 'noisy'"):
        api.generate(model, x, "colchicine", mode="noisy")
    with pytest.raises(InputError, match="unknown mode 'noisy'"):
        run(model, cells, "noisy", before_run=pytest.fail)  # refused before the cost is even estimated


def test_the_cost_estimate_runs_before_a_morph(model, cells):
    seen = []
    result = run(model, cells, "morph", before_run=lambda estimate: seen.append(estimate) or True)
    assert len(seen) == 1 and seen[0].evaluations == FAST.evaluations and seen[0].cells == len(cells)
    assert result.mode == "morph" and result.trajectory.metadata["cost_estimate_s"] >= 0


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.mark.parametrize("mode, extra_frames", [("morph", 0), ("sample", 1)])
def test_cli_mode_end_to_end_on_the_demo(mode, extra_frames, tmp_path, capsys):
    out = tmp_path / "run.tif"
    assert main(["generate", "--perturbation", "colchicine", "--mode", mode, "--solver", "euler", "--grid", "uniform",
                 "--steps", "3", "--n-cells", "3", "--seed", "4", "--quiet", "--out", str(out)]) == 0
    assert f"(mode {mode}, frame 0 = the controls)" in capsys.readouterr().out
    with tifffile.TiffFile(out) as tif:
        frames = tif.asarray()
        info = json.loads(tif.imagej_metadata["Info"])
    assert frames.shape == (4 + extra_frames, 3, 3, 32, 32)
    np.testing.assert_array_equal(frames[0], synthetic_controls(3, 32, 3, 4))  # the CLI's synthetic controls for seed 4
    assert info["mode"] == mode and info["noise_level"] == (0.0 if mode == "morph" else api.load_model("demo").sampling.noise_level)
    assert info["frames"][0] == "controls (t = 0)" and info["precision"] == "fp32"
    assert info["guidance"] == api.load_model("demo").sampling.for_mode(mode).guidance


@pytest.mark.parametrize("argv, message", [
    (["--mode", "morph", "--noise-level", "0.5"], "--mode morph starts from the clean controls"),
    (["--mode", "morphing"], "invalid choice: 'morphing'"),
    (["--gif", "{tmp}/run.gif", "--gif-cells", "9"], "--gif-cells 9: the run has 2 cells"),
    (["--gif-cells", "a,b"], "--gif-cells: must be comma-separated cell numbers"),
    (["--gif", "{tmp}"], "is a folder"),
    (["--gif", "{tmp}/run.png"], "must end in .gif"),
    (["--gif", "{tmp}/run.gif", "--fps", "0"], "--fps must be a number in (0, 50]"),
    (["--gif-cells", "0"], "give --gif PATH too"),
])
def test_cli_conflicts_and_bad_inputs_are_one_line_and_write_nothing(argv, message, model_file, tmp_path, capsys):
    args = ["generate", "--model", str(model_file), "--n-cells", "2", "--steps", "1", "--quiet", "--out", str(tmp_path / "x.tif"),
            *(a.format(tmp=tmp_path) for a in argv)]
    try:
        code = main(args)
    except SystemExit as exit:  # argparse refuses a choice before main's body runs
        code = exit.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_cli_morph_with_noise_level_zero_is_fine(model_file, tmp_path):
    assert main(["generate", "--model", str(model_file), "--n-cells", "1", "--steps", "1", "--quiet", "--mode", "morph",
                 "--noise-level", "0", "--out", str(tmp_path / "x.tif")]) == 0


def test_evaluation_mode_option(model, tmp_path, capsys):
    from training import evaluate as E

    config = E.EvalConfig(checkpoints=[], data="", out="", mode="morph", noise_level=None)
    assert E.sampling_for(model, config).noise_level == 0 and E.sampling_for(model, E.EvalConfig([], "", "")) == model.sampling
    argv = ["--checkpoint", "x", "--data", str(tmp_path), "--out", str(tmp_path / "m.json"), "--mode", "morph", "--noise-level", "0.3"]
    assert E.main(argv) == 2
    assert "--mode morph starts from the clean controls" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_modes_benchmark_reduces_effects_to_the_share_recovered():
    from benchmarks.modes import designed_effects, markdown

    def result(generated: float) -> dict:
        effect = {"truth": 0.5, "real": 0.6, "cellflux": generated}
        return {"perturbations": {"colchicine": {"group": "seen", "effect": {"texture_c1": effect,
                                                                              "nuclear_area": {"truth": 1, "real": 1.0, "cellflux": 1.0}}}}}

    rows = designed_effects({"sample": result(0.7), "morph": result(0.6)})
    assert len(rows) == 1 and rows[0]["feature"] == "texture_c1"  # undesigned features (truth 1) are left out
    assert rows[0]["sample_recovered"] == pytest.approx(0.75) and rows[0]["morph_recovered"] == pytest.approx(1.0)
    assert "| colchicine (seen) | texture_c1 | 0.50 | 0.60 | 0.70 | 75% | 0.60 | 100% |" in markdown({"effects": rows})
