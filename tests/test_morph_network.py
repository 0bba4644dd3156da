"""The model file's morph network: a second network of the same architecture that morph mode runs
(trained on clean sources alone, TrainConfig.morph); sample mode keeps the main one."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from helpers import randomize
from plugin_helpers import tiny_model

from napari_cellflux import api
from napari_cellflux.cli import main
from napari_cellflux.core.unet import UNet
from napari_cellflux.errors import InputError
from napari_cellflux.core.flow import share_mix
from napari_cellflux.models.model_file import FORMAT_VERSION, CellFluxModel, load_model_file, save_model
from napari_cellflux.settings import SamplingConfig


def controls(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1


def with_morph_network(seed: int = 0, morph_seed: int = 7) -> CellFluxModel:
    model = tiny_model(seed)
    model.morph, model.morph_step = randomize(UNet(model.config), morph_seed).eval(), 30
    return model


def test_morph_mode_runs_the_morph_network_and_sample_mode_the_main_one():
    model, x = with_morph_network(), controls()
    alone = tiny_model()
    alone.unet = copy.deepcopy(model.morph)  # the morph network as a model's only network
    morph = api.generate(model, x, "colchicine", mode="morph", seed=2)
    torch.testing.assert_close(morph.states, api.generate(alone, x, "colchicine", mode="morph", seed=2).states, rtol=0, atol=0)
    main_only = tiny_model()
    sample = api.generate(model, x, "colchicine", mode="sample", seed=2)
    torch.testing.assert_close(sample.states, api.generate(main_only, x, "colchicine", mode="sample", seed=2).states,
                               rtol=0, atol=0)
    assert (morph.final - api.generate(main_only, x, "colchicine", mode="morph", seed=2).final).abs().mean() > 1e-3
    assert morph.metadata["network"] == "morph" and sample.metadata["network"] == "main"
    assert api.generate(main_only, x, "colchicine", mode="morph").metadata["network"] == "main"


def test_model_file_keeps_the_morph_network_bit_for_bit(tmp_path):
    model = with_morph_network()
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model_file(tmp_path / "m.safetensors")
    assert loaded.morph_step == 30 and loaded.guide is None
    for name, value in model.morph.state_dict().items():
        assert torch.equal(value, loaded.morph.state_dict()[name]), name
    assert not loaded.morph.training
    meta = loaded.metadata()
    assert meta["format_version"] == FORMAT_VERSION == 4 and meta["morph"] == {"step": 30}
    x = controls()
    torch.testing.assert_close(api.generate(loaded, x, "colchicine", mode="morph").states,
                               api.generate(model, x, "colchicine", mode="morph").states, rtol=0, atol=0)
    save_model(tiny_model(), tmp_path / "plain.safetensors")
    plain = load_model_file(tmp_path / "plain.safetensors")
    assert plain.morph is None and plain.morph_step is None and plain.metadata()["morph"] is None


def test_a_morph_network_of_another_architecture_is_refused():
    model = tiny_model()
    with pytest.raises(InputError, match="morph network must have the model's own architecture"):
        CellFluxModel(unet=model.unet, vocabulary=model.vocabulary, channels=model.channels, image_size=32,
                      morph=UNet(replace(model.config, model_channels=64)))
    # dropout has no weights: a morph network trained with its own (morph.dropout) fits
    other_dropout = UNet(replace(model.config, dropout=model.config.dropout + 0.1))
    kept = CellFluxModel(unet=model.unet, vocabulary=model.vocabulary, channels=model.channels, image_size=32,
                         morph=other_dropout)
    assert kept.network_for("morph") is other_dropout


def test_attaching_a_morph_network_keeps_the_files_architecture(tmp_path):
    """training.train.attach_morph_network: a network trained with another dropout (no weights)
    is carried in the model's own config; one of another architecture is refused, the file kept."""
    from training.train import attach_morph_network

    model = tiny_model()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    other_dropout = UNet(replace(model.config, dropout=0.5))
    attach_morph_network(path, other_dropout, 7)
    loaded = load_model_file(path)
    assert loaded.morph.config == loaded.config and loaded.morph_step == 7
    for name, value in other_dropout.state_dict().items():
        assert torch.equal(value, loaded.morph.state_dict()[name]), name
    before = path.read_bytes()
    with pytest.raises(InputError, match="morph network must have the model's own architecture"):
        attach_morph_network(path, UNet(replace(model.config, model_channels=64)), 7)
    assert path.read_bytes() == before


