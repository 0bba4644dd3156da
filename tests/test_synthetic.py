"""The synthetic screen: layout, determinism, and ground truth that matches the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import filters, measure

from napari_cellflux.data.dataset import CellPairDataset, PairingConfig
from napari_cellflux.data.impa import bbbc021_key_path
from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen, read_synthetic_screen
from napari_cellflux.data.synthetic_field import make_synthetic_field
from napari_cellflux.models.fingerprints import morgan_count_fingerprint


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    return make_synthetic_screen(tmp_path_factory.mktemp("screen"))


@pytest.fixture(scope="module")
def measured(screen) -> pd.DataFrame:
    """Ground truth of every cell beside simple measurements of its stored pixels."""
    truth = pd.read_csv(screen / "ground_truth.csv")
    rows = []
    for key in truth["SAMPLE_KEY"]:
        cell = np.load(screen / bbbc021_key_path(key)).astype(np.float64)  # (H, W, C)
        dna = cell[..., 0]
        nucleus = _object_at_centre(dna > filters.threshold_otsu(dna))
        cytoplasm = filters.gaussian(cell[..., 2], 1.0)
        body = _object_at_centre(cytoplasm > filters.threshold_otsu(cytoplasm))
        shape = measure.regionprops(body.astype(int))[0]
        border = np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]])
        cyto = body & ~nucleus
        rows.append(
            {
                "area": nucleus.sum(),
                "dna": dna[nucleus].mean(),
                "elongation": shape.axis_major_length / max(shape.axis_minor_length, 1e-6),
                "ch1_contrast": cell[..., 1][cyto].std() / cell[..., 1][cyto].mean(),
                "ch1": cell[..., 1][cyto].mean(),
                "ch2": cell[..., 2][cyto].mean(),
                "background": np.median(border, axis=0),
            }
        )
    return pd.concat([truth, pd.DataFrame(rows)], axis=1)


def _object_at_centre(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask)
    centre = labels.shape[0] // 2
    ids = labels[centre - 1 : centre + 1, centre - 1 : centre + 1]
    return labels == np.bincount(ids[ids > 0]).argmax()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_cells(tmp_path):
    config = SyntheticScreenConfig(controls_per_batch=4, cells_per_perturbation=2, batches=2)
    first = files(make_synthetic_screen(tmp_path / "a", config))
    second = files(make_synthetic_screen(tmp_path / "b", config))
    assert first == second
    other = files(make_synthetic_screen(tmp_path / "c", SyntheticScreenConfig(**{**config.__dict__, "seed": 1})))
    assert first.keys() == other.keys()
    differing = [name for name in first if first[name] != other[name]]
    assert "ground_truth.csv" in differing and sum(name.endswith(".npy") for name in differing) == len(first) - 4


def test_layout_is_the_impa_bbbc021_format(screen):
    metadata = pd.read_csv(screen / "metadata.csv", index_col=0)
    assert list(metadata.columns) == ["SAMPLE_KEY", "SPLIT", "STATE", "ANNOT", "CPD_NAME", "BATCH", "DOSE", "SMILES"]
    default = SyntheticScreenConfig()
    assert len(metadata) == default.batches * (default.controls_per_batch + 8 * default.cells_per_perturbation)
    assert set(metadata["STATE"]) == {0, 1} and set(metadata.loc[metadata["STATE"] == 0, "CPD_NAME"]) == {"DMSO"}
    cell = np.load(screen / bbbc021_key_path(metadata["SAMPLE_KEY"].iloc[-1]))
    assert cell.dtype == np.uint8 and cell.shape == (32, 32, 3)
    held = metadata["CPD_NAME"].isin(["demecolcine", "nocodazole"])
    assert set(metadata.loc[held, "SPLIT"]) == {"test"}
    for batch, group in metadata[metadata["STATE"] == 0].groupby("BATCH"):
        assert (group["SPLIT"] == "test").sum() == round(0.2 * default.controls_per_batch)  # 20 % of the controls


def test_embeddings_are_fingerprints_of_the_real_smiles(screen):
    embedding = pd.read_csv(screen / "emb_fp.csv", index_col=0)
    metadata = pd.read_csv(screen / "metadata.csv", index_col=0)
    smiles = dict(zip(metadata["CPD_NAME"], metadata["SMILES"]))
    assert sorted(embedding.index) == sorted(smiles) and len(smiles) == 9
    for name, row in embedding.iterrows():
        np.testing.assert_array_equal(row.to_numpy(np.float32), morgan_count_fingerprint(smiles[name]))


def test_screen_reads_into_training_pairs(screen):
    synthetic = read_synthetic_screen(screen)
    assert synthetic.held_out == ("demecolcine", "nocodazole")
    assert synthetic.vocabulary.kind == "compound" and synthetic.vocabulary.smiles["DMSO"] == "CS(C)=O"
    pairs = CellPairDataset(synthetic.table, synthetic.vocabulary, PairingConfig(held_out=synthetic.held_out, seed=0))
    assert pairs.shape == (3, 32, 32)
    item = pairs[len(pairs) - 1]
    assert -1.0 <= float(item["target"].min()) and float(item["target"].max()) <= 1.0
    seen = {synthetic.vocabulary.names[i] for i in pairs.perturbation_index}
    assert seen == {"colchicine", "camptothecin", "mitoxantrone", "PP-2", "MG-132", "alsterpaullone"}
    info = json.loads((screen / "screen.json").read_text())
    assert info["perturbations"]["camptothecin"]["factors"]["nuclear_area"] == 1.6
    assert info["channel_names"] == ["DNA", "cytoskeleton", "cytoplasm"]


def test_measured_nuclear_area_follows_the_ground_truth(measured):
    assert np.corrcoef(measured["area"], measured["nuclear_area_px"])[0, 1] > 0.9
    by_compound = measured.groupby("CPD_NAME")
    area = by_compound["area"].mean()
    assert area["camptothecin"] > 1.35 * area["DMSO"]
    assert 0.85 < area["mitoxantrone"] / area["DMSO"] < 1.15


def test_designed_effects_are_visible_in_the_pixels(measured):
    mean = measured.groupby("CPD_NAME")[["dna", "elongation", "ch1", "ch1_contrast", "ch2"]].mean()
    control = mean.loc["DMSO"]
    assert mean.loc["mitoxantrone", "dna"] < 0.7 * control["dna"]
    assert mean.loc["MG-132", "ch2"] > 1.4 * control["ch2"]
    assert mean.loc["alsterpaullone", "ch1"] > 1.4 * control["ch1"]
    assert mean.loc["PP-2", "elongation"] > 1.2 * control["elongation"]
    for destabiliser in ("colchicine", "demecolcine", "nocodazole"):
        assert mean.loc[destabiliser, "ch1_contrast"] < 0.8 * control["ch1_contrast"]
        assert mean.loc[destabiliser, "elongation"] < control["elongation"]


def test_batch_artefacts_match_the_recorded_gain_and_offset(screen, measured):
    info = json.loads((screen / "screen.json").read_text())
    controls = measured[measured["CPD_NAME"] == "DMSO"]
    for batch, recorded in info["batches"].items():
        cells = controls[controls["BATCH"] == batch]
        background = np.stack(cells["background"]).mean(axis=0)
        np.testing.assert_allclose(background, 255 * np.array(recorded["offset"]), atol=3.0)
        assert np.allclose(cells[[f"gain_c{c}" for c in range(3)]].to_numpy(), recorded["gain"])


def test_more_channels_and_larger_images(tmp_path):
    config = SyntheticScreenConfig(image_size=48, channels=5, batches=1, controls_per_batch=3, cells_per_perturbation=2)
    synthetic = read_synthetic_screen(make_synthetic_screen(tmp_path, config))
    assert np.load(synthetic.table.cells["path"][0]).shape == (48, 48, 5)
    assert synthetic.info["channel_names"] == ["DNA", "cytoskeleton", "cytoplasm", "stain3", "stain4"]
    pairs = CellPairDataset(synthetic.table, synthetic.vocabulary, PairingConfig(split=None, seed=0))
    assert pairs[0]["control"].shape == (5, 48, 48)


def test_config_and_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="held_out.*taxol"):
        SyntheticScreenConfig(held_out=("taxol",))
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic_screen(tmp_path)


def test_synthetic_field_has_true_labels_and_centres():
    field = make_synthetic_field((256, 320), 12, seed=4)
    assert field.image.shape == (3, 256, 320) and field.image.dtype == np.uint16 and field.image.max() < 4096
    assert field.labels.max() == len(field.centroids) == 12
    rows, cols = np.round(field.centroids).astype(int).T
    assert np.array_equal(field.labels[rows, cols], np.arange(1, 13))
    again = make_synthetic_field((256, 320), 12, seed=4)
    assert np.array_equal(field.image, again.image)
    bigger = make_synthetic_field((256, 320), 12, perturbation="camptothecin", seed=4)
    assert bigger.perturbation == "camptothecin"
    assert np.bincount(bigger.labels.ravel())[1:].mean() > 1.3 * np.bincount(field.labels.ravel())[1:].mean()
    with pytest.raises(ValueError, match="unknown perturbation 'taxol'"):
        make_synthetic_field(perturbation="taxol")
