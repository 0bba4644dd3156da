"""Shared pieces of the benchmarks: the environment record, models of each size, FLOP counting,
GPU peak table, timing, and atomic JSON output."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_cellflux import api
from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.core.unet import UNet, UNetConfig
from napari_cellflux.data.samples import synthetic_channels
from napari_cellflux.errors import InputError
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.models.vocabulary import Vocabulary
from napari_cellflux.settings import SamplingConfig

RANDOM_DEMO = "random-demo"
DEMO_IMAGE_SIZE = 32
PAPER_IMAGE_SIZE = 96

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Matched
# against torch.cuda.get_device_name() in this order (first match wins); override with --peak-tflops.
GPU_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 (names such as "NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def gpu_peak_tflops(name: str) -> float | None:
    for key, peak in GPU_BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def _nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """Where and when a figure was measured: every JSON carries this."""
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_driver": _nvidia_smi("driver_version") or "unknown (nvidia-smi not found)",
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def wrap_unet(unet: UNet, image_size: int, sampling: SamplingConfig | None = None) -> CellFluxModel:
    """A CellFluxModel around ``unet`` with a two-entry vocabulary ("DMSO", "drug") of
    fingerprint-like (0-3 integer) embeddings."""
    cfg = unet.config
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randint(0, 4, (2, cfg.condition_dim), generator=gen).float()
    embeddings[0] = 0
    vocabulary = Vocabulary(names=["DMSO", "drug"], embeddings=embeddings, kind="other", control="DMSO")
    return CellFluxModel(unet=unet, vocabulary=vocabulary, channels=synthetic_channels(cfg.in_channels),
                         image_size=image_size, sampling=sampling or SamplingConfig())


def random_model(config: UNetConfig, image_size: int, seed: int = 0) -> CellFluxModel:
    torch.manual_seed(seed)
    return wrap_unet(UNet(config), image_size)


def demo_config() -> UNetConfig:
    """The bundled demo's architecture (training/configs/demo.yaml) for its synthetic screen:
    3 channels, 1024-d compound fingerprints."""
    from training.config import load_config

    return UNetConfig(in_channels=3, out_channels=3, condition_dim=1024, **load_config("demo").model.overrides)


def load_demo_model(spec: str | None, device: torch.device) -> tuple[CellFluxModel, str]:
    """The model the CPU demo timing and the quality curve run on, and a description of it.

    ``spec``: a model file / zoo name, "random-demo" (untrained, demo architecture), or None:
    the bundled demo ("demo" in the zoo) if this install has it, else the random demo.
    """
    if spec not in (None, RANDOM_DEMO):
        model = api.load_model(spec, device=device)
        return model, f"{spec} (sha256 {model.sha256[:12]})"
    if spec is None:
        try:
            model = api.load_model("demo", device=device)
            return model, f"bundled demo model (sha256 {model.sha256[:12]})"
        except (FileNotFoundError, ValueError, KeyError, OSError):
            pass
    model = random_model(demo_config(), DEMO_IMAGE_SIZE).to(device)
    return model, "random-demo: untrained network with the demo architecture (bundled demo model not available)"


def pick_perturbation(model: CellFluxModel, name: str | None) -> str:
    if name is not None:
        return model.vocabulary.names[model.vocabulary.index(name)]
    names = [n for n in model.vocabulary.names if n != model.vocabulary.control]
    if not names:
        raise InputError("the model's vocabulary holds no perturbation besides the control; pass --perturbation")
    return names[0]


def flops_per_image(config: UNetConfig, image_size: int) -> float:
    """FLOPs of one UNet forward pass of one image (2 per multiply-add), counted with
    torch.utils.flop_counter on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet(replace(config, dropout=0.0)).eval()
        n = 2
        x = torch.zeros(n, config.in_channels, image_size, image_size)
        t, cond, mask = torch.zeros(n), torch.zeros(n, config.condition_dim), torch.ones(n)
        with FlopCounterMode(display=False) as counter:
            unet(x, t, cond, mask)
    return counter.get_total_flops() / n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def max_rss_mib() -> float:
    """This process's peak resident memory so far (MiB).

    On Linux from /proc/self/status (VmHWM): ``getrusage``'s ru_maxrss is carried across exec, so a
    child started by a large benchmark process would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def controls_for(model: CellFluxModel, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` synthetic control cells at the model's scale, in model space."""
    from napari_cellflux.data.samples import synthetic_controls

    pixels = synthetic_controls(max(n, 2), model.image_size, model.config.in_channels, seed)[:n]
    return model.normalization.to_model(pixels)
