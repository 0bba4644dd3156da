"""The benchmark command (issue 8) runs end to end in --quick mode and writes its JSONs and the
Markdown table. No timing is asserted: only that every section produces its keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from plugin_helpers import tiny_model_file

from benchmarks import common, run


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path):
    # 16 x 16 cells: on CPUs without native bf16 the emulated bf16 variants dominate (the run took
    # 47 s at 32 x 32, 21 s at 16 x 16 on 2 cores); the keys checked here do not depend on the size.
    model = tiny_model_file(tmp_path / "tiny.safetensors", image_size=16)
    out = tmp_path / "results"
    assert run.main(["--quick", "--model", str(model), "--out", str(out), "--threads", "1",
                     "--screen-cells", "12", "24", "--screen-chunk", "12"]) == 0
    data = {name: json.loads((out / f"{name}.json").read_text()) for name in run.SECTIONS}
    for d in data.values():
        assert d["quick"] is True and d["environment"]["torch"] and d["environment"]["date_utc"]

    demo = data["cpu_demo"]
    assert demo["cells"] == 4 and demo["network_evaluations"] == 4
    variants = {r["variant"] for r in demo["rows"]}
    assert "eager_fp32_separate_cfg" in variants and "bf16_batched_cfg_channels_last" in variants
    assert all("median_s" in r for r in demo["rows"])
    own = {r["mode"] for r in demo["rows"] if r["sampling"].startswith("own_euler_uniform_4")}  # the tiny model's FAST
    assert own == {"sample", "morph"}

    thr = data["throughput"]
    demo_rows = [r for r in thr["rows"] if r["size"] == "demo"]
    assert all(r["status"] == "ok" for r in demo_rows)
    assert {"images_per_s_at_100_nfe", "achieved_tflops", "percent_of_bf16_peak", "speedup_vs_baseline",
            "peak_memory_mib", "flops_per_forward"} <= set(demo_rows[0])
    paper = [r for r in thr["rows"] if r["size"] == "paper"]
    assert paper and all(r["status"] == "not run: no GPU" for r in paper)

    q = data["quality"]
    assert {(r["solver"], r["grid"]) for r in q["rows"]} == {(s, g) for s in ("euler", "midpoint", "heun") for g in ("uniform", "edm")}
    assert q["best_at_most_20_nfe"]["nfe"] <= 20 and "within_5pct" in q["best_at_most_20_nfe"]
    assert set(q["rows"][0]["morphology_relative_difference"]) >= {"nuclear_area", "cell_elongation", "intensity_c0"}
    assert q["fid"].startswith("not run")

    mem = data["screen_memory"]
    assert [r["n_cells"] for r in mem["rows"]] == [12, 24] and all(r["status"] == "ok" for r in mem["rows"])
    assert mem["rss_ratio_largest_to_smallest"] is not None

    md = (out / "RESULTS.md").read_text()
    for heading in ("## Demo on the CPU", "## Throughput", "## Quality against network evaluations", "## Virtual-screen memory"):
        assert heading in md
    assert "--quick" in md and "not run: no GPU" in md


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("Some GPU", None)])
def test_gpu_peak_table(name, peak):
    assert common.gpu_peak_tflops(name) == peak


def test_paper_preset_costs_the_papers_0_41_tflop_per_forward():
    """The one check of the published forward cost (docs/method.md, Model: ~0.41 TFLOP per
    96 x 96 image), through the counter the throughput table divides by; the parameter count is
    test_model's."""
    from napari_cellflux.core.unet import preset

    assert abs(common.flops_per_image(preset("bbbc021"), 96) - 0.4075e12) < 0.005e12


