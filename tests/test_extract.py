"""Cell extraction from whole fields: real DAPI/Hoechst fields and drawn multichannel fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from data_helpers import CPG0000_FIELD, NF1_FIELD

from napari_cellflux.cli import main
from napari_cellflux.data.cells import load_cell
from napari_cellflux.data.extract import (
    ExtractionConfig,
    as_channels_first,
    extract_cells,
    segment_nuclei,
    write_extracted,
)
from napari_cellflux.data.intensity import IntensityScaling, scale_to_uint8
from napari_cellflux.data.plain import read_plain
from napari_cellflux.data.synthetic_field import make_synthetic_field


def assert_centred(cells, size: int) -> None:
    """Every crop lies inside the field and its centre pixel belongs to its own nucleus."""
    centre = np.round(cells.centroids).astype(int)
    assert np.all(centre - size // 2 >= 0)
    assert np.all(centre - size // 2 + size <= np.array(cells.labels.shape))
    assert np.array_equal(cells.labels[centre[:, 0], centre[:, 1]], cells.label_ids)


@pytest.fixture(scope="module")
def field():
    return make_synthetic_field((384, 448), 24, seed=2)


# Ranges set from measurements on these fixtures: the package's own extract_cells(path) at the
# defaults, and an independent count (Gaussian sigma 2 + skimage Otsu + label, objects > 50 px, no
# hole filling or watershed; "croppable" = centroid >= 48 px from every edge): each range is the
# package's value +-20 %, rounded outward, and holds the independent value too.
#   cpg0000 320 x 320: package 25 nuclei, 18 crops, median area 485 px; independent 25 objects,
#     17 croppable, median 490 px -> (20, 30), (14, 22), (380, 590).
#   nf1 384 x 384: package 8 nuclei, 7 crops, median area 3471 px; independent 8 objects, 6
#     croppable (it does not split the touching pair), median 3662 px -> (6, 10), (5, 9),
#     (2700, 4200).
# No crops (InputError) or all nuclei merged into a few blobs fall outside every range.
@pytest.mark.parametrize(
    "path, nuclei, crops, median_area",
    [(CPG0000_FIELD, (20, 30), (14, 22), (380, 590)), (NF1_FIELD, (6, 10), (5, 9), (2700, 4200))],
    ids=["cpg0000", "nf1"],
)
def test_real_fields(path, nuclei, crops, median_area):
    cells = extract_cells(path)
    assert nuclei[0] <= cells.labels.max() <= nuclei[1]
    assert crops[0] <= len(cells.crops) <= crops[1]
    assert cells.crops.shape[1:] == (1, 96, 96) and cells.crops.dtype == np.uint8
    assert len(cells.crops) + cells.dropped_at_border == cells.labels.max()
    assert median_area[0] <= np.median(np.bincount(cells.labels.ravel())[1:]) <= median_area[1]
    assert_centred(cells, 96)
    # Nuclei are bright: a crop's centre is far above its corners.
    centre, corners = cells.crops[:, 0, 44:52, 44:52].mean(), cells.crops[:, 0, :4, :4].mean()
    assert centre > corners + 60
    raw = tifffile.imread(path)
    assert cells.scaling["mode"] == "percentile"
    assert cells.scaling["low"] == [pytest.approx(np.percentile(raw, 1.0))]
    assert cells.scaling["high"] == [pytest.approx(np.percentile(raw, 99.8))]


def test_synthetic_field_nuclei_are_found(field):
    cells = extract_cells(field.image)
    found = cells.labels.max()
    assert abs(found - len(field.centroids)) <= 2
    # Every drawn nucleus has a found centroid within 3 px (touching ones may be split off-centre).
    found_centres = np.array([np.argwhere(cells.labels == i).mean(axis=0) for i in range(1, found + 1)])
    distance = np.linalg.norm(field.centroids[:, None] - found_centres[None], axis=2).min(axis=1)
    assert np.mean(distance < 3) >= 0.9
    assert cells.crops.shape[1:] == (3, 96, 96)
    assert_centred(cells, 96)


def test_channel_order_is_accepted_either_way(field):
    first = extract_cells(field.image)
    last = extract_cells(np.moveaxis(field.image, 0, -1))
    np.testing.assert_array_equal(first.crops, last.crops)
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        as_channels_first(np.zeros((5, 6, 7)))
    with pytest.raises(ValueError, match="one plane, no Z/T"):
        as_channels_first(np.zeros((2, 3, 64, 64)))
    assert as_channels_first(np.zeros((4, 5, 6)), channel_axis=1).shape == (5, 4, 6)


def test_labels_from_another_tool(field):
    cells = extract_cells(field.image, labels=field.labels)
    assert np.array_equal(cells.labels, field.labels)
    assert_centred(cells, 96)
    boolean = extract_cells(field.image, labels=field.labels > 0)
    assert boolean.labels.max() >= 1
    with pytest.raises(ValueError, match=r"labels have shape \(10, 10\) but the image is \(384, 448\)"):
        extract_cells(field.image, labels=np.zeros((10, 10), dtype=int))
    with pytest.raises(ValueError, match="non-negative integers"):
        extract_cells(field.image, labels=field.labels.astype(float))


def test_crop_size_and_nucleus_channel(field):
    small = extract_cells(field.image, ExtractionConfig(crop_size=32))
    assert small.crops.shape[2:] == (32, 32) and small.dropped_at_border <= extract_cells(field.image).dropped_at_border
    with pytest.raises(ValueError, match="nucleus_channel 3 does not exist"):
        extract_cells(field.image, ExtractionConfig(nucleus_channel=3))


def test_no_nuclei_and_no_room_are_errors():
    with pytest.raises(ValueError, match="no nuclei found"):
        extract_cells(np.full((128, 128), 100, dtype=np.uint16))
    tiny = make_synthetic_field((100, 100), 1, seed=0)
    with pytest.raises(ValueError, match=r"lie within 48 px of the border.*smaller crop_size"):
        extract_cells(tiny.image)


def test_segmentation_splits_touching_nuclei():
    yy, xx = np.mgrid[:80, :120]
    two = ((yy - 40) ** 2 + (xx - 45) ** 2 < 15**2) | ((yy - 40) ** 2 + (xx - 72) ** 2 < 15**2)
    image = np.where(two, 1000, 100).astype(np.uint16)
    assert segment_nuclei(image).max() == 2
    assert segment_nuclei(image, ExtractionConfig(split_touching=False)).max() == 1


def test_intensity_scaling_modes():
    image = np.stack([np.linspace(0, 4095, 10000).reshape(100, 100), np.full((100, 100), 7.0)])
    image[1, 0, 0] = 107.0
    pixels, record = scale_to_uint8(image, IntensityScaling("range", 0, 4095))
    assert pixels.dtype == np.uint8 and pixels[0].min() == 0 and pixels[0].max() == 255
    assert pixels[0, 50, 0] == round(image[0, 50, 0] / 4095 * 255)
    assert record == {"mode": "range", "parameters": [0.0, 4095.0], "low": [0.0, 0.0], "high": [4095.0, 4095.0]}
    with pytest.raises(ValueError, match="channel 1: .* is empty"):
        scale_to_uint8(image)  # channel 1 is flat between its 1st and 99.8th percentiles
    first, recorded = scale_to_uint8(image[:1])
    again, _ = scale_to_uint8(image[:1], IntensityScaling("range", tuple(recorded["low"]), tuple(recorded["high"])))
    np.testing.assert_array_equal(first, again)  # a record reproduces its mapping
    with pytest.raises(ValueError, match="mode must be one of"):
        IntensityScaling("minmax")
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        IntensityScaling("percentile", 99, 1)


def test_write_extracted_records_origin_and_scaling(tmp_path, field):
    config = ExtractionConfig(scaling=IntensityScaling("range", 0, 4095))
    cells = extract_cells(field.image, config)
    csv = write_extracted(
        cells, tmp_path, perturbation="DMSO", batch="plate1", is_control=True, prefix="A01_s1", source="A01.tif",
        config=config,
    )
    table = read_plain(csv)
    assert len(table) == len(cells.crops) and table.cells["is_control"].all()
    np.testing.assert_array_equal(load_cell(table.cells["path"][0]), cells.crops[0])
    record = json.loads((tmp_path / "extraction.json").read_text())["A01_s1"]
    assert record["scaling"]["high"] == [4095.0] * 3 and record["cells"] == len(cells.crops)
    assert record["config"]["crop_size"] == 96


def test_cli_synth_and_extract(tmp_path, field, capsys):
    assert main(["synth", "--out", str(tmp_path / "screen"), "--seed", "1", "--batches", "1",
                 "--controls-per-batch", "4", "--cells-per-perturbation", "2"]) == 0
    assert "held out: demecolcine, nocodazole" in capsys.readouterr().out
    assert (tmp_path / "screen" / "metadata.csv").is_file()
    image = tmp_path / "field.tif"
    tifffile.imwrite(image, field.image, photometric="minisblack")
    assert main(["extract", str(image), "--out", str(tmp_path / "cells"), "--perturbation", "DMSO",
                 "--batch", "p1", "--control", "--crop-size", "64", "--range", "0", "4095"]) == 0
    table = read_plain(tmp_path / "cells" / "cells.csv")
    assert load_cell(table.cells["path"][0]).shape == (3, 64, 64)
    assert table.cells["batch"].eq("p1").all() and (tmp_path / "cells" / "field_00000.tif").is_file()
    assert main(["extract", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x"),
                 "--perturbation", "DMSO", "--batch", "p1"]) == 2
    assert "missing.tif does not exist" in capsys.readouterr().err


def test_a_damaged_extraction_record_stops_extract_before_it_writes(tmp_path, field, capsys):
    image, out = tmp_path / "field.tif", tmp_path / "cells"
    tifffile.imwrite(image, field.image, photometric="minisblack")
    out.mkdir()
    (out / "extraction.json").write_text('{"A01": {"cells": 3')  # cut short, as by a full disk
    assert main(["extract", str(image), "--out", str(out), "--perturbation", "DMSO", "--batch", "p1", "--control"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extraction.json: not valid JSON" in err[0] and "extract them again into a new folder" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["extraction.json"]
