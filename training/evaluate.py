"""Evaluate a model on a screen's test split: ``python -m training.evaluate --checkpoint CKPT --data DIR --out metrics.json``.

For every treated test cell a control cell of the same batch is drawn and carried to the cell's
perturbation by the model; the generated cells are compared with the real treated cells by
FIDo / FIDc / KIDo / KIDc on Inception-v3 features (with ``--inception-weights``), by
morphology measured from the pixels, by the recovered effect (treated / control ratios, and the
designed truth on a synthetic screen), by MoA accuracy (where the data has MoA labels) and by
per-batch intensity. The copy-the-control baseline (generated = the control cells themselves)
gets the same metrics, side by side. Perturbations the model saw in training ("seen") and
held-out ones ("unseen") are summarised separately. See the README, section Evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux import api
from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.data.cells import CellTable, load_cell
from napari_cellflux.data.impa import CONVENTIONS, read_impa
from napari_cellflux.data.plain import CSV_NAME, read_plain
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.settings import GRID_NAMES, PRECISIONS, SOLVER_NAMES, SamplingConfig, SpeedOptions

from . import metrics as M

SCHEMA = "napari-cellflux/evaluation/1"
GROUPS = ("all", "seen", "unseen")
FORMATS = (*sorted(CONVENTIONS), "plain")
SUMMARY_KEYS = (
    "n_cells", "n_perturbations", "FIDo", "FIDc", "KIDo", "KIDc", "moa_accuracy",
    "morphology_error", "effect_error", "effect_error_vs_truth", "batch_intensity_error",
)
# Effect column -> the designed factor in screen.json (synthetic screens).
TRUTH_FACTORS = {"nuclear_area": "nuclear_area", "cell_elongation": "cell_elongation", "texture_c1": "texture"}


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class EvalData:
    """A screen to evaluate on: its cell table, format, MoA labels and (synthetic) ground truth.

    moa: MoA label per row of ``table.cells`` (None where unknown); truth: screen.json or None.
    """

    table: CellTable
    format: str
    root: Path
    moa: pd.Series | None
    truth: dict | None
    shape: tuple[int, int, int]


def detect_format(root: Path, metadata: str | None, data_format: str | None) -> tuple[str, Path]:
    """The format and the table CSV of the data folder ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder; pass the folder holding the screen's cells and CSV")
    if data_format is not None and data_format not in FORMATS:
        raise ValueError(f"--format {data_format!r} is not one of {', '.join(FORMATS)}")
    if metadata is not None:
        csv = Path(metadata) if Path(metadata).is_absolute() else root / metadata
        if not csv.is_file():
            raise FileNotFoundError(f"--metadata {csv} does not exist")
    elif data_format == "plain" or (data_format is None and (root / CSV_NAME).is_file()):
        csv = root / CSV_NAME
    else:
        csv = root / "metadata.csv"
    if not csv.is_file():
        found = sorted(p.name for p in root.glob("*.csv"))
        raise ValueError(
            f"--data {root} is not a screen in a known format: it has no metadata.csv (IMPA layout: bbbc021, "
            f"rxrx1, cpg0000) and no {CSV_NAME} (plain format){'; CSVs found: ' + ', '.join(found) if found else ''}. "
            "Pass --metadata FILE for a differently named table, and --format to say which layout it is"
        )
    if data_format is None:
        data_format = "plain" if csv.name == CSV_NAME else _detect_impa(csv)
    return data_format, csv


def _detect_impa(csv: Path) -> str:
    header = pd.read_csv(csv, index_col=0, dtype=str, keep_default_na=False, nrows=2000)
    if "BROAD_SAMPLE" in header.columns:
        return "cpg0000"
    if "ANNOT" in header.columns and header["ANNOT"].isin(["negative_control", "treated"]).any():
        return "rxrx1"
    if "CPD_NAME" in header.columns and "STATE" in header.columns:
        return "bbbc021"
    if "file" in header.reset_index().columns:
        return "plain"
    raise ValueError(
        f"{csv}: cannot tell the layout from its columns {list(header.columns)[:8]}; pass --format "
        f"({', '.join(FORMATS)})"
    )