@pytest.mark.slow
def test_phenotype_truth_scores_its_measured_cells_again(tmp_path, capsys):
    """The ground-truth benchmark end to end at small sizes (about 2 minutes on 2 cores): the
    realised-design ranking is scored, and --rescore gives the same scores from the cells table."""
    from benchmarks import phenotype_truth

    base = ["--screen", str(tmp_path / "screen"), "--cells", "10", "--reference-cells", "10",
            "--features", "shape,intensity", "--cells-table", str(tmp_path / "cells.csv")]
    assert phenotype_truth.main([*base, "--rescore", "--out", str(tmp_path / "none.json")]) == 2
    assert "--cells-table" in capsys.readouterr().err and not (tmp_path / "none.json").exists()
    assert phenotype_truth.main([*base, "--out", str(tmp_path / "first.json")]) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    assert set(first["realised_effect_sizes"]) == set(first["methods"]["cellflux"]["effect_size"])
    assert all(-1 <= m["spearman_vs_realised"] <= 1 for m in first["methods"].values())
    assert phenotype_truth.main([*base, "--rescore", "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["methods"] == first["methods"] and again["realised_effect_sizes"] == first["realised_effect_sizes"]


def test_modes_measurement_floor_brackets_the_real_effect(tmp_path):
    from benchmarks.modes import measurement_floor
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from training import metrics as M
    from training.evaluation.data import load_eval_data, load_pixels, select_cells

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=20, cells_per_perturbation=20))
    data = load_eval_data(screen)
    selection = select_cells(data, split="test", seed=0)
    index = selection.index("PP-2")
    treated = M.measure_cells(load_pixels(data.table, selection.treated[index], data.shape))["cell_elongation"]
    paired = M.measure_cells(load_pixels(data.table, selection.controls[index], data.shape))["cell_elongation"]
    rows = [{"perturbation": "PP-2", "group": "seen", "feature": "cell_elongation", "real": treated.mean() / paired.mean()},
            {"perturbation": "nocodazole", "group": "unseen", "feature": "cell_elongation", "real": 0.8}]
    measurement_floor(screen, rows, seed=0, rounds=500)
    low, high = rows[0]["real_interval_recovered"]
    assert low < 1 < high and high - low > 0.05  # the point estimate inside an interval of real width
    assert 0.3 < rows[0]["train_real_recovered"] < 3  # other real PP-2 cells elongate the same way
    assert "real_interval_recovered" not in rows[1]  # unseen compounds have no training cells


def test_modes_fibres_score_the_evaluated_cells_of_each_mode(tmp_path):
    from benchmarks.modes import DEMO, evaluate_mode, fibres
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=20))
    generated = {}
    evaluated = {mode: evaluate_mode(str(DEMO), screen, mode, 0, generated) for mode in ("sample", "morph")}
    # the evaluation hands over the very cells it measured
    for mode, result in evaluated.items():
        assert generated[mode].dtype == np.uint8 and len(generated[mode]) == result["data"]["n_treated"]
    result = fibres(str(DEMO), screen, seed=0, generated=generated)
    rows = result["perturbations"]
    assert rows["nocodazole"]["group"] == "unseen" and rows["nocodazole"]["real_train"] is None
    assert all(0 <= rows[n][k] <= 1 for n in rows for k in ("real", "control", "sample", "morph"))
    # the real microtubule destabiliser has lost its fibres; its controls have them
    assert rows["colchicine"]["real"] < 0.75 * rows["colchicine"]["control"]
    assert "colchicine" not in result["averaged_over"] and "PP-2" in result["averaged_over"]
    # the modes differ (morph starts from the clean control's fibres, sample from noise)
    assert abs(result["generated_over_real"]["sample"] - result["generated_over_real"]["morph"]) > 0.01


