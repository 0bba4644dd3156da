"""What a run will cost, said before it starts: a timed network evaluation on a few cells,
scaled to the run's cells and evaluations. A 56 M-parameter published model takes seconds per
cell and evaluation on a CPU, so the paper's defaults over a folder of crops can take days."""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

from napari_cellflux.generation.generate import generate
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.settings import SamplingConfig, SpeedOptions

LONG_RUN_S = 60.0  # above this a run is announced with ways to shorten it
PROBE_BUDGET_S = 10.0  # the most each further probe may cost (estimated from the last)
FEW_STEP = "--solver midpoint --grid uniform --steps 10"  # within 5% of 100 evaluations (docs/speed.md)


@dataclass(frozen=True)
class CostEstimate:
    """seconds: the whole run, extrapolated linearly in cells and network evaluations from one
    timed evaluation of ``probe_cells`` cells that took ``probe_seconds``."""

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


def estimate_cost(model: CellFluxModel, controls, n_cells: int, sampling: SamplingConfig,
                  speed: SpeedOptions = SpeedOptions(), condition: dict | None = None,
                  batch_size: int = 64) -> CostEstimate:
    """Time network evaluations of generate() on ``controls`` (model space, (N, C, H, W)) with the
    run's guidance, autoguidance and speed options, and scale them to ``n_cells`` cells and
    ``sampling.evaluations`` evaluations.

    One cell is timed first; scaled up, that errs long (first-call overhead, no batching, and on
    a machine whose cores are busy, OpenMP threads waiting for each other on every small
    operation: there one cell of the demo took 1.7 s, 16 cells 0.35 s). Where it still says the
    run is short, that is the answer, and short interactive runs pay for one cell only. Where it
    says long, more cells are timed, each probe as many as PROBE_BUDGET_S allows at the last
    probe's time per cell, up to a whole batch as the run will use; where even two cells would
    cost more (a published model on a CPU: seconds per cell) the one-cell time stands."""
    one_step = sampling.with_overrides(solver="euler", grid="uniform", steps=1)  # the run's guidance, noise, autoguidance

    def timed(cells) -> float:
        started = perf_counter()
        generate(model, cells, sampling=one_step, speed=speed, batch_size=batch_size, final_only=True,
                 **(condition or {}))
        return perf_counter() - started

    batch = min(len(controls), n_cells, batch_size)
    probe, seconds = 1, timed(controls[:1])
    while probe < batch and seconds / probe * n_cells * sampling.evaluations > LONG_RUN_S:
        # Per cell the time falls as the probe grows, so the last probe's rate bounds the next's cost.
        cells = min(batch, int(PROBE_BUDGET_S * probe / seconds))
        if cells < 2 * probe and cells < batch:
            break  # too dear to time more cells, or little left to learn
        probe, seconds = cells, timed(controls[:cells])
    return CostEstimate(
        seconds=seconds / probe * n_cells * sampling.evaluations, cells=n_cells,
        evaluations=sampling.evaluations, probe_cells=probe, probe_seconds=seconds, device=str(model.device),
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def announce(prog: str):
    """A ``before_run`` for command lines: a long run is announced on stderr, then goes ahead."""
    import sys

    def before_run(estimate: CostEstimate) -> bool:
        if estimate.long:
            print(f"{prog}: note: {estimate.advice()}", file=sys.stderr)
        return True

    return before_run
