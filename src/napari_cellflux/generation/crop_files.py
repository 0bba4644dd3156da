"""Reading stacks of single-cell crops from files, in any common axis order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_cellflux.data.images import load_npy, read_tiff
from napari_cellflux.errors import InputError

CROP_SUFFIXES = (".npy", ".tif", ".tiff")


def to_nchw(array: np.ndarray, channels: int, source: str = "crops") -> np.ndarray:
    """(N, C, H, W), (N, H, W, C), (C, H, W) or (H, W, C) -> (N, C, H, W), by where ``channels`` sits.

    Single-channel models also take (N, H, W) and (H, W).
    """
    a = np.asarray(array)
    if channels == 1 and a.ndim in (2, 3) and (a.ndim == 2 or a.shape[0] != 1):
        a = a[..., None, :, :]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise InputError(f"{source}: expected (N, C, H, W) or (N, H, W, C) cells, got shape {a.shape}")
    if a.shape[1] == channels:
        return a
    if a.shape[-1] == channels:
        return np.moveaxis(a, -1, 1)
    raise InputError(
        f"{source}: shape {a.shape} has no axis of {channels} channels; the model takes {channels} channels "
        "(axis 1 for N, C, H, W or last for N, H, W, C)"
    )


def read_crops(path: str | Path, channels: int) -> np.ndarray:
    """Crops from a .npy / .tif stack, or from a folder of such files (one cell or stack each),
    as an (N, C, H, W) array of stored pixel values."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in CROP_SUFFIXES)
        if not files:
            raise InputError(f"folder {path} holds no {'/'.join(CROP_SUFFIXES)} crops")
        stacks = [read_crops(f, channels) for f in files]
        sizes = {f"{s.shape[-2]} x {s.shape[-1]}": f.name for f, s in zip(files, stacks)}
        if len(sizes) > 1:
            listed = ", ".join(f"{size} px in {name}" for size, name in sizes.items())
            raise InputError(f"folder {path}: crops of different sizes ({listed}); keep crops of one size per folder")
        return np.concatenate(stacks)
    if not path.is_file():
        raise FileNotFoundError(f"crops file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
    elif suffix in (".tif", ".tiff"):
        array = read_tiff(path)
    else:
        raise InputError(f"{path}: unsupported crop file type {suffix!r}; use .npy or .tif")
    return to_nchw(array, channels, source=str(path))