def test_recipes_scores_each_model_as_the_modes_benchmark_does(tmp_path):
    from benchmarks.modes import DEMO, designed_effects, evaluate_mode
    from benchmarks.recipes import markdown, score_models
    from napari_cellflux import api
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=20))
    # nothing given: each mode with the demo's own settings (which differ), as evaluate_mode runs it
    own = {mode: (s.guidance, s.morph_main_share) for mode in ("morph", "sample")
           for s in [api.load_model(DEMO).sampling.for_mode(mode)]}
    rows = score_models([str(DEMO)], screen, guidances=[None])
    assert [(r["mode"], (r["guidance"], r["morph_main_share"])) for r in rows] == list(own.items())
    assert own["morph"] != own["sample"]
    # --morph-main-share 0: morph by the morph network alone, a row of its own
    [alone] = score_models([str(DEMO)], screen, guidances=[None], modes=("morph",), main_shares=(0.0,))
    assert alone["morph_main_share"] == 0.0 and alone["seen"] != rows[0]["seen"]
    assert "| demo | morph (0.15 main) |" in markdown(rows) and "| demo | morph |" in markdown([alone])
    for row in rows:
        # the same cells, measured once here and once per mode there: the same shares
        expected = {f"{e['perturbation']} {e['feature']}": e[f"{row['mode']}_recovered"] for e in
                    designed_effects({row["mode"]: evaluate_mode(str(DEMO), screen, row["mode"], 0, {})})}
        assert row["seen"] | row["unseen"] == pytest.approx(expected)
        assert "colchicine cell_elongation" in row["seen"] and "nocodazole texture_c1" in row["unseen"]
        assert row["within"] == sum(abs(v - 1) <= 0.1 for v in row["seen"].values())
    assert markdown(rows).count("\n| demo | ") == 4  # a row per mode in each table, named for the model file
    # real treated cells share no fibres with their controls; morph grows each control's own
    # (alsterpaullone's brighter fibres), sample keeps less of them and draws more of its own
    by = {r["mode"]: r for r in rows}
    assert abs(by["morph"]["fibres_control_gain_real"]) < 0.2
    assert by["morph"]["fibres_control_gain"] > 1 and by["sample"]["fibres_control_gain"] < by["morph"]["fibres_control_gain"]
    assert by["sample"]["fibres_new_over_real"] > by["morph"]["fibres_new_over_real"] > 0


def test_recipes_scores_the_training_split_as_the_evaluation_selects_it(tmp_path, capsys):
    """--split train: the cells the model learnt from, chosen as training.evaluate --split train
    --n-cells chooses them, so a miss on the test cells can be told from a miss of what was learnt."""
    from benchmarks.modes import DEMO, designed_effects
    from benchmarks.recipes import main, score_models
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from training.evaluate import EvalConfig, evaluate

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=20))
    [train] = score_models([str(DEMO)], screen, guidances=[None], modes=("morph",), split="train", cells=6)
    result = evaluate(EvalConfig(checkpoints=[str(DEMO)], data=str(screen), out=str(tmp_path / "metrics.json"),
                                 mode="morph", split="train", n_cells=6, quiet=True))
    expected = {f"{e['perturbation']} {e['feature']}": e["morph_recovered"]
                for e in designed_effects({"morph": result})}
    assert train["split"] == "train" and train["seen"] | train["unseen"] == pytest.approx(expected)
    # the held-out compounds have no training cells, so only the seen ones are scored
    assert train["unseen"] == {} and "PP-2 cell_elongation" in train["seen"]
    # the real cells fix each effect only so precisely: an interval about their own share, 1
    assert train["real_interval"].keys() == train["seen"].keys()
    assert all(low < 1 < high for low, high in train["real_interval"].values())
    [test] = score_models([str(DEMO)], screen, guidances=[None], modes=("morph",), cells=6)
    assert test["split"] == "test" and test["seen"] != train["seen"]
    assert main(["--checkpoints", str(DEMO), "--screen", str(screen), "--cells", "0",
                 "--out", str(tmp_path / "none.json")]) == 2
    assert "--cells 0: give at least 1" in capsys.readouterr().err and not (tmp_path / "none.json").exists()


