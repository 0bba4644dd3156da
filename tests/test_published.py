"""The authors' checkpoint.pth layout: safe loading (no code runs), EMA vs live, config inference."""

from __future__ import annotations

import argparse
import builtins
import hashlib
import pickle
import random

import pytest
import torch
from helpers import make_published_checkpoint, tiny_config

from napari_cellflux.core.unet import PRESETS, UNet
from napari_cellflux.models.channels import DATASET_CHANNELS, default_channels
from napari_cellflux.models.model_file import load_model_file, save_model
from napari_cellflux.models.published import (
    PublishedCheckpoint,
    UnsafeCheckpointError,
    build_unet,
    infer_unet_config,
    load_published,
    torch_load_safely,
)
from napari_cellflux.models.vocabulary import Vocabulary


def _state(unet: UNet) -> dict[str, torch.Tensor]:
    return dict(unet.state_dict())


# --- EMA vs live ------------------------------------------------------------------------------------


def test_load_published_uses_ema_weights_by_default(tmp_path):
    written = make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=1)
    model = load_published(tmp_path / "checkpoint.pth")
    state = _state(model.unet)
    assert set(state) == set(written["names"])
    for name in written["names"]:
        assert torch.equal(state[name], written["ema"][name]), name
        assert not torch.equal(state[name], written["live"][name]), name
    assert model.provenance["weights"] == "ema"
    assert model.provenance["epoch"] == 7 and model.provenance["num_updates"] == 1234
    digest = hashlib.sha256((tmp_path / "checkpoint.pth").read_bytes()).hexdigest()
    assert model.sha256 == digest == model.provenance["source_sha256"]
    assert not model.unet.training
    assert model.config == tiny_config()


def test_load_published_live_weights_on_request(tmp_path):
    written = make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=2)
    model = load_published(tmp_path / "checkpoint.pth", use_ema=False)
    state = _state(model.unet)
    for name in written["names"]:
        assert torch.equal(state[name], written["live"][name]), name
    assert model.provenance["weights"] == "live"


def test_ema_and_live_give_different_velocities(tmp_path):
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=3)
    ema = load_published(tmp_path / "checkpoint.pth").unet
    live = load_published(tmp_path / "checkpoint.pth", use_ema=False).unet
    x, t, c = torch.zeros(1, 3, 16, 16), torch.tensor([0.5]), torch.ones(1, 8)
    with torch.no_grad():
        assert not torch.allclose(ema(x, t, c), live(x, t, c))


def test_missing_ema_weights_is_a_clear_error(tmp_path):
    written = make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=4, ema=False)
    with pytest.raises(ValueError, match="holds no EMA weights.*live"):
        load_published(tmp_path / "checkpoint.pth")
    model = load_published(tmp_path / "checkpoint.pth", use_ema=False)
    assert model.provenance["num_updates"] is None
    for name, value in _state(model.unet).items():
        assert torch.equal(value, written["live"][name])


def test_ema_count_must_match_the_architecture(tmp_path):
    path = tmp_path / "checkpoint.pth"
    make_published_checkpoint(path, tiny_config(), seed=5)
    obj = torch_load_safely(path)
    last = max(int(k.split(".")[1]) for k in obj["model"] if k.startswith("shadow_params."))
    del obj["model"][f"shadow_params.{last}"]
    checkpoint = PublishedCheckpoint.from_dict(obj, source="test")
    with pytest.raises(ValueError, match=f"{last} EMA tensors for a UNet with {last + 1} parameters"):
        build_unet(checkpoint, config=tiny_config())


def test_shadow_param_indices_must_be_contiguous(tmp_path):
    path = tmp_path / "checkpoint.pth"
    make_published_checkpoint(path, tiny_config(), seed=6)
    obj = torch_load_safely(path)
    obj["model"]["shadow_params.999"] = obj["model"].pop("shadow_params.0")
    with pytest.raises(ValueError, match="shadow_params indices.*corrupt"):
        PublishedCheckpoint.from_dict(obj, source="test")