def test_a_file_with_a_damaged_morph_network_names_it(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    save_model(with_morph_network(), tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(tmp_path / "m.safetensors"))
    first = next(k for k in tensors if k.startswith("morph."))
    del tensors[first]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=r"\(morph network\): weights do not fit the UNet architecture: 1 missing"):
        load_model_file(tmp_path / "cut.safetensors")


def test_cli_info_names_the_morph_network(tmp_path, capsys):
    save_model(with_morph_network(), tmp_path / "m.safetensors")
    assert main(["info", str(tmp_path / "m.safetensors")]) == 0
    assert "morph network: its own, trained on clean sources for 30 steps" in capsys.readouterr().out


def test_share_mix_is_the_convex_mix_of_two_velocities():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(share_mix(a, b, 0.0), a)
    torch.testing.assert_close(share_mix(a, b, 1.0), b)
    torch.testing.assert_close(share_mix(a, b, 0.25), 0.75 * a + 0.25 * b)


def test_morph_mixes_in_the_main_networks_velocity_by_its_share():
    model, x = with_morph_network(), controls()
    model.sampling = replace(model.sampling, solver="euler", grid="uniform", steps=1, guidance=0.3)
    alone = api.generate(model, x, "colchicine", mode="morph", seed=2)
    main_only = tiny_model()
    main_only.sampling = model.sampling
    on_main = api.generate(main_only, x, "colchicine", mode="morph", seed=2)
    share = replace(model.sampling, morph_main_share=0.25)
    mixed = api.generate(model, x, "colchicine", sampling=share, mode="morph", seed=2)
    # one Euler step from the same start: the step is the mix of the two guided velocities
    torch.testing.assert_close(mixed.final - x, 0.75 * (alone.final - x) + 0.25 * (on_main.final - x), rtol=1e-5, atol=1e-6)
    assert mixed.metadata["morph_main_share"] == 0.25 and alone.metadata["morph_main_share"] == 0.0
    # sample never mixes, and a model without a morph network has nothing to mix with
    torch.testing.assert_close(api.generate(model, x, "colchicine", sampling=share, mode="sample", seed=2).states,
                               api.generate(model, x, "colchicine", mode="sample", seed=2).states, rtol=0, atol=0)
    plain = api.generate(main_only, x, "colchicine", sampling=share, mode="morph", seed=2)
    torch.testing.assert_close(plain.states, on_main.states, rtol=0, atol=0)
    assert plain.metadata["morph_main_share"] == 0.0


def test_morph_main_share_is_checked_kept_in_the_file_and_sample_runs_without_it(tmp_path):
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(InputError, match="morph_main_share must be between 0 and 1"):
            SamplingConfig(morph_main_share=bad)
    sampling = SamplingConfig(morph_main_share=0.15)
    assert sampling.for_mode("morph").morph_main_share == 0.15 and sampling.for_mode("sample").morph_main_share == 0.0
    assert sampling.with_overrides(morph_main_share=0.0).morph_main_share == 0.0
    model = with_morph_network()
    model.sampling = sampling
    save_model(model, tmp_path / "m.safetensors")
    assert load_model_file(tmp_path / "m.safetensors").sampling.morph_main_share == 0.15
    # a version 3 file, from before the share: its morph runs the morph network alone
    from safetensors.torch import save_file

    meta = model.metadata()
    meta["format_version"] = 3
    del meta["sampling"]["morph_main_share"]
    tensors = {f"{prefix}.{k}": v.contiguous() for prefix, network in (("unet", model.unet), ("morph", model.morph))
               for k, v in network.state_dict().items()}
    tensors["vocabulary.embeddings"] = model.vocabulary.embeddings
    save_file(tensors, str(tmp_path / "v3.safetensors"), metadata={"cellflux": json.dumps(meta)})
    old = load_model_file(tmp_path / "v3.safetensors")
    assert old.morph is not None and old.sampling.morph_main_share == 0.0
