"""The fast generation paths (issue 8) agree with the fp32 reference: batched guidance, channels_last,
bf16 autocast, final-only states, and torch.compile (its memoisation always; a real compile only with
CELLFLUX_TEST_COMPILE=1, because inductor needs ~1-2 minutes on a busy 2-core CPU)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from plugin_helpers import tiny_model

from napari_cellflux import api
from napari_cellflux.core.flow import network_velocity
from napari_cellflux.settings import SamplingConfig, SpeedOptions

GUIDED = SamplingConfig(solver="heun", grid="edm", steps=3, guidance=0.5, noise_level=0.5)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def controls():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def reference(model, controls):
    """The authors' way: fp32, default layout, one conditional and one unconditional forward."""
    return api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision="fp32", channels_last=False, batch_guidance=False)).states


def run(model, controls, **options):
    return api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(**{"precision": "fp32", **options})).states


def test_batched_guidance_matches_separate_passes(model, controls, reference):
    fast = run(model, controls, channels_last=False, batch_guidance=True)
    assert fast.shape == reference.shape
    assert (fast - reference).abs().max() < 1e-5


def test_network_velocity_batched_equals_two_forwards(model):
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor(0.4)
    cond = model.vocabulary.embedding("colchicine").expand(2, -1)
    with torch.inference_mode():
        one = network_velocity(model.unet, cond, 0.3)(x, t)
        two = network_velocity(model.unet, cond, 0.3, batched=False)(x, t)
        plain = 1.3 * model.unet(x, t.expand(2), cond) - 0.3 * model.unet(x, t.expand(2), None)
    assert (one - two).abs().max() < 1e-5
    assert (two - plain).abs().max() == 0


def test_channels_last_fp32_matches_and_restores_layout(model, controls, reference):
    fast = run(model, controls, channels_last=True)
    assert fast.is_contiguous()
    assert (fast - reference).abs().max() < 1e-5
    assert model.unet.out[-1].weight.is_contiguous(memory_format=torch.channels_last)
    again = run(model, controls, channels_last=False, batch_guidance=False)
    assert model.unet.out[-1].weight.is_contiguous()
    assert (again - reference).abs().max() < 1e-5


def test_bf16_autocast_is_close_to_fp32(model, controls, reference):
    """bf16 keeps ~3 significant digits; over 6 network evaluations the cells (std ~0.8) stay
    within a few 1e-3 of fp32 (max |diff| 0.03 allowed, rms 0.01)."""
    trajectory = api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision="bf16", channels_last=True))
    assert trajectory.metadata["precision"] == "bf16"  # the API's own name, so it can be passed back
    assert trajectory.states.dtype == torch.float32
    diff = trajectory.states - reference
    assert diff.abs().max() < 0.03
    assert diff.pow(2).mean().sqrt() < 0.01
    assert diff.abs().max() > 0  # it really ran in bf16


@pytest.mark.parametrize("capabilities, expected", [
    ({"avx512_bf16": True, "amx_bf16": False}, torch.bfloat16),
    ({"avx512_bf16": False, "amx_bf16": True}, torch.bfloat16),
    ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, None),
])
def test_fast_precision_uses_bf16_only_on_cpus_that_compute_it(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    cpu = torch.device("cpu")
    assert api.autocast_dtype("fast", cpu) is expected
    assert api.autocast_dtype("auto", cpu) is None  # auto stays bit-exact fp32 on every CPU
    assert api.autocast_dtype("fast", torch.device("mps")) is None
    with pytest.raises(ValueError, match="auto, fast, fp32"):
        api.autocast_dtype("half", cpu)


def test_fast_precision_generates_what_its_dtype_generates(model, controls):
    dtype = api.autocast_dtype("fast", torch.device("cpu"))
    named = {torch.bfloat16: "bf16", None: "fp32"}[dtype]
    fast = api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision="fast"))
    same = api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision=named))
    assert fast.metadata["precision"] == same.metadata["precision"]
    assert torch.equal(fast.states, same.states)


def test_final_only_is_the_last_state(model, controls, reference):
    trajectory = api.generate(model, controls, "colchicine", sampling=GUIDED, final_only=True, speed=SpeedOptions(precision="fp32"))
    assert trajectory.states.shape == (1, *reference.shape[1:])
    assert trajectory.times.tolist() == [1.0]
    assert (trajectory.final - reference[-1]).abs().max() < 1e-5
    assert trajectory.metadata["states"] == "final"


