"""Single cells from a whole field: segment nuclei, crop fixed-size patches centred on them, scale to uint8.

Crops are centred on nucleus centroids like the paper's 96 x 96 crops (docs/method.md,
Datasets). Cells whose crop would leave the image are dropped rather than padded, so no crop shows
an artificial edge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.data.images import read_tiff
from napari_cellflux.data.intensity import IntensityScaling, scale_to_uint8
from napari_cellflux.data.plain import write_plain
from napari_cellflux.data.plates import Treatment
from napari_cellflux.data.scale import UNKNOWN, FieldScale
from napari_cellflux.errors import InputError

MAX_CHANNELS = 8  # an axis this short is taken for channels when guessing the layout
RECORD_NAME = "extraction.json"


@dataclass(frozen=True)
class ExtractionConfig:
    """Segmentation and cropping settings; lengths in pixels of the field.

    smoothing_sigma: Gaussian blur of the DNA channel before the Otsu threshold.
    min_area: smaller objects are debris and are removed (real 20x nuclei: ~600-950 px).
    split_touching: separate touching nuclei by a distance-transform watershed whose seeds are
        at least ``min_separation`` apart.
    """

    crop_size: int = 96
    nucleus_channel: int = 0
    smoothing_sigma: float = 2.0
    min_area: int = 100
    split_touching: bool = True
    min_separation: int = 7
    scaling: IntensityScaling = field(default_factory=IntensityScaling)


@dataclass(frozen=True)
class ExtractedCells:
    """crops: (N, C, S, S) uint8; centroids: (N, 2) (row, col) px in the field; label_ids: (N,)
    the nucleus label of each crop in ``labels`` ((H, W) int32, every nucleus found, including
    those dropped at the border); scaling: the intensity mapping record (see intensity.py)."""

    crops: np.ndarray
    centroids: np.ndarray
    label_ids: np.ndarray
    labels: np.ndarray
    scaling: dict
    dropped_at_border: int


def as_channels_first(image: np.ndarray, channel_axis: int | None = None, name: str = "image") -> np.ndarray:
    """A 2-D (H, W) or 3-D image as (C, H, W); the channel axis is guessed when not given.

    The guess takes an axis of at most 8 entries at the front or back (the other two being
    longer); anything ambiguous is an error asking for ``channel_axis``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise InputError(f"{name}: shape {image.shape}; expected (H, W), (C, H, W) or (H, W, C) (one plane, no Z/T)")
    if channel_axis is None:
        front = image.shape[0] <= MAX_CHANNELS < min(image.shape[1:])
        back = image.shape[-1] <= MAX_CHANNELS < min(image.shape[:2])
        if front == back:
            raise InputError(
                f"{name}: cannot tell the channel axis of shape {image.shape}; pass channel_axis (0 or -1)"
            )
        channel_axis = 0 if front else -1
    return np.moveaxis(image, channel_axis, 0)


def segment_nuclei(dna: np.ndarray, config: ExtractionConfig = ExtractionConfig()) -> np.ndarray:
    """(H, W) DNA stain -> (H, W) int32 nucleus labels 1..N (0 background).

    Gaussian blur, Otsu threshold, hole filling, debris removal, and optionally a watershed on
    the (smoothed) distance transform to split touching nuclei.
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, segmentation

    smoothed = filters.gaussian(np.asarray(dna, dtype=np.float32), sigma=config.smoothing_sigma, preserve_range=True)
    if float(smoothed.max()) <= float(smoothed.min()):
        return np.zeros(smoothed.shape, dtype=np.int32)
    mask = ndi.binary_fill_holes(smoothed > filters.threshold_otsu(smoothed))
    labels = _drop_small(measure.label(mask), config.min_area)
    if config.split_touching and labels.max() > 0:
        # Smoothing the distance map keeps one seed per roundish nucleus, not one per bump.
        distance = filters.gaussian(ndi.distance_transform_edt(labels > 0), sigma=1.0)
        peaks = feature.peak_local_max(
            distance, min_distance=config.min_separation, labels=labels, exclude_border=False
        )
        markers = np.zeros(labels.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = _drop_small(segmentation.watershed(-distance, markers, mask=labels > 0), config.min_area)
    return labels


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects under ``min_area`` px and number the rest 1..N (int32)."""
    from skimage import segmentation

    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    kept = np.where(keep[labels], labels, 0)
    return segmentation.relabel_sequential(kept)[0].astype(np.int32)


