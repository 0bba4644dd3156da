"""The synthetic screen's designed effects (data/synthetic.py) read from cp-measure features
(docs/phenotype.md, Designed effects), for the evaluation and the ground-truth benchmark.

    nuclear_area     Nuclei_AreaShape_Area (px)
    cell_elongation  Cells_AreaShape_MajorAxisLength / Cells_AreaShape_MinorAxisLength
    texture_c1       Cytoplasm_Intensity_StdIntensity_<c1> / Cytoplasm_Intensity_MeanIntensity_<c1>
                     (the coefficient of variation of channel 1, the fibres, over the cytoplasm)
    intensity_c<k>   Nuclei_Intensity_MeanIntensity_<DNA> for the DNA channel,
                     Cytoplasm_Intensity_MeanIntensity_<c_k> for the others (background subtracted)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from napari_cellflux.phenotype.features import channel_label

READOUT_GROUPS = ("shape", "intensity")  # the cp-measure groups the readouts need


def readout_columns(channels: int) -> list[str]:
    """Names of :func:`designed_readouts` for cells with ``channels`` channels."""
    return ["nuclear_area", "cell_elongation", *(["texture_c1"] if channels > 1 else []),
            *[f"intensity_c{c}" for c in range(channels)]]


def designed_readouts(features: pd.DataFrame, channel_names: Sequence[str], nucleus_channel: int) -> pd.DataFrame:
    """One row per cell of ``features`` (cp-measure columns, phenotype.features), the designed
    readouts as columns (NaN where a compartment was not measured)."""
    labels = [channel_label(c) for c in channel_names]

    def column(name: str) -> np.ndarray:
        return features[name].to_numpy(np.float64) if name in features else np.full(len(features), np.nan)

    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "nuclear_area": column("Nuclei_AreaShape_Area"),
            "cell_elongation": column("Cells_AreaShape_MajorAxisLength") / column("Cells_AreaShape_MinorAxisLength"),
        }
        if len(labels) > 1:
            mean = column(f"Cytoplasm_Intensity_MeanIntensity_{labels[1]}")
            out["texture_c1"] = np.where(mean > 1e-6, column(f"Cytoplasm_Intensity_StdIntensity_{labels[1]}") / mean, np.nan)
    for c, label in enumerate(labels):
        compartment = "Nuclei" if c == nucleus_channel else "Cytoplasm"
        out[f"intensity_c{c}"] = column(f"{compartment}_Intensity_MeanIntensity_{label}")
    return pd.DataFrame(out, index=features.index)[readout_columns(len(labels))]
