"""`cellflux profile` end to end (phenotype.sources, phenotype.profile, cli.profile): a tiny
generated screen of two perturbations and real plain-format crops from the NF1 fixture, profiled by
the same code; bad inputs (no manifest, no DNA channel named, a wrong control pool, too few cells)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from plugin_helpers import TWO_STEPS, tiny_model

from napari_cellflux.cli import main
from napari_cellflux.data.extract import ExtractionConfig, extract_cells
from napari_cellflux.data.plain import write_plain
from napari_cellflux.data.samples import synthetic_controls
from napari_cellflux.errors import InputError
from napari_cellflux.generation import screen as S
from napari_cellflux.phenotype.sources import read_source
from napari_cellflux.settings import SpeedOptions

NF1 = Path(__file__).parent / "fixtures" / "plates" / "nf1-schwann"
QUICK = ["--features", "shape,intensity", "--bootstraps", "100", "--permutations", "99", "--quiet"]
TWO = ["colchicine", "PP-2"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A screen of 12 cells each of two perturbations from a pool of 12 synthetic controls (saved)."""
    root = tmp_path_factory.mktemp("generated")
    pool = synthetic_controls(12, 32, 3, seed=1)
    np.save(root / "pool.npy", pool)
    S.run_screen(tiny_model(seed=7), pool, root / "screen", n_cells=12, chunk_size=6, perturbation=TWO,
                 sampling=TWO_STEPS, seed=3, speed=SpeedOptions(precision="fp32"))
    return root


