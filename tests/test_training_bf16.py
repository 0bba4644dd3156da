"""bf16 autocast training on CPUs that compute bf16 natively (issue 16): it agrees with fp32 over a
few steps, needs no loss scaling, and is refused, naming the CPU, where the CPU lacks it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_training import tiny_overrides
from test_training_errors import one_line_error

from napari_cellflux.core.unet import UNet
from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen
from napari_cellflux.errors import InputError
from napari_cellflux.runtime import Hardware, autocast_dtype
from training.config import load_config
from training.data import load_training_data
from training.train import METRICS_FILE, train, training_step, unet_config

CPU = torch.device("cpu")
STEPS = 4


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen")
    make_synthetic_screen(root, SyntheticScreenConfig(image_size=16, batches=2, controls_per_batch=8, cells_per_perturbation=4))
    return root


@pytest.fixture
def native_bf16_cpu(monkeypatch):
    """This CPU as one with AVX512-BF16 (where it has none, torch emulates bf16: slower, same numbers)."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})


def losses(out: Path) -> list[float]:
    with open(out / METRICS_FILE, newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_training_precision_per_cpu():
    assert autocast_dtype("bf16", CPU, training=True, hardware=Hardware("cpu", "AVX512", avx512_bf16=True)) is torch.bfloat16
    assert autocast_dtype("bf16", CPU, training=True, hardware=Hardware("cpu", "AVX512", amx_bf16=True)) is torch.bfloat16
    # auto stays fp32 on every CPU, so CPU runs (and their resumes) repeat bit for bit
    assert autocast_dtype("auto", CPU, training=True, hardware=Hardware("cpu", "AVX512", amx_bf16=True)) is None
    with pytest.raises(InputError, match="this is a CPU AVX2 without AVX512-BF16 or AMX: use optim.precision=fp32"):
        autocast_dtype("bf16", CPU, training=True, hardware=Hardware("cpu", "AVX2"))
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", CPU, training=True, hardware=Hardware("cpu", "AVX512", amx_bf16=True))


def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(screen, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    line = one_line_error(capsys, ["--config", "demo", "--quiet", *tiny_overrides(screen, tmp_path / "r", 2), "optim.precision=bf16"])
    assert "optim.precision=bf16 needs native bf16 (a CPU with AVX512-BF16 or AMX" in line and "optim.precision=fp32" in line
    assert not (tmp_path / "r" / METRICS_FILE).exists()


def test_bf16_training_agrees_with_fp32(screen, tmp_path, native_bf16_cpu):
    """Same seeds, same batches: each of 4 steps' losses within 1% of fp32's (measured: 0.1%)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config("demo", tiny_overrides(screen, tmp_path / precision, STEPS, **{"optim.precision": precision}))
        train(cfg, quiet=True)
        runs[precision] = losses(tmp_path / precision)
    assert len(runs["fp32"]) == len(runs["bf16"]) == STEPS
    assert runs["fp32"] != runs["bf16"]  # it really ran in bf16
    for a, b in zip(runs["fp32"], runs["bf16"]):
        assert abs(a - b) / a < 0.01


def test_bf16_gradients_agree_with_fp32(screen, tmp_path):
    """One step's gradients (before AdamW, which amplifies near-zero components to full steps):
    relative L2 error < 8% and cosine > 0.995 (measured: 3%, 0.9995); no loss scaling."""
    cfg = load_config("demo", tiny_overrides(screen, tmp_path, STEPS))
    data = load_training_data(cfg.data, image_size=cfg.model.image_size, seed=cfg.run.seed, build=False)
    torch.manual_seed(0)
    unet = UNet(unet_config(cfg, data)).train()
    batch = next(iter(data.loader(0, start_batch=0, batch_size=4, rank=0, world_size=1, num_workers=0)))
    grads = {}
    for dtype in (None, torch.bfloat16):
        unet.zero_grad()
        torch.manual_seed(1)  # the same noise, times and dropout for both
        training_step(unet, batch, data.vocabulary.embeddings, cfg, CPU, dtype).backward()
        grads[dtype] = torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None])
    fp32, bf16 = grads[None], grads[torch.bfloat16]
    assert fp32.dtype == bf16.dtype == torch.float32  # fp32 master weights and gradients
    assert 0 < (bf16 - fp32).norm() / fp32.norm() < 0.08
    assert torch.nn.functional.cosine_similarity(bf16, fp32, dim=0) > 0.995
