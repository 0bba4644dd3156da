"""Control cells for generation from what a user has at hand: stacks of crops (arrays or files),
whole fields (cells are extracted), or synthetic sample cells. No Qt, no napari.

Every function returns stored pixels (N, C, H, W) checked against the model (channel count,
crop size, pixel range), ready for ``model.normalization.to_model``. ``source`` names the
input in error messages (a napari layer, a file), so a message says which input to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_cellflux.errors import InputError
from napari_cellflux.generation.crop_files import read_crops, to_nchw
from napari_cellflux.models.channels import describe

if TYPE_CHECKING:
    from napari_cellflux.data.extract import ExtractionConfig
    from napari_cellflux.models.model_file import CellFluxModel

# The extraction defaults are tuned for the paper's 96 x 96 crops (docs/method.md, Datasets);
# lengths scale with the crop side because a model trained on S-px crops expects cells imaged at
# that scale.
REFERENCE_CROP_SIZE = 96


def check_crops(pixels: np.ndarray, model: "CellFluxModel", source: str) -> np.ndarray:
    """``pixels`` (N, C, H, W) if they fit ``model``; else an InputError naming ``source`` and the fix."""
    n, c, h, w = pixels.shape
    if n == 0:
        raise InputError(f"{source}: holds no cells; give at least one crop")
    if c != model.config.in_channels:
        raise InputError(
            f"{source}: {c} channel(s), but the model takes {describe(model.channels)}; choose one layer with "
            f"a channel axis, or {model.config.in_channels} single-channel layers in that order"
        )
    if (h, w) != (model.image_size, model.image_size):
        raise InputError(
            f"{source}: cells are {h} x {w} px, but the model takes {model.image_size} x {model.image_size} crops; "
            "crop or resize the cells, or give the whole field so cells are cut out at the model's size"
        )
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InputError(f"{source}: pixel values contain NaN or inf; remove or repair those cells")
    top = model.normalization.max_value
    low, high = float(pixels.min()), float(pixels.max())
    if pixels.dtype.kind == "f" and 0.0 <= low and high <= 1.0 < top:
        # Float images scaled to 0..1 (skimage's convention) would pass the range check below and
        # come out nearly black: the model reads them as 0..1 of 0..255.
        raise InputError(
            f"{source}: pixel values are floats in 0..1, but the model takes stored pixels in 0..{top:g}; "
            f"multiply them by {top:g} (or save them as uint8)"
        )
    if low < 0 or high > top:
        raise InputError(
            f"{source}: pixel values range from {low:g} to {high:g}, but the model takes stored pixels in "
            f"0..{top:g} (8-bit crops); rescale them, or give the whole field (its intensities are scaled)"
        )
    return pixels


def stack_channels(arrays: Sequence[np.ndarray], source: str) -> np.ndarray:
    """One array as is, or several single-channel arrays of one shape stacked on a channel axis
    (axis -3: (H, W) planes -> (C, H, W); (N, H, W) stacks -> (N, C, H, W))."""
    if not arrays:
        raise InputError(f"{source}: nothing selected; pick the image layer(s) holding the cells")
    if len(arrays) == 1:
        return np.asarray(arrays[0])
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) > 1:
        raise InputError(
            f"{source}: the selected single-channel layers differ in shape ({', '.join(map(str, sorted(shapes)))}); "
            "select the channels of one image"
        )
    return np.stack([np.asarray(a) for a in arrays], axis=-3)


def crops_from_arrays(arrays: Sequence[np.ndarray], model: "CellFluxModel", source: str) -> np.ndarray:
    """Crops from one stack with a channel axis ((N, C, H, W) or (N, H, W, C)) or from one (N, H, W)
    stack per channel, in the model's channel order."""
    pixels = to_nchw(stack_channels(arrays, source), model.config.in_channels, source)
    return check_crops(pixels, model, source)


def crops_from_file(path: str | Path, model: "CellFluxModel") -> np.ndarray:
    """Crops from a .npy / .tif stack or a folder of them (see :func:`napari_cellflux.generation.crop_files.read_crops`)."""
    return check_crops(read_crops(path, model.config.in_channels), model, str(path))


def extraction_config(crop_size: int) -> "ExtractionConfig":
    """The widget's cell extraction: the default one with its lengths scaled from 96-px crops to
    ``crop_size``, and camera counts scaled by bit depth (IntensityScaling "auto"; see
    :func:`crops_from_field` for why)."""
    from napari_cellflux.data.extract import ExtractionConfig
    from napari_cellflux.data.intensity import IntensityScaling

    default = ExtractionConfig()
    f = crop_size / REFERENCE_CROP_SIZE
    return replace(
        default,
        crop_size=crop_size,
        scaling=IntensityScaling("auto"),
        smoothing_sigma=default.smoothing_sigma * f,
        min_area=max(1, round(default.min_area * f * f)),
        min_separation=max(1, round(default.min_separation * f)),
    )


