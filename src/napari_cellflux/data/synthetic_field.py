"""A whole synthetic field of view: drawn cells scattered over a camera-like frame, with the true
nucleus labels, for testing cell extraction and the widget's whole-field path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_cellflux.data.drawing import draw_cells
from napari_cellflux.data.synthetic import (
    CONTROL_NAME,
    DEFAULT_PERTURBATIONS,
    Morphology,
    SyntheticPerturbation,
    channel_names,
    sample_cell_parameters,
)
from napari_cellflux.errors import InputError


@dataclass(frozen=True)
class SyntheticField:
    """A whole drawn field of view.

    image: (C, H, W) uint16 with ``bit_depth`` significant bits (like a camera's raw frame).
    labels: (H, W) int32 nucleus labels (0 background, 1..N). centroids: (N, 2) true nucleus
    centres (row, col) in px, row i for label i + 1. perturbation: what the cells were drawn under.
    """

    image: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    perturbation: str
    channel_names: tuple[str, ...]


def make_synthetic_field(
    shape: tuple[int, int] = (512, 512),
    n_cells: int = 30,
    *,
    channels: int = 3,
    perturbation: str | None = None,
    cell_size: int = 96,
    perturbations: tuple[SyntheticPerturbation, ...] = DEFAULT_PERTURBATIONS,
    morphology: Morphology = Morphology(),
    bit_depth: int = 12,
    gain: float | tuple[float, ...] = 1.0,
    offset: float | tuple[float, ...] = 0.03,
    noise_sigma: float = 0.01,
    seed: int = 0,
) -> SyntheticField:
    """Scatter up to ``n_cells`` drawn cells (drawn at crop side ``cell_size``) over a field.

    Nuclei are kept apart (centres >= 2.4 nominal radii) but may touch; cells near the edge are
    cut off as in a real field. ``perturbation`` names one of ``perturbations`` (None: DMSO).
    Fewer cells are placed when the field is too small for ``n_cells``. ``gain`` / ``offset``
    (per channel, fractions of full scale) and ``noise_sigma`` are the batch artefacts, as in
    :class:`SyntheticScreenConfig`, so a field can belong to a screen's batch.
    """
    rng = np.random.default_rng(seed)
    effect = None
    if perturbation is not None and perturbation.lower() != CONTROL_NAME.lower():
        by_name = {p.name.lower(): p for p in perturbations}
        if perturbation.lower() not in by_name:
            raise InputError(f"unknown perturbation {perturbation!r}; choose one of {sorted(by_name)} or None (DMSO)")
        effect = by_name[perturbation.lower()]
    height, width = shape
    radius = morphology.nuclear_radius * cell_size
    centres = _scatter(rng, n_cells, height, width, margin=radius, spacing=2.4 * radius)
    params = sample_cell_parameters(rng, [effect] * len(centres), cell_size, channels, morphology)
    signal, nuclei = draw_cells(params, cell_size, rng)
    canvas = np.zeros((channels, height, width), dtype=np.float32)
    labels = np.zeros((height, width), dtype=np.int32)
    half = cell_size // 2
    corners = np.round(centres).astype(int) - half
    for i, (top, left) in enumerate(corners):
        # Overlapping cells: the brighter one shows, as in a widefield image.
        rows = slice(max(top, 0), min(top + cell_size, height))
        cols = slice(max(left, 0), min(left + cell_size, width))
        patch = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
        np.maximum(canvas[:, rows, cols], signal[i][:, patch[0], patch[1]], out=canvas[:, rows, cols])
        free = labels[rows, cols] == 0
        labels[rows, cols][free & nuclei[i][patch]] = i + 1
    per_channel = (channels, 1, 1)
    gain = np.broadcast_to(np.asarray(gain, dtype=np.float64), (channels,)).reshape(per_channel)
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (channels,)).reshape(per_channel)
    observed = offset + gain * canvas + rng.normal(0.0, noise_sigma, canvas.shape)
    full_scale = 2**bit_depth - 1
    image = np.round(np.clip(observed, 0.0, 1.0) * full_scale).astype(np.uint16)
    true_centres = corners + (cell_size - 1) / 2.0 + params.centre
    name = CONTROL_NAME if effect is None else effect.name
    return SyntheticField(image, labels, true_centres, name, channel_names(channels))


def _scatter(rng: np.random.Generator, n: int, height: int, width: int, margin: float, spacing: float) -> np.ndarray:
    """Up to n points (row, col) inside the margins, pairwise at least ``spacing`` apart."""
    points: list[np.ndarray] = []
    for _ in range(50 * n):
        if len(points) == n:
            break
        candidate = rng.uniform((margin, margin), (height - margin, width - margin))
        if not points or np.min(np.linalg.norm(np.array(points) - candidate, axis=1)) >= spacing:
            points.append(candidate)
    return np.array(points).reshape(-1, 2)