def extract_cells(
    image: np.ndarray | str | Path,
    config: ExtractionConfig = ExtractionConfig(),
    *,
    labels: np.ndarray | None = None,
    channel_axis: int | None = None,
    name: str | None = None,
    allow_empty: bool = False,
) -> ExtractedCells:
    """Cells of one field (array or TIFF path; (H, W), (C, H, W) or (H, W, C)).

    labels: optional (H, W) nucleus labels from another tool (a napari labels layer, cellpose...);
    without them nuclei are segmented on channel ``config.nucleus_channel``. name: the field in
    error messages. allow_empty: a field without croppable nuclei gives no crops instead of an
    error (one empty field of a plate is no reason to stop).
    """
    from skimage import measure

    name = name or (str(image) if isinstance(image, (str, Path)) else "image")
    field_image = as_channels_first(_read(image), channel_axis, name)
    if field_image.dtype.kind == "f" and not np.isfinite(field_image).all():
        raise InputError(f"{name}: the image holds NaN or infinite pixels; repair the field (or mask those pixels to 0)")
    if not 0 <= config.nucleus_channel < field_image.shape[0]:
        raise InputError(
            f"{name}: nucleus_channel {config.nucleus_channel} does not exist (the image has "
            f"{field_image.shape[0]} channels); pick the DNA stain's channel"
        )
    labels = (
        segment_nuclei(field_image[config.nucleus_channel], config)
        if labels is None
        else _check_labels(labels, field_image.shape[1:], name)
    )
    props = measure.regionprops_table(labels, properties=("label", "centroid"))
    if len(props["label"]) == 0 and not allow_empty:
        raise InputError(
            f"{name}: no nuclei found; check that channel {config.nucleus_channel} is the DNA stain, "
            "lower min_area, or pass labels from another segmentation"
        )
    centroids = np.stack([props["centroid-0"], props["centroid-1"]], axis=1).reshape(-1, 2)
    size, half = config.crop_size, config.crop_size // 2
    corner = np.round(centroids).astype(int) - half
    height, width = labels.shape
    inside = np.all((corner >= 0) & (corner + size <= np.array([height, width])), axis=1)
    if not inside.any():
        if allow_empty:
            empty = np.zeros((0, *field_image.shape[:1], size, size), dtype=np.uint8)
            return ExtractedCells(empty, centroids[:0], np.zeros(0, dtype=int), labels, {}, len(inside))
        raise InputError(
            f"{name}: all {len(inside)} nuclei lie within {half} px of the border, so no {size} x {size} crop "
            "fits; use a larger field or a smaller crop_size"
        )
    pixels, record = scale_to_uint8(field_image, config.scaling)
    rows = corner[inside, 0][:, None] + np.arange(size)  # (N, S)
    cols = corner[inside, 1][:, None] + np.arange(size)
    crops = pixels[:, rows[:, :, None], cols[:, None, :]].transpose(1, 0, 2, 3)
    return ExtractedCells(
        crops=np.ascontiguousarray(crops),
        centroids=centroids[inside],
        label_ids=np.asarray(props["label"])[inside],
        labels=labels,
        scaling=record,
        dropped_at_border=int((~inside).sum()),
    )


def _read(image: np.ndarray | str | Path) -> np.ndarray:
    if not isinstance(image, (str, Path)):
        return np.asarray(image)
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"field image {path} does not exist")
    return read_tiff(path)