def test_checkpoint_metadata_sampling_defaults_and_channels(tmp_path):
    args = argparse.Namespace(
        dataset="BBBC021", ode_method="midpoint", edm_schedule=False, cfg_scale=0.7, noise_level=1.0,
        lr=1e-4, betas=(0.9, 0.95), resume=None, extra={"a": 1},
    )
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=7, args=args)
    model = load_published(tmp_path / "checkpoint.pth")
    assert (model.sampling.solver, model.sampling.grid, model.sampling.guidance, model.sampling.noise_level) == (
        "midpoint", "uniform", 0.7, 1.0)
    assert model.channels == DATASET_CHANNELS["bbbc021"]
    assert model.vocabulary.kind == "compound" and len(model.vocabulary) == 0 and model.vocabulary.dim == 8
    assert model.training["lr"] == 1e-4 and model.training["betas"] == [0.9, 0.95]
    assert model.training["resume"] is None
    assert model.training["extra"] == {"a": 1}  # dicts of plain values stay (ode_options is one)
    assert model.sampling.steps == 50  # no ode_options recorded: the paper's steps
    assert model.provenance["dataset"] == "bbbc021"


def test_defaults_without_dataset_and_with_an_embedding_csv(tmp_path):
    cfg = tiny_config(in_channels=4, out_channels=4)
    args = argparse.Namespace(dataset="custom")
    make_published_checkpoint(tmp_path / "checkpoint.pth", cfg, seed=8, args=args)
    csv = tmp_path / "emb.csv"
    rows = ["," + ",".join(str(i) for i in range(8))]
    rows += [f"{name}," + ",".join(str(j + k) for j in range(8)) for k, name in enumerate(["DMSO", "taxol", "AZ841"])]
    csv.write_text("\n".join(rows) + "\n")
    model = load_published(tmp_path / "checkpoint.pth", embeddings=csv, kind="compound")
    assert model.channels == default_channels(4)
    assert model.vocabulary.names == ["DMSO", "taxol", "AZ841"] and model.vocabulary.control == "DMSO"
    assert torch.equal(model.vocabulary.embedding("taxol"), torch.arange(1, 9, dtype=torch.float32))
    sampling = model.sampling  # no sampling args recorded: the paper's settings
    assert (sampling.solver, sampling.grid, sampling.guidance, sampling.noise_level) == ("heun", "edm", 0.2, 0.5)


def test_a_vocabulary_of_the_wrong_width_is_refused(tmp_path):
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=9)
    vocabulary = Vocabulary(names=["a"], embeddings=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="5-d but the model's condition_dim is 8"):
        load_published(tmp_path / "checkpoint.pth", embeddings=vocabulary)


def test_explicit_config_that_does_not_fit_is_refused(tmp_path):
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=10)
    with pytest.raises(ValueError, match="EMA tensors for a UNet with 392 parameters; the architecture config does not match"):
        load_published(tmp_path / "checkpoint.pth", config="bbbc021")
    with pytest.raises(ValueError, match=r"do not fit the UNet architecture: .*missing.*with other shapes"):
        load_published(tmp_path / "checkpoint.pth", config="bbbc021", use_ema=False)
    with pytest.raises(ValueError, match=r"do not fit the UNet architecture"):
        load_published(tmp_path / "checkpoint.pth", config=tiny_config(num_res_blocks=2), use_ema=False)


def test_converted_model_round_trips_through_our_file(tmp_path):
    """published checkpoint.pth -> CellFluxModel -> our safetensors file -> same network."""
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=13)
    model = load_published(tmp_path / "checkpoint.pth")
    save_model(model, tmp_path / "model.safetensors")
    again = load_model_file(tmp_path / "model.safetensors")
    for name, value in _state(model.unet).items():
        assert torch.equal(again.unet.state_dict()[name], value)
    assert again.provenance["weights"] == "ema" and again.provenance["source_sha256"] == model.sha256
    assert again.sampling == model.sampling and again.training == model.training


# --- config inference -------------------------------------------------------------------------------

INFER_CASES = [
    tiny_config(),
    tiny_config(channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4)),
    tiny_config(channel_mult=(2, 2, 2), num_res_blocks=1, attention_resolutions=(1,), condition_dim=16),
    tiny_config(channel_mult=(1, 1, 2, 2), attention_resolutions=(), conv_resample=True, in_channels=6, out_channels=6),
    tiny_config(model_channels=64, channel_mult=(1, 2), num_res_blocks=3, attention_resolutions=(1, 2),
                in_channels=5, out_channels=2, condition_dim=1224, conv_resample=True),
    tiny_config(use_scale_shift_norm=False, condition_dim=200),
]


