"""Helpers shared by the core-engine tests: paths to the reference fixtures, tiny UNet configs, and
checkpoints in the authors' published layout. Imported by the tests as ``helpers``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from napari_cellflux.core.unet import UNet, UNetConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "parity_golden.pt"
STATE_DICT_JSON = FIXTURES / "cellflux_official_state_dict.json"

TINY = dict(
    in_channels=3,
    out_channels=3,
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(2,),
    condition_dim=8,
)


def tiny_config(**overrides) -> UNetConfig:
    """A UNet small enough for the CPU test suite (16 x 16 images)."""
    return UNetConfig(**{**TINY, **overrides})


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Give every parameter random non-zero values (reproducible), so no weight is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return module


def make_published_checkpoint(
    path: Path,
    config: UNetConfig,
    *,
    seed: int = 0,
    ema: bool = True,
    args: argparse.Namespace | None = None,
    epoch: int = 7,
    num_updates: int = 1234,
) -> dict:
    """Write a checkpoint in the authors' layout (docs/method.md, Published checkpoints:
    ``model`` with ``model.<name>`` live weights, ``num_updates`` and ``shadow_params.<i>`` EMA
    weights in trainable-parameter order; ``epoch``; ``args`` an argparse.Namespace) with
    ``torch.save``; the EMA weights differ from the live ones.

    Returns {"names": [...], "live": {name: tensor}, "ema": {name: tensor} or None, "path": path}.
    """
    unet = randomize(UNet(config), seed)
    names = [name for name, _ in unet.named_parameters()]
    live = {name: p.detach().clone() for name, p in unet.named_parameters()}
    gen = torch.Generator().manual_seed(seed + 1000)
    ema_weights = {name: v + 0.05 * torch.randn(v.shape, generator=gen) for name, v in live.items()}
    model = {f"model.{name}": v for name, v in live.items()}
    if ema:
        model["num_updates"] = torch.tensor(num_updates)
        for i, name in enumerate(names):
            model[f"shadow_params.{i}"] = ema_weights[name]
    if args is None:
        args = argparse.Namespace(
            dataset="custom", use_ema=ema, noise_level=1.0, edm_schedule=True, ode_method="heun2", cfg_scale=0.2
        )
    torch.save(
        {"model": model, "optimizer": {"state": {}, "param_groups": []}, "lr_schedule": None,
         "epoch": epoch, "scaler": {}, "args": args},
        path,
    )
    return {"names": names, "live": live, "ema": ema_weights if ema else None, "path": path}
