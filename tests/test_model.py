"""The velocity UNet: published architecture (names, shapes, order, size), conditioning, attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import randomize, tiny_config

import napari_cellflux.core.unet as model_module
from napari_cellflux.core.unet import (
    PRESETS,
    AttentionBlock,
    UNet,
    UNetConfig,
    count_parameters,
    preset,
    timestep_embedding,
)
from napari_cellflux.errors import InputError

PRESET_NAMES = ("bbbc021", "rxrx1", "cpg0000")


@pytest.fixture(scope="module", params=PRESET_NAMES)
def meta_preset(request):
    """(name, UNet of the published preset on the meta device: no memory, shapes only)."""
    with torch.device("meta"):
        unet = UNet(preset(request.param))
    return request.param, unet


def _inputs(cfg: UNetConfig, n: int = 2, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, cfg.in_channels, size, size, generator=gen) * 2 - 1
    t = torch.rand(n, generator=gen)
    cond = torch.randn(n, cfg.condition_dim, generator=gen)
    return x, t, cond


# --- published architecture -------------------------------------------------------------------


def test_preset_is_built_on_meta_device(meta_preset):
    _, unet = meta_preset
    assert all(p.is_meta for p in unet.parameters())


def test_preset_parameter_count_matches_published(meta_preset, official_state_dict):
    name, unet = meta_preset
    assert count_parameters(unet) == official_state_dict[name]["n_parameters"]


def test_preset_names_and_shapes_match_published_keys(meta_preset, official_state_dict):
    name, unet = meta_preset
    published = {
        key.removeprefix("model."): tuple(shape)
        for key, shape, _dtype in official_state_dict[name]["checkpoint_model_state_dict"]
        if key.startswith("model.")
    }
    ours = [(n, tuple(p.shape)) for n, p in unet.named_parameters()]
    ours_by_name = dict(ours)
    assert len(ours_by_name) == len(ours), "parameter names must be unique"
    missing = sorted(set(published) - set(ours_by_name))
    extra = sorted(set(ours_by_name) - set(published))
    assert not missing, f"published keys with no parameter of ours: {missing[:5]}"
    assert not extra, f"parameters of ours not in the published checkpoint: {extra[:5]}"
    wrong = {k: (published[k], ours_by_name[k]) for k in published if published[k] != ours_by_name[k]}
    assert not wrong, f"shape differs (published, ours): {dict(list(wrong.items())[:5])}"
    # no buffers or other state beyond those parameters: the state dict is exactly the published set
    assert set(unet.state_dict()) == set(published)


def test_preset_parameter_order_matches_published(meta_preset, official_state_dict):
    name, unet = meta_preset
    order = official_state_dict[name]["trainable_parameter_order"]
    assert [n for n, _ in unet.named_parameters()] == order


def test_shadow_params_shapes_follow_parameter_order(meta_preset, official_state_dict):
    """shadow_params.<i> in the published file has the shape of our i-th parameter."""
    name, unet = meta_preset
    shadow = {
        int(key.split(".")[1]): tuple(shape)
        for key, shape, _ in official_state_dict[name]["checkpoint_model_state_dict"]
        if key.startswith("shadow_params.")
    }
    ours = [tuple(p.shape) for p in unet.parameters()]
    assert [shadow[i] for i in range(len(shadow))] == ours


def test_presets_equal_published_unet_config(official_state_dict):
    for name in PRESET_NAMES:
        assert UNetConfig.from_dict(official_state_dict[name]["unet_config"]) == PRESETS[name]


# --- config --------------------------------------------------------------------------------------


def test_preset_overrides_and_unknown_name():
    cfg = preset("rxrx1", condition_dim=7)
    assert cfg.condition_dim == 7 and cfg.in_channels == 6 and PRESETS["rxrx1"].condition_dim == 200
    with pytest.raises(ValueError, match="bbbc021"):
        preset("bbbc022")


def test_config_rejects_widths_that_groupnorm_cannot_split():
    with pytest.raises(ValueError, match="multiple of norm_groups=32"):
        UNetConfig(model_channels=48, channel_mult=(1, 2))
    with pytest.raises(ValueError, match="multiple of norm_groups=16"):
        UNetConfig(model_channels=8, channel_mult=(1, 2), norm_groups=16)


def test_narrow_unet_with_fewer_norm_groups_runs_and_normalises_per_group():
    cfg = tiny_config(model_channels=16, channel_mult=(1, 2), norm_groups=16)
    net = UNet(cfg).eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 16 for m in norms)
    x = torch.randn(2, cfg.in_channels, 16, 16)
    out = net(x, torch.rand(2), torch.randn(2, cfg.condition_dim))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_config_dict_round_trip_and_published_neutral_keys(official_state_dict):
    cfg = tiny_config(channel_mult=(1, 2, 2), attention_resolutions=(2, 4), num_heads=2)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    published = dict(official_state_dict["bbbc021"]["unet_config"])
    with pytest.raises(ValueError, match="resblock_updown"):
        UNetConfig.from_dict({**published, "resblock_updown": True})
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        UNetConfig.from_dict({**published, "bogus": 1})


# --- timestep embedding --------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 32, 33])
def test_timestep_embedding_matches_formula(dim):
    t = torch.tensor([0.0, 0.0123, 0.5, 1.0])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t.double().numpy()[:, None] * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    if dim % 2:
        expected = np.pad(expected, ((0, 0), (0, 1)))
    np.testing.assert_allclose(emb.numpy(), expected, atol=1e-6)


def test_time_is_fed_unscaled():
    """t in [0, 1] goes straight into the embedding (no x1000): the first feature is cos(t)."""
    emb = timestep_embedding(torch.tensor([0.7]), 16)
    assert emb[0, 0].item() == pytest.approx(math.cos(0.7), abs=1e-6)
    assert emb[0, 8].item() == pytest.approx(math.sin(0.7), abs=1e-6)


# --- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_output_shape_equals_input_shape(channels):
    cfg = tiny_config(in_channels=channels, out_channels=channels)
    unet = randomize(UNet(cfg), 0).eval()
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        out = unet(x, t, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_scalar_time_is_broadcast():
    cfg = tiny_config()
    unet = randomize(UNet(cfg), 1).eval()
    x, _, cond = _inputs(cfg)
    with torch.no_grad():
        a = unet(x, torch.tensor(0.3), cond)
        b = unet(x, torch.full((2,), 0.3), cond)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eval_mode_is_deterministic_and_dropout_acts_in_training():
    cfg = tiny_config(dropout=0.3)
    unet = randomize(UNet(cfg), 2)
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        unet.eval()
        torch.testing.assert_close(unet(x, t, cond), unet(x, t, cond), rtol=0, atol=0)
        unet.train()
        torch.manual_seed(0)
        a = unet(x, t, cond)
        torch.manual_seed(1)
        b = unet(x, t, cond)
    assert not torch.allclose(a, b)


def test_no_condition_adds_nothing():
    """cond=None must equal a condition whose projection is exactly zero (no null token)."""
    cfg = tiny_config()
    unet = randomize(UNet(cfg), 3).eval()
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        conditioned = unet(x, t, cond)
        unconditioned = unet(x, t, None)
        assert not torch.allclose(conditioned, unconditioned, atol=1e-4)
        unet.mol_embed_transform.weight.zero_()
        unet.mol_embed_transform.bias.zero_()
        torch.testing.assert_close(unet(x, t, cond), unet(x, t, None), rtol=0, atol=0)
        # and the unconditional output does not depend on the condition layer at all
        torch.testing.assert_close(unet(x, t, None), unconditioned, rtol=0, atol=0)


def test_condition_is_added_to_the_time_embedding():
    """Linear(cond) is added to the time embedding: a condition layer with zero weight and bias b
    acts exactly like adding b to the time MLP's last bias."""
    cfg = tiny_config()
    unet = randomize(UNet(cfg), 4).eval()
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        bias = torch.randn(cfg.time_embed_dim, generator=torch.Generator().manual_seed(9))
        unet.mol_embed_transform.weight.zero_()
        unet.mol_embed_transform.bias.copy_(bias)
        with_cond = unet(x, t, cond)
        unet.time_embed[2].bias.add_(bias)
        shifted_time = unet(x, t, None)
    torch.testing.assert_close(with_cond, shifted_time, rtol=1e-5, atol=1e-5)


