"""The project's own model file: safetensors round trip, atomicity, and clear errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import randomize, tiny_config
from safetensors import safe_open
from safetensors.torch import save_file

import napari_cellflux
import napari_cellflux.atomic as atomic
from napari_cellflux.core.unet import UNet
from napari_cellflux.models.channels import Channel
from napari_cellflux.models.model_file import CellFluxModel, is_own_format, load_model_file, load_weights, save_model
from napari_cellflux.models.normalization import Normalization
from napari_cellflux.models.vocabulary import Vocabulary
from napari_cellflux.settings import SamplingConfig

CHANNELS = (Channel("DNA", "blue"), Channel("tubulin", "green"), Channel("actin", "red"))


def _vocabulary(dim: int = 8) -> Vocabulary:
    gen = torch.Generator().manual_seed(0)
    return Vocabulary(
        names=["DMSO", "taxol", "AZ841"],
        embeddings=torch.randint(0, 16, (3, dim), generator=gen).float(),
        kind="compound",
        smiles={"taxol": "CC1=C2"},
        control="DMSO",
    )


def _model(seed: int = 0, **kwargs) -> CellFluxModel:
    unet = randomize(UNet(tiny_config()), seed)
    values = dict(
        unet=unet,
        vocabulary=_vocabulary(),
        channels=CHANNELS,
        image_size=16,
        normalization=Normalization(255.0),
        sampling=SamplingConfig(solver="midpoint", steps=12, guidance=0.4, noise_level=1.0),
        training={"epochs": 3, "lr": 1e-4},
        provenance={"note": "unit test"},
    )
    values.update(kwargs)
    return CellFluxModel(**values)


def _outputs(model: CellFluxModel) -> torch.Tensor:
    """The network's output on fixed inputs. The condition is a fresh tensor, not a view of the
    vocabulary: tensors read from safetensors are not 64-byte aligned, and BLAS may round an
    unaligned input differently in the last bit."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    cond = torch.randint(0, 16, (2, 8), generator=gen).float()
    with torch.no_grad():
        return model.unet(x, torch.tensor([0.1, 0.9]), cond)


