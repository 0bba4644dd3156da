"""Training: configs, resumable runs identical to straight ones, DDP through torchrun, final model."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_cellflux import api
from napari_cellflux.core.unet import UNetConfig
from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
from napari_cellflux.errors import InputError
from napari_cellflux.settings import SamplingConfig
from training.config import load_config
from training.train import MODEL_FILE, STATE_FILE, main, train, training_step

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen")
    make_synthetic_screen(root, SyntheticScreenConfig(image_size=16, batches=2, controls_per_batch=8, cells_per_perturbation=4))
    return root


def tiny_overrides(screen: Path, out: Path, steps: int, **extra: str) -> list[str]:
    values = {
        "data.root": str(screen),
        "data.synthetic": "false",
        "model.image_size": "16",
        "model.overrides": "{model_channels: 32, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2], dropout: 0.1}",
        "optim.batch_size": "4",
        "optim.steps": str(steps),
        "run.out": str(out),
        "run.checkpoint_every": "2",
        "run.log_every": "1",
        "run.device": "cpu",
        "morph.steps": "0",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("coupling,decay_steps", [("independent", 0), ("ot", 0), ("independent", 4)])
def test_resumed_run_matches_straight_run(screen, tmp_path, coupling, decay_steps):
    # 12 steps of batch 4 cross the first epoch (36 treated cells, 9 batches) after the resume
    # at step 8, so the ot coupling's per-epoch assignment is made by the resumed run too. A
    # cool-down over steps 8-11 may be added on resume: the first 8 ran at the same constant rate.
    def cfg(out: str, steps: int, decay: int = decay_steps):
        return load_config("demo", tiny_overrides(screen, tmp_path / out, 12, **{
            "optim.steps": str(steps), "data.coupling": coupling, "optim.decay_steps": str(decay)}))

    straight = train(cfg("a", 12), quiet=True)
    train(cfg("b", 8, decay=0), quiet=True)
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["step"] == 8 and state["epoch"] == 0
    resumed = train(cfg("b", 12), resume=True, quiet=True)

    for name, value in weights(straight.unet).items():
        assert torch.equal(value, weights(resumed.unet)[name]), name
    for name, value in weights(straight.ema.model).items():
        assert torch.equal(value, weights(resumed.ema.model)[name]), name
    assert straight.ema.num_updates == resumed.ema.num_updates == 12
    steps_logged = [int(line.split(",")[0]) for line in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps_logged == list(range(1, 13))


def test_cool_down_lowers_the_rate_linearly_to_zero_at_the_end():
    from training.train import OptimConfig, learning_rate

    rates = [learning_rate(OptimConfig(lr=1e-3, decay_steps=4), step, 10) for step in range(10)]
    assert rates[:6] == [1e-3] * 6  # exactly the constant rate before the cool-down
    assert rates[6:] == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert all(learning_rate(OptimConfig(lr=1e-3), step, 10) == 1e-3 for step in range(10))


def test_resume_refuses_to_change_the_rates_of_steps_already_run(screen, tmp_path):
    # Steps 4-7 of the saved run were in its cool-down; 12 steps would have run them at full rate.
    def cfg(steps: int):
        return load_config("demo", tiny_overrides(screen, tmp_path / "run", steps, **{"optim.decay_steps": "4"}))

    train(cfg(8), quiet=True)
    with pytest.raises(ValueError, match="optim.steps 8 -> 12 changes the learning rate of steps already run"):
        train(cfg(12), resume=True, quiet=True)


def test_guide_is_the_ema_at_guide_step_and_survives_resumes(screen, tmp_path):
    """optim.guide_step keeps the EMA of that step in the model file; a run stopped before, at or
    after it and resumed writes the same file as a straight run (bit for bit)."""
    def cfg(out: str, steps: int, guide_step: int | None = 4):
        extra = {"optim.steps": str(steps)} | ({"optim.guide_step": str(guide_step)} if guide_step else {})
        return load_config("demo", tiny_overrides(screen, tmp_path / out, steps, **extra))

    ema_at_4 = weights(train(cfg("short", 4, guide_step=None), quiet=True).ema.model)
    straight = train(cfg("a", 6), quiet=True)
    model = api.load_model(straight.model_path)
    assert model.guide is not None and model.guide_step == 4 and model.provenance["step"] == 6
    for name, value in ema_at_4.items():
        assert torch.equal(value, model.guide.state_dict()[name]), name
    assert any(not torch.equal(v, model.unet.state_dict()[k]) for k, v in ema_at_4.items())

    train(cfg("b", 3, guide_step=None), quiet=True)  # stopped before the guide step, set on resume
    train(cfg("b", 6), resume=True, quiet=True)
    train(cfg("c", 4, guide_step=None), quiet=True)  # stopped exactly at it, the guide step set on resume
    train(cfg("c", 6), resume=True, quiet=True)
    train(cfg("d", 5), quiet=True)  # stopped after it: the guide rides in state.pt
    train(cfg("d", 6), resume=True, quiet=True)
    for run in "bcd":
        resumed = api.load_model(tmp_path / run / MODEL_FILE)
        for name, value in model.guide.state_dict().items():
            assert torch.equal(value, resumed.guide.state_dict()[name]), (run, name)
        for name, value in model.unet.state_dict().items():
            assert torch.equal(value, resumed.unet.state_dict()[name]), (run, name)


def test_the_morph_network_is_the_run_on_clean_sources_and_survives_resumes(screen, tmp_path):
    """morph.steps trains, after the main run, the same config on clean-source batches only (no
    guide) in run.out/morph; the model file carries its EMA as the morph network. A finished run
    given one on resume, or stopped inside the morph run, ends with the same weights."""
    def cfg(out: str, morph: int = 3, **extra: str):
        return load_config("demo", tiny_overrides(screen, tmp_path / out, 4, **{"morph.steps": str(morph), **extra}))

    straight = api.load_model(train(cfg("a"), quiet=True).model_path)
    assert straight.morph_step == 3 and straight.provenance["step"] == 4 and straight.training["morph"] == {"steps": 3, "dropout": None}
    assert (tmp_path / "a" / "morph" / STATE_FILE).is_file()
    main_only = weights(train(cfg("main", morph=0), quiet=True).ema.model)
    clean = weights(train(load_config("demo", tiny_overrides(screen, tmp_path / "clean", 3, **{"optim.noise_prob": "0"})),
                          quiet=True).ema.model)
    assert api.load_model(tmp_path / "main" / MODEL_FILE).morph is None
    assert any(not torch.equal(v, main_only[k]) for k, v in clean.items())

    train(cfg("b", morph=0), quiet=True)  # finished without one, given one on resume
    train(cfg("b"), resume=True, quiet=True)
    train(cfg("c", morph=2), quiet=True)  # as if stopped two steps into the morph run
    train(cfg("c"), resume=True, quiet=True)
    for model in (straight, *(api.load_model(tmp_path / run / MODEL_FILE) for run in "bc")):
        for name, value in clean.items():
            assert torch.equal(value, model.morph.state_dict()[name]), name
        for name, value in main_only.items():
            assert torch.equal(value, model.unet.state_dict()[name]), name


def test_the_morph_run_may_drop_out_more_and_the_file_keeps_one_architecture(screen, tmp_path):
    """morph.dropout is the morph run's dropout alone: its weights are a dropout run's, the main
    network's are untouched, and the file's morph network has the model's own config (dropout has
    no weights), so it loads as any model file does."""
    def cfg(out: str, **extra: str):
        return load_config("demo", tiny_overrides(screen, tmp_path / out, 3, **extra))

    model = api.load_model(train(cfg("a", **{"morph.steps": "3", "morph.dropout": "0.5"}), quiet=True).model_path)
    assert model.training["morph"] == {"steps": 3, "dropout": 0.5} and model.morph.config == model.config
    assert model.config.dropout == 0.1  # the main run's, from tiny_overrides
    dropped = weights(train(cfg("b", **{"optim.noise_prob": "0", "model.overrides.dropout": "0.5"}), quiet=True).ema.model)
    plain = weights(train(cfg("c", **{"optim.noise_prob": "0"}), quiet=True).ema.model)
    assert any(not torch.equal(v, plain[k]) for k, v in dropped.items())  # the dropout changed the run
    for name, value in dropped.items():
        assert torch.equal(value, model.morph.state_dict()[name]), name
    with pytest.raises(InputError, match=r"morph.dropout must be in \[0, 1\) or null"):
        cfg("d", **{"morph.dropout": "1.5"})


def test_guide_step_that_cannot_be_kept_is_refused_or_noted(screen, tmp_path, capsys):
    def cfg(steps: int, out: str = "run", **extra: str):
        return load_config("demo", tiny_overrides(screen, tmp_path / out, steps, **extra))

    # at or past the run's end there is no less-trained snapshot: no guide, and none recommended
    short = train(cfg(4, "short", **{"optim.guide_step": "4", "sampling.autoguidance": "1.5"}))
    assert "optim.guide_step 4 is not below the run's 4 steps" in capsys.readouterr().err
    model = api.load_model(short.model_path)
    assert model.guide is None and model.sampling.autoguidance == 0.0
    train(cfg(3, **{"optim.guide_step": "null"}), quiet=True)
    with pytest.raises(InputError, match="at step 3 already, past it"):
        train(cfg(6, **{"optim.guide_step": "2"}), resume=True, quiet=True)
    train(cfg(4, **{"optim.guide_step": "3"}), resume=True, quiet=True)
    with pytest.raises(InputError, match="kept at step 3; resume with optim.guide_step=3"):
        train(cfg(6, **{"optim.guide_step": "2"}), resume=True, quiet=True)


def test_training_changes_weights_and_ema_lags(screen, tmp_path):
    cfg = load_config("demo", tiny_overrides(screen, tmp_path / "run", 3))
    torch.manual_seed(cfg.run.seed)
    from training.train import UNet, load_training_data, unet_config

    initial = weights(UNet(unet_config(cfg, load_training_data(cfg.data, image_size=16, seed=0, build=False))))
    result = train(cfg, quiet=True)
    trained, averaged = weights(result.unet), weights(result.ema.model)
    moved = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert moved, "optimisation did not change any weight"
    assert any(not torch.equal(trained[k], averaged[k]) for k in moved), "EMA equals the live weights"


def test_final_model_is_self_contained_and_generates(screen, tmp_path):
    result = train(load_config("demo", tiny_overrides(screen, tmp_path / "run", 2)), quiet=True)
    model = api.load_model(result.model_path, device="cpu")
    assert model.vocabulary.kind == "compound" and model.vocabulary.control == "DMSO"
    assert model.vocabulary.smiles["colchicine"].startswith("C")
    assert [c.name for c in model.channels] == ["DNA", "cytoskeleton", "cytoplasm"]
    assert model.image_size == 16 and model.provenance["step"] == 2
    for name, value in weights(result.ema.model).items():
        assert torch.equal(value, model.unet.state_dict()[name]), name
    controls = torch.rand(2, 3, 16, 16) * 2 - 1
    trajectory = api.generate(model, controls, model.vocabulary.names[1], sampling=SamplingConfig(steps=2))
    assert trajectory.states.shape == (3, 2, 3, 16, 16)


def test_existing_run_needs_resume_and_missing_state_is_reported(screen, tmp_path, capsys):
    overrides = tiny_overrides(screen, tmp_path / "run", 2)
    assert main(["--config", "demo", "--quiet", *overrides]) == 0
    assert main(["--config", "demo", "--quiet", *overrides]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--config", "demo", "--resume", "--quiet", *tiny_overrides(screen, tmp_path / "fresh", 2)]) == 2
    assert "no state.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.learning_rate=1", "unknown keys ['learning_rate']"),
        ("colour=red", "unknown keys ['colour']"),
        ("optim", "must look like section.key=value"),
        ("optim.clean_time_std=0", "optim.clean_time_std must be > 0, got 0"),
        ("morph.steps=-1", "morph.steps must be >= 0, got -1; 0 trains no morph network"),
    ],
)
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("demo", [override])


def test_the_synthetic_screen_is_built_as_asked_and_a_different_one_is_refused(tmp_path):
    """data.synthetic builds the screen of data.synthetic_screen's counts, byte for byte what
    `cellflux synth` writes with them; a screen made with other counts is refused by name."""
    from training.data import check_synthetic_screen

    counts = {"batches": 1, "controls_per_batch": 6, "cells_per_perturbation": 3}
    cfg = load_config("demo", [f"data.root={tmp_path / 'built'}", f"data.synthetic_screen={counts}"])
    check_synthetic_screen(cfg.data, image_size=16, build=True)
    make_synthetic_screen(tmp_path / "synth", SyntheticScreenConfig(image_size=16, **counts))
    built = {p.relative_to(tmp_path / "built"): p.read_bytes() for p in (tmp_path / "built").rglob("*") if p.is_file()}
    synth = {p.relative_to(tmp_path / "synth"): p.read_bytes() for p in (tmp_path / "synth").rglob("*") if p.is_file()}
    assert built == synth and len(built) > 3
    other = load_config("demo", [f"data.root={tmp_path / 'built'}", "data.synthetic_screen.cells_per_perturbation=4"])
    with pytest.raises(ValueError, match=r"batches 1 \(asked 3\), controls_per_batch 6 \(asked 500\), "
                                         r"cells_per_perturbation 3 \(asked 4\); point data.root at a new folder"):
        check_synthetic_screen(other.data, image_size=16, build=True)
    with pytest.raises(ValueError, match="data.synthetic_screen: cells=3"):
        load_config("demo", ["data.synthetic_screen.cells=3"])
    (tmp_path / "built" / "screen.json").write_text("{")
    with pytest.raises(ValueError, match=r"screen.json: not valid JSON .*write it again with `cellflux synth`"):
        check_synthetic_screen(cfg.data, image_size=16, build=True)


def test_the_shipped_demo_records_the_demo_config_and_its_sampler():
    """training/configs/demo.yaml is the whole recipe of the bundled file, its sampler included
    (what docs/modes.md measures)."""
    import json

    model = api.load_model("demo", device="cpu")
    cfg = load_config("demo")
    assert model.provenance["config"] == "demo" and model.provenance["step"] == cfg.optim.steps
    now = json.loads(json.dumps(cfg.to_dict()))
    # morph.dropout came after the file was trained; unset in demo.yaml, it is the run the file records
    assert "dropout" not in model.training["morph"] and now["morph"].pop("dropout") is None
    assert model.training == now and model.sampling == cfg.sampling
    assert model.guide_step == cfg.optim.guide_step and model.morph_step == cfg.morph.steps
    # morph mixes in a share of the main network's velocity (docs/modes.md); sample never does
    assert model.sampling.for_mode("morph").morph_main_share == 0.15 and model.morph is not None
    assert model.sampling.for_mode("sample").morph_main_share == 0.0


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="bbbc021"):
        load_config("nonexistent")


def test_paper_configs_hold_the_paper_hyper_parameters():
    for name in ("bbbc021", "rxrx1", "cpg0000"):
        cfg = load_config(name)
        assert cfg.model.preset == name and cfg.model.image_size == 96
        assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.batch_size) == (1e-4, (0.9, 0.95), 32)
        assert (cfg.optim.noise_prob, cfg.optim.class_drop_prob, cfg.optim.ema_max_decay) == (0.5, 0.2, 0.999)
        assert (cfg.optim.time_mean, cfg.optim.time_std) == (-1.2, 1.2)
    assert "cytochalasin D" in load_config("bbbc021").data.held_out


class TimeRecorder(torch.nn.Module):
    """Stands in for the UNet and keeps the training times and source noise levels it is asked about."""

    def __init__(self, condition_on_source_noise: bool = False):
        super().__init__()
        self.config = UNetConfig(condition_on_source_noise=condition_on_source_noise)
        self.times: list[torch.Tensor] = []
        self.source_noise: list[torch.Tensor | None] = []

    def forward(self, x, t, cond, cond_mask, source_noise=None):
        self.times.append(t)
        self.source_noise.append(source_noise)
        return torch.zeros_like(x)


@pytest.mark.parametrize("time_mean", [-1.2, 0.0, 1.0])
def test_training_times_follow_the_configured_distribution(time_mean):
    """t = 1 / (1 + exp(N(time_mean, time_std^2))): the median is 1 / (1 + exp(time_mean))."""
    cfg = load_config("demo", [f"optim.time_mean={time_mean}", "optim.time_std=0.5"])
    recorder, n = TimeRecorder(), 4000
    batch = {"control": torch.zeros(n, 3, 4, 4), "target": torch.ones(n, 3, 4, 4),
             "perturbation": torch.zeros(n, dtype=torch.long)}
    torch.manual_seed(0)
    training_step(recorder, batch, torch.zeros(1, 8), cfg, torch.device("cpu"), None)
    t = recorder.times[0]
    assert abs(t.median().item() - 1 / (1 + math.exp(time_mean))) < 0.02
    assert abs(torch.log(1 / t - 1).std().item() - 0.5) < 0.03


@pytest.mark.parametrize("noise_prob, median, std", [(0.0, 0.5, 1.5), (1.0, 1 / (1 + math.exp(-1.2)), 0.5)])
def test_clean_batches_take_their_own_time_mean_and_std(noise_prob, median, std):
    """optim.clean_time_mean / clean_time_std set the times of batches whose sources stay clean
    (morph's regime); noisy batches keep optim.time_mean / time_std (-1.2 / 0.5 here)."""
    cfg = load_config("demo", [f"optim.noise_prob={noise_prob}", "optim.clean_time_mean=0", "optim.clean_time_std=1.5",
                               "optim.time_std=0.5"])
    recorder, n = TimeRecorder(), 4000
    batch = {"control": torch.zeros(n, 3, 4, 4), "target": torch.ones(n, 3, 4, 4),
             "perturbation": torch.zeros(n, dtype=torch.long)}
    torch.manual_seed(0)
    training_step(recorder, batch, torch.zeros(1, 8), cfg, torch.device("cpu"), None)
    t = recorder.times[0]
    assert abs(t.median().item() - median) < 0.02
    assert abs(torch.log(1 / t - 1).std().item() - std) < 0.05


@pytest.mark.parametrize("condition_on_source_noise", [False, True])
@pytest.mark.parametrize("noise_prob", [0.0, 1.0])
def test_training_tells_a_source_noise_network_its_batch_noise_level(noise_prob, condition_on_source_noise):
    """A network built with condition_on_source_noise is told optim.noise_level for noised batches
    and 0 for clean ones; any other network is told nothing."""
    cfg = load_config("demo", [f"optim.noise_prob={noise_prob}", "optim.noise_level=0.3"])
    recorder, n = TimeRecorder(condition_on_source_noise), 8
    batch = {"control": torch.zeros(n, 3, 4, 4), "target": torch.ones(n, 3, 4, 4),
             "perturbation": torch.zeros(n, dtype=torch.long)}
    training_step(recorder, batch, torch.zeros(1, 8), cfg, torch.device("cpu"), None)
    levels = recorder.source_noise[0]
    if not condition_on_source_noise:
        assert levels is None
    else:
        assert torch.equal(levels, torch.full((n,), 0.3 * noise_prob))


@pytest.mark.slow
def test_torchrun_two_processes_share_weights_and_only_rank_zero_writes(screen, tmp_path):
    out, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    worker = (
        "import sys, torch; from training.config import load_config; from training.train import train\n"
        "r = train(load_config('demo', sys.argv[2:]), quiet=True)\n"
        "import os; torch.save(r.unet.state_dict(), os.path.join(sys.argv[1], f\"rank{os.environ['RANK']}.pt\"))\n"
    )
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(dumps),
         *tiny_overrides(screen, out, 3)],
        check=True, env=env, cwd=REPO, timeout=300, capture_output=True,
    )
    rank0 = torch.load(dumps / "rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.yaml", "metrics.csv", MODEL_FILE, STATE_FILE])
    assert not list(out.glob("*.part"))
