"""What a run will cost, said before it starts: a timed network evaluation on a few cells,
scaled to the run's cells and evaluations. A 56 M-parameter published model takes seconds per
cell and evaluation on a CPU, so the paper's defaults over a folder of crops can take days."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from napari_cellflux.generation.generate import generate
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.settings import SamplingConfig, SpeedOptions

LONG_RUN_S = 60.0  # above this a run is announced with ways to shorten it
PROBE_CELLS = 4  # cells in the timed evaluation: enough to amortise per-call overhead, cheap on a CPU
FEW_STEP = "--solver midpoint --grid uniform --steps 10"  # within 5% of 100 evaluations (docs/speed.md)


@dataclass(frozen=True)
class CostEstimate:
    """seconds: the whole run, extrapolated linearly in cells and network evaluations from one
    timed evaluation of ``probe_cells`` cells (first-call costs included, so it errs long)."""

    seconds: float
    cells: int
    evaluations: int
    probe_cells: int
    probe_seconds: float
    device: str

    @property
    def long(self) -> bool:
        return self.seconds > LONG_RUN_S

    def describe(self) -> str:
        return f"about {_duration(self.seconds)} on {self.device} ({self.cells} cells x {self.evaluations} network evaluations)"

    def advice(self) -> str:
        """What to say before a long run: the estimate and the ways to shorten it."""
        ways = ["fewer steps or cells", f"the few-step settings ({FEW_STEP})"]
        if self.device.startswith("cpu"):
            ways.append("a GPU")
        return f"this run will take {self.describe()}; for a quicker one use {', '.join(ways[:-1])} or {ways[-1]}"


def estimate_cost(model: CellFluxModel, controls: np.ndarray | object, n_cells: int, sampling: SamplingConfig,
                  speed: SpeedOptions = SpeedOptions(), condition: dict | None = None) -> CostEstimate:
    """Time one network evaluation of generate() on the first few of ``controls`` (model space,
    (N, C, H, W)) with the run's guidance and speed options, and scale it to ``n_cells`` cells
    and ``sampling.evaluations`` evaluations."""
    probe = controls[:PROBE_CELLS]
    one_step = SamplingConfig(solver="euler", grid="uniform", steps=1, guidance=sampling.guidance,
                              noise_level=sampling.noise_level)
    started = time.perf_counter()
    generate(model, probe, sampling=one_step, speed=speed, final_only=True, **(condition or {}))
    seconds = time.perf_counter() - started
    per_cell_evaluation = seconds / len(probe)
    return CostEstimate(
        seconds=per_cell_evaluation * n_cells * sampling.evaluations, cells=n_cells, evaluations=sampling.evaluations,
        probe_cells=len(probe), probe_seconds=seconds, device=str(model.device),
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
