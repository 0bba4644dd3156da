"""What the dock widget's thread workers run: headless calls only, off the Qt thread. torch is
first imported here, inside a worker, so that importing the plugin stays fast."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from napari_cellflux._napari.tiling import channel_grids

if TYPE_CHECKING:
    from napari_cellflux.generation.cost import CostEstimate
    from napari_cellflux.models.model_file import CellFluxModel


def load_job(source: str) -> "CellFluxModel":
    from napari_cellflux.api import load_model

    return load_model(source, device="cpu")  # moved to the chosen device when generating


ASK_BEFORE_S = 180.0  # runs estimated longer than this wait for the user's yes


@dataclass(frozen=True)
class NeedsConfirmation:
    """A run that was not started because it would take long; the widget asks, then reruns."""

    estimate: "CostEstimate"


def generation_job(model, pixels_job: Callable[[], np.ndarray], condition: dict, options: dict, progress, cancel,
                   confirmed: bool = False):
    """Control pixels -> run -> its frames tiled per channel for display, each (F, grid_h, grid_w)
    (tiling a long trajectory is not free).
    Returns None when cancelled, so a cancelled run ends quietly and adds nothing, and a
    NeedsConfirmation, before any step, for a run estimated over ASK_BEFORE_S unless
    ``confirmed`` (the estimate is one timed network evaluation: generation/cost.py). The domain
    check's findings come back in the result (the widget lists them beside Generate), so they
    are not also raised as warnings, which napari would repeat as notifications."""
    from napari_cellflux.api import GenerationCancelled
    from napari_cellflux.generation.result import generate_from_pixels
    from napari_cellflux.models.domain import DomainWarning
    from napari_cellflux.settings import SamplingConfig, SpeedOptions

    pixels = pixels_job()
    too_long = []

    def before_run(estimate) -> bool:
        if estimate.seconds > ASK_BEFORE_S and not confirmed:
            too_long.append(estimate)
            return False
        return True

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DomainWarning)
            result = generate_from_pixels(
                model, pixels, n_cells=options["n_cells"], device=options["device"],
                sampling=SamplingConfig(**options["sampling"]), mode=options["mode"], seed=options["seed"],
                speed=SpeedOptions(precision="fast"),  # interactive: bf16 wherever the hardware computes it natively
                progress=progress, cancel=cancel, before_run=before_run, **condition,
            )
    except GenerationCancelled:
        return NeedsConfirmation(too_long[0]) if too_long else None
    return result, channel_grids(result.frames)
