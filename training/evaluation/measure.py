"""Each method's cells as measured: morphology from the pixels and, with Inception weights,
Inception-v3 features for FID / KID."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics as M


@dataclass
class MethodCells:
    """One method's cells, in selection order: uint8 pixels (N, C, H, W), morphology (N rows)
    and Inception features (N, 2048) or None."""

    pixels: np.ndarray
    morphology: pd.DataFrame
    features: np.ndarray | None


@dataclass
class CellMeasurer:
    """How every method's cells are measured. nuclear_channel: the DNA stain (0-based); rgb: (3, C)
    mix to the RGB Inception sees; inception: the loaded network or None (no features);
    composite: how the mix becomes [0, 1] (``metrics.RGB_COMPOSITES``)."""

    nuclear_channel: int
    rgb: np.ndarray
    inception: object | None
    batch_size: int
    composite: str = M.RGB_COMPOSITES[0]

    def __call__(self, pixels: np.ndarray) -> MethodCells:
        features = None
        if self.inception is not None:
            from ..inception import inception_features

            features = inception_features(self.inception, M.to_inception_rgb(pixels, self.rgb, self.composite), self.batch_size).numpy()
        return MethodCells(pixels=pixels, morphology=M.measure_cells(pixels, self.nuclear_channel), features=features)


def rgb_description(data_format: str, channels: int, composite: str = M.RGB_COMPOSITES[0]) -> str:
    """In words, the channel mix of ``metrics.rgb_matrix`` as ``composite`` applies it (for the metrics JSON)."""
    if data_format == "rxrx1":
        mix = "R = c3 + c5/2 + c6/2, G = c2 + c4/2 + c6/2, B = c1 + c4/2 + c5/2"
        if composite == "clip":
            return f"RxRx1 6 -> 3 mix {mix} of the stored pixels, clamped to [0, 1] (--rgb-composite clip)"
        return (f"RxRx1 6 -> 3 mix {mix} in model space [-1, 1], clamped to [-1, 1], mapped to [0, 1] and floored "
                "to 8 bits, as the authors' evaluation (--rgb-composite authors)")
    if channels == 3:
        return "the 3 channels as they are"
    if channels == 1:
        return "the one channel as grey"
    return "the first 3 channels" if channels > 3 else "the 2 channels and a black third"
