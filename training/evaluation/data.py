"""The screen evaluated on, and the treated cells chosen from it with a same-batch control each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.data.cells import CellTable, load_cell
from napari_cellflux.data.dataset import draw_controls, same_batch_controls
from napari_cellflux.data.screens import OptionNames, read_screen_table
from napari_cellflux.data.synthetic import screen_info
from napari_cellflux.errors import InputError

OPTION_NAMES = OptionNames(root="--data", format="--format", metadata="--metadata")


@dataclass
class EvalData:
    """A screen to evaluate on: its cell table, format, MoA labels and (synthetic) ground truth.

    moa: MoA label per row of ``table.cells`` (None where unknown); truth: screen.json or None;
    shape: (C, H, W) of the first cell.
    """

    table: CellTable
    format: str
    moa: pd.Series | None
    truth: dict | None
    shape: tuple[int, int, int]


def load_eval_data(root: str | Path, data_format: str | None = None, metadata: str | None = None) -> EvalData:
    """Read the screen in ``root`` (format detected from its files unless given)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder; pass the folder holding the screen's cells and CSV")
    table, data_format, csv = read_screen_table(root, data_format, metadata, names=OPTION_NAMES)
    truth = screen_info(root)
    shape = load_cell(table.cells["path"].iloc[0]).shape
    return EvalData(table=table, format=data_format, moa=_moa_labels(table, csv, data_format), truth=truth, shape=shape)


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
        """Positions in the selection of ``perturbation``'s cells (None: all) in ``group``."""
        keep = np.ones(len(self.treated), dtype=bool)
        if perturbation is not None:
            keep &= self.perturbations == perturbation
        if group != "all":
            keep &= np.array([self.groups[p] == group for p in self.perturbations], dtype=bool)
        return np.flatnonzero(keep)

    def names_in(self, group: str = "all") -> list[str]:
        """The perturbations of ``group`` (all / seen / unseen), sorted case-insensitively."""
        return [n for n in self.names if group == "all" or self.groups[n] == group]

    @property
    def names(self) -> list[str]:
        return sorted(set(self.perturbations), key=str.lower)


def held_out_names(data: EvalData, models=()) -> set[str]:
    """Perturbations held out of training: the synthetic screen's design and each model's record."""
    held = set(data.truth["config"]["held_out"]) if data.truth else set()
    for model in models:
        held |= set(model.provenance.get("held_out", []))
    return held


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
        raise InputError(f"{data.table.source}: no treated cells in split {split!r}; pass --split train or test")
    if perturbations:
        lower = {n.lower(): n for n in available}
        unknown = [p for p in perturbations if p.lower() not in lower]
        if unknown:
            raise InputError(
                f"--perturbations {unknown} have no treated cells in split {split!r} of {data.table.source}; "
                f"known: {', '.join(available[:30])}"
            )
        available = [lower[p.lower()] for p in perturbations]
    # The draws keep this order (perturbations, cells, then controls) so recorded numbers stay reproducible.
    if max_perturbations is not None and max_perturbations < len(available):
        available = sorted(rng.choice(available, max_perturbations, replace=False).tolist(), key=str.lower)
    chosen = []
    for name in available:
        rows = np.flatnonzero(treated & (names == name))
        if n_cells is not None and len(rows) > n_cells:
            rows = np.sort(rng.choice(rows, n_cells, replace=False))
        chosen.append(rows)
    rows = np.concatenate(chosen)
    batches = cells["batch"].to_numpy()[rows]
    pools, notes = same_batch_controls(data.table, np.unique(batches), split, other_split=True)
    controls = draw_controls(batches, pools, rng)
    trained = set(names[~in_split & ~is_control])
    held = {h.lower() for h in held_out}
    groups = {n: "unseen" if (n not in trained or n.lower() in held) else "seen" for n in available}
    return Selection(treated=rows, controls=controls, perturbations=names[rows], batches=batches,
                     groups=groups, notes=notes)


def load_pixels(table: CellTable, rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (N, C, H, W) pixels of the cells at ``rows``; a cell of another shape is an error."""
    out = np.empty((len(rows), *shape), dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels = load_cell(table.cells["path"].iloc[row])
        if pixels.shape != shape:
            raise InputError(f"{table.where(int(row))}: cell has shape (C, H, W) = {pixels.shape}, expected {shape}")
        out[i] = pixels
    return out
