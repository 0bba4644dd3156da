"""IMPA reader (all three key conventions) and the batch-matched pair dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import cell_pixels, toy_vocabulary, write_impa_tree
from torch.utils.data import DataLoader

from napari_cellflux.data.dataset import CellPairDataset, PairingConfig
from napari_cellflux.data.impa import bbbc021_key_path, cpg0000_key_path, read_impa, rxrx1_key_path

CONVENTIONS = ("bbbc021", "rxrx1", "cpg0000")
EXACT = PairingConfig(split=None, dequantize=False, flip_prob=0.0, seed=0)


def value_of(x: torch.Tensor) -> int:
    """The stored uint8 value of a cell made by cell_pixels (any pixel but the marked corner)."""
    return int(round((float(x[0, 1, 1]) * 0.5 + 0.5) * 255))


# --- key -> file conventions (IMPA's format: docs/data.md, the published IMPA format) ---


def test_key_conventions_match_the_published_layouts():
    assert bbbc021_key_path("Week1_22123_1_11_3.0") == PurePosixPath("Week1/22123/1_11_3.0.npy")
    assert rxrx1_key_path("U2OS-01_3_J09_s1_19") == PurePosixPath("01_3/J09/s1_19.npy")
    assert cpg0000_key_path("BR00117010_C01_1_128") == PurePosixPath("BR00117010/C01_1/C01_1_128.npy")


@pytest.mark.parametrize(
    "func, key", [(bbbc021_key_path, "a_b"), (rxrx1_key_path, "01_3_J09_s1"), (cpg0000_key_path, "BR1_C01_1")]
)
def test_malformed_keys_are_errors(func, key):
    with pytest.raises(ValueError, match="SAMPLE_KEY"):
        func(key)


# --- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_reader_builds_the_cell_table(tmp_path, convention):
    tree = write_impa_tree(tmp_path, convention)
    table = read_impa(tree.csv, convention=convention)
    assert len(table) == len(tree.cells)
    cells = table.cells
    assert list(cells["is_control"]) == list(tree.cells["is_control"])
    assert list(cells["batch"]) == list(tree.cells["batch"])
    assert list(cells["split"]) == list(tree.cells["split"])
    assert table.perturbations == ["drugA", "drugB"] and table.batches == ["P1", "P2"]
    assert table.channels == {"bbbc021": 3, "rxrx1": 6, "cpg0000": 5}[convention]
    for path, value in zip(cells["path"], tree.cells["value"]):
        assert np.load(path)[1, 1, 0] == value  # each key found its own file
    assert list(cells["line"][:2]) == [2, 3]


def test_bbbc021_smiles_and_a_separate_image_root(tmp_path):
    tree = write_impa_tree(tmp_path / "images")
    csv = tmp_path / "meta" / "metadata.csv"
    csv.parent.mkdir()
    tree.csv.rename(csv)
    table = read_impa(csv, tmp_path / "images", "bbbc021")
    assert table.smiles == {"DMSO": "CS(C)=O", "drugA": "CCO", "drugB": "CCO"}
    with pytest.raises(FileNotFoundError, match="is missing"):
        read_impa(csv)  # the default root (the CSV's folder) holds no images


# --- pairing ------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_controls_come_from_the_same_batch_and_vary(tmp_path, convention):
    tree = write_impa_tree(tmp_path, convention, controls=6)
    table = read_impa(tree.csv, convention=convention)
    pairs = CellPairDataset(table, toy_vocabulary(), EXACT)
    values = tree.cells.set_index("value")
    for i in range(len(pairs)):
        drawn = Counter()
        for _ in range(60):
            item = pairs[i]
            control = values.loc[value_of(item["control"])]
            target = values.loc[value_of(item["target"])]
            assert control["is_control"] and not target["is_control"]
            assert control["batch"] == target["batch"] == item["batch"]
            assert item["perturbation"] == toy_vocabulary().index(target["perturbation"])
            assert table.cells["batch"][item["control_id"]] == item["batch"]
            drawn[control.name] += 1
        assert len(drawn) >= 4  # of the 6 controls of the batch, drawn anew at every access


def test_items_have_the_documented_form(tmp_path):
    tree = write_impa_tree(tmp_path, size=12)
    pairs = CellPairDataset(read_impa(tree.csv), toy_vocabulary(), EXACT)
    item = pairs[0]
    assert item["control"].shape == item["target"].shape == (3, 12, 12) == pairs.shape
    assert item["control"].dtype == torch.float32
    target_value = tree.cells.loc[~tree.cells["is_control"], "value"].iloc[0]
    expected = torch.as_tensor(np.moveaxis(cell_pixels(target_value, 12, 3), -1, 0)).float() / 127.5 - 1.0
    torch.testing.assert_close(item["target"], expected)


def test_dequantisation_adds_less_than_one_grey_level(tmp_path):
    tree = write_impa_tree(tmp_path)
    exact = CellPairDataset(read_impa(tree.csv), toy_vocabulary(), EXACT)[0]["target"]
    noisy = CellPairDataset(read_impa(tree.csv), toy_vocabulary(), PairingConfig(split=None, flip_prob=0.0, seed=1))
    delta = (noisy[0]["target"] - exact) * 127.5  # in grey levels
    assert delta.min() >= 0 and delta.max() < 1 and delta.std() > 0.2


def test_flips_follow_flip_prob(tmp_path):
    tree = write_impa_tree(tmp_path)
    table = read_impa(tree.csv)
    always = CellPairDataset(table, toy_vocabulary(), PairingConfig(split=None, dequantize=False, flip_prob=1.0))
    target = always[0]["target"]
    assert float(target[0, -1, -1]) == pytest.approx(200 / 127.5 - 1)  # the marked corner moved from (0, 0) to (-1, -1)
    sometimes = CellPairDataset(table, toy_vocabulary(), PairingConfig(split=None, dequantize=False, seed=3))
    corners = Counter()
    for _ in range(600):
        x = sometimes[0]["target"][0]
        corners[(int(x[-1, 0] > 0), int(x[0, -1] > 0), int(x[-1, -1] > 0))] += 1
    vertical_only, horizontal_only, both = corners[(1, 0, 0)], corners[(0, 1, 0)], corners[(0, 0, 1)]
    assert abs(vertical_only / 600 - 0.21) < 0.06  # 0.3 * 0.7 each
    assert abs(horizontal_only / 600 - 0.21) < 0.06
    assert abs(both / 600 - 0.09) < 0.04


# --- the optimal-transport coupling ----------------------------------------------------------


def ot_pairs(tmp_path, **config) -> tuple[CellPairDataset, pd.DataFrame]:
    tree = write_impa_tree(tmp_path, controls=12, treated={"drugA": 6, "drugB": 5}, test_every=100)
    options = {"split": None, "dequantize": False, "flip_prob": 0.0, "coupling": "ot", **config}
    return CellPairDataset(read_impa(tree.csv), toy_vocabulary(), PairingConfig(**options)), tree.cells


def test_ot_coupling_pairs_each_group_in_order_of_brightness(tmp_path):
    # Every cell made by cell_pixels is one grey value (its number), so the pooled squared
    # distance is one-dimensional and its least-cost assignment pairs the group's treated cells
    # and drawn controls in the same order.
    pairs, cells = ot_pairs(tmp_path)
    values = cells["value"].to_numpy()
    for seed in range(5):
        controls = pairs.coupled_controls(np.random.default_rng(seed))
        assert len(controls) == len(pairs)
        groups = pd.DataFrame({"target": pairs.targets, "control": controls,
                               "perturbation": pairs.perturbation_index,
                               "batch": pairs.table.cells["batch"].to_numpy()[pairs.targets]})
        for _, group in groups.groupby(["perturbation", "batch"]):
            assert set(pairs.table.cells["batch"].to_numpy()[group["control"]]) == set(group["batch"])
            assert pairs.table.cells["is_control"].to_numpy()[group["control"]].all()
            by_target = group.sort_values("target", key=lambda rows: values[rows])
            assert np.all(np.diff(values[by_target["control"]]) >= 0), "the pairs cross: not the least-cost assignment"


def test_ot_coupling_keeps_every_control_as_likely(tmp_path):
    pairs, _ = ot_pairs(tmp_path)
    counts = Counter()
    for seed in range(400):
        counts.update(pairs.coupled_controls(np.random.default_rng(seed)).tolist())
    pool = pairs.controls_by_batch["P1"]
    drawn = np.array([counts[int(c)] for c in pool])
    expected = 400 * 11 / len(pool)  # 11 treated cells of P1, each with a control of P1's 12
    assert np.all(np.abs(drawn - expected) < 0.25 * expected), drawn


def test_ot_coupling_uses_the_given_control_and_flips_the_pair_together(tmp_path):
    pairs, _ = ot_pairs(tmp_path, flip_prob=0.5, seed=0)
    controls = pairs.coupled_controls(np.random.default_rng(0))
    corners = Counter()
    for i in range(len(pairs)):
        item = pairs.item(i, torch.Generator().manual_seed(i), int(controls[i]))
        assert item["control_id"] == controls[i]
        marked = [tuple(np.argwhere(x[0].numpy() > 200 / 127.5 - 1.01)[0]) for x in (item["control"], item["target"])]
        assert marked[0] == marked[1]  # the marked corner moved alike in both cells
        corners[marked[0]] += 1
    assert len(corners) >= 3  # and the pairs are flipped in different ways


def test_ot_coupling_refuses_a_random_control(tmp_path):
    pairs, _ = ot_pairs(tmp_path)
    with pytest.raises(ValueError, match="pass control_id from coupled_controls"):
        pairs[0]


# --- control targets (control -> control pairs) ------------------------------------------------


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_control_targets_add_control_to_control_pairs_under_the_control_name(tmp_path, coupling):
    tree = write_impa_tree(tmp_path, controls=12, treated={"drugA": 6, "drugB": 5}, test_every=100)
    table, vocabulary = read_impa(tree.csv), toy_vocabulary()
    options = {"split": None, "dequantize": False, "flip_prob": 0.0, "coupling": coupling, "seed": 0}
    plain = CellPairDataset(table, vocabulary, PairingConfig(**options))
    pairs = CellPairDataset(table, vocabulary, PairingConfig(**options, control_targets=0.25))
    treated = len(plain)  # 22: 11 treated cells in each of two batches
    assert len(pairs) == treated + round(treated / 3)  # a quarter of all items
    np.testing.assert_array_equal(pairs.targets[:treated], plain.targets)
    extra = pairs.targets[treated:]
    cells = pairs.table.cells
    assert cells["is_control"].to_numpy()[extra].all()
    assert len(set(extra.tolist())) == len(extra)  # fewer than the 24 controls: none repeated
    assert set(cells["batch"].to_numpy()[extra]) == {"P1", "P2"}  # spread over the screen's controls
    assert (pairs.perturbation_index[treated:] == vocabulary.index("DMSO")).all()
    controls = pairs.coupled_controls(np.random.default_rng(0)) if coupling == "ot" else None
    for i in range(treated, len(pairs)):
        item = pairs.item(i, torch.Generator().manual_seed(i), None if controls is None else int(controls[i]))
        assert item["perturbation"] == vocabulary.index("DMSO")
        assert cells["is_control"].iloc[item["control_id"]]
        assert cells["batch"].iloc[item["control_id"]] == item["batch"]


def test_control_targets_need_the_control_in_the_embedding_table(tmp_path):
    tree = write_impa_tree(tmp_path, controls=4, test_every=100)
    config = PairingConfig(split=None, control_targets=0.2)
    with pytest.raises(KeyError, match="perturbation 'DMSO' has no embedding .* or set control_targets to 0"):
        CellPairDataset(read_impa(tree.csv), toy_vocabulary(names=("drugA", "drugB")), config)


def test_control_targets_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError, match=r"control_targets is a share of the training items, in \[0, 1\); got 1.0"):
        PairingConfig(control_targets=1.0)


def test_unknown_coupling_is_an_error():
    with pytest.raises(ValueError, match="coupling must be one of independent, ot"):
        PairingConfig(coupling="exact")


def test_seeded_draws_repeat_and_differ_by_seed(tmp_path):
    tree = write_impa_tree(tmp_path, controls=8)
    table = read_impa(tree.csv)

    def draws(seed):
        pairs = CellPairDataset(table, toy_vocabulary(), PairingConfig(split=None, seed=seed))
        return [(pairs[i % len(pairs)]["control_id"], float(pairs[0]["target"].sum())) for i in range(30)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_dataloader_workers_draw_independently(tmp_path):
    tree = write_impa_tree(tmp_path, batches=("P1",), controls=30, treated={"drugA": 8})
    pairs = CellPairDataset(read_impa(tree.csv), toy_vocabulary(), PairingConfig(split=None, seed=0))
    pairs[0]  # the parent's generator exists before the workers are forked
    loader = DataLoader(pairs, batch_size=1, num_workers=2)
    ids = [int(batch["control_id"]) for batch in loader]
    worker0, worker1 = ids[0::2], ids[1::2]  # batches alternate between the two workers
    assert worker0 != worker1


def test_split_and_held_out_selection(tmp_path):
    tree = write_impa_tree(tmp_path, treated={"drugA": 4, "drugB": 4})
    table = read_impa(tree.csv)
    test = CellPairDataset(table, toy_vocabulary(), PairingConfig(split="test", seed=0))
    assert set(test.table.cells["split"]) == {"test"}
    assert len(test) == int(((tree.cells["split"] == "test") & ~tree.cells["is_control"]).sum())
    train = CellPairDataset(table, toy_vocabulary(["DMSO", "drugA"]), PairingConfig(held_out=("DRUGB",), seed=0))
    treated = train.table.cells[~train.table.cells["is_control"]]
    assert set(treated["perturbation"]) == {"drugA"} and set(treated["split"]) == {"train"}
    with pytest.raises(ValueError, match="'drugc'.*check the spelling"):
        CellPairDataset(table, toy_vocabulary(), PairingConfig(held_out=("drugC",)))


# --- bad input ------------------------------------------------------------------------------


def rewrite(tree, column: str, row: int, value: str) -> None:
    """Set ``column`` of data row ``row`` (0-based; CSV line row + 2) of the tree's metadata."""
    metadata = pd.read_csv(tree.csv, index_col=0, dtype=str, keep_default_na=False)
    metadata.iloc[row, metadata.columns.get_loc(column)] = value
    metadata.to_csv(tree.csv)