def load_eval_data(root: str | Path, data_format: str | None = None, metadata: str | None = None) -> EvalData:
    """Read the screen in ``root`` (format detected from its files unless given)."""
    root = Path(root)
    data_format, csv = detect_format(root, metadata, data_format)
    if data_format == "plain":
        table = read_plain(csv)
    else:
        table = read_impa(csv, root, data_format)
    moa = _moa_labels(table, csv, data_format)
    truth = None
    if (root / "screen.json").is_file():
        truth = json.loads((root / "screen.json").read_text())
    first = table.cells["path"].iloc[0]
    shape = load_cell(first).shape
    return EvalData(table=table, format=data_format, root=root, moa=moa, truth=truth, shape=shape)


def _moa_labels(table: CellTable, csv: Path, data_format: str) -> pd.Series | None:
    """MoA labels of treated cells: the ANNOT column of the BBBC021 layout, or a ``moa`` column of
    the plain format; None when the data has none."""
    if data_format == "bbbc021":
        raw = pd.read_csv(csv, index_col=0, dtype=str, keep_default_na=False)
        column = "ANNOT" if "ANNOT" in raw.columns else None
    elif data_format == "plain":
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
        column = next((c for c in raw.columns if c.lower() == "moa"), None)
    else:
        return None  # RxRx1's ANNOT is the control flag; cpg0000 has no MoA labels
    if column is None:
        return None
    labels = raw[column].str.strip().to_numpy()[table.cells["line"].to_numpy() - 2]
    labels = pd.Series(labels, index=table.cells.index)
    labels[table.cells["is_control"].to_numpy() | (labels == "")] = None
    return labels if labels.notna().any() else None


@dataclass
class Selection:
    """The evaluated cells: rows of the table for each treated cell and its batch-matched control."""

    treated: np.ndarray
    controls: np.ndarray
    perturbations: np.ndarray
    batches: np.ndarray
    groups: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def index(self, perturbation: str | None = None, group: str = "all") -> np.ndarray:
        keep = np.ones(len(self.treated), dtype=bool)
        if perturbation is not None:
            keep &= self.perturbations == perturbation
        if group != "all":
            keep &= np.array([self.groups[p] == group for p in self.perturbations], dtype=bool)
        return np.flatnonzero(keep)

    @property
    def names(self) -> list[str]:
        return sorted(set(self.perturbations), key=str.lower)


def select_cells(
    data: EvalData,
    *,
    split: str = "test",
    perturbations: list[str] | None = None,
    n_cells: int | None = None,
    max_perturbations: int | None = None,
    held_out: set[str] = frozenset(),
    seed: int = 0,
) -> Selection:
    """Treated cells of ``split`` (at most ``n_cells`` per perturbation, at most ``max_perturbations``
    perturbations, drawn at random with ``seed``), each with a random control of the same batch.

    A perturbation is "unseen" when it has no treated cells in the other split (the model cannot
    have trained on it) or is named in ``held_out``; else "seen".
    """
    cells = data.table.cells
    rng = np.random.default_rng(seed)
    in_split = cells["split"].to_numpy() == split
    is_control = cells["is_control"].to_numpy()
    names = cells["perturbation"].to_numpy()
    treated = in_split & ~is_control
    available = sorted(set(names[treated]), key=str.lower)
    if not available:
        raise ValueError(f"{data.table.source}: no treated cells in split {split!r}; pass --split train or test")
    if perturbations:
        lower = {n.lower(): n for n in available}
        unknown = [p for p in perturbations if p.lower() not in lower]
        if unknown:
            raise ValueError(
                f"--perturbations {unknown} have no treated cells in split {split!r} of {data.table.source}; "
                f"known: {', '.join(available[:30])}"
            )
        available = [lower[p.lower()] for p in perturbations]
    if max_perturbations is not None and max_perturbations < len(available):
        available = sorted(rng.choice(available, max_perturbations, replace=False).tolist(), key=str.lower)
    notes = []
    chosen = []
    for name in available:
        rows = np.flatnonzero(treated & (names == name))
        if n_cells is not None and len(rows) > n_cells:
            rows = np.sort(rng.choice(rows, n_cells, replace=False))
        chosen.append(rows)
    rows = np.concatenate(chosen)
    batches = cells["batch"].to_numpy()
    controls = np.empty(len(rows), dtype=np.int64)
    for batch in np.unique(batches[rows]):
        pool = np.flatnonzero(is_control & in_split & (batches == batch))
        if len(pool) == 0:
            pool = np.flatnonzero(is_control & (batches == batch))
            if len(pool) == 0:
                raise ValueError(
                    f"{data.table.source}: batch {batch!r} has treated cells but no control cells; controls are "
                    "drawn from the same batch, so add control cells to it or leave its perturbations out"
                )
            notes.append(f"batch {batch}: no control cells in split {split!r}; controls drawn from its other split")
        mine = np.flatnonzero(batches[rows] == batch)
        controls[mine] = rng.choice(pool, len(mine), replace=True)
    other = ~in_split & ~is_control
    trained = set(names[other])
    held = {h.lower() for h in held_out}
    groups = {n: "unseen" if (n not in trained or n.lower() in held) else "seen" for n in available}
    return Selection(treated=rows, controls=controls, perturbations=names[rows], batches=batches[rows],
                     groups=groups, notes=notes)


