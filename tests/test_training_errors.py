"""`python -m training.train` refuses bad settings in one line (exit 2), resumes only the run it
claims to resume, and cleans up after killed runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import tiny_overrides

from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
from training.config import load_config
from training.train import MODEL_FILE, STATE_FILE, main, train


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen")
    make_synthetic_screen(root, SyntheticScreenConfig(image_size=16, batches=2, controls_per_batch=8, cells_per_perturbation=4))
    return root


@pytest.fixture(scope="module")
def run(screen, tmp_path_factory) -> Path:
    """A finished 2-step run to resume from."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(load_config("demo", tiny_overrides(screen, out, 2)), quiet=True)
    return out


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("training: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "override,expected",
    [("optim.steps=0", "steps must be >= 1"), ("optim.steps=abc", "optim.steps"), ("optim.lr=nan", "optim.lr"),
     ("optim.batch_size=0", "batch_size"), ("run.device=tpu", "run.device"), ("optim.noise_prob=2", "noise_prob"),
     ("optim.time_std=0", "optim.time_std must be > 0"), ("optim.time_mean=nan", "optim.time_mean: expected a finite float"),
     ("data.coupling=exact", "data.coupling must be one of independent, ot"), ("optim.decay_steps=-1", "decay_steps must be >= 0"),
     ("data.control_targets=1", "data.control_targets is a share of the training items, in [0, 1)"),
     ("data.flip_prob=2", "data.flip_prob must be in [0, 1]")],
)
def test_bad_settings_are_refused_before_anything_is_written(override, expected, screen, tmp_path, capsys):
    line = one_line_error(capsys, ["--config", "demo", "--quiet", *tiny_overrides(screen, tmp_path / "run", 2), override])
    assert expected in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override,key",
    [("optim.lr=0.1", "optim.lr"), ("optim.batch_size=2", "optim.batch_size"),
     ("model.overrides={model_channels: 64, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2], dropout: 0.1}",
      "model.overrides")],
)
def test_resume_with_a_changed_run_is_refused_and_names_the_key(override, key, run, screen, capsys):
    before = (run / "config.yaml").read_text(), (run / STATE_FILE).read_bytes()
    line = one_line_error(capsys, ["--config", "demo", "--resume", "--quiet", *tiny_overrides(screen, run, 4), override])
    assert key in line and "saved" in line
    assert ((run / "config.yaml").read_text(), (run / STATE_FILE).read_bytes()) == before


def test_resume_may_extend_a_run_and_records_the_truth(screen, tmp_path):
    out = tmp_path / "run"
    train(load_config("demo", tiny_overrides(screen, out, 2)), quiet=True)
    (out / f".{STATE_FILE}.0123.part").write_bytes(b"left by a killed run")
    model_file = out / MODEL_FILE
    model_file.unlink()  # as after a crash between writing state.pt and the model file
    train(load_config("demo", tiny_overrides(screen, out, 4)), resume=True, quiet=True)
    assert not list(out.glob(".*.part"))
    assert "steps: 4" in (out / "config.yaml").read_text()
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 4 and model_file.is_file()


def test_a_killed_synthetic_build_leaves_no_half_screen(tmp_path, monkeypatch):
    from napari_cellflux.data import synthetic

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as kill would, mid-build

    monkeypatch.setattr(synthetic, "_ground_truth", crash)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_screen(tmp_path / "screen", SyntheticScreenConfig(controls_per_batch=2, cells_per_perturbation=2))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    make_synthetic_screen(tmp_path / "screen", SyntheticScreenConfig(controls_per_batch=2, cells_per_perturbation=2))
    assert (tmp_path / "screen" / "metadata.csv").is_file()


@pytest.mark.slow
def test_torchrun_first_run_builds_the_screen_once_on_a_fresh_folder(tmp_path):
    """Rank 0 builds the synthetic screen while rank 1 waits at the barrier, then both train."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    overrides = [f"data.root={tmp_path / 'screen'}", "data.synthetic=true", "model.image_size=16",
                 "model.overrides={model_channels: 32, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2]}",
                 "optim.batch_size=4", "optim.steps=1", f"run.out={tmp_path / 'run'}", "run.device=cpu", "morph.steps=0"]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.train",
         "--config", "demo", "--quiet", *overrides],
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}, cwd=repo, timeout=300,
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "screen" / "metadata.csv").is_file() and (tmp_path / "run" / MODEL_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "screen"]  # no half-built folder left
