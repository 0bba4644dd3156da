"""The plain format (TIFF crops (C, H, W) + cells.csv): writing, reading, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from data_helpers import toy_vocabulary

from napari_cellflux.data.cells import load_cell
from napari_cellflux.data.dataset import CellPairDataset, PairingConfig
from napari_cellflux.data.plain import read_plain, write_plain


def crops(n: int, start: int = 0, channels: int = 2, size: int = 10) -> np.ndarray:
    """(n, C, S, S) uint8 crops, each channel of crop i filled with start + i + 10 * channel."""
    values = start + np.arange(n)[:, None] + 10 * np.arange(channels)[None, :]
    return np.broadcast_to(values[:, :, None, None], (n, channels, size, size)).astype(np.uint8).copy()


def write_screen(root, controls: int = 3, treated: int = 2):
    write_plain(root, crops(controls), perturbation="DMSO", batch="plate1", is_control=True, prefix="ctrl")
    return write_plain(
        root, crops(treated, start=100), perturbation="drugA", batch="plate1", is_control=False,
        split=["train", "test"][:treated], prefix="drugA_well_B02",
    )


def test_round_trip_through_the_plain_format(tmp_path):
    csv = write_screen(tmp_path)
    assert csv == tmp_path / "cells.csv"
    header = csv.read_text().splitlines()[0]
    assert header == "file,perturbation,batch,is_control,split"
    table = read_plain(csv)
    cells = table.cells
    assert list(cells["is_control"]) == [True, True, True, False, False]
    assert list(cells["perturbation"]) == ["DMSO"] * 3 + ["drugA"] * 2
    assert list(cells["split"]) == ["train"] * 4 + ["test"]
    # Stored as (C, H, W): tifffile reads back exactly what was written, and so does load_cell.
    first = tmp_path / "ctrl_00000.tif"
    np.testing.assert_array_equal(tifffile.imread(first), crops(1)[0])
    np.testing.assert_array_equal(load_cell(cells["path"][4]), crops(2, start=100)[1])


def test_the_pair_dataset_serves_plain_tables(tmp_path):
    table = read_plain(write_screen(tmp_path))
    pairs = CellPairDataset(table, toy_vocabulary(), PairingConfig(dequantize=False, flip_prob=0.0, seed=0))
    assert len(pairs) == 1 and pairs.shape == (2, 10, 10)
    item = pairs[0]
    assert round(float(item["target"][0, 0, 0]) * 127.5 + 127.5) == 100
    assert round(float(item["control"][1, 0, 0]) * 127.5 + 127.5) in (10, 11, 12)


def test_fields_accumulate_and_rewrites_replace(tmp_path):
    write_screen(tmp_path)
    write_plain(tmp_path, crops(2, start=50), perturbation="DMSO", batch="plate2", is_control=True, prefix="ctrl")
    cells = read_plain(tmp_path / "cells.csv").cells
    assert len(cells) == 4  # the 3 old ctrl_ crops were replaced by the 2 new ones
    assert sorted(cells["batch"]) == ["plate1", "plate1", "plate2", "plate2"]
    assert not (tmp_path / "ctrl_00002.tif").exists()
    assert (tmp_path / "drugA_well_B02_00001.tif").exists()


def test_extra_columns_are_kept_and_ignored(tmp_path):
    csv = write_plain(
        tmp_path, crops(2), perturbation="DMSO", batch="b", is_control=True, extra={"centroid_row": [1.5, 2.5]}
    )
    assert list(pd.read_csv(csv)["centroid_row"]) == [1.5, 2.5]
    assert len(read_plain(csv)) == 2


@pytest.mark.parametrize("text, expected", [("TRUE", True), ("yes", True), ("0", False), ("False", False)])
def test_is_control_spellings(tmp_path, text, expected):
    write_screen(tmp_path)
    frame = pd.read_csv(tmp_path / "cells.csv", dtype=str)
    frame.loc[0, "is_control"] = text
    frame.to_csv(tmp_path / "cells.csv", index=False)
    assert read_plain(tmp_path / "cells.csv").cells["is_control"][0] == expected


def edit(tmp_path, column, value, row: int = 1):
    frame = pd.read_csv(tmp_path / "cells.csv", dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(tmp_path / "cells.csv", index=False)
    return tmp_path / "cells.csv"


@pytest.mark.parametrize(
    "column, value, error, message",
    [
        ("is_control", "maybe", ValueError, "line 3: is_control = 'maybe'; write true or false"),
        ("split", "val", ValueError, "line 3: split 'val' is not one of"),
        ("perturbation", "", ValueError, "line 3: the perturbation is empty"),
        ("file", "", ValueError, "line 3: the file is empty"),
        ("file", "nowhere.tif", FileNotFoundError, "line 3: file .*nowhere.tif is missing"),
    ],
)
def test_bad_values_name_the_line(tmp_path, column, value, error, message):
    write_screen(tmp_path)
    with pytest.raises(error, match=message):
        read_plain(edit(tmp_path, column, value))


def test_missing_columns_and_empty_files(tmp_path):
    csv = tmp_path / "cells.csv"
    csv.write_text("file,perturbation,batch\na.tif,DMSO,b\n")
    with pytest.raises(ValueError, match=r"lacks columns \['is_control', 'split'\]"):
        read_plain(csv)
    csv.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_plain(csv)
    csv.write_text("file,perturbation,batch,is_control,split\n")
    with pytest.raises(ValueError, match="lists no cells"):
        read_plain(csv)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_plain(tmp_path / "absent.csv")


def test_tiff_axis_order_and_dtype_are_checked(tmp_path):
    hwc = tmp_path / "hwc.tif"
    tifffile.imwrite(hwc, np.zeros((10, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"hwc.tif: shape \(10, 10, 3\) looks like \(H, W, C\).*moveaxis"):
        load_cell(hwc)
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, np.zeros((3, 10, 10), dtype=np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="wide.tif: dtype uint16, expected uint8"):
        load_cell(wide)
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.full((10, 10), 7, dtype=np.uint8))
    assert load_cell(gray).shape == (1, 10, 10)


def test_write_plain_validates_its_input(tmp_path):
    with pytest.raises(ValueError, match="uint8 array"):
        write_plain(tmp_path, crops(2).astype(np.float32), perturbation="x", batch="b", is_control=True)
    with pytest.raises(ValueError, match="is_control: got 3 values for 2 crops"):
        write_plain(tmp_path, crops(2), perturbation="x", batch="b", is_control=[True, False, True])
    with pytest.raises(ValueError, match="split must be one of"):
        write_plain(tmp_path, crops(2), perturbation="x", batch="b", is_control=True, split="val")
    assert not (tmp_path / "cells.csv").exists()