def test_missing_column_names_the_columns(tmp_path):
    tree = write_impa_tree(tmp_path, "cpg0000")
    with pytest.raises(ValueError, match=r"lacks columns \['CPD_NAME', 'BATCH'\].*bbbc021"):
        read_impa(tree.csv, convention="bbbc021")
    with pytest.raises(ValueError, match="unknown IMPA convention"):
        read_impa(tree.csv, convention="jump")


def test_unknown_state_names_the_line(tmp_path):
    tree = write_impa_tree(tmp_path, "rxrx1")
    rewrite(tree, "ANNOT", 5, "positive_control")
    with pytest.raises(ValueError, match="line 7: ANNOT = 'positive_control' is neither"):
        read_impa(tree.csv, convention="rxrx1")


def test_unknown_split_names_the_line(tmp_path):
    tree = write_impa_tree(tmp_path)
    rewrite(tree, "SPLIT", 2, "validation")
    with pytest.raises(ValueError, match="line 4: split 'validation' is not one of"):
        read_impa(tree.csv)


def test_missing_file_names_file_and_line(tmp_path):
    tree = write_impa_tree(tmp_path, "cpg0000")
    victim = tmp_path / "P1" / "C01_1" / "C01_1_1.npy"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3: file .*C01_1_1\.npy is missing"):
        read_impa(tree.csv, convention="cpg0000")
    table = read_impa(tree.csv, convention="cpg0000", check_files=False)  # caught again at load time
    pairs = CellPairDataset(table, toy_vocabulary(), PairingConfig(split=None, seed=0))
    with pytest.raises(FileNotFoundError, match="C01_1_1.npy is missing"):
        for _ in range(200):
            pairs[0]


