"""A generation run as the plugin keeps it: the trajectory plus what is needed to show and export
it in stored pixel values. No Qt, no napari (the napari writer and the widget both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari_cellflux.generation.cost import CostEstimate
    from napari_cellflux.generation.generate import Trajectory
    from napari_cellflux.models.channels import Channel
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.normalization import Normalization


@dataclass
class GenerationResult:
    """trajectory: the run (model space). controls: (N, C, H, W) stored pixels of the control
    cells it started from. channels / normalization: the model's, for display and export."""

    trajectory: "Trajectory"
    controls: np.ndarray
    channels: "tuple[Channel, ...]"
    normalization: "Normalization"

    @cached_property
    def pixels(self) -> np.ndarray:
        """(T, N, C, H, W) the trajectory as stored pixels (uint8 for 8-bit models)."""
        return self.normalization.to_pixels(self.trajectory.states)

    @property
    def times(self) -> np.ndarray:
        return self.trajectory.times.numpy()

    @property
    def domain_messages(self) -> list[str]:
        """What the check of the controls against the model's training controls found, or why it
        checked nothing (empty when they look alike)."""
        from napari_cellflux.models.domain import DomainReport

        check = self.trajectory.metadata.get("domain_check")
        return DomainReport(**check).messages() if check else []

    @property
    def label(self) -> str:
        """The perturbation's name, or its SMILES for an unseen compound."""
        return self.trajectory.metadata.get("perturbation") or "unconditional"

    def write_tiff(self, path: str | Path, index: int | None = None) -> Path:
        """Write the whole trajectory, or only grid state ``index``, as a Fiji hyperstack (atomic)."""
        from napari_cellflux.generation.export import write_trajectory_tiff

        states, times = self.trajectory.states, self.trajectory.times
        if index is not None:
            if not -len(times) <= index < len(times):
                raise IndexError(f"state {index} does not exist; the trajectory has {len(times)} states (0..{len(times) - 1})")
            index %= len(times)  # -1 = the final state, as in Python indexing
            states, times = states[index:index + 1], times[index:index + 1]
        return write_trajectory_tiff(path, states, times, self.channels, self.normalization, self.trajectory.metadata)


def generate_from_pixels(
    model: "CellFluxModel",
    pixels: np.ndarray,
    *,
    n_cells: int | None = None,
    device: str = "auto",
    before_run: "Callable[[CostEstimate], bool] | None" = None,
    **generate_options,
) -> GenerationResult:
    """Run :func:`napari_cellflux.api.generate` on the first ``n_cells`` of the control crops
    ``pixels`` (N, C, H, W, stored values) on ``device``; ``generate_options`` go to generate
    (perturbation or smiles, sampling, seed, progress, cancel, ...).

    The controls are first compared with the model's training controls
    (:func:`napari_cellflux.models.domain.check_domain`: a DomainWarning per finding); the report
    is ``metadata["domain_check"]`` of the trajectory. ``before_run(estimate)``, if given, is told
    what the run will cost (:func:`napari_cellflux.generation.cost.estimate_cost`) before it starts,
    and stops it (GenerationCancelled) by returning False."""
    from napari_cellflux.generation.generate import (  # torch: only once a run starts
        check_controls,
        condition_vector,
        generate,
    )
    from napari_cellflux.models.domain import check_domain
    from napari_cellflux.runtime import resolve_device

    controls = np.asarray(pixels)[:n_cells]
    x = check_controls(model, model.normalization.to_model(controls))  # a wrong shape is an error before any warning
    condition_vector(model, generate_options.get("perturbation"), smiles=generate_options.get("smiles"),
                     embedding=generate_options.get("embedding"))  # so is an unknown perturbation
    domain = check_domain(model, controls.reshape(x.shape))  # (C, H, W): one cell
    model.to(resolve_device(device))
    if before_run is not None:
        from napari_cellflux.generation.cost import estimate_cost
        from napari_cellflux.generation.generate import GenerationCancelled
        from napari_cellflux.settings import SpeedOptions

        condition = {k: generate_options[k] for k in ("perturbation", "smiles", "embedding") if generate_options.get(k) is not None}
        estimate = estimate_cost(model, x, len(x), generate_options.get("sampling") or model.sampling,
                                 generate_options.get("speed", SpeedOptions()), condition,
                                 batch_size=generate_options.get("batch_size", 64))
        if not before_run(estimate):
            raise GenerationCancelled(f"not started: {estimate.describe()}")
        trajectory_metadata = {"cost_estimate_s": round(estimate.seconds, 2)}
    else:
        trajectory_metadata = {}
    trajectory = generate(model, x, **generate_options)
    trajectory.metadata.update(trajectory_metadata)
    trajectory.metadata["domain_check"] = domain.to_dict()
    return GenerationResult(trajectory, controls, model.channels, model.normalization)