def test_metadata_records_the_fast_path(model, controls):
    meta = api.generate(model, controls[:1], "colchicine", sampling=GUIDED, speed=SpeedOptions(precision="fp32")).metadata
    assert meta["channels_last"] is False  # CPU default
    assert meta["compile"] is None and meta["batch_guidance"] is True


def test_compile_mode_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert api.compile_mode(False, cpu) is None
    assert api.compile_mode(True, cpu) == "default"
    assert api.compile_mode(True, cuda) == "reduce-overhead"
    assert api.compile_mode("max-autotune", cpu) == "max-autotune"
    with pytest.raises(ValueError, match="compile must be"):
        api.compile_mode("fastest", cpu)


def test_compiled_unet_is_built_once_per_model_and_mode(model, controls, reference, monkeypatch):
    calls = []

    def fake_compile(module, mode=None, **kwargs):
        calls.append(mode)
        return module  # eager stand-in: this test is about the caching, not inductor

    monkeypatch.setattr(torch, "compile", fake_compile)
    model.unet.__dict__.pop("_cellflux_compiled", None)
    try:
        first = run(model, controls, compile=True, batch_guidance=False)
        run(model, controls, compile=True)
        run(model, controls, compile="max-autotune-no-cudagraphs")
        assert calls == ["default", "max-autotune-no-cudagraphs"]
        assert (first - reference).abs().max() < 1e-5
        assert not any("_cellflux" in k for k in model.unet.state_dict())
        assert not copy.deepcopy(model.unet).__dict__["_cellflux_compiled"]  # copies start without the cache
    finally:
        model.unet.__dict__.pop("_cellflux_compiled", None)


@pytest.mark.skipif(os.environ.get("CELLFLUX_TEST_COMPILE") != "1",
                    reason="real torch.compile takes 1-2 minutes on this CPU; set CELLFLUX_TEST_COMPILE=1")
def test_torch_compile_matches_eager(controls):
    model = tiny_model(seed=4)
    sampling = SamplingConfig(solver="euler", grid="uniform", steps=2, guidance=0.5)
    eager = api.generate(model, controls, "colchicine", sampling=sampling, speed=SpeedOptions(precision="fp32")).states
    compiled = api.generate(model, controls, "colchicine", sampling=sampling, speed=SpeedOptions(precision="fp32", compile=True)).states
    assert (compiled - eager).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision, tol", [("fp32", 0.01), ("bf16", 0.05), ("fp16", 0.01)])
def test_cuda_fast_path_matches_cpu_fp32(controls, precision, tol):
    """On a GPU: bf16 / fp16 autocast, channels_last, batched guidance. "fp32" gets fp16-like
    tolerance because PyTorch lets cuDNN use TF32 (10-bit mantissa) for convolutions by default."""
    model = tiny_model(seed=5)
    cpu = api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision="fp32", batch_guidance=False)).states
    model.to("cuda")
    try:
        fast = api.generate(model, controls, "colchicine", sampling=GUIDED, speed=SpeedOptions(precision=precision)).states
    finally:
        model.to("cpu")
    assert (fast - cpu).abs().max() < tol


@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("CELLFLUX_TEST_COMPILE") != "1",
                    reason="needs a CUDA GPU and CELLFLUX_TEST_COMPILE=1 (compiling takes about a minute)")
@pytest.mark.parametrize("guidance", [0.0, 0.5])
def test_cuda_graphs_keep_every_evaluation(controls, guidance):
    """compile=True on CUDA = CUDA graphs: a Heun step holds its first evaluation while it makes
    the second, so graph outputs must not be overwritten (unguided: the output is returned as is)."""
    model = tiny_model(seed=6).to("cuda")
    sampling = SamplingConfig(solver="heun", grid="edm", steps=3, guidance=guidance)
    try:
        eager = api.generate(model, controls, "colchicine", sampling=sampling, speed=SpeedOptions(precision="bf16")).states
        graphed = api.generate(model, controls, "colchicine", sampling=sampling, speed=SpeedOptions(precision="bf16", compile=True)).states
        again = api.generate(model, controls, "colchicine", sampling=sampling, speed=SpeedOptions(precision="bf16", compile=True)).states
    finally:
        model.to("cpu")
    assert (graphed - eager).abs().max() < 0.05
    assert (graphed - again).abs().max() < 1e-3
