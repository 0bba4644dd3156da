"""Physical scale: the µm per pixel of an input field, and rescaling it to a model's pixel size.

A model learned cells at one scale: a 96 x 96 crop covers 96 x pixel_size_um µm. A field imaged
with another objective or binning is rescaled BEFORE segmentation and cropping, so a crop covers
the same field of view as in training and the nucleus-size settings (in px) keep their meaning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cellflux.data.images import unreadable_tiff
from napari_cellflux.errors import InputError

RANGE_UM = (0.01, 100.0)  # outside this no light microscope's pixel is: a typo or a unit mix-up
_MICRONS = {"micron", "microns", "um", "µm", "μm", "\\u00b5m", "micrometer", "micrometre"}
_OME_UNITS = {"µm": 1.0, "um": 1.0, "μm": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}


def check_pixel_size(value, what: str) -> float:
    """``value`` as a float number of µm per pixel, or an InputError naming ``what``."""
    try:
        um = float(value)
    except (TypeError, ValueError):
        um = math.nan
    if not (math.isfinite(um) and RANGE_UM[0] <= um <= RANGE_UM[1]):
        raise InputError(
            f"{what}: pixel size {value!r} µm is not a microscope's; give the µm per pixel in the image "
            f"plane, between {RANGE_UM[0]:g} and {RANGE_UM[1]:g} (e.g. 0.65 for 20x with a 6.5 µm camera pixel, "
            "binning 2)"
        )
    return um


def pixel_size_from_tiff(path: str | Path) -> tuple[float, str] | None:
    """(µm per pixel, where it was read) from a TIFF's own metadata, or None where it records none.

    Read: OME-XML ``PhysicalSizeX`` (with its unit), MetaMorph's spatial calibration (the UIC1 tag
    of MetaMorph / MetaXpress files such as BBBC021's), and X/YResolution when the unit is microns
    (ImageJ writes the unit into its description). Not read: resolution in inches or centimetres,
    which cameras and instruments fill with the sensor's or a print size (the Opera Phenix files of
    JUMP say 6.45 µm for 0.6 µm pixels), so trusting it would rescale by 10x.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.ome_metadata:
                found = _ome_size(tif.ome_metadata)
                if found is not None:
                    return check_pixel_size(found, f"{path} (OME PhysicalSizeX)"), "tiff:ome"
            tags = tif.pages.first.tags
            found = _metamorph_size(tags)
            if found is not None:
                return check_pixel_size(found, f"{path} (MetaMorph XCalibration)"), "tiff:metamorph"
            unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
            if unit in _MICRONS and "XResolution" in tags:
                numerator, denominator = tags["XResolution"].value  # pixels per unit
                if numerator and denominator and (numerator, denominator) != (1, 1):
                    return check_pixel_size(denominator / numerator, f"{path} (ImageJ resolution)"), "tiff:imagej"
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for a damaged file
        raise unreadable_tiff(path, err) from None
    return None


def _metamorph_size(tags) -> float | None:
    """µm per pixel from MetaMorph's UIC1 tag, only where spatial calibration is on and in microns."""
    uic = tags["UIC1tag"].value if "UIC1tag" in tags else None
    if not isinstance(uic, dict) or not uic.get("SpatialCalibration"):
        return None
    if str(uic.get("CalibrationUnits", "")).strip().lower() not in _MICRONS or not uic.get("XCalibration"):
        return None
    return float(uic["XCalibration"])


def _ome_size(xml: str) -> float | None:
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if pixels is None:
        return None
    size = re.search(r'\bPhysicalSizeX="([^"]+)"', pixels.group(0))
    unit = re.search(r'\bPhysicalSizeXUnit="([^"]+)"', pixels.group(0))
    if size is None:
        return None
    factor = _OME_UNITS.get(unit.group(1) if unit else "µm")
    return None if factor is None else float(size.group(1)) * factor


def rescale_to(image: np.ndarray, from_um: float, to_um: float, *, labels: bool = False) -> np.ndarray:
    """(C, H, W) field at ``from_um`` µm/px -> (C, H', W') at ``to_um`` µm/px, H' = H * from/to.

    Anti-aliased when shrinking (a Gaussian before sampling, so fine texture does not alias into
    the coarser grid), bilinear, intensities kept in their own range. Camera counts (integers) stay
    integers of their dtype, rounded, so the bit-depth intensity scaling still sees camera counts;
    other images come back float32. ``labels``: a label image, resampled by nearest neighbour and
    kept integer, so no label is blended into another.
    """
    from skimage.transform import rescale

    factor = from_um / to_um
    if abs(factor - 1.0) < 1e-3:
        return np.asarray(image)
    if labels:
        return rescale(np.asarray(image), factor, order=0, channel_axis=0, anti_aliasing=False,
                       preserve_range=True).astype(np.asarray(image).dtype)
    dtype = np.asarray(image).dtype
    out = rescale(np.asarray(image, dtype=np.float32), factor, order=1, channel_axis=0,
                  anti_aliasing=factor < 1, preserve_range=True).astype(np.float32)
    if dtype.kind in "ui":
        limits = np.iinfo(dtype)
        return np.clip(np.rint(out), limits.min, limits.max).astype(dtype)
    return out


@dataclass(frozen=True)
class FieldScale:
    """How one field is brought to the crops' scale: multiply its size by ``factor``; the crops then
    have ``crop_um`` µm/px (None: unknown), recorded with ``source``; ``input_um`` / ``input_source``
    say what was known of the field itself."""

    factor: float
    crop_um: float | None
    source: str
    input_um: float | None
    input_source: str


UNKNOWN = FieldScale(1.0, None, "unknown", None, "unknown")  # a field of which nothing is known, kept as it is
ASSUMED = "assumed: the model's"  # the source of a crop size taken on trust, which the caller warns about


def field_scale(path: Path, given_um: float | None, model_um: float | None) -> FieldScale:
    """The scale plan of the field whose first file is ``path``: ``given_um`` (--pixel-size) wins over
    the TIFF's metadata; with a model's size both known means a rescale, an unknown input is taken
    to be at the model's size (the caller warns once)."""
    if given_um is not None:
        input_um, input_source = given_um, "--pixel-size"
    else:
        input_um, input_source = pixel_size_from_tiff(path) or (None, "unknown")
    if model_um is None:
        return FieldScale(1.0, input_um, input_source, input_um, input_source)
    if input_um is None:
        return FieldScale(1.0, model_um, ASSUMED, None, "unknown")
    factor = input_um / model_um
    if abs(factor - 1.0) < 1e-3:  # rescale_to leaves such a field as it is
        return FieldScale(1.0, model_um, input_source, input_um, input_source)
    return FieldScale(factor, model_um, f"rescaled from {input_um:g} µm/px ({input_source})", input_um, input_source)