def nf1_crops(well: str) -> np.ndarray:
    """The well's cells cut from the fixture field (DAPI, GFP, RFP), times the 8 symmetries of the
    square, so each group has enough cells for an interval."""
    field = np.stack([tifffile.imread(p) for p in sorted(NF1.glob(f"{well}_01_*_001.tif"))])
    crops = extract_cells(field, ExtractionConfig(crop_size=64, min_area=300)).crops
    turns = [np.rot90(crops, k, axes=(2, 3)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(turns + [t[..., ::-1] for t in turns]))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for well, name, control in (("D6", "NF1 wild type", True), ("B7", "NF1 null", False), ("D7", "NF1 null", False)):
        write_plain(root, nf1_crops(well), perturbation=name, batch="plate2", is_control=control, prefix=well)
    return root


def test_profile_of_a_generated_screen_ranks_every_perturbation(generated, tmp_path):
    out = tmp_path / "profile"
    assert main(["profile", str(generated / "screen"), "--out", str(out), "--controls", str(generated / "pool.npy"), *QUICK]) == 0
    ranked = pd.read_csv(out / "ranked.csv")
    assert sorted(ranked["perturbation"]) == sorted(TWO) and list(ranked["rank"]) == [1, 2]
    assert (ranked["effect_size"].diff().dropna() <= 0).all()  # strongest first
    assert ((ranked["effect_low"] <= ranked["effect_size"]) & (ranked["effect_size"] <= ranked["effect_high"])).all()
    assert ranked["p_value"].between(0, 1).all() and ranked["mAP"].between(0, 1).all()
    assert set(ranked["nearest"].str.split(" ").str[0]) == set(TWO)  # each one's nearest is the other
    cells = pd.read_csv(out / "cells.csv")
    assert cells["Metadata_Perturbation"].value_counts().to_dict() == {"control": 12, "colchicine": 12, "PP-2": 12}
    assert cells["Metadata_Source"].eq("generated").all() and "Nuclei_AreaShape_Area" in cells
    profiles = pd.read_csv(out / "profiles.csv")
    assert sorted(profiles["Metadata_Perturbation"]) == sorted(TWO) and (profiles["Metadata_Cells"] == 12).all()
    shifts = pd.read_csv(out / "shifts.csv")
    assert list(shifts.columns) == ["perturbation", "feature", "shift", "low", "high"]
    summary = json.loads((out / "profile.json").read_text())
    assert summary["kind"] == "generated" and summary["features_kept"] == profiles.shape[1] - 2
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG" and (out / "effects.png").stat().st_size > 0
    assert not list(out.glob(".*.part"))


def test_profile_of_real_crops_uses_the_same_code(real, tmp_path):
    out = tmp_path / "profile"
    assert main(["profile", str(real), "--out", str(out), "--channels", "DAPI,GFP,RFP", "--max-cells", "12", *QUICK]) == 0
    ranked = pd.read_csv(out / "ranked.csv")
    assert list(ranked["perturbation"]) == ["NF1 null"] and ranked["n_cells"].iloc[0] == 12
    cells = pd.read_csv(out / "cells.csv")
    assert cells["Metadata_Source"].eq("real").all() and "Cells_Intensity_MeanIntensity_DAPI" in cells
    assert cells["Metadata_IsControl"].sum() == 12


def cli_error(argv: list[str], capsys) -> str:
    """The one-line error of a `cellflux` run that must fail with exit status 2."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1
    return lines[0]


def test_real_crops_without_a_dna_channel_named_are_refused(real, tmp_path, capsys):
    error = cli_error(["profile", str(real), "--out", str(tmp_path / "p"), *QUICK], capsys)  # the plain format names no channels
    assert "no channel is named as a DNA stain" in error and "--channels" in error


def test_a_folder_without_a_manifest_says_what_it_expects(tmp_path):
    (tmp_path / "chunk_000000.npy").write_bytes(b"")
    with pytest.raises(InputError, match="manifest.json.*cells.csv"):
        read_source(tmp_path)


def test_a_generated_screen_needs_the_pool_it_came_from(generated, tmp_path):
    with pytest.raises(InputError, match="--controls"):
        read_source(generated / "screen")  # made from a pool that is not the synthetic default
    np.save(tmp_path / "other.npy", synthetic_controls(12, 32, 3, seed=2))
    with pytest.raises(InputError, match="SHA-256"):
        read_source(generated / "screen", controls=tmp_path / "other.npy")


def test_a_screen_of_the_default_synthetic_pool_needs_no_controls(tmp_path):
    """`cellflux screen` without --controls draws 64 synthetic controls seeded by --seed: recognised by their hash."""
    pool = synthetic_controls(64, 32, 3, seed=5)
    S.run_screen(tiny_model(seed=7), pool, tmp_path, n_cells=4, chunk_size=4, perturbation=TWO, sampling=TWO_STEPS, seed=5,
                 speed=SpeedOptions(precision="fp32"))
    source = read_source(tmp_path, max_cells=3)
    np.testing.assert_array_equal(source.controls, pool[:3])
    assert [g.name for g in source.groups] == TWO and all(g.pixels.shape == (3, 3, 32, 32) for g in source.groups)
    assert source.kind == "generated" and source.channels == ("DNA", "cytoskeleton", "cytoplasm")


def test_too_few_cells_says_how_many_are_needed(generated, tmp_path, capsys):
    error = cli_error(["profile", str(generated / "screen"), "--out", str(tmp_path / "p"), "--controls",
                       str(generated / "pool.npy"), "--max-cells", "6", *QUICK], capsys)
    assert "at least 10" in error and not (tmp_path / "p" / "ranked.csv").exists()


def test_real_crops_take_the_channel_names_cellflux_extract_recorded(real, tmp_path):
    import json
    import shutil

    from napari_cellflux.data.extract import RECORD_NAME

    crops = shutil.copytree(real, tmp_path / "crops")
    record = {well: {"channels": ["DAPI", "GFP", "RFP"]} for well in ("D6", "B7", "D7")}
    (crops / RECORD_NAME).write_text(json.dumps(record))
    assert read_source(crops).channels == ("DAPI", "GFP", "RFP")
    record["D7"]["channels"] = ["DAPI", "ER", "RFP"]  # fields that disagree name nothing
    (crops / RECORD_NAME).write_text(json.dumps(record))
    assert "DAPI" not in read_source(crops).channels