def test_recipes_measures_what_each_mode_does_to_controls_under_the_control(tmp_path):
    """The control -> control ratios: 1 for every feature where the flow leaves the controls as
    they are (a zero velocity in morph keeps every pixel), not 1 where the noised start stays in."""
    import torch

    from benchmarks.modes import DEMO
    from benchmarks.recipes import markdown, score_models
    from napari_cellflux import api
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from napari_cellflux.models.model_file import save_model

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=8))
    still = api.load_model(DEMO, device="cpu")
    with torch.no_grad():
        for network in {still.network_for("sample"), still.network_for("morph")}:
            for p in network.out[-1].parameters():
                p.zero_()  # the velocity is 0 everywhere, in either mode
    save_model(still, tmp_path / "still.safetensors")
    rows = score_models([str(DEMO), str(tmp_path / "still.safetensors")], screen, guidances=[0.0])
    by = {(r["checkpoint"].endswith("still.safetensors"), r["mode"]): r["control_to_control"] for r in rows}
    features = {"nuclear_area", "cell_elongation", "texture_c1", "intensity_c0", "intensity_c1", "intensity_c2"}
    assert all(set(ratios) == features for ratios in by.values())
    assert by[True, "morph"] == pytest.approx(dict.fromkeys(features, 1.0), abs=1e-12)
    # sample's start is control + 0.5 x noise; a still flow leaves that noise in the cells
    assert by[True, "sample"]["texture_c1"] > 1.2
    # the trained demo draws clean cells from that start: far nearer the controls' texture
    assert abs(by[False, "sample"]["texture_c1"] - 1) < abs(by[True, "sample"]["texture_c1"] - 1)
    assert "control -> control: nuclear_area" in markdown(rows)
    # --noise-level replaces sample's start noise (recorded); a still flow keeps less of it at 0.1
    quieter = score_models([str(tmp_path / "still.safetensors")], screen, guidances=[0.0], noise_level=0.1,
                           modes=("sample",))
    assert [(r["mode"], r["noise_level"]) for r in quieter] == [("sample", 0.1)]
    assert 1 < quieter[0]["control_to_control"]["texture_c1"] < by[True, "sample"]["texture_c1"]
    # --steps replaces each model's solver steps (recorded); fewer steps move the generated cells
    assert {r["steps"] for r in rows} == {still.sampling.steps}
    coarse = score_models([str(DEMO)], screen, guidances=[0.0], modes=("morph",), steps=2)
    assert coarse[0]["steps"] == 2
    fine = next(r for r in rows if r["checkpoint"] == str(DEMO) and r["mode"] == "morph")
    assert coarse[0]["seen"] != fine["seen"]


