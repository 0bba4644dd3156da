"""The cells a profile is made of, from a generated screen or from real crops, in one shape, so
both are profiled by the same code (docs/phenotype.md, Inputs).

A generated screen (``manifest.json`` + chunk files, ``generation.screen_files``) is measured
against the control pool it was generated from: the ``--controls`` file given to `cellflux
screen`, or, when none was given there, the synthetic pool that command draws (recognised by the
pool's SHA-256 in the manifest). Real crops (``cells.csv``, the plain format, or an IMPA
``metadata.csv``) are measured against their own control cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cellflux.errors import InputError

GENERATED, REAL = "generated", "real"
SYNTHETIC_POOL_SIZE = 64  # the pool `cellflux screen` draws without --controls (cli.commands.cmd_screen)


@dataclass
class CellGroup:
    """One perturbation's cells: (n, C, H, W) stored pixels (possibly memory-mapped)."""

    name: str
    pixels: np.ndarray


@dataclass
class CellSource:
    """What is profiled: treated groups and the controls they are compared with (stored pixels in
    0..max_value), the channel names, where it came from and its kind (generated / real)."""

    path: Path
    kind: str
    channels: tuple[str, ...]
    max_value: float
    controls: np.ndarray
    groups: list[CellGroup]


def read_source(
    path: str | Path,
    *,
    controls: str | Path | None = None,
    channels: Sequence[str] | None = None,
    split: str | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> CellSource:
    """The cells of a screen folder: a generated screen (manifest.json) or real crops (cells.csv /
    metadata.csv). ``max_cells``: at most this many cells per group (controls included), drawn
    at random (seeded) for real crops and the first ones of a generated screen."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"screen folder {root} does not exist")
    if (root / "manifest.json").is_file():
        return read_generated(root, controls=controls, channels=channels, max_cells=max_cells)
    if (root / "cells.csv").is_file() or (root / "metadata.csv").is_file():
        if controls is not None:
            raise InputError(f"--controls is for generated screens; {root} holds real crops, measured against their own controls")
        return read_real(root, channels=channels, split=split, max_cells=max_cells, seed=seed)
    raise InputError(
        f"{root} has no manifest.json: give a screen folder written by `cellflux screen` (manifest.json + chunk "
        "files), or real crops in the plain format (cells.csv) or the IMPA layout (metadata.csv)"
    )


def read_generated(root: Path, *, controls=None, channels=None, max_cells=None) -> CellSource:
    from napari_cellflux.generation.screen_files import read_screen

    screen = read_screen(root)
    manifest = screen.manifest
    names = tuple(channels) if channels else tuple(manifest["channels"])
    pool = control_pool(manifest, controls, root)
    groups = []
    for part in screen:
        if part.entry.get("is_control"):
            continue  # generated control cells are cells of the screen, not the reference they are measured against
        chunks, count = [], 0
        for _, cells in part.chunks():
            cells = cells[:, -1] if cells.ndim == 5 else cells  # all states stored: the final (t = 1) one
            chunks.append(np.asarray(cells[: None if max_cells is None else max_cells - count]))
            count += len(chunks[-1])
            if max_cells is not None and count >= max_cells:
                break
        if not chunks:
            raise InputError(f"{part.folder}: no chunk of {part.name!r} is on disk yet; run `cellflux screen` again to make them")
        groups.append(CellGroup(part.name, np.concatenate(chunks)))
    top = float(manifest.get("normalization", {}).get("max_value", 255.0))
    return CellSource(root, GENERATED, names, top, pool[:max_cells] if max_cells else pool, groups)


def control_pool(manifest: dict, controls, root: Path) -> np.ndarray:
    """The pool a screen was generated from: ``controls`` (a crop file or folder) or the synthetic
    default pool; either must have the SHA-256 the manifest records."""
    from napari_cellflux.generation.crop_files import read_crops
    from napari_cellflux.generation.screen import pool_sha256

    expected = manifest["controls"]["sha256"]
    channels, size = manifest["cell_shape"][0], manifest["cell_shape"][-1]
    if controls is not None:
        pool = read_crops(controls, channels)
        if pool_sha256(pool) != expected:
            raise InputError(f"--controls {controls}: not the control pool {root} was generated from (its SHA-256 differs "
                             "from the manifest's); give the same --controls file that `cellflux screen` was given")
        return pool
    if manifest["controls"]["n"] == SYNTHETIC_POOL_SIZE:
        from napari_cellflux.data.samples import synthetic_controls

        pool = synthetic_controls(SYNTHETIC_POOL_SIZE, size, channels, manifest["seed"])
        if pool_sha256(pool) == expected:
            return pool
    raise InputError(f"{root} was generated from a control pool of {manifest['controls']['n']} cells that is not stored "
                     "with it; pass --controls with the file `cellflux screen --controls` was given")


def read_real(root: Path, *, channels=None, split=None, max_cells=None, seed: int = 0) -> CellSource:
    from napari_cellflux.data.cells import load_cell
    from napari_cellflux.data.screens import read_screen_table

    screen = read_screen_table(root)
    table = screen.table.select(split)
    cells = table.cells
    if not cells["is_control"].any():
        raise InputError(f"{screen.csv} lists no control cells{f' in split {split}' if split else ''}; effects are "
                         "measured against controls: mark them with is_control = true")
    rng = np.random.default_rng(seed)

    def load(rows) -> np.ndarray:
        paths = list(rows["path"])
        if max_cells is not None and len(paths) > max_cells:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), max_cells, replace=False))]
        return np.stack([load_cell(p) for p in paths])

    controls = load(cells[cells["is_control"]])
    groups = [CellGroup(name, load(cells[(cells["perturbation"] == name) & ~cells["is_control"]])) for name in table.perturbations]
    names = tuple(channels) if channels else real_channel_names(root, screen.format, controls.shape[1])
    return CellSource(root, REAL, names, 255.0, controls, groups)


def real_channel_names(root: Path, data_format: str, count: int) -> tuple[str, ...]:
    """Channel names of real crops: a synthetic screen's screen.json, or the names `cellflux extract`
    recorded in extraction.json (the same for every field), else the published screen's stains for
    an IMPA layout, else generic names (which name no DNA channel: --channels is needed)."""
    from napari_cellflux.data.extract import extraction_records
    from napari_cellflux.data.synthetic import screen_info
    from napari_cellflux.models.channels import DATASET_CHANNELS, default_channels

    info = screen_info(root)
    if info is not None:
        names = info.get("channel_names")
        if names and len(names) == count:
            return tuple(names)
    recorded = {tuple(field.get("channels") or ()) for field in extraction_records(root).values()}
    if len(recorded) == 1 and len(names := recorded.pop()) == count:
        return names
    known = DATASET_CHANNELS.get(data_format)
    if known and len(known) == count:
        return tuple(c.name for c in known)
    return tuple(c.name for c in default_channels(count))
