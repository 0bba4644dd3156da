"""The profile's figures, drawn headless (matplotlib's Agg) and written atomically: a heat map of
the most changed features by perturbation, and the ranked effect sizes with their intervals."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from napari_cellflux.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from napari_cellflux.phenotype.profile import Profile

HEATMAP_FEATURES = 30


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def top_feature_names(profiles: pd.DataFrame, k: int = HEATMAP_FEATURES) -> list[str]:
    """The ``k`` features with the largest |median robust shift| over all perturbations."""
    strength = profiles.abs().max(axis=0).fillna(0.0)
    return list(strength.sort_values(ascending=False, kind="stable").index[:k])


def heatmap(profile: "Profile", path: str | Path, k: int = HEATMAP_FEATURES) -> Path:
    """Top-``k`` features (rows) x perturbations (columns, ranked order), robust units, clipped to +-5."""
    from matplotlib.figure import Figure

    names = top_feature_names(profile.profiles, k)
    order = list(profile.ranked["perturbation"])
    values = profile.profiles.loc[order, names].to_numpy(float).T
    figure = Figure(figsize=(2.0 + 0.45 * len(order), 1.5 + 0.22 * len(names)))
    axes = figure.add_subplot()
    image = axes.imshow(np.clip(np.nan_to_num(values), -5, 5), cmap="RdBu_r", vmin=-5, vmax=5, aspect="auto")
    axes.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=6)
    figure.colorbar(image, ax=axes, label="median shift (robust units)")
    axes.set_title("most changed features")
    return _save(figure, Path(path))


def effect_chart(ranked: pd.DataFrame, path: str | Path) -> Path:
    """Effect size (energy distance) per perturbation, strongest first, with its 95% interval."""
    from matplotlib.figure import Figure

    size = ranked["effect_size"].to_numpy(float)
    errors = np.stack([size - ranked["effect_low"].to_numpy(float), ranked["effect_high"].to_numpy(float) - size])
    figure = Figure(figsize=(5.0, 1.0 + 0.3 * len(ranked)))
    axes = figure.add_subplot()
    rows = np.arange(len(ranked))
    axes.barh(rows, size, xerr=np.clip(errors, 0, None), color="tab:blue", ecolor="black", capsize=2)
    axes.set_yticks(rows, ranked["perturbation"], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("effect size: energy distance to the controls (robust units), 95% interval")
    return _save(figure, Path(path))