def load_pixels(table: CellTable, rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (N, C, H, W) pixels of the cells at ``rows``; a cell of another shape is an error."""
    out = np.empty((len(rows), *shape), dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels = load_cell(table.cells["path"].iloc[row])
        if pixels.shape != shape:
            raise ValueError(f"{table.where(int(row))}: cell has shape (C, H, W) = {pixels.shape}, expected {shape}")
        out[i] = pixels
    return out


# --------------------------------------------------------------------------------------------
# Models


def load_checkpoint(path: str | Path, device: str, embeddings: str | None) -> CellFluxModel:
    """The model in ``path`` (own format or a published checkpoint); errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist; pass a model.safetensors written by training.train")
    options = {"embeddings": embeddings} if embeddings else {}
    try:
        return api.load_model(path, device=device, **options)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise ValueError(
            f"--checkpoint {path} is not a usable model ({err}); pass a model.safetensors written by "
            "training.train or a published CellFlux checkpoint.pth (with --embeddings for the latter)"
        ) from err


def check_model(model: CellFluxModel, data: EvalData, selection: Selection, source: Path) -> dict[str, dict]:
    """How each selected perturbation is conditioned ({"perturbation": name} or {"smiles": s});
    raises if the cells do not fit the model or a perturbation has no embedding."""
    c, h, w = data.shape
    if c != model.config.in_channels or (h, w) != (model.image_size, model.image_size):
        raise ValueError(
            f"--data cells are (C, H, W) = {data.shape} but the model {source} takes "
            f"({model.config.in_channels}, {model.image_size}, {model.image_size}); evaluate on the screen it was trained for"
        )
    if model.normalization.max_value != 255:
        raise ValueError(f"model {source} works on {model.normalization.max_value:g}-valued pixels; evaluation needs 8-bit (255) models")
    conditions = {}
    missing = []
    vocab = model.vocabulary
    for name in selection.names:
        try:
            conditions[name] = {"perturbation": vocab.names[vocab.index(name)]}
        except KeyError:
            smiles = data.table.smiles.get(name)
            if vocab.kind == "compound" and smiles:
                conditions[name] = {"smiles": smiles}
            else:
                missing.append(name)
    if missing:
        raise ValueError(
            f"perturbations {missing[:10]} of --data {data.table.source} have no embedding in the vocabulary of "
            f"{source} ({len(vocab)} perturbations, kind {vocab.kind}); pass --embeddings with the table the model "
            "was trained with, or leave them out with --perturbations"
        )
    return conditions


def generate_cells(
    model: CellFluxModel,
    controls: np.ndarray,
    selection: Selection,
    conditions: dict[str, dict],
    sampling: SamplingConfig,
    *,
    seed: int,
    batch_size: int,
    precision: str,
    log=None,
) -> np.ndarray:
    """uint8 (N, C, H, W): each control carried to its treated cell's perturbation (t = 1)."""
    out = np.empty_like(controls)
    names = selection.names
    for k, name in enumerate(names):
        index = selection.index(name)
        if log:
            log(f"generating {name} ({k + 1}/{len(names)}, {len(index)} cells)")
        # Seeded by the name, so a cell's noise does not depend on which other perturbations are evaluated.
        name_seed = int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1, np.uint64)[0] >> 1)
        trajectory = api.generate(model, model.normalization.to_model(controls[index]), sampling=sampling,
                                  seed=name_seed, batch_size=batch_size, speed=SpeedOptions(precision=precision), final_only=True,
                                  **conditions[name])
        out[index] = model.normalization.to_pixels(trajectory.final)
    return out


# --------------------------------------------------------------------------------------------
# Metrics


