"""Per-cell CellProfiler measurements with cp-measure, under CellProfiler's column names
(docs/phenotype.md, Features).

A column is ``<Compartment>_<Module>_<Feature>[_<Channel>...]`` with the compartments pycytominer
looks for by default: ``Nuclei``, ``Cells`` and ``Cytoplasm`` (``Nuclei_AreaShape_Area``,
``Cells_Intensity_MeanIntensity_DNA``, ``Cytoplasm_Texture_Contrast_actin_3_00_256``,
``Cells_Granularity_2_DNA``, ``Cells_RadialDistribution_FracAtD_DNA_1of4``,
``Cells_Correlation_Pearson_DNA_actin``). Measurements describe the cell, not where it sits in
the crop, so cp-measure's positional ones (centre, bounding-box corners, orientation, spatial
moments) are left out. Pixels are measured on CellProfiler's 0-1 scale after each channel's
background is subtracted (``masks.background_subtracted``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.errors import InputError
from napari_cellflux.phenotype import FEATURE_GROUPS
from napari_cellflux.phenotype.masks import CellMasks, background_subtracted, segment_cell

COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
METADATA_PREFIX = "Metadata_"
# feature_columns names the columns from a reference disc as wide as the crops; narrower than
# this its core holds no pixel and nothing can be named.
MIN_WIDTH_PX = 4
POSITIONAL = re.compile(r"^(Center_|BoundingBoxM|Orientation$|SpatialMoment_|Location_)")
TEXTURE_KEY = re.compile(r"^(?P<name>.+?)_(?P<suffix>\d+_\d+_\d+)$")
ZERNIKE_KEY = re.compile(r"^(?P<name>RadialDistribution_Zernike\w+?)_(?P<suffix>\d+_\d+)$")
RADIAL_KEY = re.compile(r"^(?P<name>RadialDistribution_\w+?)_(?P<suffix>\d+of\d+)$")


@dataclass(frozen=True)
class FeatureOptions:
    """Which cp-measure groups to measure (a subset of FEATURE_GROUPS; granularity and texture
    are the slow ones, docs/phenotype.md gives the cost of each) and the channel names that the
    columns carry (one per channel)."""

    channels: tuple[str, ...]
    groups: tuple[str, ...] = FEATURE_GROUPS

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in FEATURE_GROUPS]
        if unknown or not self.groups:
            raise InputError(f"feature groups {unknown or '(none)'}: choose from {', '.join(FEATURE_GROUPS)}")


def channel_label(name: str) -> str:
    """A channel name as it appears in a column: letters and digits only ("Hoechst (nucleus)" ->
    "Hoechstnucleus"), because pycytominer splits column names at underscores."""
    label = re.sub(r"[^0-9A-Za-z]+", "", name)
    if not label:
        raise InputError(f"channel name {name!r} has no letters or digits; name the channels with --channels")
    return label


def _granularity_params(side: int) -> dict:
    # CellProfiler's defaults (subsample 0.25, element 10 px) are for whole fields; a crop is
    # measured at about 32 px with a 4 px element so the spectrum sees nuclear-scale grains.
    scale = min(1.0, 32.0 / side)
    return dict(subsample_size=scale, image_sample_size=scale, element_size=4, granular_spectrum_length=8)


def _channel_key(key: str, channel: str) -> str:
    """cp-measure's per-channel key -> CellProfiler's name, the channel placed as CellProfiler places it."""
    for pattern in (TEXTURE_KEY, ZERNIKE_KEY, RADIAL_KEY):
        if match := pattern.match(key):
            name = match["name"] if match["name"].startswith("RadialDistribution") else f"Texture_{match['name']}"
            return f"{name}_{channel}_{match['suffix']}"
    return f"{key}_{channel}"


def _pair_key(key: str, first: str, second: str) -> str:
    """Correlation keys: ``_1`` / ``_2`` are the first channel over the second and the reverse."""
    if key.endswith("_1"):
        return f"{key[:-2]}_{first}_{second}"
    if key.endswith("_2"):
        return f"{key[:-2]}_{second}_{first}"
    return f"{key}_{first}_{second}"


class Measurer:
    """Measures cells (N, C, H, W) with the cp-measure functions of ``options.groups``."""

    def __init__(self, options: FeatureOptions):
        from cp_measure.bulk import get_core_measurements, get_correlation_measurements

        self.options = options
        self.labels = [channel_label(c) for c in options.channels]
        if len(set(self.labels)) != len(self.labels):
            raise InputError(f"channel names {list(options.channels)} are not distinct; name each channel differently")
        core, corr = get_core_measurements(sanitize=False), get_correlation_measurements(sanitize=False)
        groups = set(options.groups)
        self.shape = [core[k] for group, keys in (("shape", ("sizeshape",)), ("zernike", ("zernike", "feret")))
                      if group in groups for k in keys]
        self.per_channel: list[tuple[str, Callable]] = [
            (group, core[key]) for group, key in (("intensity", "intensity"), ("texture", "texture"),
                                                  ("granularity", "granularity"), ("radial", "radial_distribution"))
            if group in groups
        ]
        self.correlation = list(corr.items()) if "correlation" in groups and len(self.labels) > 1 else []

    def measure_object(self, mask: np.ndarray, pixels: np.ndarray) -> dict[str, float]:
        """Features of one object (bool (H, W)) of background-subtracted 0-1 pixels (C, H, W)."""
        labels = mask.astype(np.int32)
        out: dict[str, float] = {}
        for function in self.shape:
            for key, value in function(labels, pixels[0]).items():
                if not POSITIONAL.match(key):
                    out[f"AreaShape_{key}"] = float(value[0])
        for c, channel in enumerate(self.labels):
            for group, function in self.per_channel:
                params = _granularity_params(pixels.shape[-1]) if group == "granularity" else {}
                for key, value in function(labels, pixels[c], **params).items():
                    if not POSITIONAL.match(key):
                        out[_channel_key(key, channel)] = float(value[0])
        for name, function in self.correlation:
            params = dict(scale_max=255) if name == "costes" else {}
            for i in range(len(self.labels)):
                for j in range(i + 1, len(self.labels)):
                    result = function(pixels[i], pixels[j], labels, **params)
                    for key, value in result.items():
                        out[_pair_key(key, self.labels[i], self.labels[j])] = float(value[0])
        return out

    def measure_cell(self, crop: np.ndarray, nucleus_channel: int, max_value: float) -> dict[str, float] | None:
        """All features of the cell centred in ``crop`` (C, H, W) stored pixels in 0..max_value;
        None when its nucleus is not found."""
        import warnings

        masks = segment_cell(crop, nucleus_channel)
        if masks is None:
            return None
        pixels = np.clip(background_subtracted(crop) / max_value, 0.0, 1.0)
        row: dict[str, float] = {}
        with warnings.catch_warnings():  # cp-measure warns on every undefined value; they stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            for compartment, mask in zip(COMPARTMENTS, _objects(masks)):
                if mask.sum() >= 3:
                    row.update({f"{compartment}_{k}": v for k, v in self.measure_object(mask, pixels).items()})
        return row


def _objects(masks: CellMasks) -> tuple[np.ndarray, ...]:
    return masks.nucleus, masks.cell, masks.cytoplasm


def measure_cells(
    pixels: np.ndarray,
    options: FeatureOptions,
    *,
    nucleus_channel: int | None = None,
    max_value: float = 255.0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per cell of (N, C, H, W) stored pixels (0..max_value), one column per feature.

    nucleus_channel: default the channel named DNA / DAPI / Hoechst in ``options.channels``
    (none named is an InputError). A cell whose nucleus is not found is a row of NaN; a compartment
    under 3 px (a cell without cytoplasm) leaves its columns NaN. ``progress(done, total)`` per cell.
    """
    from napari_cellflux.phenotype.masks import dna_channel

    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise InputError(f"cells must be (N, C, H, W), got shape {pixels.shape}")
    if pixels.shape[1] != len(options.channels):
        raise InputError(f"the cells have {pixels.shape[1]} channels but {len(options.channels)} channel names "
                         f"were given ({', '.join(options.channels)}); give one name per channel")
    if pixels.shape[-1] < MIN_WIDTH_PX:
        raise InputError(f"cells of shape (N, C, H, W) = {pixels.shape} are {pixels.shape[-1]} px wide; a crop must be at "
                         f"least {MIN_WIDTH_PX} px wide to measure a cell in it: crop the cells larger")
    if nucleus_channel is None:
        nucleus_channel = dna_channel(options.channels)
    measurer = Measurer(options)
    rows = []
    for i, crop in enumerate(pixels):
        rows.append(measurer.measure_cell(crop, nucleus_channel, max_value))
        if progress is not None:
            progress(i + 1, len(pixels))
    columns = feature_columns(options, pixels.shape[-1])
    return pd.DataFrame([row or {} for row in rows], columns=columns, dtype=np.float64)


