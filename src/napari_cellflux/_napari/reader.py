"""npe2 reader: a plate's LoadData CSV, or the channel files of one field, opened as one additive
Image layer per channel, named and coloured, scaled in µm where the TIFF records its pixel size.

Claimed names (napari.yaml) are only those of screens (``*load_data*.csv``, Opera Phenix and
ImageXpress TIFFs): claiming every .tif or .csv would make napari ask which reader to use for any
TIFF or CSV, and make ``viewer.open("x.tif")`` fail without ``plugin=`` in users' scripts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_cellflux.data.images import read_tiff
from napari_cellflux.data.plate_extraction import read_field
from napari_cellflux.data.plates import (
    NAME_PATTERNS,
    Field,
    fields_from_loaddata,
    is_loaddata,
    normalize_well,
)
from napari_cellflux.data.scale import pixel_size_from_tiff
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import COLOR_CYCLE, DATASET_CHANNELS, NUCLEAR_STAINS

TIFF_SUFFIXES = (".tif", ".tiff")


def get_reader(path: str | list[str]):
    """The reader for ``path``: a LoadData CSV, or TIFF channel files (one, or several opened as a
    stack); None for anything else, so napari tries its other readers."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if len(paths) == 1 and str(paths[0]).lower().endswith(".csv"):
        return read_loaddata if is_loaddata(Path(paths[0])) else None
    if paths and all(str(p).lower().endswith(TIFF_SUFFIXES) for p in paths):
        return read_channel_files
    return None


def read_channel_files(path: str | list[str]) -> list[tuple]:
    """One field's channel files (or one multi-channel TIFF): one Image layer per channel."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    image = read_field(Field(tuple(paths), origin=", ".join(map(str, paths))))
    names = [channel_name(p) for p in paths] if len(paths) > 1 else [f"channel {i + 1}" for i in range(len(image))]
    return channel_layers(list(image), names, _pixel_size(paths[0]))


def read_loaddata(path: str) -> list[tuple]:
    """Every field of a LoadData CSV: per channel one layer, a (fields, H, W) stack read lazily
    when there are several fields (a plate has thousands), so a slider walks the fields."""
    fields = fields_from_loaddata(Path(path), None)
    names = list(fields[0].channels)
    first = read_field(fields[0])
    if len(fields) == 1:
        planes = list(first)
    else:
        import dask.array as da
        from dask import delayed

        def plane(field: Field, index: int) -> np.ndarray:
            pixels = np.squeeze(read_tiff(field.files[index]))
            if pixels.shape != first.shape[1:]:
                raise InputError(f"{field.origin}: {field.files[index].name} is {pixels.shape}, the first field "
                                 f"{first.shape[1:]}; a stack needs fields of one size")
            return pixels

        planes = [
            da.stack([da.from_delayed(delayed(plane)(f, c), first.shape[1:], first.dtype) for f in fields])
            for c in range(len(names))
        ]
    layers = channel_layers(planes, names, _pixel_size(fields[0].files[0]), title=Path(path).stem)
    for _, meta, _ in layers:
        meta["metadata"] = {"fields": [f"{f.plate} {f.well} site {f.site}" for f in fields]}
    return layers


def channel_layers(planes: list, names: list[str], pixel_size_um: float | None, title: str = "") -> list[tuple]:
    """Layer data tuples: one additive, coloured Image layer per channel ("<title> [<name>]"), scaled
    to µm when known."""
    used: set[str] = set()
    layers = []
    for data, name in zip(planes, names):
        color = channel_color(name, used)
        used.add(color)
        meta = {"name": f"{title} [{name}]" if title else name, "colormap": color, "blending": "additive"}
        if pixel_size_um is not None:  # the µm units are what the dock reads a field's pixel size from
            meta["scale"] = (1.0,) * (np.ndim(data) - 2) + (pixel_size_um, pixel_size_um)
            meta["units"] = ("pixel",) * (np.ndim(data) - 2) + ("µm", "µm")
        layers.append((data, meta, "image"))
    return layers


def channel_color(name: str, used: set[str]) -> str:
    """Blue for a DNA stain, the published screens' colour for a stain they name (ER green, ...),
    else the first colour of the cycle not taken yet."""
    if NUCLEAR_STAINS.search(name):
        return "blue"
    key = name.casefold()
    for channels in DATASET_CHANNELS.values():
        for channel in channels:
            if key in (channel.name.casefold(), channel.name.split(" ")[0].casefold()):
                return channel.color
    return next((c for c in COLOR_CYCLE if c not in used and c != "blue"), "gray")


def channel_name(path: Path) -> str:
    """A channel file's layer name: "<well> s<site> ch<channel>" from an instrument's name, else its stem."""
    for pattern in NAME_PATTERNS.values():
        if m := re.fullmatch(pattern, path.name):
            parts = m.groupdict()
            well = normalize_well(parts.get("well") or f"r{parts['row']}c{parts['col']}")
            return f"{well} s{int(parts['site'] or 1)} ch{parts['channel']}"
    return path.stem


def _pixel_size(path: Path) -> float | None:
    try:
        found = pixel_size_from_tiff(path)
    except InputError:  # an absurd recorded size: show the pixels unscaled rather than refuse them
        return None
    return None if found is None else found[0]
