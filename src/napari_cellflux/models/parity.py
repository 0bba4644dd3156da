"""Parity with the authors' code: recompute a fixture's reference outputs and report the errors.

A fixture (layout of ``tests/fixtures/parity_golden.pt``, made with the authors' code) holds
``official_checkpoint`` (published layout) and ``reference``: ``x``, ``t``, ``cond``,
``velocity`` (EMA weights), ``x_ctrl``, ``noise``, ``noise_level``, ``time_grid``,
``trajectories`` {solver: (T, N, C, H, W)}, ``cfg_scale``, ``trajectory_cfg_euler``; optionally
``unet_config`` (else the config is inferred from the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from napari_cellflux.core.flow import guided, x_init
from napari_cellflux.core.solvers import integrate, solver
from napari_cellflux.core.unet import UNetConfig
from napari_cellflux.errors import InputError
from napari_cellflux.models.published import PublishedCheckpoint, build_unet, torch_load_safely


@dataclass
class ParityReport:
    errors: dict[str, float]
    """max |ours - reference| per quantity."""
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(err <= self.tolerance for err in self.errors.values())

    def lines(self) -> list[str]:
        width = max(map(len, self.errors))
        return [
            f"{name:<{width}}  max abs error {err:.3e}  {'ok' if err <= self.tolerance else 'FAIL'}"
            for name, err in self.errors.items()
        ]


REQUIRED = ("x", "t", "cond", "velocity", "x_ctrl", "noise", "noise_level", "time_grid", "trajectories")


def verify_parity(path: str | Path, tolerance: float = 1e-5) -> ParityReport:
    """Rebuild the fixture's model (EMA weights) and compare every reference output, in float32 on the CPU."""
    fixture = torch_load_safely(path)
    if not isinstance(fixture, dict) or "official_checkpoint" not in fixture or "reference" not in fixture:
        raise InputError(f"{path} is not a parity fixture: expected a dict with 'official_checkpoint' and 'reference'")
    ref = fixture["reference"]
    missing = [k for k in REQUIRED if k not in ref]
    if missing:
        raise InputError(f"{path}: the fixture's reference lacks {missing}")
    checkpoint = PublishedCheckpoint.from_dict(fixture["official_checkpoint"], source=f"{path}:official_checkpoint")
    config = UNetConfig.from_dict(ref["unet_config"]) if "unet_config" in ref else None
    unet = build_unet(checkpoint, use_ema=True, config=config)

    cond = ref["cond"]
    conditional = lambda x, t: unet(x, t.expand(len(x)), cond)  # noqa: E731
    unconditional = lambda x, t: unet(x, t.expand(len(x)), None)  # noqa: E731
    start = x_init(ref["x_ctrl"], ref["noise"], float(ref["noise_level"]))
    grid = ref["time_grid"]

    def error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
        if ours.shape != theirs.shape:
            raise InputError(f"shape {tuple(ours.shape)} differs from the reference's {tuple(theirs.shape)}")
        return float((ours - theirs).abs().max())

    errors: dict[str, float] = {}
    with torch.inference_mode():
        errors["velocity"] = error(unet(ref["x"], ref["t"], cond), ref["velocity"])
        for name, expected in ref["trajectories"].items():
            errors[f"trajectory {name}"] = error(integrate(solver(name), conditional, start, grid), expected)
        if "trajectory_cfg_euler" in ref:
            velocity = guided(conditional, unconditional, float(ref["cfg_scale"]))
            errors["trajectory euler + guidance"] = error(integrate(solver("euler"), velocity, start, grid), ref["trajectory_cfg_euler"])
    return ParityReport(errors=errors, tolerance=tolerance)
