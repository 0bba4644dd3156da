"""The plain format: a folder of single-cell TIFFs plus one CSV, for users' own screens.

Layout::

    DIR/cells.csv            file,perturbation,batch,is_control,split[,any extra columns]
    DIR/<file>               one cell per TIFF, uint8, axes (C, H, W) (a 2-D page is one channel)

``file`` is relative to the CSV's folder; ``is_control`` is true/false (also 1/0, yes/no);
``split`` is train or test. Every cell of a table has the same (C, H, W). Extra columns are kept
in the CSV (``cellflux extract`` records the source field and centroid) and ignored by the reader.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.atomic import atomic_write_bytes, atomic_write_text
from napari_cellflux.data.cells import (
    FALSE_WORDS,
    TRUE_WORDS,
    CellTable,
    check_split_name,
    make_cell_table,
    read_text_table,
)
from napari_cellflux.errors import InputError

CSV_NAME = "cells.csv"
REQUIRED = ("file", "perturbation", "batch", "is_control", "split")


def read_plain(csv_path: str | Path, *, channels: int | None = None, check_files: bool = True) -> CellTable:
    """Read a plain-format CSV into a :class:`CellTable`; files are resolved against the CSV's folder."""
    source = Path(csv_path)
    if not source.is_file():
        raise FileNotFoundError(f"plain-format CSV {source} does not exist; pass the path of cells.csv")
    raw = read_text_table(source, "plain-format CSV", f"it needs the header {','.join(REQUIRED)}")
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise InputError(
            f"plain-format CSV {source} lacks columns {missing}; the header must contain {','.join(REQUIRED)}"
        )
    lines = np.arange(2, len(raw) + 2)  # line 1 is the header
    flag = raw["is_control"].str.strip().str.lower()
    bad = ~flag.isin(TRUE_WORDS | FALSE_WORDS)
    if bad.any():
        first = int(bad.to_numpy().argmax())
        raise InputError(
            f"{source} line {lines[first]}: is_control = {raw['is_control'].iloc[first]!r}; write true or false"
        )
    frame = pd.DataFrame(
        {
            "path": [str(source.parent / f.strip()) if f.strip() else "" for f in raw["file"]],
            "perturbation": raw["perturbation"].to_numpy(),
            "batch": raw["batch"].to_numpy(),
            "is_control": flag.isin(TRUE_WORDS).to_numpy(),
            "split": raw["split"].str.strip().to_numpy(),
            "line": lines,
        }
    )
    return make_cell_table(frame, source, check_files=check_files, channels=channels)


def check_prefix(prefix: str) -> str:
    """A crop-name prefix is a plain name: it must not lead outside the output folder."""
    if not prefix or Path(prefix).name != prefix or prefix in (".", "..") or "\\" in prefix:
        raise InputError(f"--prefix {prefix!r}: give a plain name without folders (e.g. plate1_A01), "
                         "so every crop lands in the output folder")
    return prefix


def _previous_table(csv_path: Path) -> pd.DataFrame | None:
    if not csv_path.is_file():
        return None
    previous = read_text_table(csv_path, "CSV", "repair or remove it, or write to another folder")
    if "file" not in previous.columns:
        raise InputError(f"{csv_path}: has no 'file' column, so it is not a plain-format table; "
                         "repair or remove it, or write to another folder")
    return previous


def write_plain(
    out_dir: str | Path,
    crops: np.ndarray,
    *,
    perturbation: str | Sequence[str],
    batch: str | Sequence[str],
    is_control: bool | Sequence[bool],
    split: str | Sequence[str] = "train",
    prefix: str = "cell",
    extra: Mapping[str, Sequence] | None = None,
) -> Path:
    """Write crops (N, C, H, W) uint8 as ``<out_dir>/<prefix>_<i>.tif`` and add them to ``cells.csv``.

    perturbation / batch / is_control / split: one value for all crops or one per crop.
    extra: more per-crop columns to record (e.g. centroids). An existing ``cells.csv`` keeps its
    other lines: fields written under distinct prefixes accumulate in one table, and writing a
    prefix again replaces that prefix's lines (and deletes its crops this run did not rewrite).
    Returns the CSV path.
    """
    import tifffile

    out_dir = Path(out_dir)
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.dtype != np.uint8:
        raise InputError(
            f"crops must be a uint8 array (N, C, H, W), got {crops.dtype} {crops.shape}; "
            "scale to 8 bits first (see napari_cellflux.data.intensity)"
        )
    n = len(crops)
    if n == 0:
        raise InputError("no crops to write")
    check_prefix(prefix)
    csv_path = out_dir / CSV_NAME
    previous = _previous_table(csv_path)  # read before any crop is written: a damaged table leaves no orphans
    files = [f"{prefix}_{i:05d}.tif" for i in range(n)]
    columns = {
        "file": files,
        "perturbation": _per_crop(perturbation, n, "perturbation"),
        "batch": _per_crop(batch, n, "batch"),
        "is_control": [bool(v) for v in _per_crop(is_control, n, "is_control")],
        "split": _per_crop(split, n, "split"),
    }
    for s in set(columns["split"]):
        check_split_name(s)
    for name, values in (extra or {}).items():
        columns[name] = _per_crop(values, n, name)
    for name, crop in zip(files, crops):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, crop, photometric="minisblack", metadata={"axes": "CYX"})
        atomic_write_bytes(out_dir / name, buffer.getvalue(), durable=False)  # indexed by the CSV below
    table = pd.DataFrame(columns)
    stale: list[str] = []
    if previous is not None:
        same_prefix = previous["file"].str.fullmatch(re.escape(prefix) + r"_\d{5}\.tif")
        stale = sorted(set(previous.loc[same_prefix, "file"]) - set(files))
        table = pd.concat([previous[~same_prefix], table.astype(str)], ignore_index=True)
    atomic_write_text(csv_path, table.to_csv(index=False))
    for name in stale:  # crops of an earlier run of this prefix that this run did not rewrite
        (out_dir / name).unlink(missing_ok=True)
    return csv_path


def _per_crop(value, n: int, name: str) -> list:
    if isinstance(value, (str, bool, int, float, np.generic)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise InputError(f"{name}: got {len(values)} values for {n} crops; give one value or one per crop")
    return values
