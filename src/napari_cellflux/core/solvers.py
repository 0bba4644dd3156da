"""Time grids and fixed-grid ODE solvers for dx/dt = v(x, t), t from ~0 (control) to 1 (perturbed).

A solver is a small pure step function ``step(velocity, x, t0, t1) -> x1``; ``integrate``
walks a grid with any of them and returns the state at every grid time.
"""

from __future__ import annotations

from typing import Callable

import torch

from napari_cellflux.core.flow import Velocity
from napari_cellflux.settings import canonical_solver, check_steps

Step = Callable[[Velocity, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def uniform_grid(steps: int) -> torch.Tensor:
    """``steps + 1`` evenly spaced times from 0 to 1."""
    check_steps("uniform", steps)
    return torch.linspace(0.0, 1.0, steps + 1)


def edm_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The EDM schedule mapped to flow time: ``steps + 1`` times from 1/(1 + sigma_max) to 1.

    sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..steps-1, then sigma = 0 is appended; t = 1 / (1 + sigma). Steps crowd near t = 1,
    where the fine detail of the perturbed cell is formed.
    """
    check_steps("edm", steps)
    i = torch.arange(steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigma = (hi + i / (steps - 1) * (lo - hi)) ** rho
    sigma = torch.cat([sigma, torch.zeros(1, dtype=torch.float64)])
    return (1 - sigma / (1 + sigma)).float()


TIME_GRIDS: dict[str, Callable[[int], torch.Tensor]] = {"uniform": uniform_grid, "edm": edm_grid}


def time_grid(name: str, steps: int) -> torch.Tensor:
    """The grid called ``name`` ("uniform" or "edm") with ``steps`` intervals."""
    check_steps(name, steps)
    return TIME_GRIDS[name](steps)


def euler_step(velocity: Velocity, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """x1 = x + h v(x, t0); one network evaluation."""
    return x + (t1 - t0) * velocity(x, t0)


def midpoint_step(velocity: Velocity, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """x1 = x + h v(x + h/2 v(x, t0), t0 + h/2); two network evaluations."""
    h = t1 - t0
    x_mid = x + velocity(x, t0) * (h / 2)
    return x + h * velocity(x_mid, t0 + h / 2)


def heun_step(velocity: Velocity, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Heun (explicit trapezoid): average the slopes at both ends of an Euler step; two evaluations."""
    h = t1 - t0
    d0 = velocity(x, t0)
    d1 = velocity(x + h * d0, t1)
    return x + h * (d0 + d1) / 2


SOLVERS: dict[str, Step] = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step}


def solver(name: str) -> Step:
    """The step function called ``name`` ("euler", "midpoint" or "heun"; "heun2" is an alias)."""
    return SOLVERS[canonical_solver(name)]


def integrate(
    step: Step,
    velocity: Velocity,
    x: torch.Tensor,
    grid: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    *,
    keep_all: bool = True,
) -> torch.Tensor:
    """Solve from ``grid[0]`` to ``grid[-1]``: returns (T, *x.shape), the state at each of the T grid times.

    ``callback(i, x_i)`` runs after step i (1..T-1), e.g. to report progress or to cancel by raising.
    ``keep_all=False`` keeps only the final state, returned as (1, *x.shape): memory then does
    not grow with the number of steps.
    """
    grid = grid.to(device=x.device, dtype=x.dtype)
    states = [x]
    for i in range(1, len(grid)):
        x = step(velocity, x, grid[i - 1], grid[i])
        if keep_all:
            states.append(x)
        else:
            states[0] = x
        if callback is not None:
            callback(i, x)
    return torch.stack(states)