# --- attention -----------------------------------------------------------------------------------


def test_attention_uses_scaled_dot_product_attention(monkeypatch):
    cfg = tiny_config(attention_resolutions=(1, 2))
    unet = randomize(UNet(cfg), 5).eval()
    blocks = [m for m in unet.modules() if isinstance(m, AttentionBlock)]
    original = model_module.F.scaled_dot_product_attention
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", counting)
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        unet(x, t, cond)
    assert len(blocks) > 0 and len(calls) == len(blocks)


def _adm_attention(block: AttentionBlock, x: torch.Tensor, legacy: bool) -> torch.Tensor:
    """ADM's AttentionBlock with QKVAttention / QKVAttentionLegacy, written out with einsum."""
    b, c, h, w = x.shape
    heads = block.num_heads
    flat = x.reshape(b, c, h * w)
    qkv = block.qkv(block.norm(flat))
    ch = c // heads
    scale = 1 / math.sqrt(math.sqrt(ch))
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, h * w).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, h * w) for part in qkv.chunk(3, dim=1))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    return (flat + block.proj_out(a)).reshape(b, c, h, w)


@pytest.mark.parametrize("new_order", [True, False])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_block_matches_adm(new_order, heads):
    cfg = tiny_config(num_heads=heads, use_new_attention_order=new_order)
    block = randomize(AttentionBlock(64, cfg), 6, scale=0.3)
    block.norm.weight.data.fill_(1.0)
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(block(x), _adm_attention(block, x, legacy=not new_order), rtol=1e-5, atol=1e-5)


