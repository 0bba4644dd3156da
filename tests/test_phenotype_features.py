"""Masks and cp-measure features of single-cell crops (phenotype.masks, phenotype.features,
phenotype.readouts): drawn cells of known size, CellProfiler column names, bad channel names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellflux.errors import InputError
from napari_cellflux.phenotype import FEATURE_GROUPS
from napari_cellflux.phenotype.features import FeatureOptions, measure_cells, write_table
from napari_cellflux.phenotype.masks import dna_channel, segment_cell
from napari_cellflux.phenotype.readouts import designed_readouts, readout_columns

CHANNELS = ("DNA", "tubulin", "actin")


def disc(side: int, centre: tuple[float, float], radius: float, stretch: float = 1.0) -> np.ndarray:
    rows, cols = np.indices((side, side))
    return ((rows - centre[0]) / stretch) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def drawn_cell(side: int = 48, nucleus: float = 6.0, cell: float = 14.0, dna: int = 200, body: int = 120,
               neighbour: bool = True) -> np.ndarray:
    """A centred cell (disc nucleus in DNA, disc body in the other channels) on a background of 10,
    with (optionally) a second cell in a corner that the masks must leave out."""
    crop = np.full((3, side, side), 10, np.uint8)
    centre = ((side - 1) / 2, (side - 1) / 2)
    crop[1:, disc(side, centre, cell)] = body
    crop[0, disc(side, centre, nucleus)] = dna
    if neighbour:
        crop[1:, disc(side, (3, 3), 7)] = body
        crop[0, disc(side, (3, 3), 3)] = dna
    return crop


def test_masks_of_a_drawn_cell_have_its_size_and_leave_the_neighbour_out():
    crop = drawn_cell()
    masks = segment_cell(crop, nucleus_channel=0)
    centre = ((47) / 2, (47) / 2)
    assert masks.nucleus.sum() == pytest.approx(disc(48, centre, 6).sum(), rel=0.15)
    assert masks.cell.sum() == pytest.approx(disc(48, centre, 14).sum(), rel=0.15)
    assert not masks.cell[:6, :6].any()  # the corner neighbour belongs to its own nucleus
    assert (masks.cytoplasm == (masks.cell & ~masks.nucleus)).all() and not (masks.cytoplasm & masks.nucleus).any()


def test_a_blank_crop_has_no_cell_and_measures_as_nan():
    blank = np.full((1, 3, 32, 32), 7, np.uint8)
    assert segment_cell(blank[0], 0) is None
    frame = measure_cells(blank, FeatureOptions(channels=CHANNELS, groups=("shape",)))
    assert len(frame) == 1 and frame.isna().all(axis=None)


def test_crops_too_narrow_to_measure_are_refused_in_one_line():
    # Was an IndexError from the reference disc that names the columns (its core was empty).
    narrow = np.zeros((1, 3, 32, 3), np.uint8)
    with pytest.raises(InputError, match=r"cells of shape \(N, C, H, W\) = \(1, 3, 32, 3\) are 3 px wide; a crop must "
                                         r"be at least 4 px wide to measure a cell in it: crop the cells larger"):
        measure_cells(narrow, FeatureOptions(channels=CHANNELS, groups=("shape",)))
    assert len(measure_cells(np.zeros((1, 3, 32, 4), np.uint8), FeatureOptions(channels=CHANNELS))) == 1


def test_cells_without_a_dna_channel_named_are_refused_with_the_fix():
    with pytest.raises(InputError, match="--channels"):
        dna_channel(["channel 1", "channel 2"])
    assert dna_channel(["ER", "Hoechst 33342"]) == 1
    with pytest.raises(InputError, match="DNA"):
        measure_cells(drawn_cell()[None], FeatureOptions(channels=("ER", "RNA", "actin"), groups=("shape",)))


def test_features_carry_cellprofiler_names_and_measure_the_drawn_cell():
    cells = np.stack([drawn_cell(), drawn_cell(nucleus=8.0, dna=100)])
    frame = measure_cells(cells, FeatureOptions(channels=CHANNELS))
    columns = set(frame.columns)
    for name in ("Nuclei_AreaShape_Area", "Cells_AreaShape_Area", "Cytoplasm_AreaShape_Area",
                 "Cells_Intensity_MeanIntensity_DNA", "Cytoplasm_Texture_Contrast_actin_3_00_256",
                 "Cells_Granularity_1_DNA", "Cells_RadialDistribution_FracAtD_DNA_1of4",
                 "Cells_Correlation_Pearson_DNA_actin", "Nuclei_AreaShape_Zernike_0_0"):
        assert name in columns, name
    assert all(c.split("_")[0] in ("Nuclei", "Cells", "Cytoplasm") for c in columns)
    assert not any("Center_" in c or "Location_" in c for c in columns)  # where a cell sits is no phenotype
    masks = [segment_cell(c, 0) for c in cells]
    assert list(frame["Nuclei_AreaShape_Area"]) == [m.nucleus.sum() for m in masks]
    assert list(frame["Cytoplasm_AreaShape_Area"]) == [m.cytoplasm.sum() for m in masks]
    # Intensities are background-subtracted on CellProfiler's 0-1 scale: (200 - 10) / 255 in the nucleus.
    assert frame["Nuclei_Intensity_MeanIntensity_DNA"].iloc[0] == pytest.approx(190 / 255, rel=0.02)
    assert frame["Nuclei_Intensity_MeanIntensity_DNA"].iloc[1] == pytest.approx(90 / 255, rel=0.02)


def test_a_feature_subset_measures_only_its_groups():
    frame = measure_cells(drawn_cell()[None], FeatureOptions(channels=CHANNELS, groups=("shape",)))
    assert frame.columns.str.contains("_AreaShape_").all()
    with pytest.raises(InputError, match="choose from"):
        FeatureOptions(channels=CHANNELS, groups=("shape", "colour"))
    assert set(FEATURE_GROUPS) >= {"shape", "granularity"}


def test_designed_readouts_follow_the_drawn_changes():
    small, large = drawn_cell(nucleus=5.0, neighbour=False), drawn_cell(nucleus=7.0, neighbour=False)
    base, dim = drawn_cell(neighbour=False), drawn_cell(dna=105, neighbour=False)
    frame = measure_cells(np.stack([small, large, base, dim]), FeatureOptions(channels=CHANNELS, groups=("shape", "intensity")))
    readouts = designed_readouts(frame, CHANNELS, 0)
    assert list(readouts.columns) == readout_columns(3)
    assert readouts["nuclear_area"].iloc[1] / readouts["nuclear_area"].iloc[0] == pytest.approx(49 / 25, rel=0.15)
    assert readouts["intensity_c0"].iloc[3] / readouts["intensity_c0"].iloc[2] == pytest.approx(95 / 190, rel=0.02)


def test_tables_are_written_as_csv_and_parquet_needs_pyarrow(tmp_path):
    frame = pd.DataFrame({"Metadata_Perturbation": ["a", "b"], "Nuclei_AreaShape_Area": [1.0, 2.0]})
    path = write_table(frame, tmp_path / "cells.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pyarrow"):
            write_table(frame, tmp_path / "cells.parquet")
        assert not (tmp_path / "cells.parquet").exists()
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(write_table(frame, tmp_path / "cells.parquet")), frame)
