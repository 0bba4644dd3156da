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
    **generate_options,
) -> GenerationResult:
    """Run :func:`napari_cellflux.api.generate` on the first ``n_cells`` of the control crops
    ``pixels`` (N, C, H, W, stored values) on ``device``; ``generate_options`` go to generate
    (perturbation or smiles, sampling, seed, progress, cancel, ...)."""
    from napari_cellflux.generation.generate import generate  # torch: only once a run starts
    from napari_cellflux.runtime import resolve_device

    controls = np.asarray(pixels)[:n_cells]
    model.to(resolve_device(device))
    trajectory = generate(model, model.normalization.to_model(controls), **generate_options)
    return GenerationResult(trajectory, controls, model.channels, model.normalization)
