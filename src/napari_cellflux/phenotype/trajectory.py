"""The phenotype of one generation run (the widget's phenotype panel): the most changed features of
the generated cells against the control cells they started from, with intervals, and every
feature measured along the flow time t (docs/phenotype.md, In the widget)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from napari_cellflux.errors import InputError
from napari_cellflux.phenotype.effects import EffectOptions, feature_shifts, robust_center_scale
from napari_cellflux.phenotype.features import FeatureOptions, measure_cells
from napari_cellflux.phenotype.profile import OUTLIER, kept_features

PANEL_GROUPS = ("shape", "intensity")  # seconds for a widget run of 16 cells (docs/phenotype.md)


@dataclass(frozen=True)
class RunPhenotype:
    """shifts: the ``top`` most changed features at t = 1 (index feature; shift, low, high in
    robust units of the controls), largest |shift| with an interval that excludes 0 first.
    along_t: one row per time of the run (column ``t``), the median of every feature over the
    cells. along_t_shift: the same in robust units of the controls."""

    shifts: pd.DataFrame
    along_t: pd.DataFrame
    along_t_shift: pd.DataFrame
    groups: tuple[str, ...] = field(default=PANEL_GROUPS)


def measure_run(controls: np.ndarray, pixels: np.ndarray, times: np.ndarray, channels: Sequence[str], *,
                max_value: float = 255.0, groups: tuple[str, ...] = PANEL_GROUPS, top: int = 8,
                effects: EffectOptions = EffectOptions(), progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> RunPhenotype | None:
    """controls (N, C, H, W) and the run's states pixels (T, N, C, H, W), stored pixels in
    0..max_value; times (T,). Returns None when ``cancel()`` turns true between states."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 5 or pixels.shape[1:] != np.shape(controls) or len(times) != len(pixels):
        raise InputError(f"a run's states must be (T, N, C, H, W) with T = {len(times)} times and N, C, H, W of the "
                         f"controls {np.shape(controls)}, got {pixels.shape}")
    options = FeatureOptions(channels=tuple(channels), groups=groups)
    total = len(pixels) + 1

    def measured(cells: np.ndarray, done: int) -> pd.DataFrame:
        frame = measure_cells(cells, options, max_value=max_value)
        if progress is not None:
            progress(done, total)
        return frame

    base = measured(controls, 1)
    states = []
    for i, state in enumerate(pixels):
        if cancel is not None and cancel():
            return None
        states.append(measured(state, i + 2))
    kept, _ = kept_features(base)  # the same feature rules as `cellflux profile`
    control_values = base[kept].to_numpy(np.float64)
    center, scale = robust_center_scale(control_values)
    shifts = feature_shifts(states[-1][kept].to_numpy(np.float64), control_values, effects, kept, "the generated cells")
    shifts = shifts[np.isfinite(shifts["shift"]) & (shifts["shift"].abs() <= OUTLIER)]
    clear = (shifts["low"] > 0) | (shifts["high"] < 0)
    order = shifts.assign(clear=clear, size=shifts["shift"].abs()).sort_values(["clear", "size"], ascending=False, kind="stable")
    medians = pd.DataFrame([s[kept].median() for s in states], columns=kept)
    along_t = pd.concat([pd.DataFrame({"t": np.asarray(times, dtype=float)}), medians], axis=1)
    in_units = (medians - center) / scale
    return RunPhenotype(shifts=shifts.loc[order.index[:top]], along_t=along_t,
                        along_t_shift=pd.concat([along_t[["t"]], in_units], axis=1), groups=groups)