def test_fine_detail_measures_each_mode_against_the_real_cells(tmp_path, capsys):
    """Generated sets come from the real cells' own controls; more pixel noise on cells drawn with
    a texture-lowering effect weakens their measured effect (colchicine: ratio < 1 rises to 1)."""
    import json

    from benchmarks import fine_detail
    from benchmarks.modes import DEMO
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=20))
    out = tmp_path / "detail.json"
    assert fine_detail.main(["--checkpoint", str(DEMO), "--screen", str(screen), "--perturbation", "colchicine",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    generated = result["generated"]
    assert set(generated) == {"controls", "real", "morph", "sample", "cells"}
    assert generated["cells"] == 8  # colchicine's test cells: 20 per batch, 20% test, 2 batches
    # colchicine dissolves the fibres: less fine detail in the real cells than in their controls
    assert generated["real"]["fine_detail_std"] < generated["controls"]["fine_detail_std"]
    for mode in ("morph", "sample"):
        assert generated[mode]["fine_detail_over_real"] == pytest.approx(
            generated[mode]["fine_detail_std"] / generated["real"]["fine_detail_std"])
    noise = result["pixel_noise_alone"]
    assert noise["1x"]["share_of_1x"] == pytest.approx(1.0)
    assert noise["1x"]["texture_ratio"] < noise["2x"]["texture_ratio"] < 1
    assert noise["2x"]["share_of_1x"] < 0.9
    assert "texture share" in capsys.readouterr().out
    assert fine_detail.main(["--checkpoint", str(DEMO), "--out", str(tmp_path / "x.txt")]) == 2


def test_recipes_scores_each_autoguidance_in_sample_and_morph_once(tmp_path):
    """--autoguidance: a row per value in sample; morph runs without it, so one row."""
    import copy

    import torch

    from benchmarks.modes import DEMO
    from benchmarks.recipes import markdown, score_models
    from napari_cellflux import api
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from napari_cellflux.models.model_file import save_model

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=12, cells_per_perturbation=8))
    model = api.load_model(DEMO, device="cpu")
    model.guide, model.guide_step = copy.deepcopy(model.unet), 1
    with torch.no_grad():
        for p in model.guide.out[-1].parameters():
            p.zero_()  # a guide with velocity 0: autoguidance a scales the velocity by 1 + a
    save_model(model, tmp_path / "guided.safetensors")
    rows = score_models([str(tmp_path / "guided.safetensors")], screen, guidances=[0.0], autoguidances=(0.0, 1.0))
    assert [(r["mode"], r["autoguidance"]) for r in rows] == [("morph", 0.0), ("sample", 0.0), ("sample", 1.0)]
    assert rows[1]["seen"] != rows[2]["seen"]
    assert "| guided | sample | 0 | 1 | " in markdown(rows)


def test_real_effects_pools_sets_and_scores_a_population_faithful_generator_on_each(tmp_path, capsys):
    """Each set's ratio is its cells' own (as the evaluation pairs them); the pooled ratio weighs the
    sets by their cells; a set drawn stronger than the pool gives the pool a share under 100%."""
    from benchmarks.real_effects import main, measure_set, population_shares
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
    from training import metrics as M
    from training.evaluation.data import load_eval_data, load_pixels, select_cells

    screen = tmp_path / "screen"
    make_synthetic_screen(screen, SyntheticScreenConfig(batches=2, controls_per_batch=20, cells_per_perturbation=20))
    sets = {split: measure_set(screen, split) for split in ("test", "train")}
    # the seen compounds' designed effects only (truth != 1), none of the held-out ones
    assert "PP-2 cell_elongation" in sets["test"] and "PP-2 intensity_c0" not in sets["test"]
    assert not any(key.startswith(("nocodazole", "demecolcine")) for key in sets["test"])
    data = load_eval_data(screen)
    selection = select_cells(data, split="test", seed=0)
    index = selection.index("PP-2")
    treated = M.measure_cells(load_pixels(data.table, selection.treated[index], data.shape))["cell_elongation"]
    paired = M.measure_cells(load_pixels(data.table, selection.controls[index], data.shape))["cell_elongation"]
    assert sets["test"]["PP-2 cell_elongation"]["ratio"] == pytest.approx(treated.mean() / paired.mean())
    pooled, shares = population_shares(sets)
    for key, ratio in pooled.items():
        a, b = sets["test"][key]["ratio"], sets["train"][key]["ratio"]
        assert min(a, b) - 1e-12 <= ratio <= max(a, b) + 1e-12
        # the set further from 1 than the pool scores a perfect generator under 100%, the other over
        stronger = "test" if abs(a - 1) > abs(b - 1) else "train"
        assert shares[stronger][key] <= 1 + 1e-12
    assert main(["--sets", f"{screen}:test", f"{screen}:validation", "--out", str(tmp_path / "r.json")]) == 2
    assert "give SCREEN:SPLIT with SPLIT one of" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    assert main(["--sets", f"{screen}:test", f"{screen}:train", "--out", str(tmp_path / "r.json")]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["pooled_ratio"] == pytest.approx(pooled) and set(written["sets"]) == {f"{screen}:test", f"{screen}:train"}