def _check_labels(labels: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    from skimage import measure

    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise InputError(
            f"{name}: labels have shape {labels.shape} but the image is {tuple(shape)}; give labels of the same field"
        )
    if labels.dtype == bool:
        return measure.label(labels).astype(np.int32)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InputError(f"{name}: labels must be non-negative integers (0 = background), got {labels.dtype}")
    return labels.astype(np.int32)


@dataclass(frozen=True)
class FieldCells:
    """The cells of one field and where they came from: one row per crop in cells.csv."""

    cells: ExtractedCells
    treatment: Treatment
    source: str
    plate: str = ""
    well: str = ""
    site: str = ""
    scale: FieldScale = UNKNOWN

    def record(self) -> dict:
        """This field's entry in extraction.json: origin, counts, intensity mapping and pixel sizes."""
        return {
            "source": self.source, "plate": self.plate, "well": self.well, "site": self.site,
            "cells": len(self.cells.crops), "dropped_at_border": self.cells.dropped_at_border,
            "scaling": self.cells.scaling, "pixel_size_um": self.scale.crop_um, "pixel_size_source": self.scale.source,
            "input_pixel_size_um": self.scale.input_um, "input_pixel_size_source": self.scale.input_source,
            "rescale_factor": self.scale.factor,
        }


def write_extracted(
    cells: ExtractedCells,
    out_dir: str | Path,
    *,
    perturbation: str,
    batch: str,
    is_control: bool,
    split: str = "train",
    prefix: str = "cell",
    source: str = "",
    config: ExtractionConfig | None = None,
) -> Path:
    """Write the cells of one field (see :func:`write_fields`). Returns the CSV."""
    part = FieldCells(cells, Treatment(perturbation, is_control, batch), source)
    return write_fields([part], out_dir, split=split, prefix=prefix, config=config)


def write_fields(
    parts: Sequence[FieldCells],
    out_dir: str | Path,
    *,
    split: str = "train",
    prefix: str = "cell",
    config: ExtractionConfig | None = None,
    channels: Sequence[str] = (),
) -> Path:
    """Write the cells of one or more fields (e.g. the sites of a well) under one prefix in the plain
    format (``write_plain``), with their origin and pixel size per crop; record each field's
    intensity scaling and scale, and the settings, in ``<out_dir>/extraction.json`` (one field:
    its entry itself; several: under ``fields``). Centroids are px of the input field, before any
    rescale. Returns the CSV."""
    full = [p for p in parts if len(p.cells.crops)]
    if not full:
        raise InputError(f"{prefix}: no cells to write")
    records = extraction_records(out_dir)  # before any crop is written: a damaged record stops the run here

    def per_crop(value) -> list:
        return [v for p in full for v in [value(p)] * len(p.cells.crops)]

    def centroid(axis: int) -> list:
        return [round(float(c) / p.scale.factor, 2) for p in full for c in p.cells.centroids[:, axis]]

    csv_path = write_plain(
        out_dir,
        np.concatenate([p.cells.crops for p in full]),
        perturbation=per_crop(lambda p: p.treatment.perturbation),
        batch=per_crop(lambda p: p.treatment.batch),
        is_control=per_crop(lambda p: p.treatment.is_control),
        split=split,
        prefix=prefix,
        extra={
            "plate": per_crop(lambda p: p.plate), "well": per_crop(lambda p: p.well), "site": per_crop(lambda p: p.site),
            "source": per_crop(lambda p: p.source),
            "label": [int(v) for p in full for v in p.cells.label_ids],
            "centroid_row": centroid(0), "centroid_col": centroid(1),
            "pixel_size_um": per_crop(lambda p: "" if p.scale.crop_um is None else round(p.scale.crop_um, 5)),
            "pixel_size_source": per_crop(lambda p: p.scale.source),
        },
    )
    record_path = Path(out_dir) / RECORD_NAME
    fields = [p.record() for p in parts]
    entry = fields[0] if len(fields) == 1 else {"cells": sum(f["cells"] for f in fields), "fields": fields}
    records[prefix] = {**entry, "channels": list(channels), "config": None if config is None else asdict(config)}
    atomic_write_text(record_path, json.dumps(records, indent=2, sort_keys=True))
    return csv_path


def extraction_records(out_dir: str | Path) -> dict:
    """The ``extraction.json`` of a folder of extracted cells (one entry per prefix), {} where the
    folder has none; a damaged one is an InputError naming it."""
    path = Path(out_dir) / RECORD_NAME
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); it records how the cells beside it were extracted: "
                         "extract them again into a new folder") from None
    if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
        raise InputError(f"{path}: not a record written by `cellflux extract`; extract the cells again into a new folder")
    return records
