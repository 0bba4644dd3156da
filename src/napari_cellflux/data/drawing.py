"""Procedural drawing of multichannel single cells from morphology parameters (vectorised numpy).

Channels: 0 nucleus (DNA stain, chromatin texture), 1 cytoskeleton (fibres along the cell's long
axis, sparse over the nucleus), 2 cytoplasm / membrane (cortical rim), 3+ further cytoplasmic
stains (punctate, organelle-like). Signals are in [0, ~1] before any batch gain and offset.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

NUCLEUS_EDGE_PX = 0.5  # width of the sigmoid edge: boundaries are about one pixel soft
CELL_EDGE_PX = 1.0


@dataclass(frozen=True)
class CellParameters:
    """Morphology of N cells; lengths in pixels, angles in radians, arrays of length N.

    nuclear_radius / cell_radius: equivalent-circle radius (area = pi r^2, elongation keeps it).
    nuclear_elongation / cell_elongation: major / minor axis ratio (>= 1).
    angle: orientation of the long axes. intensity: (N, C) signal level per channel.
    texture: cytoskeleton fibre contrast in [0, 1] (0 diffuse, 1 all signal in fibres).
    centre: (N, 2) nucleus centre (row, col) relative to the image centre.
    """

    nuclear_radius: np.ndarray
    nuclear_elongation: np.ndarray
    cell_radius: np.ndarray
    cell_elongation: np.ndarray
    angle: np.ndarray
    intensity: np.ndarray
    texture: np.ndarray
    centre: np.ndarray

    def __len__(self) -> int:
        return len(self.nuclear_radius)

    def take(self, index: slice | np.ndarray) -> "CellParameters":
        """The cells at ``index``."""
        return CellParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def smooth_noise(rng: np.random.Generator, n: int, size: int, sigma: float) -> np.ndarray:
    """(n, size, size) Gaussian-filtered white noise, each image scaled to zero mean, unit std.

    Filtered in Fourier space (periodic), which is fine for a texture.
    """
    white = rng.standard_normal((n, size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    transfer = np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size))
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def draw_cells(params: CellParameters, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render N cells into (N, C, size, size) float32 signal and (N, size, size) bool nucleus masks.

    ``rng`` draws the nuisance detail that is not a parameter (outline wobble, nucleus position in
    the cell, chromatin / fibre / puncta patterns).
    """
    n, channels = params.intensity.shape
    col = lambda a: np.asarray(a, dtype=np.float64)[:, None, None]  # noqa: E731  (N,) -> (N, 1, 1)
    grid = np.arange(size) - (size - 1) / 2.0
    dy = grid[None, :, None] - col(params.centre[:, 0])
    dx = grid[None, None, :] - col(params.centre[:, 1])
    cos, sin = np.cos(col(params.angle)), np.sin(col(params.angle))
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos  # cell frame, nucleus at the origin

    nuc_rho = _ellipse_radius(along, across, col(params.nuclear_radius), col(params.nuclear_elongation))
    nucleus = _sigmoid((1.0 - nuc_rho) * col(params.nuclear_radius) / NUCLEUS_EDGE_PX)

    # The nucleus sits off the cell's centre along the long axis, but always inside the cell.
    cell_major = params.cell_radius * np.sqrt(params.cell_elongation)
    nuc_major = params.nuclear_radius * np.sqrt(params.nuclear_elongation)
    shift = rng.uniform(-1.0, 1.0, n) * 0.5 * np.maximum(0.8 * cell_major - nuc_major, 0.0)
    cell_along = along - col(shift)
    cell_rho = _ellipse_radius(cell_along, across, col(params.cell_radius), col(params.cell_elongation))
    phi = np.arctan2(across, cell_along)
    wobble = 1.0
    for k in (2, 3, 5):
        wobble = wobble + col(rng.uniform(0.0, 0.06, n)) * np.cos(k * phi + col(rng.uniform(0, 2 * np.pi, n)))
    cell_rho = cell_rho / wobble
    depth_px = (1.0 - cell_rho) * col(params.cell_radius)  # > 0 inside, roughly px from the outline
    cell = _sigmoid(depth_px / CELL_EDGE_PX)

    signal = np.empty((n, channels, size, size), dtype=np.float32)
    chromatin = smooth_noise(rng, n, size, sigma=max(0.6, 0.03 * size))
    signal[:, 0] = nucleus * np.clip(1.0 + 0.2 * chromatin, 0.0, None) * col(params.intensity[:, 0])
    if channels > 1:
        period = np.maximum(3.0, col(rng.uniform(0.07, 0.11, n)) * size)
        warp = 2.5 * smooth_noise(rng, n, size, sigma=0.12 * size)
        # Squared cosine: thin bright fibres on a dim ground, mean 3/8, so texture moves no mean signal.
        fibres = (0.5 + 0.5 * np.cos(2 * np.pi * across / period + warp)) ** 2
        texture = col(params.texture)
        pattern = (1.0 - texture) + texture * fibres / 0.375
        signal[:, 1] = cell * (1.0 - 0.5 * nucleus) * pattern * col(params.intensity[:, 1])
    if channels > 2:
        rim = np.exp(-((depth_px / max(1.0, 0.04 * size)) ** 2))
        grain = 0.1 * smooth_noise(rng, n, size, sigma=max(0.8, 0.05 * size))
        signal[:, 2] = cell * np.clip(0.55 + 0.45 * rim + grain, 0.0, None) * col(params.intensity[:, 2])
    for c in range(3, channels):
        puncta = np.clip(smooth_noise(rng, n, size, sigma=max(0.6, 0.025 * size)) * 0.5 + 0.5, 0.0, None)
        signal[:, c] = cell * (1.0 - 0.7 * nucleus) * puncta * col(params.intensity[:, c])
    return signal, nucleus > 0.5


def _ellipse_radius(along: np.ndarray, across: np.ndarray, radius: np.ndarray, elongation: np.ndarray) -> np.ndarray:
    # Semi-axes r*sqrt(e) and r/sqrt(e) keep the area at pi r^2; 1 on the outline.
    root = np.sqrt(elongation)
    return np.sqrt((along / (radius * root)) ** 2 + (across * root / radius) ** 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