def crops_from_field(
    arrays: Sequence[np.ndarray], model: "CellFluxModel", source: str, labels: np.ndarray | None = None,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """Cells cut out of a whole field: one (C, H, W) / (H, W, C) image or one (H, W) plane per
    channel. Nuclei are segmented on the first channel (the DNA stain) unless ``labels`` (H, W)
    come from another segmentation.

    ``pixel_size_um`` (µm per pixel of the field) brings the field to the model's pixel size first,
    as ``cellflux extract`` does, so a crop covers the field of view the model learned; unknown
    while the model's is known, the field is taken to be at the model's size, with a warning.

    Camera counts (integer pixels) are scaled by the camera's bit depth, a fixed range, as
    the training crops of a screen were: per-field percentiles would stretch each field on its
    own (on the bundled field sample: 1.9-2.8x brighter and 2-4x more textured crops than the
    sample controls, against 1.05-1.2x and 1.07-1.25x by bit depth; docs/plugin.md). Float
    images have no bit depth and keep the percentile scaling."""
    from napari_cellflux.data.extract import as_channels_first, extract_cells
    from napari_cellflux.data.scale import check_pixel_size, rescale_to

    image = stack_channels(arrays, source)
    if pixel_size_um is not None:
        pixel_size_um = check_pixel_size(pixel_size_um, f"{source}: pixel size")
    if model.pixel_size_um is not None and pixel_size_um is not None:
        try:
            image = rescale_to(as_channels_first(image, name=source), pixel_size_um, model.pixel_size_um)
        except ValueError as err:
            raise InputError(str(err)) from None
        if labels is not None:
            labels = rescale_to(np.asarray(labels)[None], pixel_size_um, model.pixel_size_um, labels=True)[0]
    elif model.pixel_size_um is not None:
        import warnings

        warnings.warn(f"Controls: {source}: pixel size unknown: assuming the model's {model.pixel_size_um:g} µm per "
                      "pixel; set the field's pixel size", stacklevel=2)
    try:
        cells = extract_cells(image, extraction_config(model.image_size), labels=labels)
    except ValueError as err:  # its messages name the array "image"; say which input it was
        raise InputError(f"{source}: {err}") from None
    return check_crops(cells.crops, model, source)


def plate_wells(csv: str | Path) -> tuple[bool, list[tuple[str, str, bool]]]:
    """(is it a LoadData CSV, [(well, perturbation, is_control)]) of a LoadData CSV or a plate map,
    for picking the control wells. A LoadData CSV names no treatment: its wells come with an empty
    perturbation and no control flag."""
    from napari_cellflux.data.plates import fields_from_loaddata, is_loaddata, read_plate_map

    csv = _plate_csv(csv)
    if is_loaddata(csv):
        wells = dict.fromkeys(f.well for f in fields_from_loaddata(csv, None))
        return True, [(well, "", False) for well in wells]
    return False, [(well, t.perturbation, t.is_control) for well, (t, _) in read_plate_map(csv).items()]


def _plate_csv(csv: str | Path) -> Path:
    csv = Path(csv)
    if not csv.is_file():
        raise InputError(f"Controls: {csv} does not exist; choose a CellProfiler LoadData CSV or a plate map CSV "
                         "(well,perturbation,is_control[,batch])")
    return csv


def crops_from_plate(
    csv: str | Path,
    wells: Sequence[str],
    model: "CellFluxModel",
    *,
    images: str | Path | None = None,
    name_pattern: str | None = None,
    channels: str | None = None,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """The cells of ``wells`` of a plate: a LoadData CSV, or a plate map with its ``images`` folder
    (``cellflux extract --loaddata`` / ``--plate-map --images``, same options and code path), cut
    out at the model's crop size, channel order and pixel size. Camera counts are scaled by bit
    depth, as in :func:`crops_from_field`."""
    import tempfile

    from napari_cellflux.data.plate_extraction import extract_fields
    from napari_cellflux.data.plates import find_fields, is_loaddata, normalize_well
    from napari_cellflux.models.channels import nucleus_channel

    csv = _plate_csv(csv)
    loaddata = is_loaddata(csv)
    if not loaddata:
        if images is None or str(images) in ("", "."):
            raise InputError(f"Controls: {csv} is a plate map; choose the folder that holds its images too")
        if not Path(images).is_dir():
            raise InputError(f"Controls: the images folder {images} does not exist; choose the folder that holds "
                             f"the TIFFs of the plate map {csv.name}")
    wanted = {normalize_well(w) or str(w) for w in wells}
    if not wanted:
        raise InputError(f"Controls: tick the control wells of {csv} in the list")

    def warn(line: str) -> None:
        import warnings

        warnings.warn(f"Controls: {line}", stacklevel=2)

    names = tuple(c.name for c in model.channels)
    fields = find_fields(loaddata=csv if loaddata else None, images=None if loaddata else Path(images),
                         plate_map=None if loaddata else csv, name_pattern=None if loaddata else (name_pattern or None),
                         channels=channels or None, model_channels=names, perturbation="control" if loaddata else None,
                         is_control=loaddata, warn=warn)
    chosen = [f for f in fields if f.well in wanted]
    if not chosen:
        where = csv if loaddata else f"{images} (plate map {csv.name})"
        imaged = ", ".join(sorted({f.well for f in fields})) or "none"
        raise InputError(f"Controls: none of the wells {', '.join(sorted(wanted))} has images in {where} (imaged: {imaged}); "
                         "tick imaged wells, or check the images folder and name pattern")
    config = replace(extraction_config(model.image_size), nucleus_channel=nucleus_channel(chosen[0].channels))
    with tempfile.TemporaryDirectory(prefix="cellflux-plate-") as out:
        extract_fields(chosen, out, config, pixel_size_um=pixel_size_um, model_pixel_size_um=model.pixel_size_um,
                       model_channels=names, warn=warn)
        pixels = read_crops(out, model.config.in_channels)
    return check_crops(pixels, model, str(csv))
