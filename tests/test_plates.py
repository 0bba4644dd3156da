"""Real plates in: channel files, a LoadData CSV, plate maps with instrument file names, the model's
channel order and pixel size, on small regions of two real screens (tests/fixtures/plates/
SOURCES.md): JUMP pilot cpg0000 (Opera Phenix, 5 channels, CC0), NF1 Schwann cells (3
channels, CC BY 4.0, iNFixion Bioscience) and JUMP cpg0016 RAB30 (two sources, CYX TIFFs, CC0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from data_helpers import FIXTURES
from plugin_helpers import channel_model_file

from napari_cellflux.cli import main
from napari_cellflux.data.cells import load_cell
from napari_cellflux.data.extract import extract_cells
from napari_cellflux.data.intensity import scale_to_uint8
from napari_cellflux.data.plain import read_plain
from napari_cellflux.data.plate_extraction import read_field
from napari_cellflux.data.plates import choose_channels, find_fields, normalize_well
from napari_cellflux.data.scale import check_pixel_size, pixel_size_from_tiff, rescale_to
from napari_cellflux.errors import InputError
from napari_cellflux.generation.controls import crops_from_file
from napari_cellflux.models.channels import DATASET_CHANNELS
from napari_cellflux.models.model_file import load_model_file

CPG = FIXTURES / "plates" / "cpg0000-BR00116991"
NF1 = FIXTURES / "plates" / "nf1-schwann"
# Opera Phenix channel numbers of cpg0000 (its SOURCE.md): ch1 Mito, ch2 AGP, ch3 RNA, ch4 ER, ch5 DNA.
CPG_FILES = {stain: CPG / f"r01c01f01p01-ch{n}sk1fk1fl1.tiff" for stain, n in
             (("Mito", 1), ("AGP", 2), ("RNA", 3), ("ER", 4), ("DNA", 5))}
CPG_MODEL_ORDER = [c.name for c in DATASET_CHANNELS["cpg0000"]]  # DNA, ER, RNA, AGP, Mito
NF1_PATTERN = r"(?P<well>[A-P]\d{1,2})_01_(?P<channel>\d)_(?P<site>\d+)_\w+_001\.tif"
JUMP_UM = 0.598  # 6.5 µm camera pixel x binning 2 / (20x objective x 1.087) (the files' Harmony XML)


def nf1_files(well: str) -> list[Path]:
    return sorted(NF1.glob(f"{well}_01_*_001.tif"))  # DAPI, GFP, RFP (channel numbers 1, 2, 3)


@pytest.fixture(scope="module")
def cpg_model(tmp_path_factory) -> Path:
    """A model file with the published cpg0000 channels, 96-px crops at the JUMP pixel size."""
    return channel_model_file(tmp_path_factory.mktemp("model") / "cpg0000.safetensors", DATASET_CHANNELS["cpg0000"],
                              96, JUMP_UM, "test: the JUMP pilot's Opera Phenix")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, args, *needles) -> str:
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("cellflux extract: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def assert_channels_are(table, files: list[Path], size: int = 96) -> None:
    """Channel k of every crop is the window of ``files[k]`` (scaled alone) around the cell's centroid:
    which file fills which channel, checked against the raw pixels."""
    scaled = [scale_to_uint8(tifffile.imread(f)[None])[0][0] for f in files]
    csv = pd.read_csv(table.source)
    assert len(table) > 0
    for path, row, col in zip(table.cells["path"], csv["centroid_row"], csv["centroid_col"]):
        crop = load_cell(path)
        assert crop.shape == (len(files), size, size)
        for k, channel in enumerate(scaled):
            y, x = round(row) - size // 2, round(col) - size // 2
            windows = [channel[y + dy : y + dy + size, x + dx : x + dx + size] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            assert any(np.array_equal(crop[k], w) for w in windows), f"channel {k} of {path} is not {files[k].name}"


def test_channel_files_in_the_given_order(tmp_path, capsys):
    files = [CPG_FILES[s] for s in CPG_MODEL_ORDER]
    code, out, _ = run(capsys, "extract", *files, "--out", tmp_path / "cells", "--perturbation", "gabapentin-enacarbil",
                       "--batch", "BR00116991", "--channels", ",".join(CPG_MODEL_ORDER))
    assert code == 0 and "5 channels" in out
    table = read_plain(tmp_path / "cells" / "cells.csv")
    assert 8 <= len(table) <= 16  # 12 on this region (4 more nuclei sit too close to its border)
    assert_channels_are(table, files)
    record = json.loads((tmp_path / "cells" / "extraction.json").read_text())["r01c01f01p01-ch5sk1fk1fl1"]
    assert record["channels"] == CPG_MODEL_ORDER and record["config"]["nucleus_channel"] == 0


def test_model_puts_named_channel_files_in_its_order(tmp_path, capsys, cpg_model):
    stains = list(CPG_FILES)  # Mito, AGP, RNA, ER, DNA: the instrument's order, not the model's
    code, out, err = run(capsys, "extract", *CPG_FILES.values(), "--channels", ",".join(s.lower() for s in stains),
                         "--model", cpg_model, "--pixel-size", JUMP_UM, "--out", tmp_path / "cells",
                         "--perturbation", "x", "--batch", "b")
    assert code == 0, err
    assert_channels_are(read_plain(tmp_path / "cells" / "cells.csv"), [CPG_FILES[s] for s in CPG_MODEL_ORDER])


def test_loaddata_csv(tmp_path, capsys, cpg_model):
    code, _, err = run(capsys, "extract", "--loaddata", CPG / "load_data.csv", "--model", cpg_model,
                       "--out", tmp_path / "cells", "--perturbation", "gabapentin-enacarbil")
    assert code == 0, err
    assert "input pixel size unknown: assuming the model's 0.598 µm per pixel; pass --pixel-size" in err
    table = read_plain(tmp_path / "cells" / "cells.csv")
    assert_channels_are(table, [CPG_FILES[s] for s in CPG_MODEL_ORDER])
    csv = pd.read_csv(tmp_path / "cells" / "cells.csv", dtype=str)
    assert set(csv["plate"]) == {"BR00116991"} and set(csv["well"]) == {"A01"} and set(csv["site"]) == {"1"}
    assert set(csv["batch"]) == {"BR00116991"}  # the plate, when no batch is given
    assert set(csv["pixel_size_um"]) == {"0.598"} and set(csv["pixel_size_source"]) == {"assumed: the model's"}
    # --channels picks and orders columns by name (JUMP's OrigDNA = DNA), case-insensitive, without a model.
    code, _, err = run(capsys, "extract", "--loaddata", CPG / "load_data.csv", "--channels", "mito,DNA",
                       "--out", tmp_path / "two", "--perturbation", "x")
    assert code == 0, err
    assert_channels_are(read_plain(tmp_path / "two" / "cells.csv"), [CPG_FILES["Mito"], CPG_FILES["DNA"]])
    record = json.loads((tmp_path / "two" / "extraction.json").read_text())["BR00116991_A01"]
    assert record["channels"] == ["mito", "DNA"] and record["config"]["nucleus_channel"] == 1


def test_plate_map_with_opera_names(tmp_path, capsys, cpg_model):
    mapping = ",".join(f"{stain}={n}" for stain, n in (("Mito", 1), ("AGP", 2), ("RNA", 3), ("ER", 4), ("DNA", 5)))
    code, _, err = run(capsys, "extract", "--images", CPG, "--name-pattern", "opera", "--plate-map", CPG / "platemap.csv",
                       "--channels", mapping, "--model", cpg_model, "--pixel-size", JUMP_UM, "--out", tmp_path / "cells")
    assert code == 0, err
    table = read_plain(tmp_path / "cells" / "cells.csv")
    assert_channels_are(table, [CPG_FILES[s] for s in CPG_MODEL_ORDER])
    assert set(table.cells["perturbation"]) == {"gabapentin-enacarbil"} and not table.cells["is_control"].any()
    assert set(pd.read_csv(tmp_path / "cells" / "cells.csv")["well"]) == {"A01"}  # r01c01
    # The model's names without --channels cannot be matched to channel numbers: say how.
    assert_one_line_error(capsys, ["extract", "--images", CPG, "--name-pattern", "opera", "--plate-map",
                                   CPG / "platemap.csv", "--model", cpg_model, "--out", tmp_path / "x"],
                          "no channel DNA, ER, RNA, AGP, Mito (it has 1, 2, 3, 4, 5)", "--channels NAME=CHANNEL")


def ixm_copy(folder: Path, wells=("D6", "B7", "D7"), extra_site: bool = False) -> Path:
    """The nf1 fixtures renamed as ImageXpress writes them: <well>_s<site>_w<channel><UUID>.tif."""
    folder.mkdir(parents=True, exist_ok=True)
    for well in wells:
        for n, path in enumerate(nf1_files(well), start=1):
            site = path.name.split("_")[3]
            shutil.copy(path, folder / f"{normalize_well(well)}_s{site}_w{n}E54F0108-F44A-4F6E-9637-6A9DE80F0823.tif")
            if extra_site and well == "D6":  # the same pixels as a second site of the control well
                shutil.copy(path, folder / f"D06_s9_w{n}0A0B.tif")
    return folder


def test_plate_map_with_imagexpress_names(tmp_path, capsys):
    images = ixm_copy(tmp_path / "plate2", extra_site=True)
    code, out, err = run(capsys, "extract", "--images", images, "--plate-map", NF1 / "platemap.csv",
                         "--channels", "DAPI=1,GFP=2,RFP=3", "--out", tmp_path / "cells")
    assert code == 0, err
    assert "from 4 field(s) in 3 well(s)" in out
    csv = pd.read_csv(tmp_path / "cells" / "cells.csv", dtype=str)
    table = read_plain(tmp_path / "cells" / "cells.csv")
    wt, null = csv["well"] == "D06", csv["well"].isin(["B07", "D07"])
    assert wt.any() and null.sum() >= 2 and (wt | null).all()
    assert table.cells["is_control"].to_numpy().tolist() == wt.tolist()
    assert set(csv.loc[wt, "perturbation"]) == {"NF1 wild type"} and set(csv.loc[null, "perturbation"]) == {"NF1 null"}
    assert set(csv.loc[wt, "site"]) == {"2", "9"} and set(csv["batch"]) == {"plate2"}
    record = json.loads((tmp_path / "cells" / "extraction.json").read_text())
    assert [f["site"] for f in record["plate2_D06"]["fields"]] == ["2", "9"]  # the sites of a well share a prefix
    assert record["plate2_B07"]["pixel_size_um"] is None and record["plate2_B07"]["pixel_size_source"] == "unknown"
    d6 = table.cells["path"][wt.to_numpy()].tolist()
    assert_channels_are(read_plain_subset(tmp_path / "cells", d6[:1]), nf1_files("D6"))


def read_plain_subset(folder: Path, paths: list[str]):
    csv = pd.read_csv(folder / "cells.csv", dtype=str)
    keep = csv[csv["file"].isin([Path(p).name for p in paths])]
    keep.to_csv(folder / "subset.csv", index=False)
    return read_plain(folder / "subset.csv")


def test_plate_map_with_a_custom_pattern(tmp_path, capsys):
    code, _, err = run(capsys, "extract", "--images", NF1, "--name-pattern", NF1_PATTERN, "--plate-map",
                       NF1 / "platemap.csv", "--channels", "DAPI=1,GFP=2,RFP=3", "--out", tmp_path / "cells")
    assert code == 0, err
    csv = pd.read_csv(tmp_path / "cells" / "cells.csv", dtype=str)
    assert set(csv["well"]) == {"D06", "B07", "D07"}
    assert (csv["is_control"] == "True").eq(csv["well"] == "D06").all()
    # The result is ready as controls for a model of its size and channels, and as a training set.
    table = read_plain(tmp_path / "cells" / "cells.csv", channels=3)
    assert len(table.select(split="train")) == len(csv)


def test_result_is_ready_as_controls(tmp_path, capsys, cpg_model):
    assert run(capsys, "extract", "--loaddata", CPG / "load_data.csv", "--model", cpg_model, "--pixel-size", JUMP_UM,
               "--out", tmp_path / "cells", "--perturbation", "DMSO", "--control")[0] == 0
    pixels = crops_from_file(tmp_path / "cells", load_model_file(cpg_model, "cpu"))
    assert pixels.shape[1:] == (5, 96, 96) and pixels.dtype == np.uint8


def finer(folder: Path, factor: int = 2) -> Path:
    """The cpg0000 channel files as if imaged with ``factor`` x finer pixels (bilinear upsampling)."""
    from skimage.transform import rescale

    folder.mkdir()
    for path in CPG_FILES.values():
        up = rescale(tifffile.imread(path).astype(np.float32), factor, order=1, preserve_range=True)
        tifffile.imwrite(folder / path.name, np.round(up).astype(np.uint16))
    shutil.copy(CPG / "load_data.csv", folder / "load_data.csv")
    return folder


def nuclear_areas(crops_dir: Path) -> np.ndarray:
    """Area (px) of each crop's own nucleus: the Otsu-thresholded DNA component under its centre."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    areas = []
    for path in read_plain(crops_dir / "cells.csv").cells["path"]:
        dna = load_cell(path)[0].astype(float)
        components = label(dna > threshold_otsu(dna))
        centre = components[dna.shape[0] // 2, dna.shape[1] // 2]
        areas.append((components == centre).sum() if centre else 0)
    return np.array(areas)


def test_rescaling_keeps_the_field_of_view(tmp_path, capsys, cpg_model):
    fine = finer(tmp_path / "fine")
    common = ["--model", cpg_model, "--perturbation", "x"]
    assert run(capsys, "extract", "--loaddata", CPG / "load_data.csv", "--pixel-size", JUMP_UM, *common,
               "--out", tmp_path / "native")[0] == 0
    code, out, err = run(capsys, "extract", "--loaddata", fine / "load_data.csv", "--pixel-size", JUMP_UM / 2, *common,
                         "--out", tmp_path / "rescaled")
    assert code == 0, err
    assert "0.598 µm/px [rescaled from 0.299 µm/px (--pixel-size)]" in out
    native, rescaled = nuclear_areas(tmp_path / "native"), nuclear_areas(tmp_path / "rescaled")
    assert abs(len(rescaled) - len(native)) <= 2
    assert abs(np.median(rescaled) / np.median(native) - 1) < 0.15
    csv = pd.read_csv(tmp_path / "rescaled" / "cells.csv")
    assert csv["centroid_row"].max() > 256  # centroids in the input's own (finer) pixels
    record = json.loads((tmp_path / "rescaled" / "extraction.json").read_text())["BR00116991_A01"]
    assert record["rescale_factor"] == pytest.approx(0.5) and record["input_pixel_size_um"] == pytest.approx(0.299)
    # Without the input's pixel size the same crops cover a quarter of the area: nuclei look 4x larger.
    assert run(capsys, "extract", "--loaddata", fine / "load_data.csv", *common, "--out", tmp_path / "unscaled")[0] == 0
    assert np.median(nuclear_areas(tmp_path / "unscaled")) > 2.5 * np.median(native)


def test_rescale_to_and_segmentation_agree():
    from skimage.transform import rescale

    dna = tifffile.imread(CPG_FILES["DNA"])
    fine = rescale(dna.astype(np.float32), 2, order=1, preserve_range=True)
    back = rescale_to(fine[None], JUMP_UM / 2, JUMP_UM)
    assert back.shape == (1, 256, 256) and back.dtype == np.float32
    areas = [np.median(np.bincount(extract_cells(im).labels.ravel())[1:]) for im in (dna, back[0])]
    assert abs(areas[1] / areas[0] - 1) < 0.15
    labels = rescale_to(np.arange(16, dtype=np.int32).reshape(1, 4, 4), 1.0, 2.0, labels=True)
    assert labels.dtype == np.int32 and set(np.unique(labels)) <= set(range(16))


def test_pixel_size_from_tiff_metadata(tmp_path):
    plane = np.zeros((32, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", plane, imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "ome.ome.tif", plane, ome=True, metadata={"PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm"})
    # An Opera Phenix file's own resolution tag: 1550 px per cm (the camera's 6.45 µm, not the specimen's).
    tifffile.imwrite(tmp_path / "cm.tif", plane, resolution=(4294967295 / 2770410,) * 2, resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "absurd.tif", plane, imagej=True, resolution=(1 / 500, 1 / 500), metadata={"unit": "micron"})
    assert pixel_size_from_tiff(tmp_path / "ij.tif") == (pytest.approx(0.325), "tiff:imagej")
    assert pixel_size_from_tiff(tmp_path / "ome.ome.tif") == (pytest.approx(0.65), "tiff:ome")
    assert pixel_size_from_tiff(tmp_path / "cm.tif") is None
    assert pixel_size_from_tiff(CPG_FILES["DNA"]) is None
    with pytest.raises(InputError, match="absurd.tif.*pixel size"):
        pixel_size_from_tiff(tmp_path / "absurd.tif")
    for bad in (0, -0.5, float("nan"), 500, "abc"):
        with pytest.raises(InputError, match="--pixel-size"):
            check_pixel_size(bad, "--pixel-size")


def test_pixel_size_read_from_the_tiff_drives_the_rescale(tmp_path, capsys, cpg_model):
    fine = finer(tmp_path / "fine")
    for path in fine.glob("*.tiff"):  # record the finer pixel size in each file, as ImageJ does
        tifffile.imwrite(path, tifffile.imread(path), imagej=True, resolution=(2 / JUMP_UM,) * 2, metadata={"unit": "micron"})
    code, out, err = run(capsys, "extract", "--loaddata", fine / "load_data.csv", "--model", cpg_model,
                         "--perturbation", "x", "--out", tmp_path / "cells")
    assert code == 0 and "warning" not in err, err
    assert "rescaled from 0.299 µm/px (tiff:imagej)" in out


@pytest.mark.parametrize("value", ["0", "-1", "nan", "500"])
def test_bad_pixel_size_is_one_line(tmp_path, capsys, value):
    assert_one_line_error(capsys, ["extract", CPG_FILES["DNA"], "--pixel-size", value, "--out", tmp_path / "x",
                                   "--perturbation", "x", "--batch", "b"], "--pixel-size", "µm")


def test_one_multichannel_file_is_put_in_the_models_order(tmp_path):
    stack = np.stack([np.full((16, 16), v, dtype=np.uint16) for v in (30, 10, 20)])  # cytoplasm, DNA, cytoskeleton
    tifffile.imwrite(tmp_path / "field.tif", stack, photometric="minisblack")
    model = ("DNA", "cytoskeleton", "cytoplasm")
    (field,) = find_fields([tmp_path / "field.tif"], channels="Cytoplasm,dna,CYTOSKELETON", model_channels=model,
                           perturbation="x", batch="b")
    assert field.channels == model
    assert read_field(field, model_channels=model)[:, 0, 0].tolist() == [10, 20, 30]
    (two,) = find_fields([tmp_path / "field.tif"], channels="DNA,ER", perturbation="x", batch="b")
    with pytest.raises(InputError, match="3 channel\\(s\\), but --channels names 2"):
        read_field(two)


def test_choose_channels_and_wells():
    assert choose_channels("DNA,ER", None) == [("DNA", "DNA"), ("ER", "ER")]
    assert choose_channels("er=4,dna=5", ["DNA", "ER"]) == [("DNA", "5"), ("ER", "4")]
    assert choose_channels(None, ["DNA", "ER"]) == [("DNA", "DNA"), ("ER", "ER")]
    assert choose_channels(None, None) is None
    with pytest.raises(InputError, match="name exactly these"):
        choose_channels("DNA,actin", ["DNA", "ER"])
    with pytest.raises(InputError, match="name each channel once"):
        choose_channels("DNA,dna", None)
    assert [normalize_well(w) for w in ("a1", "B07", "r01c01", "r16c24", "AA3", "Z99x")] == ["A01", "B07", "A01", "P24", "AA03", None]


def write_loaddata(folder: Path, edit) -> Path:
    table = pd.read_csv(CPG / "load_data.csv", dtype=str)
    table["PathName_OrigDNA"] = table["PathName_OrigER"] = table["PathName_OrigRNA"] = str(CPG)
    table["PathName_OrigAGP"] = table["PathName_OrigMito"] = str(CPG)
    folder.mkdir(exist_ok=True)
    edit(table).to_csv(folder / "load_data.csv", index=False)
    return folder / "load_data.csv"


def test_bad_plates_are_one_line_naming_the_file(tmp_path, capsys, cpg_model):
    out = ["--out", tmp_path / "cells"]
    lacking = write_loaddata(tmp_path / "a", lambda t: t.drop(columns=["Metadata_Well"]))
    assert_one_line_error(capsys, ["extract", "--loaddata", lacking, "--perturbation", "x", *out],
                          str(lacking), "lacks columns ['Metadata_Well']")
    gone = write_loaddata(tmp_path / "b", lambda t: t.assign(FileName_OrigER="r01c01f01p01-ch9sk1fk1fl1.tiff"))
    assert_one_line_error(capsys, ["extract", "--loaddata", gone, "--perturbation", "x", *out],
                          f"{gone} line 2", "ER file", "ch9sk1fk1fl1.tiff does not exist", "FileName_OrigER")
    assert_one_line_error(capsys, ["extract", "--loaddata", CPG / "load_data.csv", "--channels", "DNA,Tubulin",
                                   "--perturbation", "x", *out], "no channel Tubulin", "OrigDNA")
    # A plate-map well without images is an error; images without a row are left out, with a warning.
    platemap = tmp_path / "platemap.csv"
    platemap.write_text((NF1 / "platemap.csv").read_text() + "B03,taxol,false,plate2\n")
    args = ["extract", "--images", NF1, "--name-pattern", NF1_PATTERN, "--channels", "DAPI=1,GFP=2,RFP=3", *out]
    assert_one_line_error(capsys, [*args, "--plate-map", platemap], str(platemap), "B03 (line 5)", "have no images")
    platemap.write_text("\n".join((NF1 / "platemap.csv").read_text().splitlines()[:3]) + "\n")  # no D7 row
    code, _, err = run(capsys, *args, "--plate-map", platemap)
    assert code == 0 and "wells D07 have images but no row in" in err and "left out" in err
    assert "D07" not in set(pd.read_csv(tmp_path / "cells" / "cells.csv")["well"])
    platemap.write_text("well,perturbation,is_control\nD6,NF1 wild type,maybe\n")
    assert_one_line_error(capsys, [*args, "--plate-map", platemap], f"{platemap} line 2", "is_control = 'maybe'")
    platemap.write_text("well,treatment\nD6,x\n")
    assert_one_line_error(capsys, [*args, "--plate-map", platemap], str(platemap), "['perturbation', 'is_control']")


def test_bad_channel_files_are_one_line(tmp_path, capsys):
    out = ["--out", tmp_path / "cells", "--perturbation", "x", "--batch", "b"]
    small = tmp_path / "GFP_small.tif"
    tifffile.imwrite(small, tifffile.imread(nf1_files("D6")[1])[:200])
    dapi, _, rfp = nf1_files("D6")
    assert_one_line_error(capsys, ["extract", dapi, small, rfp, *out], "differ in size", "GFP_small.tif 200 x 256")
    assert_one_line_error(capsys, ["extract", dapi, tmp_path / "nope.tif", rfp, *out], "nope.tif does not exist")
    assert_one_line_error(capsys, ["extract", dapi, "--model", "demo", *out],
                          str(dapi), "1 channel(s), but the model takes 3",
                          "give one file per channel in the order DNA, cytoskeleton, cytoplasm")
    assert_one_line_error(capsys, ["extract", dapi, rfp, "--channels", "DAPI,GFP,RFP", *out], "names 3 channels for 2 files")
    # A plate folder whose well lacks a channel file, and a plate folder without a plate map.
    images = ixm_copy(tmp_path / "plate", wells=("D6", "B7"))
    next(images.glob("B07_s3_w3*")).unlink()
    map_args = ["--plate-map", NF1 / "platemap.csv", "--channels", "DAPI=1,GFP=2,RFP=3", "--out", tmp_path / "c2"]
    assert_one_line_error(capsys, ["extract", "--images", images, *map_args], "well B07 site 3 has no RFP file")
    assert_one_line_error(capsys, ["extract", "--images", images, "--out", tmp_path / "c3", "--perturbation", "x"],
                          "--images needs --plate-map")
    assert_one_line_error(capsys, ["extract", "--images", images, "--name-pattern", "(?P<well>x)", *map_args],
                          "needs named groups")
    assert_one_line_error(capsys, ["extract", "--images", NF1, *map_args], "no file name matches", "imagexpress")


def test_an_empty_plate_field_is_skipped_not_fatal(tmp_path, capsys):
    images = ixm_copy(tmp_path / "plate", wells=("D6", "B7"))
    for path in images.glob("B07_*"):  # a field without cells (e.g. a failed well)
        tifffile.imwrite(path, np.full((256, 256), 3000, dtype=np.uint16))
    (tmp_path / "map.csv").write_text("well,perturbation,is_control\nD6,WT,true\nB7,null,false\n")
    code, out, err = run(capsys, "extract", "--images", images, "--plate-map", tmp_path / "map.csv",
                         "--out", tmp_path / "cells", "--batch", "p2")
    assert code == 0, err
    assert "1 field(s) had no croppable nuclei" in out and "well B07 site 3" in out
    assert set(pd.read_csv(tmp_path / "cells" / "cells.csv")["well"]) == {"D06"}


# JUMP cpg0016, RAB30 (tests/fixtures/plates/SOURCES.md): one CYX TIFF per source, channels AGP, DNA,
# ER, Mito, RNA; source_13 is about 10x dimmer than source_4. 160 x 160 regions, so 64 x 64 crops.
JUMP = FIXTURES / "plates" / "jump-rab30"
JUMP_STAINS = ["AGP", "DNA", "ER", "Mito", "RNA"]  # the files' channel order (the set's channels.csv)
JUMP_BRIGHT = JUMP / "source_4_BR00123947_G01_s1_ORF_RAB30_CYX_AGP-DNA-ER-Mito-RNA.tif"
JUMP_DIM = JUMP / "source_13_CP-CC9-R1-05_L07_s0_CRISPR_RAB30_CYX_AGP-DNA-ER-Mito-RNA.tif"
JUMP_WELLS = {"G01": JUMP_BRIGHT, "L07": JUMP_DIM}  # per load_data.csv / platemap.csv


def assert_crops_are(table, planes: np.ndarray, scaling=None, size: int = 64) -> None:
    """Channel k of every crop of ``table`` is the window of ``planes[k]`` (a raw (C, H, W) field,
    scaled as a whole) at the cell's centroid: pixel for pixel."""
    from napari_cellflux.data.intensity import IntensityScaling

    scaled = scale_to_uint8(planes, scaling or IntensityScaling())[0]
    csv = pd.read_csv(table.source)
    assert len(table) > 0
    for path, row, col in zip(table.cells["path"], csv["centroid_row"], csv["centroid_col"]):
        crop = load_cell(path)
        assert crop.shape == (len(planes), size, size)
        y, x = round(row) - size // 2, round(col) - size // 2
        for k, channel in enumerate(scaled):
            windows = [channel[y + dy : y + dy + size, x + dx : x + dx + size] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            assert any(np.array_equal(crop[k], w) for w in windows), f"channel {k} of {path} is not plane {k}"


def jump_plate(folder: Path) -> Path:
    """The fixtures' load_data.csv with its channel files: each CYX file split into one TIFF per stain."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(JUMP / "load_data.csv", dtype=str)
    for _, row in table.iterrows():
        stack = tifffile.imread(JUMP_WELLS[row["Metadata_Well"]])
        for k, stain in enumerate(JUMP_STAINS):
            tifffile.imwrite(folder / row[f"FileName_Orig{stain}"], stack[k], photometric="minisblack")
    shutil.copy(JUMP / "load_data.csv", folder / "load_data.csv")
    return folder / "load_data.csv"


@pytest.fixture(scope="module")
def jump_model(tmp_path_factory) -> Path:
    """A model with the JUMP channels in the load_data order (DNA, ER, RNA, AGP, Mito), 64-px crops."""
    return channel_model_file(tmp_path_factory.mktemp("model") / "jump.safetensors", DATASET_CHANNELS["cpg0000"], 64)


def test_jump_fixtures_are_the_sources_cyx_stacks():
    for path in JUMP_WELLS.values():
        stack = tifffile.imread(path)
        assert stack.shape == (5, 160, 160) and stack.dtype == np.uint16
        with tifffile.TiffFile(path) as tif:
            assert tif.pages.first.compression == 1 and path.name in tif.pages.first.description  # names its original
    # The dim source really is ~10x dimmer (source_13 max ~7000, source_4 up to 65535; SOURCE.md).
    assert 4 < tifffile.imread(JUMP_BRIGHT).mean() / tifffile.imread(JUMP_DIM).mean() < 20


@pytest.mark.parametrize("path", [JUMP_BRIGHT, JUMP_DIM], ids=["source_4", "source_13"])
def test_multichannel_file_channels_named_in_another_order(tmp_path, capsys, jump_model, path):
    stack = tifffile.imread(path)
    # --channels names the file's channels (its order: AGP, DNA, ER, Mito, RNA); the model takes
    # DNA, ER, RNA, AGP, Mito, so the crops must come in the model's order, planes 1, 2, 4, 0, 3.
    code, out, err = run(capsys, "extract", path, "--channels", ",".join(s.lower() for s in JUMP_STAINS),
                         "--model", jump_model, "--out", tmp_path / "cells", "--perturbation", "RAB30", "--batch", "b")
    assert code == 0, err
    assert "5 channels, 64 x 64 px" in out
    order = [JUMP_STAINS.index(s) for s in CPG_MODEL_ORDER]
    assert order == [1, 2, 4, 0, 3]
    table = read_plain(tmp_path / "cells" / "cells.csv")
    assert len(table) >= 2
    assert_crops_are(table, stack[order])
    record = json.loads((tmp_path / "cells" / "extraction.json").read_text())[path.stem]
    assert record["channels"] == CPG_MODEL_ORDER and record["config"]["nucleus_channel"] == 0
    # Without a model, --channels names the file's channels as they are: the DNA stain is found by name.
    code, _, err = run(capsys, "extract", path, "--channels", ",".join(JUMP_STAINS), "--crop-size", 64,
                       "--out", tmp_path / "plain", "--perturbation", "RAB30", "--batch", "b")
    assert code == 0, err
    assert_crops_are(read_plain(tmp_path / "plain" / "cells.csv"), stack)
    record = json.loads((tmp_path / "plain" / "extraction.json").read_text())[path.stem]
    assert record["channels"] == JUMP_STAINS and record["config"]["nucleus_channel"] == 1
    # Naming too few channels of the file is one line, not a crash.
    assert_one_line_error(capsys, ["extract", path, "--channels", "AGP,DNA,ER,Mito", "--crop-size", 64, "--out",
                                   tmp_path / "x", "--perturbation", "x", "--batch", "b"],
                          "5 channel(s), but --channels names 4 (AGP, DNA, ER, Mito)")


def test_two_sources_in_one_loaddata_and_plate_map(tmp_path, capsys):
    loaddata = jump_plate(tmp_path / "plate")
    code, out, err = run(capsys, "extract", "--loaddata", loaddata, "--plate-map", JUMP / "platemap.csv",
                         "--channels", ",".join(CPG_MODEL_ORDER), "--crop-size", 64, "--out", tmp_path / "cells")
    assert code == 0, err
    assert "from 2 field(s) in 2 well(s)" in out
    csv = pd.read_csv(tmp_path / "cells" / "cells.csv", dtype=str)
    bright, dim = csv["well"] == "G01", csv["well"] == "L07"
    assert bright.any() and dim.any() and (bright | dim).all()
    assert set(csv.loc[bright, "plate"]) == {"BR00123947"} and set(csv.loc[dim, "plate"]) == {"CP-CC9-R1-05"}
    assert set(csv.loc[bright, "site"]) == {"1"} and set(csv.loc[dim, "site"]) == {"0"}
    assert set(csv.loc[bright, "perturbation"]) == {"RAB30 ORF"} and set(csv.loc[dim, "perturbation"]) == {"RAB30 CRISPR"}
    assert set(csv.loc[bright, "batch"]) == {"2021_06_07_Batch5"} and set(csv.loc[dim, "batch"]) == {"20220914_Run1"}
    assert (csv["is_control"] == "False").all()
    record = json.loads((tmp_path / "cells" / "extraction.json").read_text())
    assert set(record) == {"BR00123947_G01", "CP-CC9-R1-05_L07"}  # one prefix per plate and well
    assert all(r["channels"] == CPG_MODEL_ORDER for r in record.values())
    # Each crop holds its own source's pixels, in the --channels order (picked from LoadData by name).
    order = [JUMP_STAINS.index(s) for s in CPG_MODEL_ORDER]
    for well, source in JUMP_WELLS.items():
        files = csv.loc[csv["well"] == well, "file"].tolist()
        assert_crops_are(read_plain_subset(tmp_path / "cells", files), tifffile.imread(source)[order])
    # Without --plate-map, one --perturbation for both: plates and wells still come from LoadData.
    code, _, err = run(capsys, "extract", "--loaddata", loaddata, "--perturbation", "RAB30", "--crop-size", 64,
                       "--out", tmp_path / "one")
    assert code == 0, err
    csv = pd.read_csv(tmp_path / "one" / "cells.csv", dtype=str)
    assert set(zip(csv["plate"], csv["well"])) == {("BR00123947", "G01"), ("CP-CC9-R1-05", "L07")}
    assert set(csv["batch"]) == {"BR00123947", "CP-CC9-R1-05"}  # the plate, when no batch is given


def crop_means(folder: Path) -> dict[str, np.ndarray]:
    """Mean uint8 value per channel of the crops of each well."""
    csv = pd.read_csv(folder / "cells.csv", dtype=str)
    paths = read_plain(folder / "cells.csv").cells["path"].tolist()
    return {well: np.mean([load_cell(p).mean(axis=(1, 2)) for p, w in zip(paths, csv["well"]) if w == well], axis=0)
            for well in JUMP_WELLS}


def test_fixed_range_keeps_the_sources_intensity_difference(tmp_path, capsys):
    from napari_cellflux.data.intensity import IntensityScaling

    loaddata = jump_plate(tmp_path / "plate")
    common = ["extract", "--loaddata", loaddata, "--plate-map", JUMP / "platemap.csv", "--crop-size", 64]
    assert run(capsys, *common, "--range", 0, 65535, "--out", tmp_path / "fixed")[0] == 0
    assert run(capsys, *common, "--out", tmp_path / "percentile")[0] == 0  # default: per-field 1 / 99.8 percentiles
    fixed, percentile = crop_means(tmp_path / "fixed"), crop_means(tmp_path / "percentile")
    # A fixed range maps both sources alike: the dim source's crops are much darker, in every channel.
    assert np.all(fixed["G01"] > 2 * fixed["L07"]), fixed  # Mito: 22 vs 8; DNA: 19 vs 0.4
    assert fixed["G01"].mean() > 5 * fixed["L07"].mean()
    # Per-field percentiles stretch each field on its own: the difference is normalised away.
    ratio = percentile["G01"] / percentile["L07"]
    assert np.all((ratio > 1 / 3) & (ratio < 3)) and 0.5 < percentile["G01"].mean() / percentile["L07"].mean() < 2, ratio
    records = json.loads((tmp_path / "fixed" / "extraction.json").read_text())
    assert [records[k]["scaling"]["high"] for k in ("BR00123947_G01", "CP-CC9-R1-05_L07")] == [[65535.0] * 5] * 2
    records = json.loads((tmp_path / "percentile" / "extraction.json").read_text())
    highs = [np.array(records[k]["scaling"]["high"]) for k in ("BR00123947_G01", "CP-CC9-R1-05_L07")]
    assert np.all(highs[0] > 3 * highs[1])  # what mapped to 255 differs ~10x between the sources
    # The fixed-range crops are the source pixels mapped by that one range, pixel for pixel.
    csv = pd.read_csv(tmp_path / "fixed" / "cells.csv", dtype=str)
    for well, source in JUMP_WELLS.items():
        files = csv.loc[csv["well"] == well, "file"].tolist()
        assert_crops_are(read_plain_subset(tmp_path / "fixed", files), tifffile.imread(source),
                         IntensityScaling("range", 0, 65535))