def test_round_trip(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    digest = save_model(model, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert is_own_format(path)

    with safe_open(str(path), framework="pt") as f:  # the documented layout, readable without us
        assert set(f.keys()) == {f"unet.{k}" for k in model.unet.state_dict()} | {"vocabulary.embeddings"}
        meta = json.loads(f.metadata()["cellflux"])
    assert meta["format"] == "napari-cellflux" and meta["unet_config"] == model.config.to_dict()

    loaded = load_model_file(path)
    assert loaded.sha256 == digest
    assert loaded.config == model.config
    ours, theirs = model.unet.state_dict(), loaded.unet.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert not any(p.is_meta for p in loaded.unet.parameters())
    assert not loaded.unet.training
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)

    assert loaded.vocabulary.names == ["DMSO", "taxol", "AZ841"]
    assert torch.equal(loaded.vocabulary.embeddings, model.vocabulary.embeddings)
    assert (loaded.vocabulary.kind, loaded.vocabulary.smiles, loaded.vocabulary.control) == (
        "compound", {"taxol": "CC1=C2"}, "DMSO")
    assert loaded.channels == CHANNELS
    assert loaded.image_size == 16
    assert loaded.normalization == model.normalization
    assert loaded.sampling == model.sampling
    assert loaded.training == model.training
    assert loaded.provenance == {"napari_cellflux_version": napari_cellflux.__version__, "note": "unit test"}


def test_saving_is_deterministic(tmp_path):
    model = _model()
    assert save_model(model, tmp_path / "a.safetensors") == save_model(model, tmp_path / "b.safetensors")
    other = _model(seed=1)
    assert save_model(other, tmp_path / "c.safetensors") != save_model(model, tmp_path / "a.safetensors")


def test_is_own_format_rejects_other_files(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "x.pth")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_text("hello world, not a model")
    for name in ("x.pth", "empty", "text"):
        assert not is_own_format(tmp_path / name)


def _fail(*args, **kwargs):
    raise OSError("simulated failure")


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_leaves_no_file_and_keeps_an_existing_one(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.safetensors"
    with monkeypatch.context() as m:
        m.setattr(atomic.os, failing, _fail)
        with pytest.raises(OSError, match="simulated failure"):
            save_model(_model(), path)
    assert list(tmp_path.iterdir()) == []

    save_model(_model(seed=0), path)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(atomic.os, failing, _fail)
        with pytest.raises(OSError, match="simulated failure"):
            save_model(_model(seed=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    torch.testing.assert_close(_outputs(load_model_file(path)), _outputs(_model(seed=0)), rtol=0, atol=0)


@pytest.mark.parametrize("keep", [0.5, 0.99, 20])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    path = tmp_path / "model.safetensors"
    save_model(_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(ValueError, match="truncated") as err:
        load_model_file(path)
    assert str(path) in str(err.value)


def test_safetensors_without_cellflux_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    assert is_own_format(path)
    with pytest.raises(ValueError, match="without napari-cellflux metadata.*cellflux convert"):
        load_model_file(path)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _model()
    meta = model.metadata()
    meta["format_version"] = 99
    tensors = {f"unet.{k}": v.contiguous() for k, v in model.unet.state_dict().items()}
    tensors["vocabulary.embeddings"] = model.vocabulary.embeddings
    save_file(tensors, str(path), metadata={"cellflux": json.dumps(meta)})
    with pytest.raises(ValueError, match="version 99.*upgrade"):
        load_model_file(path)


def test_file_missing_a_weight_names_it(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _model()
    tensors = {f"unet.{k}": v.contiguous() for k, v in model.unet.state_dict().items()}
    del tensors["unet.out.2.bias"]
    tensors["vocabulary.embeddings"] = model.vocabulary.embeddings
    save_file(tensors, str(path), metadata={"cellflux": json.dumps(model.metadata())})
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. \['out\.2\.bias'\]\)"):
        load_model_file(path)


def test_wrong_channel_count_names_the_numbers():
    with pytest.raises(ValueError, match=r"takes 3 channels but 2 channels \(DNA, tubulin\)"):
        _model(channels=CHANNELS[:2])
    with pytest.raises(ValueError, match=r"takes 3 channels but 4 channels \(DNA, tubulin, actin, Mito\).*name exactly 3"):
        _model(channels=CHANNELS + (Channel("Mito", "yellow"),))


def test_wrong_embedding_width_names_the_numbers():
    vocabulary = Vocabulary(names=["a", "b", "c"], embeddings=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"5-d but the model's condition_dim is 8"):
        _model(vocabulary=vocabulary)


def test_image_size_must_fit_the_unet_levels():
    with pytest.raises(ValueError, match="image_size 15 must be divisible by 2"):
        _model(image_size=15)


def test_load_weights_reports_missing_unexpected_wrong_shape_and_nan():
    source = randomize(UNet(tiny_config()), 0).state_dict()
    with torch.device("meta"):
        target = UNet(tiny_config())

    broken = {k: v for k, v in source.items() if k != "time_embed.0.bias"}
    broken["bogus.weight"] = torch.zeros(1)
    broken["out.2.weight"] = torch.zeros(4, 32, 3, 3)
    with pytest.raises(ValueError) as err:
        load_weights(target, broken, source="test")
    message = str(err.value)
    assert "1 missing" in message and "time_embed.0.bias" in message
    assert "1 unexpected" in message and "bogus.weight" in message
    assert "out.2.weight: file (4, 32, 3, 3), model (3, 32, 3, 3)" in message

    nan = dict(source)
    nan["out.2.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    with pytest.raises(ValueError, match=r"\['out\.2\.bias'\] contain NaN or inf"):
        load_weights(target, nan, source="test")

    load_weights(target, source, source="test")
    assert not any(p.is_meta for p in target.parameters())
    for name, value in target.state_dict().items():
        assert torch.equal(value, source[name])