@dataclass
class MethodCells:
    """One method's cells, in selection order: pixels, morphology and (optional) Inception features."""

    pixels: np.ndarray
    morphology: pd.DataFrame
    features: np.ndarray | None


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


def perturbation_metrics(
    name: str,
    index: np.ndarray,
    real: MethodCells,
    methods: dict[str, MethodCells],
    truth: dict | None,
    channels: int,
    kid_subsets: int,
    seed: int,
) -> dict:
    """Per-perturbation FID / KID, mean morphology and effects for every method."""
    morph_columns = [c for c in M.morphology_columns(channels) if not c.startswith("crop_mean")]
    control = methods["copy_control"].morphology.iloc[index]
    out = {"fid": {}, "kid": {}, "morphology": {}, "effect": {}}
    for method, cells in methods.items():
        if real.features is not None and len(index) >= 2:
            out["fid"][method] = M.fid(real.features[index], cells.features[index])
            out["kid"][method] = M.kid(real.features[index], cells.features[index], subsets=kid_subsets, seed=seed)[0]
        else:
            out["fid"][method] = out["kid"][method] = None
    real_morph = real.morphology.iloc[index]
    for column in morph_columns:
        out["morphology"][column] = {
            "real": _finite(real_morph[column].mean()),
            **{m: _finite(cells.morphology[column].iloc[index].mean()) for m, cells in methods.items()},
        }
    true = truth_effects(truth, name, channels)
    for column in M.effect_columns(channels):
        reference = control[column].mean()
        out["effect"][column] = {
            "real": _ratio(real_morph[column].mean(), reference),
            **{m: _ratio(cells.morphology[column].iloc[index].mean(), reference) for m, cells in methods.items()},
            "truth": true.get(column),
        }
    return out


def group_summary(
    selection: Selection,
    group: str,
    method: str,
    real: MethodCells,
    cells: MethodCells,
    per_perturbation: dict[str, dict],
    feature_scale: pd.Series,
    moa_predictions: dict[str, np.ndarray] | None,
    moa_truth: np.ndarray | None,
    kid_subsets: int,
    seed: int,
) -> dict:
    """The summary metrics of ``method`` over the cells of ``group`` (all / seen / unseen)."""
    index = selection.index(group=group)
    names = [n for n in selection.names if group == "all" or selection.groups[n] == group]
    out = dict.fromkeys(SUMMARY_KEYS)
    out["n_cells"], out["n_perturbations"] = int(len(index)), len(names)
    if len(index) == 0:
        return out
    if real.features is not None and len(index) >= 2:
        out["FIDo"] = M.fid(real.features[index], cells.features[index])
        out["KIDo"] = M.kid(real.features[index], cells.features[index], subsets=kid_subsets, seed=seed)[0]
        out["FIDc"] = _mean(per_perturbation[n]["fid"][method] for n in names)
        out["KIDc"] = _mean(per_perturbation[n]["kid"][method] for n in names)
    errors, effects, truths = [], [], []
    for n in names:
        entry = per_perturbation[n]
        for column, values in entry["morphology"].items():
            if values["real"] is not None and values[method] is not None and feature_scale.get(column, 0) > 0:
                errors.append(abs(values[method] - values["real"]) / feature_scale[column])
        for values in entry["effect"].values():
            effects.append(_log_error(values[method], values["real"]))
            truths.append(_log_error(values[method], values["truth"]))
    out["morphology_error"] = _mean(errors)
    out["effect_error"] = _mean(effects)
    out["effect_error_vs_truth"] = _mean(truths)
    if moa_predictions is not None:
        known = np.array([moa_truth[i] is not None for i in index], dtype=bool)
        if known.any():
            out["moa_accuracy"] = float((moa_predictions[method][index][known] == moa_truth[index][known]).mean())
    channels = real.pixels.shape[1]
    errors = []
    for batch in np.unique(selection.batches[index]):
        rows = index[selection.batches[index] == batch]
        for c in range(channels):
            reference = real.morphology[f"crop_mean_c{c}"].iloc[rows].mean()
            if reference > 0:
                errors.append(abs(cells.morphology[f"crop_mean_c{c}"].iloc[rows].mean() - reference) / reference)
    out["batch_intensity_error"] = _mean(errors)
    return out


