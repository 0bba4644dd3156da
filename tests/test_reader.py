"""The npe2 reader: a plate's LoadData CSV and a field's channel files open as one named, coloured,
additive Image layer per channel, on the real cpg0000 and NF1 fixtures (fixtures/plates/SOURCES.md)."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import npe2
import numpy as np
import pandas as pd
import pytest
import tifffile
from data_helpers import FIXTURES

from napari_cellflux._napari.reader import get_reader, read_channel_files, read_loaddata

CPG = FIXTURES / "plates" / "cpg0000-BR00116991"
NF1 = FIXTURES / "plates" / "nf1-schwann"
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_cellflux" / "napari.yaml"


def opera(channel: int) -> Path:
    return CPG / f"r01c01f01p01-ch{channel}sk1fk1fl1.tiff"


def test_loaddata_opens_as_named_channel_layers():
    assert get_reader(str(CPG / "load_data.csv")) is read_loaddata
    layers = read_loaddata(str(CPG / "load_data.csv"))
    # JUMP's columns OrigDNA ... OrigMito, in the CSV's order: DNA = ch5, ER = ch4, RNA = ch3, AGP = ch2, Mito = ch1.
    assert [meta["name"] for _, meta, _ in layers] == [f"load_data [{n}]" for n in ("DNA", "ER", "RNA", "AGP", "Mito")]
    assert [meta["colormap"] for _, meta, _ in layers] == ["blue", "green", "magenta", "red", "yellow"]
    assert {meta["blending"] for _, meta, _ in layers} == {"additive"} and {kind for *_, kind in layers} == {"image"}
    for (data, meta, _), channel in zip(layers, (5, 4, 3, 2, 1)):
        np.testing.assert_array_equal(data, tifffile.imread(opera(channel)))
        assert "scale" not in meta  # these files record no pixel size (their cm resolution is the camera's)
        assert meta["metadata"]["fields"] == ["BR00116991 A01 site 1"]


def test_a_plate_opens_as_lazy_stacks(tmp_path):
    table = pd.read_csv(CPG / "load_data.csv", dtype=str)
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = str(CPG)
    second = table.assign(Metadata_Site="2", FileName_OrigDNA=opera(1).name)  # any file, to tell the fields apart
    csv = tmp_path / "load_data.csv"
    pd.concat([table, second]).to_csv(csv, index=False)
    layers = read_loaddata(str(csv))
    dna = layers[0][0]
    assert dna.shape == (2, 256, 256) and type(dna).__module__.startswith("dask")
    np.testing.assert_array_equal(dna[1].compute(), tifffile.imread(opera(1)))
    assert layers[0][1]["metadata"]["fields"] == ["BR00116991 A01 site 1", "BR00116991 A01 site 2"]


def test_channel_files_open_as_named_channel_layers(tmp_path):
    files = [str(p) for p in sorted(NF1.glob("D6_01_*"))]
    assert get_reader(files) is read_channel_files
    layers = read_channel_files(files)
    assert [meta["name"] for _, meta, _ in layers] == [Path(f).stem for f in files]
    assert [meta["colormap"] for _, meta, _ in layers] == ["blue", "green", "red"]  # DAPI, then the cycle
    np.testing.assert_array_equal(layers[2][0], tifffile.imread(files[2]))
    # Instrument names give the layer its well, site and channel; a recorded pixel size gives the scale in µm.
    scaled = tmp_path / opera(5).name
    tifffile.imwrite(scaled, tifffile.imread(opera(5)), imagej=True, resolution=(1 / 0.598, 1 / 0.598),
                     metadata={"unit": "micron"})
    layers = read_channel_files([str(scaled), str(opera(4))])
    assert [meta["name"] for _, meta, _ in layers] == ["A01 s1 ch5", "A01 s1 ch4"]
    assert layers[0][1]["scale"] == pytest.approx((0.598, 0.598)) and layers[0][1]["units"] == ("µm", "µm")


def test_what_the_reader_claims():
    assert get_reader(str(NF1 / "platemap.csv")) is None  # a CSV, but no LoadData table
    assert get_reader(str(CPG / "preview.png")) is None
    assert get_reader([str(CPG / "load_data.csv"), str(NF1 / "platemap.csv")]) is None
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    (reader,) = manifest.contributions.readers

    def claims(name: str) -> bool:
        return any(fnmatch(name, p.lower()) for p in reader.filename_patterns)

    assert claims("load_data.csv") and claims("load_data_with_illum.csv") and claims(opera(1).name)
    assert claims("Week1_150607_C02_s3_w1E54F0108-F44A-4F6E-9637-6A9DE80F0823.tif")
    # Ordinary TIFFs and CSVs stay napari's own: claiming them would make napari ask for every file.
    assert not any(claims(n) for n in ("field.tif", "cells.csv", "points.csv", "B7_01_1_3_DAPI_001.tif"))


def test_npe2_reads_a_stack_of_opera_files():
    pm = npe2.PluginManager.instance()
    pm.discover()
    if "napari-cellflux" not in {m.name for m in pm.iter_manifests()}:
        pytest.skip("the package is not installed, so npe2 does not know its manifest")
    layers = npe2.read([str(opera(c)) for c in (5, 4)], stack=True, plugin_name="napari-cellflux")
    assert [meta["name"] for _, meta, _ in layers] == ["A01 s1 ch5", "A01 s1 ch4"]
