"""``python -m training.evaluate`` on a tiny synthetic screen with a tiny model trained for a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_metrics import random_inception_file

import training.evaluate as E
from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
from training import inception
from training.config import load_config
from training.train import MODEL_FILE, train

HELD_OUT = ["demecolcine", "nocodazole"]


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen")
    return make_synthetic_screen(root, SyntheticScreenConfig(image_size=16, batches=2, controls_per_batch=8, cells_per_perturbation=4))


def tiny_overrides(screen: Path, out: Path, steps: int) -> list[str]:
    values = {
        "data.root": str(screen), "data.synthetic": "false", "model.image_size": "16",
        "model.overrides": "{model_channels: 32, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2], dropout: 0.0}",
        "optim.batch_size": "4", "optim.steps": str(steps), "run.out": str(out), "run.checkpoint_every": "1",
        "run.log_every": "1", "run.device": "cpu", "morph.steps": "0",
    }
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def checkpoints(screen, tmp_path_factory) -> list[Path]:
    """The model after 1 step (copied aside) and after 2 steps (the run's final file)."""
    out = tmp_path_factory.mktemp("run")
    train(load_config("demo", tiny_overrides(screen, out, 1)), quiet=True)
    first = out / "step1.safetensors"
    shutil.copy(out / MODEL_FILE, first)
    train(load_config("demo", tiny_overrides(screen, out, 2)), resume=True, quiet=True)
    return [first, out / MODEL_FILE]


FAST = ["--steps", "1", "--grid", "uniform", "--solver", "euler", "--guidance", "0", "--quiet"]


def test_full_evaluation_with_inception_two_checkpoints_and_report(screen, checkpoints, tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    random_inception_file(weights)
    monkeypatch.setattr(inception, "INPUT_SIZE", 75)  # the smallest input Inception takes: keeps the test fast
    out, report = tmp_path / "metrics.json", tmp_path / "report"
    argv = ["--data", str(screen), "--out", str(out), "--inception-weights", str(weights), "--n-cells", "2",
            "--moa-cells", "2", "--kid-subsets", "3", "--report", str(report), *FAST]
    assert E.main(["--checkpoint", str(checkpoints[0]), "--checkpoint", str(checkpoints[1]), *argv]) == 0
    result = json.loads(out.read_text())

    assert list(result) == ["schema", "checkpoint", "checkpoints", "data", "sampling", "features", "moa", "methods",
                            "reference", "perturbations", "batches", "targets", "notes", "elapsed_s"]
    assert result["schema"] == E.SCHEMA
    assert [c["step"] for c in result["checkpoints"]] == [1, 2] and result["checkpoint"]["step"] == 2
    assert result["sampling"]["steps"] == 1 and result["sampling"]["solver"] == "euler"
    data = result["data"]
    assert data["format"] == "bbbc021" and data["synthetic_truth"] is True
    assert data["unseen"] == HELD_OUT and len(data["seen"]) == 6
    assert data["n_treated"] == 6 * 2 + 2 * 2  # --n-cells 2 per perturbation
    assert set(result["methods"]) == {"cellflux", "copy_control"}
    for method in result["methods"].values():
        assert list(method) == ["all", "seen", "unseen"]
        for group in method.values():
            assert tuple(group) == E.SUMMARY_KEYS
    all_ = {m: result["methods"][m]["all"] for m in result["methods"]}
    for m in all_:
        assert all_[m]["FIDo"] >= 0 and all_[m]["FIDc"] >= 0 and np.isfinite(all_[m]["KIDo"])
        assert 0 <= all_[m]["moa_accuracy"] <= 1
    assert all_["cellflux"]["FIDo"] != all_["copy_control"]["FIDo"]
    assert result["checkpoints"][1]["summary"] == result["methods"]["cellflux"]
    assert result["checkpoints"][0]["summary"]["all"]["FIDo"] != all_["cellflux"]["FIDo"]
    assert result["moa"]["features"] == "inception" and len(result["moa"]["classes"]) == 6
    assert result["notes"] == []

    entry = result["perturbations"]["camptothecin"]
    assert entry["group"] == "seen" and entry["moa"] == "Topoisomerase inhibitors" and entry["n_cells"] == 2
    assert set(entry["fid"]) == set(entry["kid"]) == {"cellflux", "copy_control"}
    assert entry["effect"]["nuclear_area"]["truth"] == 1.6
    assert all(v["copy_control"] in (1.0, None) for v in entry["effect"].values())
    assert list(result["batches"]) == ["Week1", "Week2"]
    screen_info = json.loads((screen / "screen.json").read_text())
    assert result["batches"]["Week2"]["truth"]["gain"] == screen_info["batches"]["Week2"]["gain"]
    assert len(result["batches"]["Week1"]["crop_mean"]["cellflux"]) == 3

    text = (report / "report.md").read_text()
    assert "| FIDo |" in text and "copy control" in text and "## Unseen perturbations" in text
    assert "## Targets (seen perturbations)" in text and "| camptothecin | nuclear_area | 1.6" in text
    for name in ("loss.png", "checkpoints.png", "effects.png", "batches.png", "examples/01_camptothecin.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_perfect_generator_scores_perfectly_and_beats_copying_controls(screen, checkpoints, tmp_path, monkeypatch, capsys):
    """Generation replaced by the real treated cells: every distance to the real cells must vanish."""
    table = E.load_eval_data(screen).table

    def real_cells(model, controls, selection, *args, **kwargs):
        return E.load_pixels(table, selection.treated, controls.shape[1:])

    monkeypatch.setattr(E, "generate_cells", real_cells)
    out = tmp_path / "metrics.json"
    assert E.main(["--checkpoint", str(checkpoints[1]), "--data", str(screen), "--out", str(out), *FAST]) == 0
    result = json.loads(out.read_text())
    perfect, copy = result["methods"]["cellflux"]["all"], result["methods"]["copy_control"]["all"]
    assert perfect["FIDo"] is None and "FID/KID skipped" in result["notes"][0]
    assert "FID/KID skipped" in capsys.readouterr().err  # said on stderr even with --quiet
    assert perfect["morphology_error"] == 0 and perfect["effect_error"] == 0 and perfect["batch_intensity_error"] == 0
    assert copy["morphology_error"] > 0.2 and copy["effect_error"] > 0.05
    assert perfect["moa_accuracy"] == result["reference"]["all"]["moa_accuracy"] > copy["moa_accuracy"]
    assert perfect["effect_error_vs_truth"] == pytest.approx(result["reference"]["all"]["effect_error_vs_truth"])
    assert result["moa"]["features"] == "morphology"
    camptothecin = result["perturbations"]["camptothecin"]["effect"]["nuclear_area"]
    assert camptothecin["cellflux"] == camptothecin["real"] > 1.2  # the larger nuclei are measured
    batches = result["batches"]["Week1"]["crop_mean"]
    assert batches["cellflux"] == batches["real"]
    targets = result["targets"]
    designed = {(e["perturbation"], e["feature"]) for e in targets["effects"]}
    assert ("camptothecin", "nuclear_area") in designed and ("mitoxantrone", "intensity_c0") in designed
    assert all(e["generated"] == e["real"] and e["within_25pct_of_real"] for e in targets["effects"])
    assert all(b["max_relative_error"] == 0 and b["preserved"] for b in targets["batch_artefacts"].values())
    assert targets["met"]["effect_sizes_vs_real"] and targets["met"]["batch_artefacts"]
    assert targets["beats_copy_control"]["morphology_error"] and targets["beats_copy_control"]["moa_accuracy"]


def test_copying_the_controls_misses_every_effect_target(screen, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "generate_cells", lambda model, controls, *args, **kwargs: controls.copy())
    out = tmp_path / "metrics.json"
    assert E.main(["--checkpoint", str(checkpoints[1]), "--data", str(screen), "--out", str(out), *FAST]) == 0
    targets = json.loads(out.read_text())["targets"]
    assert targets["effects"] and not any(e["sign_right"] or e["within_25pct_of_real"] for e in targets["effects"])
    assert not targets["met"]["effect_signs"] and not targets["met"]["beats_copy_control"]


def run_error(argv: list[str], capsys) -> str:
    assert E.main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_are_clear_errors(screen, checkpoints, tmp_path, capsys):
    model = str(checkpoints[1])
    base = ["--out", str(tmp_path / "m.json"), *FAST]
    (tmp_path / "empty").mkdir()
    err = run_error(["--checkpoint", model, "--data", str(tmp_path / "empty"), *base], capsys)
    assert "is not a screen in a known format" in err and "--metadata" in err
    err = run_error(["--checkpoint", model, "--data", str(screen), "--format", "rxrx1", *base], capsys)
    assert "ANNOT" in err and "metadata.csv line 2" in err
    (tmp_path / "notes.txt").write_text("hello")
    err = run_error(["--checkpoint", str(tmp_path / "notes.txt"), "--data", str(screen), *base], capsys)
    assert "--checkpoint" in err and "notes.txt is not a usable model" in err
    err = run_error(["--checkpoint", model, "--data", str(screen), "--inception-weights", str(tmp_path / "none.pth"), *base], capsys)
    assert "none.pth does not exist" in err and "pt_inception-2015-12-05-6726825d.pth" in err
    err = run_error(["--checkpoint", model, "--data", str(screen), "--perturbations", "taxol", *base], capsys)
    assert "'taxol'" in err and "no treated cells in split 'test'" in err
    assert not (tmp_path / "m.json").exists()


def test_perturbation_missing_from_the_vocabulary(screen, checkpoints, tmp_path, capsys):
    copy = tmp_path / "screen"
    shutil.copytree(screen, copy)
    metadata = pd.read_csv(copy / "metadata.csv", index_col=0)
    renamed = metadata["CPD_NAME"] == "PP-2"
    metadata.loc[renamed, "CPD_NAME"] = "PP-3"
    metadata.loc[renamed, "SMILES"] = ""  # no SMILES to fall back on
    metadata.to_csv(copy / "metadata.csv")
    err = run_error(["--checkpoint", str(checkpoints[1]), "--data", str(copy), "--out", str(tmp_path / "m.json"), *FAST], capsys)
    assert "['PP-3']" in err and "no embedding in the vocabulary" in err and "--embeddings" in err
    # With a SMILES the compound is generated from its fingerprint instead (an unseen compound).
    metadata.loc[renamed, "SMILES"] = "CC(C)(C)n1nc(-c2ccc(Cl)cc2)c2c(N)ncnc21"
    metadata.to_csv(copy / "metadata.csv")
    assert E.main(["--checkpoint", str(checkpoints[1]), "--data", str(copy), "--out", str(tmp_path / "m.json"),
                   "--perturbations", "PP-3,camptothecin", *FAST]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["data"]["perturbations"] == ["camptothecin", "PP-3"]
    assert result["data"]["unseen"] == ["PP-3"]  # no training cells of that name


def without_controls(screen: Path, out: Path, batch: str, splits: tuple[str, ...]) -> Path:
    shutil.copytree(screen, out)
    metadata = pd.read_csv(out / "metadata.csv", index_col=0)
    drop = (metadata["STATE"] == 0) & (metadata["BATCH"] == batch) & metadata["SPLIT"].isin(splits)
    metadata[~drop].to_csv(out / "metadata.csv")
    return out


def test_controls_come_from_the_batch_and_split_else_its_other_split(screen, tmp_path):
    data = E.load_eval_data(screen)
    selection = E.select_cells(data, n_cells=2)
    drawn = data.table.cells.iloc[selection.controls]
    assert drawn["is_control"].all() and (drawn["split"] == "test").all()
    assert (drawn["batch"].to_numpy() == selection.batches).all() and selection.notes == []

    data = E.load_eval_data(without_controls(screen, tmp_path / "no_test", "Week1", ("test",)))
    selection = E.select_cells(data, n_cells=2)
    drawn = data.table.cells.iloc[selection.controls]
    week1 = selection.batches == "Week1"
    assert (drawn["split"][week1] == "train").all() and (drawn["split"][~week1] == "test").all()
    assert selection.notes == ["batch Week1: no control cells in split 'test'; controls drawn from its other split"]

    data = E.load_eval_data(without_controls(screen, tmp_path / "none", "Week1", ("train", "test")))
    with pytest.raises(ValueError, match="batch 'Week1' has treated cells but no control cells; controls are drawn"):
        E.select_cells(data)


def test_training_and_evaluation_read_screens_through_one_dispatch(screen, tmp_path):
    from napari_cellflux.data.screens import read_screen_table
    from training.data import OPTION_NAMES

    table, data_format, csv = read_screen_table(screen)
    assert data_format == "bbbc021" and csv == screen / "metadata.csv"
    assert table.cells.equals(E.load_eval_data(screen).table.cells)
    with pytest.raises(ValueError, match="data.format 'jump' is not one of bbbc021, cpg0000, rxrx1, plain"):
        read_screen_table(screen, "jump", names=OPTION_NAMES)
    with pytest.raises(FileNotFoundError, match="data.metadata .*cells.csv does not exist"):
        read_screen_table(screen, "plain", "cells.csv", names=OPTION_NAMES)