def batch_table(selection: Selection, real: MethodCells, methods: dict[str, MethodCells], truth: dict | None) -> dict:
    """Per batch: mean crop intensity per channel (0-255) of real treated cells and of each method."""
    channels = real.pixels.shape[1]
    columns = [f"crop_mean_c{c}" for c in range(channels)]
    out = {}
    for batch in sorted(set(selection.batches)):
        rows = np.flatnonzero(selection.batches == batch)
        entry = {"n_cells": int(len(rows)), "crop_mean": {
            "real": [float(v) for v in real.morphology[columns].iloc[rows].mean()],
            **{m: [float(v) for v in cells.morphology[columns].iloc[rows].mean()] for m, cells in methods.items()},
        }}
        recorded = (truth or {}).get("batches", {}).get(batch)
        entry["truth"] = {"gain": recorded["gain"], "offset": recorded["offset"]} if recorded else None
        out[batch] = entry
    return out


@dataclass
class MoaClassifier:
    classifier: M.LogisticClassifier
    features: str
    n_train: int
    classes: list[str]


def moa_features(cells: MethodCells) -> np.ndarray:
    if cells.features is not None:
        return cells.features
    return cells.morphology.to_numpy(dtype=np.float64)


def train_moa_classifier(data: EvalData, split: str, cells_per_perturbation: int, nuclear_channel: int,
                         rgb: np.ndarray, inception, batch_size: int, seed: int) -> tuple[MoaClassifier | None, str | None]:
    """Logistic regression on frozen features of real treated cells of the other split (the
    evaluated cells are never trained on). Returns (classifier, None) or (None, why not)."""
    if data.moa is None:
        return None, "no MoA labels in the data (the BBBC021 layout's ANNOT column, or a plain-format moa column)"
    cells = data.table.cells
    other = "train" if split == "test" else "test"
    rng = np.random.default_rng(seed + 1)
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
    train = describe_cells(load_pixels(data.table, rows, data.shape), nuclear_channel, rgb, inception, batch_size)
    classifier = M.LogisticClassifier().fit(moa_features(train), labels)
    kind = "inception" if inception is not None else "morphology"
    return MoaClassifier(classifier, kind, int(len(rows)), classifier.classes.tolist()), None


def describe_cells(pixels: np.ndarray, nuclear_channel: int, rgb: np.ndarray, inception, batch_size: int) -> MethodCells:
    """Morphology and (if ``inception``) Inception features of uint8 cells."""
    features = None
    if inception is not None:
        from .inception import inception_features

        features = inception_features(inception, M.to_inception_rgb(pixels, rgb), batch_size).numpy()
    return MethodCells(pixels=pixels, morphology=M.measure_cells(pixels, nuclear_channel), features=features)


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class EvalConfig:
    checkpoints: list[str]
    data: str
    out: str
    format: str | None = None
    metadata: str | None = None
    embeddings: str | None = None
    split: str = "test"
    inception_weights: str | None = None
    n_cells: int | None = None
    max_perturbations: int | None = None
    perturbations: list[str] | None = None
    steps: int | None = None
    solver: str | None = None
    grid: str | None = None
    guidance: float | None = None
    noise_level: float | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    nuclear_channel: int = 0
    moa_cells: int = 200
    kid_subsets: int = 100
    report: str | None = None
    quiet: bool = False


