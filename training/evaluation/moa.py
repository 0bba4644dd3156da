"""MoA accuracy: a classifier trained on real treated cells of the other split, applied to every
method's cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from .data import EvalData, Selection, load_pixels
from .measure import CellMeasurer, MethodCells


def moa_features(cells: MethodCells) -> np.ndarray:
    """Inception features where measured, else the morphology: (N, D) float."""
    if cells.features is not None:
        return cells.features
    return cells.morphology.to_numpy(dtype=np.float64)


@dataclass
class MoaClassifier:
    classifier: M.LogisticClassifier
    features: str
    n_train: int
    classes: list[str]

    def predict(self, cells: MethodCells) -> np.ndarray:
        return self.classifier.predict(moa_features(cells))


def train_moa_classifier(data: EvalData, split: str, cells_per_perturbation: int, measure: CellMeasurer,
                         seed: int) -> tuple[MoaClassifier | None, str | None]:
    """Logistic regression on frozen features of real treated cells of the other split (the
    evaluated cells are never trained on). Returns (classifier, None) or (None, why not)."""
    if data.moa is None:
        return None, "no MoA labels in the data (the BBBC021 layout's ANNOT column, or a plain-format moa column)"
    cells = data.table.cells
    other = "train" if split == "test" else "test"
    rng = np.random.default_rng(seed + 1)  # apart from the selection's draws (seed)
    rows = []
    labelled = (cells["split"].to_numpy() == other) & data.moa.notna().to_numpy()
    for name in sorted(set(cells["perturbation"].to_numpy()[labelled])):
        mine = np.flatnonzero(labelled & (cells["perturbation"].to_numpy() == name))
        if len(mine) > cells_per_perturbation:
            mine = np.sort(rng.choice(mine, cells_per_perturbation, replace=False))
        rows.append(mine)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    labels = data.moa.to_numpy()[rows].astype(str)
    if len(set(labels)) < 2:
        return None, f"fewer than 2 MoA classes among the real treated cells of the {other} split to train a classifier on"
    train = measure(load_pixels(data.table, rows, data.shape))
    classifier = M.LogisticClassifier().fit(moa_features(train), labels)
    kind = "inception" if measure.inception is not None else "morphology"
    return MoaClassifier(classifier, kind, len(rows), classifier.classes.tolist()), None


def classifier_info(classifier: MoaClassifier | None) -> dict:
    """The metrics JSON's ``moa`` section."""
    return {
        "classifier": "logistic regression" if classifier else None,
        "features": classifier.features if classifier else None,
        "classes": classifier.classes if classifier else [],
        "n_train_cells": classifier.n_train if classifier else 0,
    }


def moa_truth(data: EvalData, selection: Selection) -> np.ndarray | None:
    """object (N,): the MoA label (str or None) of each selected treated cell; None without labels."""
    if data.moa is None:
        return None
    return np.array([m if isinstance(m, str) else None for m in data.moa.to_numpy()[selection.treated]], dtype=object)


def group_accuracy(predicted: np.ndarray, truth: np.ndarray, index: np.ndarray) -> float | None:
    """Fraction right among the cells at ``index`` whose MoA is known (None: none known)."""
    known = np.array([truth[i] is not None for i in index], dtype=bool)
    return float((predicted[index][known] == truth[index][known]).mean()) if known.any() else None


def perturbation_moa(index: np.ndarray, predictions: dict[str, np.ndarray] | None, truth: np.ndarray | None,
                     keys: tuple[str, ...]) -> tuple[str | None, dict[str, float | None]]:
    """A perturbation's MoA (its cells' most common label) and each of ``keys``' accuracy on it."""
    moa = None
    if truth is not None:
        labels = [m for m in truth[index] if m is not None]
        moa = max(set(labels), key=labels.count) if labels else None
    if predictions is None or moa is None:
        return moa, dict.fromkeys(keys)
    return moa, {m: float((p[index] == truth[index]).mean()) for m, p in predictions.items()}

