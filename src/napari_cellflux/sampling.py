"""Time grids and fixed-grid ODE solvers for dx/dt = v(x, t), t from ~0 (control) to 1 (perturbed).

A solver is a small pure step function ``step(velocity, x, t0, t1) -> x1``; ``integrate``
walks a grid with any of them and returns the state at every grid time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .flow import Velocity

Step = Callable[[Velocity, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def uniform_grid(steps: int) -> torch.Tensor:
    """``steps + 1`` evenly spaced times from 0 to 1."""
    _check_steps(steps, 1)
    return torch.linspace(0.0, 1.0, steps + 1)


def edm_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The EDM schedule mapped to flow time: ``steps + 1`` times from 1/(1 + sigma_max) to 1.

    sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..steps-1, then sigma = 0 is appended; t = 1 / (1 + sigma). Steps crowd near t = 1,
    where the fine detail of the perturbed cell is formed.
    """
    _check_steps(steps, 2)
    i = torch.arange(steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigma = (hi + i / (steps - 1) * (lo - hi)) ** rho
    sigma = torch.cat([sigma, torch.zeros(1, dtype=torch.float64)])
    return (1 - sigma / (1 + sigma)).float()


TIME_GRIDS: dict[str, Callable[[int], torch.Tensor]] = {"uniform": uniform_grid, "edm": edm_grid}


def time_grid(name: str, steps: int) -> torch.Tensor:
    """The grid called ``name`` ("uniform" or "edm") with ``steps`` intervals."""
    if name not in TIME_GRIDS:
        raise ValueError(f"unknown time grid {name!r}; choose one of {sorted(TIME_GRIDS)}")
    return TIME_GRIDS[name](steps)


def _check_steps(steps: int, minimum: int) -> None:
    if int(steps) != steps or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum}, got {steps!r}")


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
EVALUATIONS_PER_STEP: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2}


def solver(name: str) -> Step:
    """The step function called ``name`` ("euler", "midpoint" or "heun"; "heun2" is an alias)."""
    name = "heun" if name == "heun2" else name
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name]


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


@dataclass(frozen=True)
class SamplingConfig:
    """How to integrate from control to perturbed; the defaults are the paper's (50 Heun steps on
    the EDM grid = 100 network evaluations, guidance w = 0.2, noise level 0.5)."""

    solver: str = "heun"
    grid: str = "edm"
    steps: int = 50
    guidance: float = 0.2
    noise_level: float = 0.5

    def __post_init__(self) -> None:
        if self.solver == "heun2":  # the authors' name for Heun
            object.__setattr__(self, "solver", "heun")
        solver(self.solver)
        time_grid(self.grid, self.steps)
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0 (0 = no guidance), got {self.guidance}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (twice as many forwards with guidance)."""
        return self.steps * EVALUATIONS_PER_STEP[self.solver]

    def to_dict(self) -> dict:
        return asdict(self)
