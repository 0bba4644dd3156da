"""Writing generated trajectories to TIFF that Fiji opens as a hyperstack, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_cellflux.atomic import atomic_write
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import Channel
from napari_cellflux.models.normalization import Normalization


def write_trajectory_tiff(
    path: str | Path,
    states: np.ndarray,
    times: np.ndarray,
    channels: tuple[Channel, ...] | list[Channel],
    normalization: Normalization,
    metadata: dict,
) -> Path:
    """Write (T, N, C, H, W) model-space states as an ImageJ hyperstack (T = flow time, Z = cell,
    C = channel) of stored pixel values (uint8 for 8-bit models).

    Channel names go to the ImageJ labels, the run's metadata (JSON, with the times) to the
    ImageJ "Info" property and the TIFF description, so the file documents how it was made.
    """
    import tifffile
    import torch

    states = torch.as_tensor(states)
    if states.dim() != 5:
        raise InputError(f"states must be (T, N, C, H, W), got shape {tuple(states.shape)}")
    t, n, c = states.shape[:3]
    if c != len(channels):
        raise InputError(f"states have {c} channels but {len(channels)} channel names were given")
    pixels = normalization.to_pixels(states)
    info = json.dumps({**metadata, "times": [float(x) for x in np.asarray(times)], "channels": [ch.name for ch in channels]})
    labels = [f"t={float(times[i]):.3f} cell {j} {ch.name}" for i in range(t) for j in range(n) for ch in channels]
    path = Path(path)
    with atomic_write(path) as f:
        tifffile.imwrite(
            f,
            pixels,
            imagej=True,
            metadata={"axes": "TZCYX", "Labels": labels, "Info": info, "mode": "composite"},
        )
    return path
