"""Time grids, fixed-grid solvers (convergence orders on a linear ODE), integrate, SamplingConfig."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_cellflux.core.solvers import (
    edm_grid,
    euler_step,
    heun_step,
    integrate,
    midpoint_step,
    solver,
    time_grid,
    uniform_grid,
)
from napari_cellflux.settings import SamplingConfig

# --- grids ----------------------------------------------------------------------------------------


def test_uniform_grid():
    torch.testing.assert_close(uniform_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), rtol=0, atol=0)


def _edm_reference(n: int) -> np.ndarray:
    """docs/method.md, Sampling: sigma_i = (80^(1/7) + i/(N-1) (0.002^(1/7) - 80^(1/7)))^7,
    i = 0..N-1, append 0, t = 1 - sigma / (1 + sigma)."""
    i = np.arange(n, dtype=np.float64)
    sigma = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    sigma = np.append(sigma, 0.0)
    return 1 - sigma / (1 + sigma)


def test_edm_grid_50_steps():
    grid = edm_grid(50)
    assert grid.shape == (51,)
    assert grid[0].item() == pytest.approx(0.0123, abs=5e-5)
    assert grid[0].item() == pytest.approx(1 / 81, rel=1e-6)
    assert grid[-1].item() == 1.0
    assert torch.all(grid[1:] > grid[:-1])
    np.testing.assert_allclose(grid.numpy(), _edm_reference(50), rtol=0, atol=1e-7)


def test_edm_grid_6_equals_the_authors_time_grid(golden):
    torch.testing.assert_close(edm_grid(6), golden["reference"]["time_grid"].float(), rtol=0, atol=1e-7)


def test_time_grid_by_name_and_errors():
    torch.testing.assert_close(time_grid("edm", 6), edm_grid(6), rtol=0, atol=0)
    torch.testing.assert_close(time_grid("uniform", 3), uniform_grid(3), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown time grid 'karras'.*edm.*uniform"):
        time_grid("karras", 10)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_step_counts_raise(bad):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        uniform_grid(bad)


def test_edm_grid_needs_two_steps():
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        edm_grid(1)


# --- single steps ---------------------------------------------------------------------------------


def test_single_steps_match_their_formulas_on_a_time_dependent_ode():
    """dx/dt = t^2 + x separates where each method evaluates the velocity."""
    def v(x, t):
        return t**2 + x

    x = torch.tensor([0.7], dtype=torch.float64)
    t0, t1 = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    h = 0.3
    euler = 0.7 + h * (0.2**2 + 0.7)
    x_mid = 0.7 + h / 2 * (0.2**2 + 0.7)
    midpoint = 0.7 + h * (0.35**2 + x_mid)
    d0 = 0.2**2 + 0.7
    d1 = 0.5**2 + (0.7 + h * d0)
    heun = 0.7 + h * (d0 + d1) / 2
    assert euler_step(v, x, t0, t1).item() == pytest.approx(euler, rel=1e-12)
    assert midpoint_step(v, x, t0, t1).item() == pytest.approx(midpoint, rel=1e-12)
    assert heun_step(v, x, t0, t1).item() == pytest.approx(heun, rel=1e-12)


def test_network_evaluations_per_step():
    calls = []

    def v(x, t):
        calls.append(float(t))
        return -x

    x = torch.ones(1, dtype=torch.float64)
    t0, t1 = torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    for step, times in ((euler_step, [0.0]), (midpoint_step, [0.0, 0.25]), (heun_step, [0.0, 0.5])):
        calls.clear()
        step(v, x, t0, t1)
        assert calls == times


# --- convergence on dx/dt = a x --------------------------------------------------------------------

A = -1.7


def _error(step, n: int) -> float:
    x0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    states = integrate(step, lambda x, t: A * x, x0, uniform_grid(n).double())
    return float((states[-1] - x0 * math.exp(A)).abs().max())


@pytest.mark.parametrize("name,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("heun2", 2)])
def test_order_of_convergence(name, order):
    step = solver(name)
    errors = [_error(step, n) for n in (16, 32, 64, 128)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    for ratio in ratios:
        assert ratio == pytest.approx(2**order, rel=0.1), (errors, ratios)


def test_second_order_on_a_time_dependent_ode_and_non_uniform_grid():
    """dx/dt = cos(t) x, x(t) = x0 exp(sin t - sin t0): the time argument matters."""
    def v(x, t):
        return torch.cos(t) * x

    def error(step, n):
        grid = edm_grid(n).double()
        x0 = torch.tensor([1.3], dtype=torch.float64)
        exact = x0 * math.exp(math.sin(grid[-1].item()) - math.sin(grid[0].item()))
        return float((integrate(step, v, x0, grid)[-1] - exact).abs().max())

    for step, floor in ((midpoint_step, 3.0), (heun_step, 3.0), (euler_step, 1.6)):
        coarse, fine = error(step, 64), error(step, 128)
        assert coarse / fine > floor


# --- integrate ------------------------------------------------------------------------------------


def test_integrate_returns_every_state_and_calls_back():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    grid = edm_grid(6)
    seen = []
    times = []

    def v(x, t):
        times.append(t.item())
        return -x

    states = integrate(euler_step, v, x, grid, callback=lambda i, xi: seen.append((i, xi.clone())))
    assert states.shape == (len(grid), *x.shape)
    torch.testing.assert_close(states[0], x, rtol=0, atol=0)
    assert [i for i, _ in seen] == list(range(1, len(grid)))
    for i, xi in seen:
        torch.testing.assert_close(states[i], xi, rtol=0, atol=0)
    np.testing.assert_allclose(times, grid[:-1].numpy(), rtol=0, atol=0)
    expected = x.clone()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        expected = expected - (t1 - t0) * expected
    torch.testing.assert_close(states[-1], expected)


def test_integrate_can_be_cancelled_from_the_callback():
    class Cancelled(Exception):
        pass

    def callback(i, x):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        integrate(heun_step, lambda x, t: -x, torch.ones(2), uniform_grid(5), callback=callback)


def test_solver_names():
    assert solver("euler") is euler_step
    assert solver("midpoint") is midpoint_step
    assert solver("heun") is heun_step and solver("heun2") is heun_step
    with pytest.raises(ValueError, match=r"unknown solver 'rk4'.*euler.*heun.*midpoint"):
        solver("rk4")


# --- SamplingConfig --------------------------------------------------------------------------------


def test_sampling_config_defaults_are_the_papers():
    cfg = SamplingConfig()
    assert (cfg.solver, cfg.grid, cfg.steps, cfg.guidance, cfg.noise_level) == ("heun", "edm", 50, 0.2, 0.5)
    assert cfg.evaluations == 100  # 50 Heun steps = 100 network evaluations per image
    assert SamplingConfig(solver="euler", steps=20).evaluations == 20
    assert SamplingConfig(solver="heun2").solver == "heun"
    assert SamplingConfig(**cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(solver="rk4"), "unknown solver 'rk4'"),
        (dict(grid="cosine"), "unknown time grid 'cosine'"),
        (dict(steps=0), "steps must be an integer"),
        (dict(grid="edm", steps=1), "steps must be an integer >= 2"),
        (dict(guidance=-0.1), "guidance must be >= 0"),
        (dict(noise_level=-1.0), "noise_level must be >= 0"),
    ],
)
def test_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_integrate_can_keep_only_the_final_state():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = edm_grid(6).double()
    calls = []
    every = integrate(heun_step, lambda x, t: torch.sin(t) * x, x, grid)
    last = integrate(heun_step, lambda x, t: torch.sin(t) * x, x, grid,
                     callback=lambda i, xi: calls.append(i), keep_all=False)
    assert last.shape == (1, *x.shape)
    torch.testing.assert_close(last[0], every[-1], rtol=0, atol=0)
    assert calls == list(range(1, len(grid)))
