"""The objects measured in one centred cell crop: its nucleus, its cell and their difference, the
cytoplasm (docs/phenotype.md, Masks).

Nucleus: the DNA channel minus its background (the median of the crop's one-pixel border),
smoothed with a Gaussian (sigma = side / 64 px), Otsu threshold, holes filled; the object under
the crop centre (else the one nearest to it) is the nucleus, the other objects are neighbours.
Cell: Otsu threshold on the smoothed sum of the other channels (background subtracted the same
way) united with every nucleus, split between the nuclei by a watershed on the inverted signal
seeded by them (CellProfiler's IdentifySecondaryObjects, propagation in spirit); the region of
the centre nucleus, holes filled, is the cell. With one channel the cell is the nucleus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import NUCLEAR_STAINS

MIN_NUCLEUS_PX = 4  # a smaller "nucleus" is noise above the threshold, not a cell


@dataclass(frozen=True)
class CellMasks:
    """Boolean (H, W) masks of one crop; ``cytoplasm`` = cell minus nucleus (empty with one channel)."""

    nucleus: np.ndarray
    cell: np.ndarray

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.cell & ~self.nucleus


def dna_channel(names: Sequence[str], source: str = "the cells") -> int:
    """Index of the channel named DNA / DAPI / Hoechst (``models.channels.NUCLEAR_STAINS``); none is
    an InputError, because nuclei segmented on another stain would be measured wrongly."""
    for i, name in enumerate(names):
        if NUCLEAR_STAINS.search(name):
            return i
    raise InputError(
        f"{source}: no channel is named as a DNA stain (channels: {', '.join(names) or 'none'}); name them "
        "with --channels, e.g. DNA,tubulin,actin (one of DNA, DAPI or Hoechst)"
    )


def background_subtracted(crop: np.ndarray) -> np.ndarray:
    """(C, H, W) crop -> float64 crop minus each channel's border median, clipped at 0."""
    crop = np.asarray(crop, dtype=np.float64)
    border = np.concatenate([crop[:, 0, :], crop[:, -1, :], crop[:, 1:-1, 0], crop[:, 1:-1, -1]], axis=1)
    return np.clip(crop - np.median(border, axis=1)[:, None, None], 0.0, None)


def _otsu(image: np.ndarray) -> np.ndarray | None:
    from skimage import filters

    if np.ptp(image) <= 1e-9:
        return None
    return image > filters.threshold_otsu(image)


def _centre_label(labels: np.ndarray) -> int:
    """The label under the crop centre, else the one whose centroid is nearest to it (0: none)."""
    h, w = labels.shape
    if labels[h // 2, w // 2]:
        return int(labels[h // 2, w // 2])
    ids = np.unique(labels[labels > 0])
    if not len(ids):
        return 0
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    counts = np.bincount(flat)[ids]
    cy = np.bincount(flat, rows.ravel())[ids] / counts
    cx = np.bincount(flat, cols.ravel())[ids] / counts
    return int(ids[np.argmin((cy - (h - 1) / 2) ** 2 + (cx - (w - 1) / 2) ** 2)])


def segment_cell(crop: np.ndarray, nucleus_channel: int) -> CellMasks | None:
    """Masks of the cell centred in ``crop`` (C, H, W), any pixel scale; None when no nucleus is
    found (a blank crop, or one whose nucleus is under MIN_NUCLEUS_PX px)."""
    from scipy import ndimage
    from skimage import filters, measure, segmentation

    signal = background_subtracted(crop)
    sigma = max(signal.shape[-1] / 64, 0.5)
    mask = _otsu(filters.gaussian(signal[nucleus_channel], sigma))
    if mask is None:
        return None
    nuclei = measure.label(ndimage.binary_fill_holes(mask))
    centre = _centre_label(nuclei)
    nucleus = nuclei == centre
    if not centre or nucleus.sum() < MIN_NUCLEUS_PX:
        return None
    others = [c for c in range(signal.shape[0]) if c != nucleus_channel]
    if not others:
        return CellMasks(nucleus=nucleus, cell=nucleus.copy())
    body_signal = filters.gaussian(signal[others].sum(axis=0), 2 * sigma)
    foreground = _otsu(body_signal)
    foreground = nuclei > 0 if foreground is None else foreground | (nuclei > 0)
    regions = segmentation.watershed(-body_signal, markers=nuclei, mask=foreground)
    cell = ndimage.binary_fill_holes(regions == centre) | nucleus
    return CellMasks(nucleus=nucleus, cell=cell)
