"""Which reader a screen folder needs: the one home of the format dispatch between the IMPA
conventions (bbbc021, rxrx1, cpg0000: ``metadata.csv``) and the plain format (``cells.csv``),
for training and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from napari_cellflux.data.cells import CellTable
from napari_cellflux.data.impa import CONVENTIONS, read_impa
from napari_cellflux.data.plain import CSV_NAME, read_plain
from napari_cellflux.errors import InputError

FORMATS = (*sorted(CONVENTIONS), "plain")
IMPA_CSV = "metadata.csv"


@dataclass(frozen=True)
class OptionNames:
    """How the caller spells the root / format / metadata settings, so errors name the user's own
    option (``--metadata`` on a command line, ``data.metadata`` in a training config)."""

    root: str = "root"
    format: str = "format"
    metadata: str = "metadata"


class ScreenTable(NamedTuple):
    table: CellTable
    format: str
    csv: Path


def under(root: Path, name: str | Path) -> Path:
    """``name`` if absolute, else ``root / name``."""
    path = Path(name)
    return path if path.is_absolute() else root / path


def find_screen(root: str | Path, data_format: str | None = None, metadata: str | Path | None = None, *,
                names: OptionNames = OptionNames()) -> tuple[str, Path]:
    """(format, table CSV) of the screen in ``root``.

    metadata: the CSV (relative to ``root`` unless absolute); default ``cells.csv`` for the plain
    format (or when present and no format is given), else ``metadata.csv``. data_format: one of
    FORMATS; default: told from the CSV's name and columns.
    """
    root = Path(root)
    if data_format is not None and data_format not in FORMATS:
        raise InputError(f"{names.format} {data_format!r} is not one of {', '.join(FORMATS)}")
    if metadata is not None:
        csv = under(root, metadata)
        if not csv.is_file():
            raise FileNotFoundError(f"{names.metadata} {csv} does not exist")
    elif data_format == "plain" or (data_format is None and (root / CSV_NAME).is_file()):
        csv = root / CSV_NAME
    else:
        csv = root / IMPA_CSV
    if not csv.is_file():
        found = sorted(p.name for p in root.glob("*.csv"))
        raise InputError(
            f"{names.root} {root} is not a screen in a known format: it has no {IMPA_CSV} (IMPA layout: bbbc021, "
            f"rxrx1, cpg0000) and no {CSV_NAME} (plain format){'; CSVs found: ' + ', '.join(found) if found else ''}. "
            f"Pass {names.metadata} FILE for a differently named table, and {names.format} to say which layout it is"
        )
    if data_format is None:
        data_format = "plain" if csv.name == CSV_NAME else detect_impa(csv, names)
    return data_format, csv


def detect_impa(csv: Path, names: OptionNames = OptionNames()) -> str:
    """The IMPA convention whose columns ``csv`` has (or "plain" for a ``file`` column)."""
    header = pd.read_csv(csv, index_col=0, dtype=str, keep_default_na=False, nrows=2000)
    if "BROAD_SAMPLE" in header.columns:
        return "cpg0000"
    # RxRx1's ANNOT is the control flag; BBBC021's ANNOT is the MoA.
    if "ANNOT" in header.columns and header["ANNOT"].isin(["negative_control", "treated"]).any():
        return "rxrx1"
    if "CPD_NAME" in header.columns and "STATE" in header.columns:
        return "bbbc021"
    if "file" in header.reset_index().columns:
        return "plain"
    raise InputError(
        f"{csv}: cannot tell the layout from its columns {list(header.columns)[:8]}; pass {names.format} "
        f"({', '.join(FORMATS)})"
    )


def read_screen_table(root: str | Path, data_format: str | None = None, metadata: str | Path | None = None, *,
                      names: OptionNames = OptionNames()) -> ScreenTable:
    """The cell table of the screen in ``root`` (IMPA cell files under ``root``), its format and
    CSV; see :func:`find_screen` for the defaults."""
    data_format, csv = find_screen(root, data_format, metadata, names=names)
    table = read_plain(csv) if data_format == "plain" else read_impa(csv, root, data_format)
    return ScreenTable(table, data_format, csv)