@pytest.mark.parametrize("cfg", INFER_CASES, ids=lambda c: f"mult{c.channel_mult}-res{c.num_res_blocks}-att{c.attention_resolutions}")
def test_infer_unet_config_from_shapes(cfg):
    with torch.device("meta"):
        weights = dict(UNet(cfg).state_dict())
    assert infer_unet_config(weights) == cfg


@pytest.mark.parametrize("name", ["bbbc021", "rxrx1", "cpg0000"])
def test_infer_published_configs_from_the_published_shapes(name, official_state_dict):
    weights = {
        key.removeprefix("model."): torch.empty(shape, device="meta")
        for key, shape, _ in official_state_dict[name]["checkpoint_model_state_dict"]
        if key.startswith("model.")
    }
    assert infer_unet_config(weights) == PRESETS[name]


def test_heads_and_attention_order_come_from_arguments_not_shapes():
    cfg = tiny_config(num_heads=2, use_new_attention_order=False)
    with torch.device("meta"):
        weights = dict(UNet(cfg).state_dict())
    assert infer_unet_config(weights, num_heads=2, use_new_attention_order=False) == cfg


def test_build_unet_takes_num_heads_from_args(tmp_path):
    cfg = tiny_config(num_heads=2)
    args = argparse.Namespace(dataset="custom", num_heads=2)
    make_published_checkpoint(tmp_path / "checkpoint.pth", cfg, seed=11, args=args)
    checkpoint = PublishedCheckpoint.from_dict(torch_load_safely(tmp_path / "checkpoint.pth"), source="test")
    assert build_unet(checkpoint).config == cfg


def test_inference_names_a_missing_key():
    with torch.device("meta"):
        weights = dict(UNet(tiny_config()).state_dict())
    del weights["mol_embed_transform.weight"]
    with pytest.raises(ValueError, match="'mol_embed_transform.weight' is missing"):
        infer_unet_config(weights)