def sampling_for(model: CellFluxModel, cfg: EvalConfig) -> SamplingConfig:
    return model.sampling.with_overrides(steps=cfg.steps, solver=cfg.solver, grid=cfg.grid, guidance=cfg.guidance,
                                         noise_level=cfg.noise_level)


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation of ``cfg``; writes ``cfg.out`` (and the report) and returns the result."""
    log = (lambda message: None) if cfg.quiet else (lambda message: print(f"evaluate: {message}", file=sys.stderr, flush=True))
    started = time.time()
    if not cfg.checkpoints:
        raise ValueError("give at least one --checkpoint")
    notes: list[str] = []
    if cfg.report:
        from .report import check_matplotlib

        check_matplotlib()
    inception = None
    if cfg.inception_weights:
        from .inception import load_inception

        inception = load_inception(cfg.inception_weights, api.resolve_device(cfg.device))
    else:
        message = ("FID/KID skipped: no --inception-weights given (pass the FID Inception weights file "
                   "pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
        notes.append(message)
        print(f"evaluate: warning: {message}", file=sys.stderr, flush=True)  # even with --quiet
    # Load every model first, so a bad checkpoint fails before hours of generation.
    models = [load_checkpoint(path, cfg.device, cfg.embeddings) for path in cfg.checkpoints]
    data = load_eval_data(cfg.data, cfg.format, cfg.metadata)
    held = set(data.truth["config"]["held_out"]) if data.truth else set()
    for model in models:
        held |= set(model.provenance.get("held_out", []))
    selection = select_cells(data, split=cfg.split, perturbations=cfg.perturbations, n_cells=cfg.n_cells,
                             max_perturbations=cfg.max_perturbations, held_out=held, seed=cfg.seed)
    notes += selection.notes
    conditions = [check_model(model, data, selection, Path(path)) for model, path in zip(models, cfg.checkpoints)]
    for model, condition in zip(models, conditions):
        if len(model.vocabulary):  # a SMILES had to stand in for a name the model's vocabulary lacks: never trained on
            selection.groups.update({name: "unseen" for name, how in condition.items() if "smiles" in how})
    rgb = M.rgb_matrix(data.format, data.shape[0])
    log(f"{len(selection.treated)} treated {cfg.split} cells of {len(selection.names)} perturbations "
        f"({sum(g == 'unseen' for g in selection.groups.values())} unseen)")

    real_pixels = load_pixels(data.table, selection.treated, data.shape)
    control_pixels = load_pixels(data.table, selection.controls, data.shape)
    log("measuring real and control cells")
    real = describe_cells(real_pixels, cfg.nuclear_channel, rgb, inception, cfg.batch_size)
    copy = describe_cells(control_pixels, cfg.nuclear_channel, rgb, inception, cfg.batch_size)
    feature_scale = real.morphology.std()

    classifier, why_not = train_moa_classifier(data, cfg.split, cfg.moa_cells, cfg.nuclear_channel, rgb,
                                               inception, cfg.batch_size, cfg.seed)
    if why_not:
        notes.append(f"MoA accuracy skipped: {why_not}")
    moa_truth = None
    if data.moa is not None:
        moa_truth = np.array([m if isinstance(m, str) else None for m in data.moa.to_numpy()[selection.treated]], dtype=object)

    checkpoints, generated = [], None
    result = None
    for model, path, condition in zip(models, cfg.checkpoints, conditions):
        sampling = sampling_for(model, cfg)
        log(f"checkpoint {path}: {sampling.steps} {sampling.solver} steps, guidance {sampling.guidance:g}")
        pixels = generate_cells(model, control_pixels, selection, condition, sampling, seed=cfg.seed,
                                batch_size=cfg.batch_size, precision=cfg.precision, log=log)
        log("measuring generated cells")
        methods = {"cellflux": describe_cells(pixels, cfg.nuclear_channel, rgb, inception, cfg.batch_size), "copy_control": copy}
        result = score(selection, data, real, methods, feature_scale, classifier, moa_truth, cfg)
        checkpoints.append({**checkpoint_info(model, path), "sampling": sampling.to_dict(),
                            "summary": result["methods"]["cellflux"]})
        generated = pixels
    output = {
        "schema": SCHEMA,
        "checkpoint": {k: checkpoints[-1][k] for k in ("path", "sha256", "step", "epoch")},
        "checkpoints": checkpoints,
        "data": {
            "path": str(Path(cfg.data).resolve()), "format": data.format, "table": str(data.table.source),
            "split": cfg.split, "cell_shape": list(data.shape), "n_treated": int(len(selection.treated)),
            "perturbations": selection.names,
            "seen": [n for n in selection.names if selection.groups[n] == "seen"],
            "unseen": [n for n in selection.names if selection.groups[n] == "unseen"],
            "synthetic_truth": data.truth is not None,
        },
        "sampling": checkpoints[-1]["sampling"] | {"seed": cfg.seed},
        "features": {
            "inception_weights": str(Path(cfg.inception_weights).resolve()) if cfg.inception_weights else None,
            "fid_images": "8-bit, [0, 1], " + rgb_description(data.format, data.shape[0]) + ", resized bilinearly to 299 x 299",
            "morphology": M.morphology_columns(data.shape[0]),
            "effects": M.effect_columns(data.shape[0]),
            "nuclear_channel": cfg.nuclear_channel,
        },
        "moa": {
            "classifier": "logistic regression" if classifier else None,
            "features": classifier.features if classifier else None,
            "classes": classifier.classes if classifier else [],
            "n_train_cells": classifier.n_train if classifier else 0,
        },
        **{k: result[k] for k in ("methods", "reference", "perturbations", "batches", "targets")},
        "notes": notes,
        "elapsed_s": round(time.time() - started, 2),
    }
    output = _clean(output)
    atomic_write_text(cfg.out, json.dumps(output, indent=2, allow_nan=False) + "\n")
    log(f"metrics written to {cfg.out}")
    if cfg.report:
        from .report import write_report

        write_report(cfg.report, output, selection=selection, real=real_pixels, controls=control_pixels,
                     generated=generated, models=models, checkpoints=cfg.checkpoints)
        log(f"report written to {cfg.report}")
    return output


def score(selection: Selection, data: EvalData, real: MethodCells, methods: dict[str, MethodCells],
          feature_scale: pd.Series, classifier: MoaClassifier | None, moa_truth, cfg: EvalConfig) -> dict:
    channels = data.shape[0]
    per_perturbation = {}
    predictions = None
    if classifier is not None:
        predictions = {m: classifier.classifier.predict(moa_features(cells)) for m, cells in methods.items()}
        predictions["real"] = classifier.classifier.predict(moa_features(real))
    for name in selection.names:
        index = selection.index(name)
        entry = perturbation_metrics(name, index, real, methods, data.truth, channels, cfg.kid_subsets, cfg.seed)
        moa = None
        if moa_truth is not None:
            labels = [m for m in moa_truth[index] if m is not None]
            moa = max(set(labels), key=labels.count) if labels else None
        accuracy = {m: None for m in (*methods, "real")}
        if predictions is not None and moa is not None:
            accuracy = {m: float((p[index] == moa_truth[index]).mean()) for m, p in predictions.items()}
        per_perturbation[name] = {
            "group": selection.groups[name], "n_cells": int(len(index)), "moa": moa,
            "batches": sorted(set(selection.batches[index])), **entry, "moa_accuracy": accuracy,
        }
    summaries = {m: {g: group_summary(selection, g, m, real, cells, per_perturbation, feature_scale, predictions,
                                      moa_truth, cfg.kid_subsets, cfg.seed) for g in GROUPS}
                 for m, cells in methods.items()}
    reference = {}
    for g in GROUPS:
        names = [n for n in selection.names if g == "all" or selection.groups[n] == g]
        index = selection.index(group=g)
        known = np.array([moa_truth[i] is not None for i in index], dtype=bool) if moa_truth is not None else None
        reference[g] = {
            "moa_accuracy": float((predictions["real"][index][known] == moa_truth[index][known]).mean())
            if predictions is not None and known is not None and known.any() else None,
            "effect_error_vs_truth": _mean(_log_error(v["real"], v["truth"]) for n in names
                                           for v in per_perturbation[n]["effect"].values()),
        }
    return {"methods": summaries, "reference": reference, "perturbations": per_perturbation,
            "batches": batch_table(selection, real, methods, data.truth),
            "targets": targets(selection, real, methods["cellflux"], per_perturbation, summaries)}


EFFECT_TOLERANCE = 0.25  # relative error allowed on an effect size (ratio - 1)
BATCH_TOLERANCE = 0.10  # relative error allowed on a batch's mean crop intensity per channel
LOWER_IS_BETTER = ("FIDo", "FIDc", "KIDo", "KIDc", "morphology_error", "effect_error", "effect_error_vs_truth",
                   "batch_intensity_error")


def targets(selection: Selection, real: MethodCells, generated: MethodCells, per_perturbation: dict,
            summaries: dict) -> dict:
    """The demo's quality targets on the seen (training) perturbations: every designed effect
    (truth != 1) with the right sign and a size (ratio - 1) within 25% of the real cells' and of
    the truth's; every summary metric better than copy-control; each batch's mean crop
    intensity per channel within 10% of the real cells'."""
    seen = [n for n in selection.names if selection.groups[n] == "seen"]
    effects = []
    for name in seen:
        for feature, v in per_perturbation[name]["effect"].items():
            if v["truth"] is None or v["truth"] == 1 or v["cellflux"] is None or v["real"] is None:
                continue
            size, real_size, true_size = v["cellflux"] - 1, v["real"] - 1, v["truth"] - 1
            effects.append({
                "perturbation": name, "feature": feature, "truth": v["truth"], "real": v["real"], "generated": v["cellflux"],
                "sign_right": bool(np.sign(size) == np.sign(true_size)),
                "within_25pct_of_real": bool(abs(size - real_size) <= EFFECT_TOLERANCE * abs(real_size)),
                "within_25pct_of_truth": bool(abs(size - true_size) <= EFFECT_TOLERANCE * abs(true_size)),
            })
    mine, copy = summaries["cellflux"]["seen"], summaries["copy_control"]["seen"]
    metrics = {key: bool(mine[key] < copy[key]) if key in LOWER_IS_BETTER else bool(mine[key] > copy[key])
               for key in (*LOWER_IS_BETTER, "moa_accuracy") if mine.get(key) is not None and copy.get(key) is not None}
    index = selection.index(group="seen")
    columns = [c for c in real.morphology.columns if c.startswith("crop_mean_c")]
    batches = {}
    for batch in sorted(set(selection.batches[index])):
        rows = index[selection.batches[index] == batch]
        want = real.morphology[columns].iloc[rows].mean().to_numpy()
        got = generated.morphology[columns].iloc[rows].mean().to_numpy()
        error = float(np.max(np.abs(got - want) / np.maximum(want, 1e-9)))
        batches[batch] = {"real": want.tolist(), "generated": got.tolist(), "max_relative_error": error,
                          "preserved": error <= BATCH_TOLERANCE}
    return {
        "effects": effects, "beats_copy_control": metrics, "batch_artefacts": batches,
        "met": {
            "effect_signs": all(e["sign_right"] for e in effects),
            "effect_sizes_vs_real": all(e["within_25pct_of_real"] for e in effects),
            "effect_sizes_vs_truth": all(e["within_25pct_of_truth"] for e in effects),
            "beats_copy_control": all(metrics.values()),
            "batch_artefacts": all(b["preserved"] for b in batches.values()),
        },
    }


