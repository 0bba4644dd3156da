"""What the dock widget's thread workers run: headless calls only, off the Qt thread. torch is
first imported here, inside a worker, so that importing the plugin stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from napari_cellflux._napari.tiling import channel_grids

if TYPE_CHECKING:
    from napari_cellflux.models.model_file import CellFluxModel


def load_job(source: str) -> "CellFluxModel":
    from napari_cellflux.api import load_model

    return load_model(source, device="cpu")  # moved to the chosen device when generating


def generation_job(model, pixels_job: Callable[[], np.ndarray], condition: dict, options: dict, progress, cancel):
    """Control pixels -> trajectory -> display grids (tiling a long trajectory is not free).
    Returns None when cancelled, so a cancelled run ends quietly and adds nothing."""
    from napari_cellflux.api import GenerationCancelled
    from napari_cellflux.generation.result import generate_from_pixels
    from napari_cellflux.settings import SamplingConfig, SpeedOptions

    pixels = pixels_job()
    try:
        result = generate_from_pixels(
            model, pixels, n_cells=options["n_cells"], device=options["device"],
            sampling=SamplingConfig(**options["sampling"]), seed=options["seed"],
            speed=SpeedOptions(precision="fast"),  # interactive: bf16 wherever the hardware computes it natively
            progress=progress, cancel=cancel, **condition,
        )
    except GenerationCancelled:
        return None
    return result, channel_grids(result.controls), channel_grids(result.pixels)
