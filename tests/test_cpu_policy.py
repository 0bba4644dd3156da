"""The execution policy (runtime.execution_plan, issue 16) on simulated hardware, the process
settings made before torch loads (process.py), and images-per-forward splitting, which must not
change a bit of the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from plugin_helpers import tiny_model

from napari_cellflux import api, process
from napari_cellflux.core.speed import split_forward
from napari_cellflux.core.unet import UNetConfig, preset
from napari_cellflux.errors import InputError
from napari_cellflux.runtime import Hardware, activation_bytes_per_image, detect_hardware, execution_plan
from napari_cellflux.settings import SamplingConfig, SpeedOptions

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
PLAIN = Hardware("cpu", "AVX2")
ZEN4 = Hardware("cpu", "AVX512", avx512_bf16=True)                   # AMD Genoa: bf16 dot products, no AMX
SAPPHIRE = Hardware("cpu", "AVX512", avx512_bf16=True, amx_bf16=True)  # Intel with AMX
PAPER = (preset("bbbc021"), 96)
DEMO = (UNetConfig(model_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1, attention_resolutions=(4,),
                   norm_groups=16), 32)


@pytest.mark.parametrize("hardware, model, dtype, channels_last", [
    (PLAIN, PAPER, None, False),
    (PLAIN, DEMO, None, False),
    (ZEN4, PAPER, torch.bfloat16, False),
    (ZEN4, DEMO, torch.bfloat16, False),
    (SAPPHIRE, PAPER, torch.bfloat16, True),   # wide: NHWC saves oneDNN's reorders around every convolution
    (SAPPHIRE, DEMO, torch.bfloat16, False),   # narrow: the NHWC kernels cost more than the reorders
])
def test_fast_path_on_cpus(hardware, model, dtype, channels_last):
    plan = execution_plan(*model, CPU, SpeedOptions(precision="fast"), hardware)
    assert (plan.dtype, plan.channels_last) == (dtype, channels_last)
    assert plan.keep_freed_memory
    # fp32 CPU runs ("auto") keep the default layout and so their bits, on every CPU
    auto = execution_plan(*model, CPU, SpeedOptions(), hardware)
    assert (auto.dtype, auto.channels_last) == (None, False)


def test_images_per_forward_keep_activations_below_the_mmap_threshold():
    demo = execution_plan(*DEMO, CPU, hardware=PLAIN).images_per_forward
    assert demo == 128 and demo * activation_bytes_per_image(*DEMO) <= process.MMAP_THRESHOLD_BYTES
    # the paper preset's activation per image (2 x 256 x 96 x 96 fp32, 18 MiB) leaves room for one image:
    # the floor keeps 32, where the cap only bounds memory (and every part of a split forward >= 16 images)
    assert 2 * activation_bytes_per_image(*PAPER) > process.MMAP_THRESHOLD_BYTES
    assert execution_plan(*PAPER, CPU, hardware=PLAIN).images_per_forward == 32
    mid = (tiny_config(model_channels=64, channel_mult=(1, 1)), 32)  # 512 KiB per image: 64 fit
    assert execution_plan(*mid, CPU, hardware=PLAIN).images_per_forward == 64


def test_gpus_take_bf16_nhwc_and_whole_forwards():
    gpu = Hardware("cuda", cuda_bf16=True)
    for model in (PAPER, DEMO):
        plan = execution_plan(*model, CUDA, SpeedOptions(precision="fast"), gpu)
        assert (plan.dtype, plan.channels_last, plan.images_per_forward, plan.keep_freed_memory) == (
            torch.bfloat16, True, None, False)
    assert execution_plan(*DEMO, CUDA, SpeedOptions(precision="fast"), Hardware("cuda")).dtype == torch.float16
    plan = execution_plan(*DEMO, MPS, SpeedOptions(precision="fast"), Hardware("mps"))
    assert (plan.dtype, plan.channels_last, plan.images_per_forward) == (None, False, None)


def test_explicit_options_win_over_the_policy():
    speed = SpeedOptions(precision="fast", channels_last=False, images_per_forward=5)
    plan = execution_plan(*PAPER, CPU, speed, SAPPHIRE)
    assert (plan.channels_last, plan.images_per_forward) == (False, 5)
    assert execution_plan(*DEMO, CPU, SpeedOptions(channels_last=True), PLAIN).channels_last
    with pytest.raises(InputError, match="images_per_forward must be a whole number >= 1"):
        SpeedOptions(images_per_forward=0)


def test_detect_hardware_reads_torch_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True})
    found = detect_hardware(CPU)
    assert found.avx512_bf16 and found.amx_bf16 and found.native_bf16
    assert found.cpu_capability == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert not detect_hardware(CPU).native_bf16
    assert "without AVX512-BF16 or AMX" in detect_hardware(CPU).describe()


def test_openmp_settings_do_not_override_the_users(tmp_path):
    no_quota = tmp_path / "none"
    env = {}
    assert process.prepare_openmp(env, cpu_max=no_quota) == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    quota = tmp_path / "cpu.max"
    quota.write_text("50000 100000\n")  # half a CPU
    assert process.prepare_openmp(mine, cpu_max=quota) == {"KMP_BLOCKTIME": "0"}
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE" and mine["OMP_NUM_THREADS"] == "7"


def test_a_command_keeps_spinning_but_not_beyond_its_quota(tmp_path):
    assert process.prepare_openmp({}, passive_wait=False, cpu_max=tmp_path / "none") == {}
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")  # one CPU
    expected = {"OMP_NUM_THREADS": "1"} if process.usable_cpus(tmp_path / "none") > 1 else {}
    assert process.prepare_openmp({}, passive_wait=False, cpu_max=quota) == expected


def test_cpu_quota_sets_the_thread_count(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    env = {}
    process.prepare_openmp(env, cpu_max=quota)
    assert env.get("OMP_NUM_THREADS") == ("1" if process.usable_cpus(tmp_path / "none") > 1 else None)
    quota.write_text("max 100000\n")
    assert process.cpu_quota(quota) is None


def test_openmp_settings_wait_for_a_process_without_torch():
    """In this process torch is loaded, so os.environ stays as it is: setting them would do nothing here
    but reach every child process."""
    assert "torch" in sys.modules
    before = dict(os.environ)
    assert process.prepare_openmp() == {}
    assert dict(os.environ) == before


@pytest.mark.parametrize("entry, user, expected", [
    ("import napari_cellflux._napari", None, "PASSIVE"),  # the plugin shares its cores with napari's GUI
    ("import napari_cellflux._napari", "ACTIVE", "ACTIVE"),
    ("from napari_cellflux.cli import main; main(['--help'])", None, "None"),  # a command keeps spinning
])
def test_the_plugin_sets_the_wait_policy_before_torch(entry, user, expected):
    code = f"import atexit, os, sys; atexit.register(lambda: print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)); {entry}"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == f"{expected} False"  # set (or not), and torch not yet loaded


def test_allocator_leaves_a_users_malloc_settings_alone():
    assert process.user_malloc_settings({"MALLOC_TRIM_THRESHOLD_": "0"}) == ["MALLOC_TRIM_THRESHOLD_"]
    assert process.user_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}) == ["GLIBC_TUNABLES"]
    assert process.keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert process.keep_freed_memory({}) is sys.platform.startswith("linux")


def test_process_settings_need_no_torch():
    code = "import sys, napari_cellflux.process as p; p.prepare_openmp({}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_split_forward_is_bit_identical_to_one_forward(dtype):
    """Forwards of a multiple of 16 images, split by caps that are multiples of 16 as the policy's are
    (the screen's 512 -> 4 x 128); ragged splits within fp32 rounding."""
    model = tiny_model(seed=5, image_size=16)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(128, 3, 16, 16, generator=gen), torch.rand(128, generator=gen)
    cond = model.vocabulary.embedding("colchicine").expand(128, -1)
    mask = (torch.arange(128) < 64).float()

    def network(*args):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return model.unet(*args).float()

    calls = []

    def counted(*args):
        calls.append(len(args[0]))
        return network(*args)

    with torch.inference_mode():
        whole = network(x, t, cond, mask)
        parts = split_forward(counted, 32)(x, t, cond, mask)
        assert torch.equal(split_forward(network, 64)(x, t, None), network(x, t, None))
        assert torch.equal(split_forward(network, 32)(x[:80], t[:80], None), network(x[:80], t[:80], None))  # 32 + 32 + 16
        ragged = split_forward(network, 20)(x[:50], t[:50], cond[:50], mask[:50])  # 20 + 20 + 10
    assert calls == [32, 32, 32, 32]
    assert torch.equal(parts, whole)
    assert (ragged - whole[:50]).abs().max() < (1e-5 if dtype is None else 1e-2)


def test_generate_with_a_smaller_cap_gives_the_same_cells():
    model = tiny_model(seed=5, image_size=16)
    controls = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    guided = SamplingConfig(solver="midpoint", grid="uniform", steps=1, guidance=0.5, noise_level=0.5)
    whole = api.generate(model, controls, "colchicine", sampling=guided)  # 64 images per forward, under the cap
    split = api.generate(model, controls, "colchicine", sampling=guided, speed=SpeedOptions(images_per_forward=32))
    assert whole.metadata["images_per_forward"] == 128 and split.metadata["images_per_forward"] == 32
    assert torch.equal(whole.states, split.states)


@pytest.mark.slow
def test_quick_cpu_path_benchmark_writes_its_section(tmp_path):
    """`--sections cpu_path` end to end at tiny sizes (about a minute on 2 cores); no timing asserted."""
    import json

    from plugin_helpers import tiny_model_file

    from benchmarks import run

    model = tiny_model_file(tmp_path / "tiny.safetensors", image_size=16)
    out = tmp_path / "results"
    assert run.main(["--quick", "--sections", "cpu_path", "--model", str(model), "--out", str(out), "--threads", "1"]) == 0
    d = json.loads((out / "cpu_path.json").read_text())
    assert d["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {r["variant"] for r in d["paper"]["rows"]} == {"authors_eager_fp32", "ours_default", "ours_fast",
                                                         "ours_fast_channels_last"}
    assert [r["setting"] for r in d["screen"]["rows"]] == ["before", "cap", "cap_allocator", "cap_allocator_fast"]
    assert d["screen"]["rows"][0]["minor_faults"] >= 0 and d["screen"]["rows"][1]["images_per_forward"] == 128
    assert len(d["targets"]) == 4 and "## The CPU fast path" in (out / "RESULTS.md").read_text()


def test_the_cli_passes_images_per_forward_and_refuses_zero(capsys):
    from napari_cellflux.cli.commands import speed_from_args
    from napari_cellflux.cli.parser import build_parser

    for command in (["generate", "--out", "x.tif"], ["screen", "--n-cells", "8", "--out", "s"]):
        args = build_parser().parse_args([*command, "--images-per-forward", "16"])
        assert speed_from_args(args).images_per_forward == 16
        assert speed_from_args(build_parser().parse_args(command)).images_per_forward is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--out", "x.tif", "--images-per-forward", "0"])
    assert "--images-per-forward" in capsys.readouterr().err