def checkpoint_info(model: CellFluxModel, path: str) -> dict:
    return {"path": str(Path(path).resolve()), "sha256": model.sha256 or None,
            "step": model.provenance.get("step"), "epoch": model.provenance.get("epoch")}


def rgb_description(data_format: str, channels: int) -> str:
    if data_format == "rxrx1":
        return "RxRx1 6 -> 3 mix R = c3 + c5/2 + c6/2, G = c2 + c4/2 + c6/2, B = c1 + c4/2 + c5/2 (clamped)"
    if channels == 3:
        return "the 3 channels as they are"
    if channels == 1:
        return "the one channel as grey"
    return "the first 3 channels" if channels > 3 else "the 2 channels and a black third"


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN / inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="model file (model.safetensors or a published checkpoint.pth); repeat to compare checkpoints")
    p.add_argument("--data", required=True, help="the screen's folder (IMPA layout, plain format, or a synthetic screen)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--format", choices=FORMATS, help="data layout (default: detected from the folder)")
    p.add_argument("--metadata", help="the metadata CSV, if not DIR/metadata.csv or DIR/cells.csv")
    p.add_argument("--embeddings", help="perturbation embedding CSV (published checkpoints only)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="cells to evaluate on (default test)")
    p.add_argument("--inception-weights", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); without it FID/KID are skipped")
    p.add_argument("--n-cells", type=int, help="at most this many treated cells per perturbation (random, seeded)")
    p.add_argument("--max-perturbations", type=int, help="at most this many perturbations (random; 100 in the RxRx1/JUMP protocol)")
    p.add_argument("--perturbations", help="comma-separated perturbations to evaluate (default: all in the split)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--solver", choices=SOLVER_NAMES)
    p.add_argument("--grid", choices=GRID_NAMES)
    p.add_argument("--guidance", type=float)
    p.add_argument("--noise-level", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--nuclear-channel", type=int, default=0, help="the DNA stain channel, 0-based (default 0)")
    p.add_argument("--moa-cells", type=int, default=200, help="real cells per perturbation to train the MoA classifier on")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--report", help="folder for a Markdown + PNG report")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["checkpoints"] = values.pop("checkpoint")
    if values["perturbations"]:
        values["perturbations"] = [p.strip() for p in values["perturbations"].split(",") if p.strip()]
    for name in ("n_cells", "max_perturbations", "batch_size", "moa_cells", "kid_subsets"):
        if values[name] is not None and values[name] < 1:
            print(f"evaluate: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        evaluate(EvalConfig(**values))
    except (ValueError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"evaluate: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