def test_num_head_channels_sets_heads_per_width():
    cfg = tiny_config(num_head_channels=32)
    assert AttentionBlock(64, cfg).num_heads == 2
    assert AttentionBlock(32, cfg).num_heads == 1
    assert AttentionBlock(64, tiny_config(num_heads=4)).num_heads == 4
    with pytest.raises(ValueError, match="64 channels do not split into 3 heads"):
        AttentionBlock(64, tiny_config(num_heads=3))


def _same_weights_pair(heads: int):
    new = randomize(UNet(tiny_config(num_heads=heads, use_new_attention_order=True)), 7).eval()
    legacy = UNet(tiny_config(num_heads=heads, use_new_attention_order=False)).eval()
    legacy.load_state_dict(new.state_dict())
    return new, legacy


def test_legacy_and_new_attention_order_agree_with_one_head():
    new, legacy = _same_weights_pair(heads=1)
    x, t, cond = _inputs(new.config)
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, cond), legacy(x, t, cond), rtol=1e-5, atol=1e-6)


def test_legacy_and_new_attention_order_differ_with_two_heads():
    new, legacy = _same_weights_pair(heads=2)
    x, t, cond = _inputs(new.config)
    with torch.no_grad():
        assert (new(x, t, cond) - legacy(x, t, cond)).abs().max() > 1e-4


# --- cond_mask (conditional and unconditional rows in one batch) -----------------------------------


def test_cond_mask_drops_the_condition_of_zero_rows():
    cfg = tiny_config()
    unet = randomize(UNet(cfg), 8).eval()
    x, t, cond = _inputs(cfg, n=4)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        mixed = unet(x, t, cond, mask)
        conditioned = unet(x, t, cond)
        unconditioned = unet(x, t, None)
        torch.testing.assert_close(mixed[mask == 1], conditioned[mask == 1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed[mask == 0], unconditioned[mask == 0], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(conditioned[mask == 0], unconditioned[mask == 0], atol=1e-4)
        torch.testing.assert_close(unet(x, t, cond, torch.ones(4)), conditioned, rtol=0, atol=0)


# --- source noise conditioning (not in the published configs) ------------------------------------


def test_source_noise_is_added_to_the_time_embedding_and_required():
    """With condition_on_source_noise, Linear(level) is added to the time embedding (so a level
    layer with zero weight and bias b acts like adding b to the time MLP's last bias); the level
    is then required, and a network without the layer refuses one."""
    cfg = tiny_config(condition_on_source_noise=True)
    unet = randomize(UNet(cfg), 5).eval()
    plain = UNet(tiny_config()).eval()
    x, t, cond = _inputs(cfg)
    with torch.no_grad():
        clean, noised = unet(x, t, cond, None, torch.zeros(2)), unet(x, t, cond, None, torch.full((2,), 0.5))
        assert not torch.allclose(clean, noised, atol=1e-4)
        bias = torch.randn(cfg.time_embed_dim, generator=torch.Generator().manual_seed(9))
        unet.source_noise_embed.weight.zero_()
        unet.source_noise_embed.bias.copy_(bias)
        with_level = unet(x, t, cond, None, torch.full((2,), 0.5))
        unet.source_noise_embed.bias.zero_()
        unet.time_embed[2].bias.add_(bias)
        torch.testing.assert_close(with_level, unet(x, t, cond, None, torch.zeros(2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="pass source_noise"):
        unet(x, t, cond)
    with pytest.raises(InputError, match="without condition_on_source_noise"):
        plain(x, t, cond, None, torch.zeros(2))
    assert "source_noise_embed.weight" not in plain.state_dict()
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