def test_empty_csvs_are_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_impa(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",SAMPLE_KEY,SPLIT,STATE,CPD_NAME,BATCH\n")
    with pytest.raises(ValueError, match="lists no cells"):
        read_impa(header_only)


def test_empty_batch_value_is_an_error(tmp_path):
    tree = write_impa_tree(tmp_path)
    rewrite(tree, "BATCH", 0, "")
    with pytest.raises(ValueError, match="line 2: the batch is empty"):
        read_impa(tree.csv)


def test_perturbation_without_embedding_names_line_and_fix(tmp_path):
    tree = write_impa_tree(tmp_path)
    with pytest.raises(KeyError, match=r"line 9: perturbation 'drugB' has no embedding.*held_out"):
        CellPairDataset(read_impa(tree.csv), toy_vocabulary(["DMSO", "drugA"]), EXACT)


def test_batch_without_controls_names_the_batch(tmp_path):
    tree = write_impa_tree(tmp_path, batches=("P1", "P2"))
    for row in np.flatnonzero((tree.cells["batch"] == "P2") & tree.cells["is_control"]):
        rewrite(tree, "SPLIT", int(row), "test")  # P2's controls leave the train split
    with pytest.raises(ValueError, match="batch 'P2' has treated cells but no control cells"):
        CellPairDataset(read_impa(tree.csv), toy_vocabulary(), PairingConfig(split="train"))


def test_wrong_dtype_shape_or_channels_name_the_file(tmp_path):
    tree = write_impa_tree(tmp_path, batches=("P1",), controls=1, treated={"drugA": 2})
    pairs = CellPairDataset(read_impa(tree.csv), toy_vocabulary(), EXACT)
    path = pairs.table.cells["path"][2]
    np.save(path, np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"{path}: dtype float32, expected uint8"):
        pairs[1]
    np.save(path, np.zeros((9, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"line 4: cell file .* = \(3, 9, 8\), expected \(3, 8, 8\)"):
        pairs[1]
    with pytest.raises(ValueError, match="has 3 channels, expected 6"):
        CellPairDataset(read_impa(tree.csv, channels=6), toy_vocabulary(), EXACT)
