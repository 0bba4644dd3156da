"""Autoguidance (Karras et al. 2024): v = (1 + a) v_model - a v_guide, with the guide a less-trained
snapshot of the same run carried in the model file; sample mode only, refused without a guide."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from plugin_helpers import FAST, guided_model, tiny_model

from napari_cellflux import api
from napari_cellflux.cli import main
from napari_cellflux.core.flow import autoguidance_mix, network_velocity
from napari_cellflux.core.solvers import integrate, solver, time_grid
from napari_cellflux.core.unet import UNet
from napari_cellflux.errors import InputError
from napari_cellflux.models.model_file import FORMAT_VERSION, CellFluxModel, load_model_file, save_model
from napari_cellflux.settings import SamplingConfig

GUIDED = replace(FAST, autoguidance=1.5)


def controls(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1


class Shift:
    """A fake network: v = x + offset (+ 1 where conditioned), recording its calls."""

    def __init__(self, offset: float):
        self.offset, self.calls = offset, 0

    def __call__(self, x, t, cond, mask=None, source_noise=None):
        self.calls += 1
        conditioned = torch.zeros(len(x)) if cond is None else torch.ones(len(x)) if mask is None else mask
        return x + self.offset + conditioned.reshape(-1, 1, 1, 1)


def test_mix_is_an_extrapolation_away_from_the_guide():
    v_model, v_guide = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(autoguidance_mix(v_model, v_guide, 0.0), v_model)
    torch.testing.assert_close(autoguidance_mix(v_model, v_model, 2.5), v_model)
    # Karras's w = 1 + a: v_guide + w (v_model - v_guide)
    torch.testing.assert_close(autoguidance_mix(v_model, v_guide, 1.5), v_guide + 2.5 * (v_model - v_guide))


@pytest.mark.parametrize("guidance", [0.0, 0.3])
def test_velocity_guides_each_side_alike_and_skips_the_guide_at_zero(guidance):
    own, guide = Shift(0.0), Shift(2.0)
    x, cond, t = torch.randn(2, 3, 4, 4), torch.ones(2, 5), torch.tensor(0.5)
    v = network_velocity(own, cond, guidance, guide=guide, autoguidance=1.5)(x, t)
    v_own, v_guide = x + 1 + guidance, x + 3 + guidance  # (1 + w)(x + offset + 1) - w (x + offset)
    torch.testing.assert_close(v, 2.5 * v_own - 1.5 * v_guide)
    assert own.calls == guide.calls == 1  # with guidance, both halves in one forward per network
    network_velocity(own, cond, guidance, guide=guide, autoguidance=0.0)(x, t)
    assert guide.calls == 1


def test_generate_matches_the_mix_integrated_by_hand():
    model, x = guided_model(), controls()
    trajectory = api.generate(model, x, "colchicine", sampling=GUIDED, seed=3)
    cond = model.vocabulary.embedding("colchicine").expand(len(x), -1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        velocity = network_velocity(model.unet, cond, FAST.guidance, guide=model.guide, autoguidance=1.5)
        expected = integrate(solver(FAST.solver), velocity, x + FAST.noise_level * noise, time_grid(FAST.grid, FAST.steps))
    torch.testing.assert_close(trajectory.states, expected, rtol=1e-5, atol=1e-5)
    plain = api.generate(model, x, "colchicine", sampling=FAST, seed=3)
    assert (trajectory.final - plain.final).abs().mean() > 1e-3
    assert trajectory.metadata["autoguidance"] == 1.5 and plain.metadata["autoguidance"] == 0.0


def test_a_guide_equal_to_the_model_changes_nothing():
    model, x = tiny_model(), controls()
    model.guide, model.guide_step = copy.deepcopy(model.unet), 1
    guided = api.generate(model, x, "colchicine", sampling=GUIDED, seed=3)
    plain = api.generate(model, x, "colchicine", sampling=FAST, seed=3)
    torch.testing.assert_close(guided.states, plain.states, rtol=1e-4, atol=1e-5)


def test_morph_runs_without_autoguidance_and_records_it():
    model, x = guided_model(), controls()
    morph = api.generate(model, x, "colchicine", sampling=GUIDED, mode="morph")
    plain = api.generate(model, x, "colchicine", sampling=FAST, mode="morph")
    torch.testing.assert_close(morph.states, plain.states, rtol=0, atol=0)
    assert morph.metadata["autoguidance"] == 0.0 and morph.metadata["noise_level"] == 0.0


def test_autoguidance_without_a_guide_is_one_clear_error():
    with pytest.raises(InputError, match="autoguidance 1.5 needs a guide network.*set autoguidance to 0"):
        api.generate(tiny_model(), controls(), "colchicine", sampling=GUIDED)


@pytest.mark.parametrize("value", [-1.0, float("nan"), True])
def test_bad_autoguidance_values_are_refused(value):
    with pytest.raises(InputError, match="autoguidance must be >= 0 and finite"):
        SamplingConfig(autoguidance=value)


def test_model_file_keeps_the_guide_bit_for_bit(tmp_path):
    model = guided_model()
    model.sampling = GUIDED
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model_file(tmp_path / "m.safetensors")
    assert loaded.guide_step == 12 and loaded.sampling.autoguidance == 1.5
    for name, value in model.guide.state_dict().items():
        assert torch.equal(value, loaded.guide.state_dict()[name]), name
    x = controls()
    torch.testing.assert_close(api.generate(loaded, x, "colchicine").states, api.generate(model, x, "colchicine").states,
                               rtol=0, atol=0)
    meta = loaded.metadata()
    assert meta["format_version"] == FORMAT_VERSION and meta["guide"] == {"step": 12}


def test_a_version_1_file_without_a_guide_still_reads(tmp_path):
    """Files written before autoguidance existed: format version 1, no autoguidance in sampling."""
    from safetensors.torch import save_file

    model = tiny_model()
    meta = model.metadata()
    meta["format_version"] = 1
    del meta["guide"], meta["sampling"]["autoguidance"]
    tensors = {f"unet.{k}": v.contiguous() for k, v in model.unet.state_dict().items()}
    tensors["vocabulary.embeddings"] = model.vocabulary.embeddings
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"cellflux": json.dumps(meta)})
    loaded = load_model_file(tmp_path / "v1.safetensors")
    assert loaded.guide is None and loaded.guide_step is None and loaded.sampling.autoguidance == 0.0


def test_a_guide_of_another_architecture_is_refused():
    model = tiny_model()
    with pytest.raises(InputError, match="guide network must have the model's own architecture"):
        CellFluxModel(unet=model.unet, vocabulary=model.vocabulary, channels=model.channels, image_size=32,
                      guide=UNet(replace(model.config, model_channels=64)))


@pytest.mark.parametrize("argv, message", [
    (["--mode", "morph", "--autoguidance", "1"], "--mode morph runs without autoguidance"),
    (["--autoguidance", "1"], "needs a guide network"),
])
def test_cli_autoguidance_errors_are_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    model_file = tmp_path / "models" / "tiny.safetensors"
    model_file.parent.mkdir()
    save_model(tiny_model(), model_file)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["generate", "--model", str(model_file), "--n-cells", "2", "--steps", "1", "--quiet",
                 "--perturbation", "colchicine", "--out", str(out / "x.tif"), *argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert list(out.iterdir()) == []


def test_cli_autoguidance_runs_and_is_recorded(tmp_path, capsys):
    import tifffile

    model = guided_model()
    save_model(model, tmp_path / "m.safetensors")
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    assert "autoguidance guide: the same run at step 12" in capsys.readouterr().out
    out = tmp_path / "x.tif"
    assert main(["generate", "--model", str(tmp_path / "m.safetensors"), "--n-cells", "2", "--steps", "1", "--quiet",
                 "--perturbation", "colchicine", "--autoguidance", "0.5", "--out", str(out)]) == 0
    with tifffile.TiffFile(out) as tif:
        info = json.loads(tif.imagej_metadata["Info"])
    assert info["autoguidance"] == 0.5
