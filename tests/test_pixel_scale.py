"""The physical scale of models and inputs: pixel sizes read from MetaMorph files, recorded for the
published models (docs/zoo.md), carried into converted files, and used by `cellflux extract`
without downloading the weights."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from plugin_helpers import channel_model_file
from test_plates import CPG_FILES, CPG_MODEL_ORDER, JUMP_UM, assert_channels_are, run

from napari_cellflux.data.plain import read_plain
from napari_cellflux.data.scale import pixel_size_from_tiff, rescale_to
from napari_cellflux.generation.controls import crops_from_field
from napari_cellflux.models.channels import DATASET_CHANNELS
from napari_cellflux.models.model_file import load_model_file
from napari_cellflux.models.zoo import REGISTRY, PublishedModel

UIC1 = 33628  # MetaMorph's UIC1 tag: (id, value) pairs, fractions and strings stored at offsets


def write_metamorph(path: Path, um: float, *, calibrated: int = 1, units: str = "um") -> Path:
    """A TIFF with MetaMorph's spatial calibration (SpatialCalibration, XCalibration, CalibrationUnits),
    laid out as MetaMorph / MetaXpress write it: the fraction and the string after the image."""
    plane = np.zeros((16, 16), np.uint16)

    def write(offset: int) -> None:
        values = (3, calibrated, 4, offset, 6, offset + 8)
        tifffile.imwrite(path, plane, extratags=[(UIC1, 4, len(values), values, False)])

    write(0)
    write(path.stat().st_size)  # the same layout again, now pointing past its own end
    name = units.encode() + b"\0"
    with open(path, "ab") as f:
        f.write(struct.pack("<2I", round(um * 1_000_000), 1_000_000) + struct.pack("<I", len(name)) + name)
    return path


def test_pixel_size_from_metamorph_calibration(tmp_path):
    assert tifffile.TiffFile(write_metamorph(tmp_path / "mm.tif", 0.496298)).pages.first.tags["UIC1tag"].value[
        "XCalibration"] == pytest.approx(0.496298)
    assert pixel_size_from_tiff(tmp_path / "mm.tif") == (pytest.approx(0.496298), "tiff:metamorph")
    # calibration switched off, or in a unit that is not microns: nothing is read
    assert pixel_size_from_tiff(write_metamorph(tmp_path / "off.tif", 0.5, calibrated=0)) is None
    assert pixel_size_from_tiff(write_metamorph(tmp_path / "px.tif", 1.0, units="pixel")) is None


def test_published_models_record_their_pixel_size_and_its_source():
    entries = {e.name: e for e in REGISTRY if isinstance(e, PublishedModel)}
    assert entries["bbbc021"].pixel_size_um == pytest.approx(0.496)
    assert entries["cpg0000"].pixel_size_um == pytest.approx(0.598)
    assert "MetaMorph" in entries["bbbc021"].pixel_size_source and "Harmony" in entries["cpg0000"].pixel_size_source
    assert entries["rxrx1"].pixel_size_um is None and entries["rxrx1"].pixel_size_source.startswith("unknown")


def test_extract_for_a_published_model_needs_no_download(tmp_path, capsys, monkeypatch):
    # Any download would go to a closed local port and fail: the registry row is all extraction needs.
    monkeypatch.setenv("CELLFLUX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLFLUX_ZOO_URL", "http://127.0.0.1:9/")
    code, out, err = run(capsys, "extract", *[CPG_FILES[s] for s in CPG_MODEL_ORDER], "--model", "cpg0000",
                         "--out", tmp_path / "cells", "--perturbation", "gabapentin-enacarbil", "--batch", "BR00116991")
    assert code == 0, err
    assert "96 x 96 px at 0.598 µm/px" in out
    assert "assuming the model's 0.598 µm per pixel; pass --pixel-size" in err
    assert_channels_are(read_plain(tmp_path / "cells" / "cells.csv"), [CPG_FILES[s] for s in CPG_MODEL_ORDER])
    assert not (tmp_path / "cache").exists()


def crop_nuclear_areas(crops: np.ndarray) -> np.ndarray:
    """Area (px) of each crop's own nucleus (channel 0, DNA): the Otsu component under its centre."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    areas = []
    for dna in crops[:, 0].astype(float):
        components = label(dna > threshold_otsu(dna))
        centre = components[dna.shape[0] // 2, dna.shape[1] // 2]
        areas.append((components == centre).sum() if centre else 0)
    return np.array(areas)


def test_the_widgets_field_path_rescales_to_the_models_pixel_size(tmp_path):
    from skimage.transform import rescale

    model = load_model_file(channel_model_file(tmp_path / "cpg.safetensors", DATASET_CHANNELS["cpg0000"], 96, JUMP_UM,
                                               "test: the JUMP pilot's Opera Phenix"))
    native = [tifffile.imread(CPG_FILES[s]) for s in CPG_MODEL_ORDER]  # uint16 camera counts
    fine = [np.round(rescale(p.astype(np.float32), 2, order=1, preserve_range=True)).astype(np.uint16) for p in native]
    at_scale = crops_from_field(native, model, "field", pixel_size_um=JUMP_UM)
    rescaled = crops_from_field(fine, model, "fine field", pixel_size_um=JUMP_UM / 2)
    assert abs(len(rescaled) - len(at_scale)) <= 2
    assert abs(np.median(crop_nuclear_areas(rescaled)) / np.median(crop_nuclear_areas(at_scale)) - 1) < 0.15
    # camera counts stay counts through the rescale, so both are scaled by bit depth alike
    assert rescale_to(np.stack(fine), JUMP_UM / 2, JUMP_UM).dtype == np.uint16
    assert abs(rescaled.mean() / at_scale.mean() - 1) < 0.15
    with pytest.warns(UserWarning, match="pixel size unknown: assuming the model's 0.598 µm per pixel"):
        unscaled = crops_from_field(fine, model, "fine field")
    assert np.median(crop_nuclear_areas(unscaled)) > 2.5 * np.median(crop_nuclear_areas(at_scale))
    with pytest.raises(ValueError, match="fine field: pixel size"):
        crops_from_field(fine, model, "fine field", pixel_size_um=-1)