# --- foreign, broken and hostile files ---------------------------------------------------------------


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_published("/nonexistent/checkpoint.pth")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pth"
    make_published_checkpoint(path, tiny_config(), seed=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as err:
        load_published(path)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("obj", [{"epoch": 3, "args": argparse.Namespace(a=1)}, [torch.zeros(2)], {"model": torch.zeros(2)}])
def test_a_file_that_is_not_a_cellflux_checkpoint(tmp_path, obj):
    path = tmp_path / "checkpoint.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match="not a CellFlux checkpoint.*'model'"):
        load_published(path)


def _random_bytes(first: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes([first]) + bytes(rng.getrandbits(8) for _ in range(4096))


# Foreign files a user can plausibly hand over: random bytes (whose first byte steers torch's
# unpickler down different paths), an empty file, text, an HTML error page, a Git LFS pointer.
FOREIGN = {
    "random-nul": _random_bytes(0x00, 0),
    "random-0x2e": _random_bytes(0x2E, 1),
    "random-0x55": _random_bytes(0x55, 2),
    "random-0x68": _random_bytes(0x68, 3),
    "random-0xc3": _random_bytes(0xC3, 4),
    "empty": b"",
    "text": b"hello, this is not a checkpoint\n",
    "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    "lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 225000000\n",
}


@pytest.mark.parametrize("name", list(FOREIGN))
def test_foreign_file_is_a_clear_value_error(tmp_path, name):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(FOREIGN[name])
    with pytest.raises(ValueError) as err:
        load_published(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["empty", "text", "html", "lfs-pointer"])
def test_foreign_file_is_not_reported_as_a_code_execution_attempt(tmp_path, name):
    """A file that is not a pickle or a torch zip at all should be called what it is (not a
    checkpoint / truncated), not 'contains Python objects ... could run code'."""
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(FOREIGN[name])
    with pytest.raises(ValueError) as err:
        torch_load_safely(path)
    assert not isinstance(err.value, UnsafeCheckpointError), str(err.value)


class _WritesMarker:
    """Unpickling this object calls exec(), which writes ``marker``: the classic pickle attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _hostile(marker, where: str):
    payload = _WritesMarker(marker)
    valid_model = {"model.out.2.bias": torch.zeros(3), "num_updates": torch.tensor(1)}
    if where == "top":
        return payload
    if where == "model":
        return {"model": {**valid_model, "shadow_params.0": payload}, "epoch": 1, "args": argparse.Namespace(dataset="bbbc021")}
    if where == "args":  # hidden in the allow-listed Namespace
        return {"model": valid_model, "epoch": 1, "args": argparse.Namespace(dataset=payload)}
    raise AssertionError(where)


@pytest.mark.parametrize("where", ["top", "model", "args"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_that_runs_code_is_refused_before_anything_runs(tmp_path, where, writer):
    marker = tmp_path / "MARKER"
    path = tmp_path / "checkpoint.pth"
    if writer == "torch.save":
        torch.save(_hostile(marker, where), path)
    else:
        with open(path, "wb") as f:
            pickle.dump(_hostile(marker, where), f, protocol=2)

    with pytest.raises(UnsafeCheckpointError, match="refused to load.*could run code"):
        load_published(path)
    with pytest.raises(UnsafeCheckpointError):
        torch_load_safely(path)
    assert not marker.exists()

    # The payload is live: an unsafe load really runs it (so the check above can fail).
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.read_text() == "code ran"


def test_argparse_namespace_is_allowed(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"args": argparse.Namespace(dataset="rxrx1", cfg_scale=0.0), "w": torch.ones(2)}, path)
    obj = torch_load_safely(path)
    assert obj["args"].dataset == "rxrx1" and torch.equal(obj["w"], torch.ones(2))


# --- steps from args.ode_options (issue 15) ----------------------------------------------------


def authors_edm_grid(nfes: int) -> torch.Tensor:
    """The authors' get_time_discretization(nfes) as docs/method.md states it: nfes sigmas, then 0."""
    i = torch.arange(nfes, dtype=torch.float64)
    sigma = (80 ** (1 / 7) + i / (nfes - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    sigma = torch.cat([sigma, torch.zeros(1, dtype=torch.float64)])
    return 1.0 - sigma / (1 + sigma)


@pytest.mark.parametrize("args, steps", [
    (dict(ode_method="heun2", edm_schedule=True, ode_options={"nfe": 50}), 50),  # the authors' scripts
    (dict(ode_method="heun2", edm_schedule=True, ode_options={"nfe": 12}), 12),
    (dict(ode_method="euler", edm_schedule=True, ode_options={"nfe": 12.0}), 12),
    (dict(ode_method="midpoint", edm_schedule=False, ode_options={"step_size": 0.05}), 20),  # their default kind
    (dict(ode_method="midpoint", edm_schedule=False, ode_options={"nfe": 12}), 50),  # nfe shapes only the EDM grid
    (dict(ode_method="heun2", edm_schedule=True, ode_options={"nfe": 1}), 50),  # too few for the EDM grid
    (dict(ode_method="heun2", edm_schedule=True, ode_options={"nfe": "many"}), 50),
    (dict(ode_method="midpoint", edm_schedule=False, ode_options={"step_size": 0.3}), 50),  # no whole number of steps
])
def test_recorded_nfe_is_the_default_step_count(args, steps):
    sampling = PublishedCheckpoint.from_dict({"model": {}, "args": argparse.Namespace(**args)}, source="t").sampling_defaults()
    assert sampling.steps == steps


def test_a_converted_model_samples_the_authors_grid(tmp_path):
    from napari_cellflux.core.solvers import time_grid

    args = argparse.Namespace(dataset="bbbc021", ode_method="heun2", edm_schedule=True, ode_options={"nfe": 12})
    make_published_checkpoint(tmp_path / "checkpoint.pth", tiny_config(), seed=3, args=args)
    model = load_published(tmp_path / "checkpoint.pth")
    save_model(model, tmp_path / "model.safetensors")
    sampling = load_model_file(tmp_path / "model.safetensors").sampling
    # nfe is their grid's number of intervals: the same 13 times, 12 Heun steps, 24 network evaluations
    assert (sampling.solver, sampling.grid, sampling.steps, sampling.evaluations) == ("heun", "edm", 12, 24)
    torch.testing.assert_close(time_grid("edm", sampling.steps).double(), authors_edm_grid(12), atol=1e-6, rtol=0)
    assert model.training["ode_options"] == {"nfe": 12}
