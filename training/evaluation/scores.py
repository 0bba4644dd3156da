"""The metrics of one checkpoint: per perturbation (FID / KID, morphology, effects, MoA), the
summary of each method over all / seen / unseen perturbations, and the per-batch intensities."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics as M
from .data import EvalData, Selection
from .measure import MethodCells
from .moa import MoaClassifier, group_accuracy, moa_truth, perturbation_moa
from .targets import targets

GROUPS = ("all", "seen", "unseen")
SUMMARY_KEYS = (
    "n_cells", "n_perturbations", "FIDo", "FIDc", "KIDo", "KIDc", "moa_accuracy",
    "morphology_error", "effect_error", "effect_error_vs_truth", "batch_intensity_error",
)
# Effect column -> the designed factor in screen.json (synthetic screens).
TRUTH_FACTORS = {"nuclear_area": "nuclear_area", "cell_elongation": "cell_elongation", "texture_c1": "texture"}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _ratio(numerator: float, denominator: float) -> float | None:
    if numerator is None or denominator is None or not (np.isfinite(numerator) and np.isfinite(denominator)):
        return None
    if numerator <= 0 or denominator <= 0:
        return None
    return float(numerator / denominator)


def _log_error(a: float | None, b: float | None) -> float | None:
    return abs(math.log(a) - math.log(b)) if a and b and a > 0 and b > 0 else None


def truth_effects(truth: dict | None, name: str, channels: int) -> dict[str, float]:
    """The designed treated / control factors of ``name`` from screen.json ({} when unknown)."""
    if not truth or name not in truth.get("perturbations", {}):
        return {}
    factors = truth["perturbations"][name]["factors"]
    out = {column: float(factors[key]) for column, key in TRUTH_FACTORS.items() if key in factors}
    for c, value in enumerate(factors.get("intensity", [])[:channels]):
        out[f"intensity_c{c}"] = float(value)
    if channels < 2:
        out.pop("texture_c1", None)
    return out


@dataclass
class Scorer:
    """What every metric of a checkpoint is measured against. feature_scale: SD of each morphology
    column over the real cells (the unit of morphology_error); moa: label per selected cell;
    predictions: each method's (and "real"'s) predicted MoA per selected cell."""

    selection: Selection
    real: MethodCells
    truth: dict | None
    feature_scale: pd.Series
    moa: np.ndarray | None
    predictions: dict[str, np.ndarray] | None
    kid_subsets: int
    seed: int

    @property
    def channels(self) -> int:
        return self.real.pixels.shape[1]

    def fid_kid(self, cells: MethodCells, index: np.ndarray) -> tuple[float | None, float | None]:
        if self.real.features is None or len(index) < 2:
            return None, None
        real, other = self.real.features[index], cells.features[index]
        return M.fid(real, other), M.kid(real, other, subsets=self.kid_subsets, seed=self.seed)[0]

    def perturbation(self, name: str, methods: dict[str, MethodCells]) -> dict:
        """FID / KID, mean morphology, effects (ratios to the copied controls' means) and MoA of ``name``."""
        index = self.selection.index(name)
        out = {"fid": {}, "kid": {}, "morphology": {}, "effect": {}}
        for method, cells in methods.items():
            out["fid"][method], out["kid"][method] = self.fid_kid(cells, index)
        real = self.real.morphology.iloc[index]
        for column in (c for c in M.morphology_columns(self.channels) if not c.startswith("crop_mean")):
            out["morphology"][column] = {
                "real": _finite(real[column].mean()),
                **{m: _finite(cells.morphology[column].iloc[index].mean()) for m, cells in methods.items()},
            }
        control = methods["copy_control"].morphology.iloc[index]
        true = truth_effects(self.truth, name, self.channels)
        for column in M.effect_columns(self.channels):
            reference = control[column].mean()
            out["effect"][column] = {
                "real": _ratio(real[column].mean(), reference),
                **{m: _ratio(cells.morphology[column].iloc[index].mean(), reference) for m, cells in methods.items()},
                "truth": true.get(column),
            }
        moa, accuracy = perturbation_moa(index, self.predictions, self.moa, (*methods, "real"))
        return {"group": self.selection.groups[name], "n_cells": len(index), "moa": moa,
                "batches": sorted(set(self.selection.batches[index])), **out, "moa_accuracy": accuracy}

    def summary(self, group: str, method: str, cells: MethodCells, per_perturbation: dict[str, dict]) -> dict:
        """The summary metrics (SUMMARY_KEYS) of ``method`` over the cells of ``group``."""
        index = self.selection.index(group=group)
        names = self.selection.names_in(group)
        out = dict.fromkeys(SUMMARY_KEYS)
        out["n_cells"], out["n_perturbations"] = len(index), len(names)
        if len(index) == 0:
            return out
        if self.real.features is not None and len(index) >= 2:
            out["FIDo"], out["KIDo"] = self.fid_kid(cells, index)
            out["FIDc"] = _mean(per_perturbation[n]["fid"][method] for n in names)
            out["KIDc"] = _mean(per_perturbation[n]["kid"][method] for n in names)
        errors, effects, truths = [], [], []
        for n in names:
            entry = per_perturbation[n]
            for column, values in entry["morphology"].items():
                if values["real"] is not None and values[method] is not None and self.feature_scale.get(column, 0) > 0:
                    errors.append(abs(values[method] - values["real"]) / self.feature_scale[column])
            for values in entry["effect"].values():
                effects.append(_log_error(values[method], values["real"]))
                truths.append(_log_error(values[method], values["truth"]))
        out["morphology_error"] = _mean(errors)
        out["effect_error"] = _mean(effects)
        out["effect_error_vs_truth"] = _mean(truths)
        if self.predictions is not None:
            out["moa_accuracy"] = group_accuracy(self.predictions[method], self.moa, index)
        errors = []
        for batch in np.unique(self.selection.batches[index]):
            rows = index[self.selection.batches[index] == batch]
            for c in range(self.channels):
                reference = self.real.morphology[f"crop_mean_c{c}"].iloc[rows].mean()
                if reference > 0:
                    errors.append(abs(cells.morphology[f"crop_mean_c{c}"].iloc[rows].mean() - reference) / reference)
        out["batch_intensity_error"] = _mean(errors)
        return out

    def reference(self, group: str, per_perturbation: dict[str, dict]) -> dict:
        """The real cells' own MoA accuracy and effect error against the truth (the floor)."""
        index = self.selection.index(group=group)
        return {
            "moa_accuracy": group_accuracy(self.predictions["real"], self.moa, index) if self.predictions else None,
            "effect_error_vs_truth": _mean(_log_error(v["real"], v["truth"]) for n in self.selection.names_in(group)
                                           for v in per_perturbation[n]["effect"].values()),
        }


def batch_table(selection: Selection, real: MethodCells, methods: dict[str, MethodCells], truth: dict | None) -> dict:
    """Per batch: mean crop intensity per channel (0-255) of real treated cells and of each method."""
    columns = [f"crop_mean_c{c}" for c in range(real.pixels.shape[1])]
    out = {}
    for batch in sorted(set(selection.batches)):
        rows = np.flatnonzero(selection.batches == batch)
        entry = {"n_cells": len(rows), "crop_mean": {
            "real": [float(v) for v in real.morphology[columns].iloc[rows].mean()],
            **{m: [float(v) for v in cells.morphology[columns].iloc[rows].mean()] for m, cells in methods.items()},
        }}
        recorded = (truth or {}).get("batches", {}).get(batch)
        entry["truth"] = {"gain": recorded["gain"], "offset": recorded["offset"]} if recorded else None
        out[batch] = entry
    return out


def score(selection: Selection, data: EvalData, real: MethodCells, methods: dict[str, MethodCells],
          classifier: MoaClassifier | None, *, kid_subsets: int, seed: int) -> dict:
    """One checkpoint's metrics: methods (summaries per method and group), reference (the real
    cells'), perturbations, batches and targets, as in the metrics JSON. ``methods``: cellflux
    and copy_control."""
    predictions = None
    if classifier is not None:
        predictions = {m: classifier.predict(cells) for m, cells in methods.items()}
        predictions["real"] = classifier.predict(real)
    scorer = Scorer(selection, real, data.truth, real.morphology.std(), moa_truth(data, selection), predictions,
                    kid_subsets, seed)
    per_perturbation = {name: scorer.perturbation(name, methods) for name in selection.names}
    summaries = {m: {g: scorer.summary(g, m, cells, per_perturbation) for g in GROUPS} for m, cells in methods.items()}
    return {"methods": summaries, "reference": {g: scorer.reference(g, per_perturbation) for g in GROUPS},
            "perturbations": per_perturbation, "batches": batch_table(selection, real, methods, data.truth),
            "targets": targets(selection, real, methods["cellflux"], per_perturbation, summaries)}