def feature_columns(options: FeatureOptions, side: int = 32) -> list[str]:
    """The columns :func:`measure_cells` writes, in order (measured once on a drawn disc)."""
    rows, cols = np.indices((side, side))
    disc = (rows - side / 2) ** 2 + (cols - side / 2) ** 2 < (side / 3) ** 2
    core = (rows - side / 2) ** 2 + (cols - side / 2) ** 2 < (side / 6) ** 2
    texture = 0.5 + 0.4 * np.sin(rows / 2.0) * np.cos(cols / 3.0)
    pixels = np.stack([texture * disc] * len(options.channels))
    measurer = Measurer(options)
    columns: list[str] = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for compartment, mask in zip(COMPARTMENTS, (core, disc, disc & ~core)):
            columns += [f"{compartment}_{k}" for k in measurer.measure_object(mask, pixels)]
    return columns


def feature_names(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a per-cell table (everything but ``Metadata_*``)."""
    return [c for c in frame.columns if not str(c).startswith(METADATA_PREFIX)]


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically: Parquet when ``path`` ends in .parquet (needs pyarrow), else CSV."""
    import io

    from napari_cellflux.atomic import atomic_write_bytes, atomic_write_text

    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow); or write a .csv") from None
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        atomic_write_text(path, frame.to_csv(index=False))
    return path


def with_metadata(features: pd.DataFrame, metadata: dict[str, Sequence]) -> pd.DataFrame:
    """``Metadata_<key>`` columns (one value per row) in front of ``features``."""
    meta = pd.DataFrame({f"{METADATA_PREFIX}{k}": list(v) for k, v in metadata.items()}, index=features.index)
    return pd.concat([meta, features], axis=1)
