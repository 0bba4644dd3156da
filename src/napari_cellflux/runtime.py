"""Where and how the network runs: the device, the process's place under torchrun, and the
autocast dtype for a precision name. The one home of these policies for generation, screens,
training, evaluation and benchmarks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from napari_cellflux.errors import InputError
from napari_cellflux.settings import DEVICES, PRECISIONS, TRAINING_PRECISIONS

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun group (0, 1, 0 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_env(environ: dict | None = None) -> Distributed:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (LOCAL_RANK defaults to RANK)."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a group")
    return Distributed(rank, world, local)


def best_device() -> torch.device:
    """CUDA if present, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, dist: Distributed | None = None) -> torch.device:
    """``None`` or "auto" -> :func:`best_device`; an unavailable device is an error that says so.

    With ``dist`` of a group of several processes, "auto" and "cuda" mean this process's own GPU
    (LOCAL_RANK), so torchrun puts one process on each GPU.
    """
    if device is None or device == "auto":
        device = best_device()
    if isinstance(device, str) and device.split(":")[0] not in DEVICES:
        raise InputError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (or cuda:N)")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {str(device)!r}; use one of {', '.join(DEVICES)} (or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        if dist is not None and dist.world_size > 1 and device.index is None:
            device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA with bf16; CPUs with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def autocast_dtype(precision: str, device: torch.device, *, training: bool = False) -> torch.dtype | None:
    """The network's autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    Generation: "auto" is bf16 on CUDA GPUs that support it, else fp32 (no fp16 unasked: without
    a loss to scale it can overflow); "fast" (interactive use) also takes bf16 on CPUs that
    compute it natively and fp16 on older CUDA GPUs, trading bit-exactness across machines for
    speed (within 0.3% of fp32 on the demo, benchmarks/results/quality.json).

    Training (``training=True``): "auto" is bf16 on CUDA where supported, else fp16 with a
    gradient scaler, and fp32 on other devices; bf16 / fp16 need a CUDA GPU, since the scaler
    and the fused kernels training relies on are CUDA's.
    """
    names = TRAINING_PRECISIONS if training else PRECISIONS
    if precision not in names:
        what = "optim.precision" if training else "precision"
        raise InputError(f"{what} must be one of {', '.join(names)}, got {precision!r}")
    cuda = device.type == "cuda"
    if training:
        if precision in ("bf16", "fp16") and not cuda:
            raise InputError(f"optim.precision={precision} needs a CUDA GPU; use auto or fp32 on {device.type}")
        if precision == "auto":
            return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        return DTYPES[precision]
    if precision == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if precision == "fast":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if cuda else None
    return DTYPES[precision]


def dtype_name(dtype: torch.dtype | None) -> str:
    """"float32" for None (plain fp32), else the dtype's name ("bfloat16", "float16")."""
    return str(dtype or torch.float32).removeprefix("torch.")
