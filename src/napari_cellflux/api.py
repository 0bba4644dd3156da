"""The public headless API: load a model, generate perturbed cells from controls, export.
No Qt, no napari. The widget, the CLI, training and evaluation call these same functions.

>>> from napari_cellflux import api
>>> model = api.load_model("demo")                         # zoo name, model file or checkpoint.pth
>>> traj = api.generate(model, controls, "taxol", seed=0)  # controls (N, C, H, W) in [-1, 1]
>>> traj.states.shape                                       # (T, N, C, H, W), T = steps + 1
>>> morph = api.generate(model, controls, "taxol", mode="morph")  # from the clean controls (MODES)
"""

from __future__ import annotations

from pathlib import Path

import torch

from napari_cellflux.core.speed import compile_mode
from napari_cellflux.errors import InputError
from napari_cellflux.generation.generate import (
    GenerationCancelled,
    ProgressCallback,
    Trajectory,
    check_controls,
    condition_vector,
    generate,
)
from napari_cellflux.models.model_file import CellFluxModel, is_own_format, load_model_file
from napari_cellflux.models.published import load_published
from napari_cellflux.runtime import autocast_dtype, best_device, native_bf16, resolve_device
from napari_cellflux.settings import COMPILE_MODES, MODES, PRECISIONS, SamplingConfig, SpeedOptions

__all__ = [
    "COMPILE_MODES", "MODES", "PRECISIONS", "CellFluxModel", "GenerationCancelled", "ProgressCallback", "SamplingConfig",
    "SpeedOptions", "Trajectory", "autocast_dtype", "best_device", "check_controls", "compile_mode",
    "condition_vector", "generate", "load_model", "native_bf16", "resolve_device",
]


def load_model(path: str | Path, device: str | torch.device | None = None, **published_options) -> CellFluxModel:
    """Load a napari-cellflux model file, a published CellFlux ``checkpoint.pth``, or a model zoo
    name ("bbbc021", see ``cellflux zoo list``; downloaded and converted on first use) onto ``device``.

    ``published_options`` go to :func:`napari_cellflux.models.published.load_published` (embeddings,
    channels, kind, image_size, use_ema, config) and only apply to published checkpoints; a zoo
    name takes only ``embeddings`` (your own embedding table).
    """
    path = Path(path)
    if not path.is_file():
        from napari_cellflux.models import zoo

        registry = zoo.default_zoo()
        if str(path) not in registry.names():
            raise FileNotFoundError(
                f"model file {path} does not exist, and {str(path)!r} is not a zoo model name "
                f"({', '.join(registry.names())}; see `cellflux zoo list`)"
            )
        others = sorted(set(published_options) - {"embeddings"})
        if others:
            raise InputError(f"zoo model {str(path)!r} takes only the embeddings option, not {others}")
        return registry.load(str(path), resolve_device(device), embeddings=published_options.get("embeddings"))
    device = resolve_device(device)
    if is_own_format(path):
        if published_options:
            raise InputError(f"{path} is a napari-cellflux model file; options {sorted(published_options)} apply only to published checkpoints")
        return load_model_file(path, device)
    return load_published(path, **published_options).to(device)


