"""verify_parity: the authors' golden fixture, and fixtures made here with an independent reference."""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch
from helpers import GOLDEN, make_published_checkpoint

from napari_cellflux.core.unet import UNet, UNetConfig
from napari_cellflux.models.parity import verify_parity

PUBLISHED_NEUTRAL = {
    "dims": 2, "num_classes": None, "use_checkpoint": False, "num_heads_upsample": -1,
    "resblock_updown": False, "with_fourier_features": False,
}

# Different from the golden fixture in every dimension that matters: 4 channels, 2 levels,
# two attention heads (from num_head_channels), condition_dim 8, 16 x 16 images.
TWO_HEAD_CONFIG = UNetConfig(
    in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,), num_heads=1, num_head_channels=32, condition_dim=8,
)


def _edm_grid(n: int) -> torch.Tensor:
    """The EDM grid (docs/method.md, Sampling), written out here so the fixture does not depend on
    our sampling module."""
    i = np.arange(n, dtype=np.float64)
    sigma = np.append((80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, 0.0)
    return torch.tensor(1 - sigma / (1 + sigma), dtype=torch.float32)


def _reference_solve(method: str, v, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Textbook fixed-grid Euler / explicit midpoint / Heun (trapezoid), one state per grid time."""
    states = [x]
    times = grid.tolist()
    for t0, t1 in zip(times[:-1], times[1:]):
        h = t1 - t0
        if method == "euler":
            x = x + h * v(x, t0)
        elif method == "midpoint":
            x = x + h * v(x + 0.5 * h * v(x, t0), t0 + 0.5 * h)
        elif method == "heun2":
            k1 = v(x, t0)
            k2 = v(x + h * k1, t1)
            x = x + 0.5 * h * (k1 + k2)
        else:
            raise AssertionError(method)
        states.append(x)
    return torch.stack(states)


def make_fixture(path, config: UNetConfig, *, include_config: bool = True, args=None, seed: int = 0,
                 cfg_scale: float = 0.7) -> dict:
    """A parity fixture in the golden layout whose reference outputs come from a UNet loaded by hand
    with the EMA weights and the reference solvers above."""
    checkpoint_path = path.with_suffix(".ckpt")
    written = make_published_checkpoint(checkpoint_path, config, seed=seed, args=args)
    with torch.serialization.safe_globals([argparse.Namespace]):
        official = torch.load(checkpoint_path, weights_only=True)

    unet = UNet(config).eval()
    unet.load_state_dict(written["ema"])
    gen = torch.Generator().manual_seed(seed + 1)
    n, c = 2, config.in_channels
    x = torch.rand(n, c, 16, 16, generator=gen) * 2 - 1
    t = torch.rand(n, generator=gen)
    cond = torch.randn(n, config.condition_dim, generator=gen)
    x_ctrl = torch.rand(n, c, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(n, c, 16, 16, generator=gen)
    noise_level = 0.5
    grid = _edm_grid(6)

    with torch.no_grad():
        def conditional(x, t):
            return unet(x, torch.full((len(x),), t), cond)

        def guided(x, t):
            return (1 + cfg_scale) * conditional(x, t) - cfg_scale * unet(x, torch.full((len(x),), t), None)

        start = x_ctrl + noise_level * noise
        reference = {
            "x": x, "t": t, "cond": cond, "velocity": unet(x, t, cond),
            "x_ctrl": x_ctrl, "noise": noise, "noise_level": noise_level, "time_grid": grid,
            "trajectories": {m: _reference_solve(m, conditional, start, grid) for m in ("euler", "midpoint", "heun2")},
            "cfg_scale": cfg_scale,
            "trajectory_cfg_euler": _reference_solve("euler", guided, start, grid),
        }
    if include_config:
        reference["unet_config"] = {**config.to_dict(), **PUBLISHED_NEUTRAL}
        del reference["unet_config"]["dropout"]  # not every published config names every field
    fixture = {"official_checkpoint": official, "reference": reference}
    torch.save(fixture, path)
    return fixture


def _rewrite(path, fixture, edit) -> None:
    edit(fixture)
    torch.save(fixture, path)


# --- the authors' fixture ---------------------------------------------------------------------------


def test_golden_fixture_passes_at_1e_5():
    report = verify_parity(GOLDEN, tolerance=1e-5)
    assert set(report.errors) == {
        "velocity", "trajectory euler", "trajectory midpoint", "trajectory heun2", "trajectory euler + guidance"
    }
    assert report.passed, report.lines()
    assert all("ok" in line for line in report.lines())


def test_golden_fixture_passes_with_an_inferred_config(tmp_path, golden):
    fixture = {"official_checkpoint": golden["official_checkpoint"],
               "reference": {k: v for k, v in golden["reference"].items() if k != "unet_config"}}
    torch.save(fixture, tmp_path / "golden_no_config.pt")
    report = verify_parity(tmp_path / "golden_no_config.pt")
    assert report.passed, report.lines()


# --- fixtures made here -----------------------------------------------------------------------------


@pytest.mark.parametrize("new_order", [True, False])
def test_two_head_fixture_with_its_config_passes(tmp_path, new_order):
    config = UNetConfig(**{**TWO_HEAD_CONFIG.to_dict(), "use_new_attention_order": new_order})
    path = tmp_path / "fixture.pt"
    make_fixture(path, config)
    report = verify_parity(path)
    assert report.passed, report.lines()
    assert len(report.errors) == 5


def test_without_config_heads_cannot_be_inferred_so_a_two_head_fixture_fails(tmp_path):
    """num_head_channels is invisible in the weights: only the fixture's unet_config gets it right."""
    path = tmp_path / "fixture.pt"
    make_fixture(path, TWO_HEAD_CONFIG, include_config=False)
    report = verify_parity(path)
    assert not report.passed
    assert report.errors["velocity"] > report.tolerance


def test_fixture_without_config_is_inferred_with_heads_from_args(tmp_path):
    config = UNetConfig(
        in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), num_heads=2, condition_dim=8, conv_resample=True,
    )
    path = tmp_path / "fixture.pt"
    make_fixture(path, config, include_config=False, args=argparse.Namespace(dataset="custom", num_heads=2))
    report = verify_parity(path)
    assert report.passed, report.lines()


@pytest.fixture(scope="module")
def _made_once(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("parity") / "fixture.pt", TWO_HEAD_CONFIG, seed=3)


@pytest.fixture
def made_fixture(_made_once, tmp_path):
    """(path, fixture): a private copy of a passing two-head fixture that a test may edit."""
    fixture = copy.deepcopy(_made_once)
    path = tmp_path / "fixture.pt"
    torch.save(fixture, path)
    return path, fixture


@pytest.mark.parametrize(
    "quantity,edit",
    [
        ("trajectory heun2", lambda r: r["trajectories"]["heun2"][3].add_(1e-3)),
        ("trajectory midpoint", lambda r: r["trajectories"]["midpoint"][-1, 1, 2, 5, 5].add_(2e-5)),
        ("velocity", lambda r: r["velocity"].mul_(1.001)),
        ("trajectory euler + guidance", lambda r: r["trajectory_cfg_euler"][1:].add_(1e-4)),
    ],
)
def test_a_perturbed_reference_fails_exactly_there(made_fixture, quantity, edit):
    path, fixture = made_fixture
    _rewrite(path, fixture, lambda f: edit(f["reference"]))
    report = verify_parity(path)
    assert not report.passed
    failing = {name for name, err in report.errors.items() if err > report.tolerance}
    assert failing == {quantity}
    assert any(line.startswith(quantity) and line.endswith("FAIL") for line in report.lines())


def test_live_weights_do_not_pass(made_fixture, tmp_path):
    """Parity is checked against the EMA weights; a reference made with live weights must fail."""
    path, fixture = made_fixture
    model = fixture["official_checkpoint"]["model"]
    names = [k for k in model if k.startswith("model.")]
    for i, name in enumerate(names):  # swap: shadow params <- live, so EMA == the old live weights
        model[f"shadow_params.{i}"], model[name] = model[name], model[f"shadow_params.{i}"]
    torch.save(fixture, path)
    assert not verify_parity(path).passed


def test_tolerance_is_respected(made_fixture):
    path, fixture = made_fixture
    assert verify_parity(path).passed  # the unedited copy passes, so every failure below is the edit's
    _rewrite(path, fixture, lambda f: f["reference"]["velocity"].add_(5e-5))
    assert not verify_parity(path, tolerance=1e-5).passed
    assert verify_parity(path, tolerance=1e-4).passed


def test_incomplete_or_foreign_fixture(made_fixture, tmp_path):
    path, fixture = made_fixture
    _rewrite(path, fixture, lambda f: f["reference"].pop("time_grid"))
    with pytest.raises(ValueError, match=r"lacks \['time_grid'\]"):
        verify_parity(path)
    torch.save({"reference": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a parity fixture"):
        verify_parity(tmp_path / "other.pt")


def test_shape_mismatch_is_reported(made_fixture):
    path, fixture = made_fixture
    _rewrite(path, fixture, lambda f: f["reference"]["trajectories"].__setitem__("euler", f["reference"]["trajectories"]["euler"][:-1]))
    with pytest.raises(ValueError, match=r"shape \(7, 2, 4, 16, 16\) differs from the reference's \(6, 2, 4, 16, 16\)"):
        verify_parity(path)
