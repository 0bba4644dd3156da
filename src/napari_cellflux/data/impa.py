"""Reader for the published IMPA preprocessed format (BBBC021, RxRx1, cpg0000), which CellFlux reads.

One uint8 ``.npy`` of shape (H, W, C) per cell, and a metadata CSV (index in the first column)
with ``SAMPLE_KEY``, ``SPLIT`` and per-dataset perturbation / control / batch columns. The three
datasets differ only in those columns and in how a key maps to a file: one frozen
:class:`ImpaConvention` each, one reader for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from napari_cellflux.data.cells import CellTable, make_cell_table
from napari_cellflux.errors import InputError


def _split_key(key: str, parts: int) -> list[str]:
    pieces = key.split("_")
    if len(pieces) < parts:
        raise InputError(f"SAMPLE_KEY {key!r} has {len(pieces)} '_'-separated parts, expected at least {parts}")
    return pieces


def bbbc021_key_path(key: str) -> PurePosixPath:
    """``a_b_rest`` -> ``a/b/rest.npy`` (rest may contain '_')."""
    a, b, *rest = _split_key(key, 3)
    return PurePosixPath(a, b, "_".join(rest) + ".npy")


def rxrx1_key_path(key: str) -> PurePosixPath:
    """``U2OS-01_3_J09_s1_19`` -> ``01_3/J09/s1_19.npy`` (the cell line before '-' is dropped)."""
    if "-" not in key:
        raise InputError(f"SAMPLE_KEY {key!r} has no '-'; RxRx1 keys look like U2OS-01_3_J09_s1_19")
    experiment, plate, well, *rest = _split_key(key.split("-", 1)[1], 4)
    return PurePosixPath(f"{experiment}_{plate}", well, "_".join(rest) + ".npy")


def cpg0000_key_path(key: str) -> PurePosixPath:
    """``BR00117010_C01_1_128`` -> ``BR00117010/C01_1/C01_1_128.npy``."""
    plate, well, site, *rest = _split_key(key, 4)
    return PurePosixPath(plate, f"{well}_{site}", "_".join([well, site, *rest]) + ".npy")


@dataclass(frozen=True)
class ImpaConvention:
    """How one dataset's metadata CSV names things.

    A row is a control when ``state_column`` holds one of ``control_values``, treated when it
    holds one of ``treated_values`` (compared as the CSV's text); any other value is an error.
    """

    name: str
    perturbation_column: str
    batch_column: str
    state_column: str
    control_values: tuple[str, ...]
    treated_values: tuple[str, ...]
    key_to_path: Callable[[str], PurePosixPath]
    channels: int
    smiles_column: str | None = None


BBBC021 = ImpaConvention("bbbc021", "CPD_NAME", "BATCH", "STATE", ("0",), ("1",), bbbc021_key_path, 3, "SMILES")
RXRX1 = ImpaConvention(
    "rxrx1", "CPD_NAME", "BATCH", "ANNOT", ("negative_control",), ("treated",), rxrx1_key_path, 6
)
CPG0000 = ImpaConvention("cpg0000", "BROAD_SAMPLE", "PLATE", "STATE", ("control",), ("trt",), cpg0000_key_path, 5)
CONVENTIONS = {c.name: c for c in (BBBC021, RXRX1, CPG0000)}


def read_impa(
    metadata_csv: str | Path,
    image_root: str | Path | None = None,
    convention: str | ImpaConvention = "bbbc021",
    *,
    channels: int | None = None,
    check_files: bool = True,
) -> CellTable:
    """Read an IMPA metadata CSV into a :class:`CellTable` (pixels stay on disk).

    image_root: folder holding the per-cell ``.npy`` tree (default: the CSV's folder).
    convention: "bbbc021", "rxrx1", "cpg0000" or an :class:`ImpaConvention`.
    channels: expected channel count (default: the convention's, 3 / 6 / 5).
    check_files: stat every file now, so a wrong root fails at once rather than mid-training.
    """
    source = Path(metadata_csv)
    conv = _convention(convention)
    root = Path(image_root) if image_root is not None else source.parent
    if not source.is_file():
        raise FileNotFoundError(f"metadata CSV {source} does not exist; pass the path of the IMPA metadata CSV")
    try:
        raw = pd.read_csv(source, index_col=0, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"metadata CSV {source} is empty; it needs a header line and one line per cell") from None
    required = ["SAMPLE_KEY", "SPLIT", conv.perturbation_column, conv.batch_column, conv.state_column]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise InputError(
            f"metadata CSV {source} lacks columns {missing} needed by the {conv.name} convention "
            f"(it has {list(raw.columns)}); pick the right convention or fix the header"
        )
    lines = pd.RangeIndex(2, len(raw) + 2)  # line 1 is the header
    state = raw[conv.state_column].str.strip()
    is_control = state.isin(conv.control_values)
    unknown = ~is_control & ~state.isin(conv.treated_values)
    if unknown.any():
        first = int(unknown.to_numpy().argmax())
        raise InputError(
            f"{source} line {lines[first]}: {conv.state_column} = {state.iloc[first]!r} is neither control "
            f"{conv.control_values} nor treated {conv.treated_values} ({int(unknown.sum())} such lines); "
            "fix the value or drop the line"
        )
    frame = pd.DataFrame(
        {
            "path": [_cell_path(root, conv, key, source, line) for key, line in zip(raw["SAMPLE_KEY"], lines)],
            "perturbation": raw[conv.perturbation_column].to_numpy(),
            "batch": raw[conv.batch_column].to_numpy(),
            "is_control": is_control.to_numpy(),
            "split": raw["SPLIT"].str.strip().to_numpy(),
            "line": lines,
        }
    )
    smiles = {}
    if conv.smiles_column and conv.smiles_column in raw.columns:
        with_smiles = raw[raw[conv.smiles_column].str.strip() != ""]
        smiles = dict(zip(with_smiles[conv.perturbation_column].str.strip(), with_smiles[conv.smiles_column]))
    return make_cell_table(
        frame, source, check_files=check_files, channels=channels or conv.channels, smiles=smiles
    )


def _convention(convention: str | ImpaConvention) -> ImpaConvention:
    if isinstance(convention, ImpaConvention):
        return convention
    try:
        return CONVENTIONS[str(convention).lower()]
    except KeyError:
        raise InputError(f"unknown IMPA convention {convention!r}; use one of {sorted(CONVENTIONS)}") from None


def _cell_path(root: Path, conv: ImpaConvention, key: str, source: Path, line: int) -> str:
    try:
        return str(root / conv.key_to_path(key.strip()))
    except ValueError as err:
        raise InputError(f"{source} line {line}: {err}; fix the key or pick the right convention") from None
