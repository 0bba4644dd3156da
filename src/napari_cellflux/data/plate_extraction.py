"""Every field of a plate (or one field's channel files) into one plain-format folder: read each
field's channels, bring it to the model's pixel size, cut out its cells and write them, the sites
of a well under one crop-name prefix so a plate of thousands of fields rewrites cells.csv once per
well, not once per field.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cellflux.data.extract import ExtractionConfig, FieldCells, as_channels_first, extract_cells, write_fields
from napari_cellflux.data.images import read_tiff
from napari_cellflux.data.plain import check_prefix
from napari_cellflux.data.plates import Field, Warn
from napari_cellflux.data.scale import ASSUMED, FieldScale, field_scale, rescale_to
from napari_cellflux.errors import InputError


def read_field(field: Field, channel_axis: int | None = None, model_channels: Sequence[str] | None = None) -> np.ndarray:
    """The (C, H, W) pixels of ``field`` in output order; C must match its named channels (those of
    ``model_channels`` when given, so the message can say what the model takes)."""
    if len(field.files) == 1:
        image = as_channels_first(read_tiff(field.files[0]), channel_axis, str(field.files[0]))
        if field.select is not None:
            if len(field.select) != len(image):
                raise InputError(f"{field.origin}: holds {len(image)} channel(s) but --channels names {len(field.select)}; "
                                 "name each channel of the file, in its order")
            image = image[list(field.select)]
    else:
        planes = []
        for path in field.files:
            plane = np.squeeze(read_tiff(path))
            if plane.ndim != 2:
                raise InputError(f"{path}: shape {plane.shape}; a channel file holds one (H, W) plane")
            planes.append(plane)
        if len({p.shape for p in planes}) > 1:
            sizes = ", ".join(f"{path.name} {p.shape[0]} x {p.shape[1]}" for path, p in zip(field.files, planes))
            raise InputError(f"{field.origin}: the channels differ in size ({sizes}); give the channel files of one field")
        image = np.stack(planes)
    names = tuple(model_channels or field.channels)
    if names and len(image) != len(names):
        who = f"the model takes {len(names)}" if model_channels else f"--channels names {len(names)}"
        order = ", ".join(names)
        raise InputError(f"{field.origin}: {len(image)} channel(s), but {who} ({order}); give one file per channel "
                         f"in the order {order}, or one file holding all {len(names)}")
    return image


@dataclass
class ExtractionSummary:
    """What :func:`extract_fields` wrote: cells and fields, the fields without croppable nuclei,
    and one field's scale (all share it unless their TIFFs record different sizes)."""

    csv: Path
    cells: int
    fields: int
    wells: int
    dropped_at_border: int
    empty: list[str]
    scale: FieldScale
    shape: tuple[int, ...]

    def line(self) -> str:
        scale = self.scale
        size = "unknown µm/px" if scale.crop_um is None else f"{scale.crop_um:g} µm/px [{scale.source}]"
        empty = f"; {len(self.empty)} field(s) had no croppable nuclei (e.g. {self.empty[0]})" if self.empty else ""
        where = f" in {self.wells} well(s)" if self.wells else ""
        return (f"wrote {self.cells} cells ({self.shape[0]} channels, {self.shape[1]} x {self.shape[2]} px at {size}) "
                f"from {self.fields} field(s){where}, listed in {self.csv}; "
                f"{self.dropped_at_border} nuclei too close to the border were skipped{empty}")


def field_prefix(field: Field) -> str:
    """Crop-name prefix of a field's group: <plate>_<well> for plate fields (the sites of a well share
    it), else the first file's name."""
    if not field.well:
        return field.files[0].stem
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", part) for part in (field.plate, field.well) if part)


def extract_fields(
    fields: Sequence[Field],
    out_dir: str | Path,
    config: ExtractionConfig = ExtractionConfig(),
    *,
    pixel_size_um: float | None = None,
    model_pixel_size_um: float | None = None,
    model_channels: Sequence[str] | None = None,
    split: str = "train",
    prefix: str | None = None,
    labels: np.ndarray | None = None,
    channel_axis: int | None = None,
    warn: Warn | None = None,
) -> ExtractionSummary:
    """Extract every field into one plain-format folder: read its channels, rescale it from its pixel
    size (``pixel_size_um``, else its TIFF metadata) to ``model_pixel_size_um`` when both are known,
    segment, crop, and write each well's fields under one prefix. A plate's field without croppable
    nuclei is skipped and reported; a single field without them is an error."""
    warn = warn or (lambda line: warnings.warn(line, stacklevel=2))
    if labels is not None and len(fields) != 1:
        raise InputError(f"labels belong to one field, but {len(fields)} fields are given; segment plates instead (drop --labels)")
    if prefix and len(fields) != 1:
        raise InputError(f"--prefix names one field's crops, but {len(fields)} fields are given; plates are named <plate>_<well>")
    groups: dict[str, list[Field]] = {}
    for f in fields:
        groups.setdefault(check_prefix(prefix or field_prefix(f)), []).append(f)
    cells, dropped, channels, csv_path, empty, scales = 0, 0, 0, None, [], []
    for name, group in groups.items():
        parts = []
        for f in group:
            image = read_field(f, channel_axis, model_channels)
            scale = field_scale(f.files[0], pixel_size_um, model_pixel_size_um)
            if scale.source == ASSUMED and all(s.source != ASSUMED for s in scales):  # once per run
                warn(f"input pixel size unknown: assuming the model's {model_pixel_size_um:g} µm per pixel; pass --pixel-size")
            scales.append(scale)
            field_labels = labels
            if scale.factor != 1.0:
                image = rescale_to(image, scale.input_um, scale.crop_um)
                field_labels = None if labels is None else rescale_to(labels[None], scale.input_um, scale.crop_um, labels=True)[0]
            found = extract_cells(image, config, labels=field_labels, name=f.origin, allow_empty=len(fields) > 1)
            parts.append(FieldCells(found, f.treatment, ";".join(map(str, f.files)), f.plate, f.well, f.site, scale))
            empty += [] if len(found.crops) else [f.origin]
            cells, dropped, channels = cells + len(found.crops), dropped + found.dropped_at_border, len(image)
        if any(len(p.cells.crops) for p in parts):
            csv_path = write_fields(parts, out_dir, split=split, prefix=name, config=config, channels=group[0].channels)
    if csv_path is None:
        raise InputError(f"none of the {len(fields)} fields holds a nucleus far enough from the border for a "
                         f"{config.crop_size} x {config.crop_size} crop; check the nucleus channel and min_area")
    wells = len(groups) if any(f.well for f in fields) else 0
    shape = (channels, config.crop_size, config.crop_size)
    return ExtractionSummary(csv_path, cells, len(fields), wells, dropped, empty, scales[0], shape)
