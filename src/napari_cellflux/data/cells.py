"""The cell table every reader produces, and loading one cell's pixels from disk.

A table lists cells (file, perturbation, batch, control flag, split), never their pixels, so
a screen of 400K cells costs a few tens of MB. Pixels are read one cell at a time by
:func:`load_cell`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.errors import InputError

SPLITS = ("train", "test")
COLUMNS = ("path", "perturbation", "batch", "is_control", "split", "line")
# Files with these suffixes store one cell as (H, W, C) (IMPA .npy) or (C, H, W) (plain TIFF).
# One meaning of true / false in every CSV a user writes (cells.csv, plate maps).
TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "f"})
NPY_SUFFIXES = (".npy",)
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class CellTable:
    """One row per cell.

    cells: DataFrame with columns path (absolute str), perturbation (str), batch (str),
        is_control (bool), split ("train"/"test"), line (1-based line in ``source``, for errors).
    source: the CSV the table was read from. channels: the channel count every cell must
        have, or None to take it from the first cell. smiles: perturbation -> SMILES, where given.
    """

    cells: pd.DataFrame
    source: Path
    channels: int | None = None
    smiles: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cells)

    def where(self, position: int) -> str:
        """'<csv> line <n>' of the cell at ``position`` (0-based row of ``cells``)."""
        return f"{self.source} line {int(self.cells['line'].iloc[position])}"

    @property
    def perturbations(self) -> list[str]:
        """Sorted names of the treated cells' perturbations."""
        return sorted(self.cells.loc[~self.cells["is_control"], "perturbation"].unique())

    @property
    def batches(self) -> list[str]:
        return sorted(self.cells["batch"].unique())

    def select(self, split: str | None = None, held_out: Iterable[str] = ()) -> "CellTable":
        """The cells of ``split`` (None: all), without the treated cells of ``held_out`` perturbations.

        Held-out names are matched case-insensitively; a name that is no perturbation of this
        table is an error, because a typo would silently train on a compound meant to be unseen.
        """
        cells = self.cells
        if split is not None:
            check_split_name(split)
            cells = cells[cells["split"] == split]
        held = {str(n).lower() for n in held_out}
        known = {p.lower() for p in self.perturbations}
        unknown = sorted(held - known)
        if unknown:
            raise InputError(
                f"held-out perturbations {unknown} are not treated perturbations of {self.source}; "
                f"check the spelling (known: {', '.join(self.perturbations[:20])}...)"
            )
        if held:
            cells = cells[cells["is_control"] | ~cells["perturbation"].str.lower().isin(held)]
        return replace(self, cells=cells.reset_index(drop=True))


def read_text_table(csv: str | Path, what: str, fix: str) -> pd.DataFrame:
    """A CSV a user wrote, every cell as text and header names stripped; an unreadable one is an
    InputError that names it as ``what`` and says ``fix``."""
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"{what} {csv} does not exist")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {csv} is empty; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{csv}: not a readable {what} ({' '.join(str(err).split())}); {fix}") from None
    table.columns = [c.strip() for c in table.columns]
    return table


def check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS} (or None for all cells), got {split!r}")


def make_cell_table(
    frame: pd.DataFrame,
    source: Path,
    *,
    check_files: bool,
    channels: int | None = None,
    smiles: dict[str, str] | None = None,
) -> CellTable:
    """Validate the readers' common columns (see COLUMNS) and build the table.

    Every error names ``source``, the line and the fix: an empty table, an empty
    perturbation/batch, a split other than train/test, and (``check_files``) a missing file.
    """
    if frame.empty:
        raise InputError(f"{source} lists no cells; it needs a header line and one line per cell")
    for column, label in (("perturbation", "perturbation"), ("batch", "batch"), ("path", "file")):
        bad = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if bad.any():
            line = int(frame.loc[bad, "line"].iloc[0])
            raise InputError(f"{source} line {line}: the {label} is empty ({int(bad.sum())} such lines); fill it in")
    bad_split = ~frame["split"].isin(SPLITS)
    if bad_split.any():
        first = frame[bad_split].iloc[0]
        raise InputError(
            f"{source} line {int(first['line'])}: split {first['split']!r} is not one of {SPLITS} "
            f"({int(bad_split.sum())} such lines); use 'train' or 'test'"
        )
    cells = frame.loc[:, list(COLUMNS)].copy()
    cells["perturbation"] = cells["perturbation"].astype(str).str.strip()
    cells["batch"] = cells["batch"].astype(str).str.strip()
    cells["is_control"] = cells["is_control"].astype(bool)
    cells = cells.reset_index(drop=True)
    if check_files:
        _check_files_exist(cells, source)
    return CellTable(cells=cells, source=source, channels=channels, smiles=dict(smiles or {}))


def _check_files_exist(cells: pd.DataFrame, source: Path) -> None:
    missing = [i for i, p in enumerate(cells["path"]) if not Path(p).is_file()]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{source} line {int(cells['line'].iloc[first])}: file {cells['path'].iloc[first]} is missing{more}; "
            "check that the image root points at the folder holding the per-cell files"
        )


def load_cell(path: str | Path) -> np.ndarray:
    """One stored cell as uint8 (C, H, W).

    ``.npy`` files hold (H, W, C) (the IMPA layout); ``.tif``/``.tiff`` hold (C, H, W) (the plain
    format; a 2-D page is one channel). Anything else, or not uint8, is an error naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"cell file {path} is missing; re-create it or drop its line from the CSV")
    if suffix in NPY_SUFFIXES:
        pixels = np.load(path, allow_pickle=False)
        if pixels.ndim != 3:
            raise InputError(f"cell file {path}: expected a (H, W, C) array, got shape {pixels.shape}")
        pixels = np.moveaxis(pixels, -1, 0)
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        pixels = tifffile.imread(path)
        pixels = pixels[None] if pixels.ndim == 2 else pixels
        if pixels.ndim != 3:
            raise InputError(f"cell file {path}: expected a (C, H, W) TIFF, got shape {pixels.shape}")
        if pixels.shape[-1] < pixels.shape[0] and pixels.shape[-1] <= 8:
            raise InputError(
                f"cell file {path}: shape {pixels.shape} looks like (H, W, C); the plain format stores "
                "(C, H, W): write np.moveaxis(crop, -1, 0)"
            )
    else:
        raise InputError(f"cell file {path}: unknown suffix {suffix!r}; expected .npy (H, W, C) or .tif (C, H, W)")
    if pixels.dtype != np.uint8:
        raise InputError(
            f"cell file {path}: dtype {pixels.dtype}, expected uint8 (0-255); rescale it to 8 bits "
            "(cellflux extract does this with a recorded scaling)"
        )
    return np.ascontiguousarray(pixels)
