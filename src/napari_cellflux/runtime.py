"""Where and how the network runs: the device, the process's place under torchrun, what the
hardware computes natively, and the execution plan chosen from the model and the hardware
(autocast dtype, memory layout, images per forward, allocator). The one home of these policies
for generation, screens, training, evaluation and benchmarks (docs/speed.md, The CPU path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from napari_cellflux.errors import InputError
from napari_cellflux.process import MMAP_THRESHOLD_BYTES
from napari_cellflux.settings import DEVICES, PRECISIONS, TRAINING_PRECISIONS, SpeedOptions

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


@dataclass(frozen=True)
class Hardware:
    """What the execution policy needs to know about a device (:func:`detect_hardware`; tests
    build their own). cpu_capability: ``torch.backends.cpu.get_cpu_capability()`` ("AVX2",
    "AVX512", ...); avx512_bf16 / amx_bf16: ``torch.cpu.get_capabilities()``, bf16 dot products
    in AVX-512 (AMD Zen 4, Intel Cooper Lake and later) and Intel AMX tile matrix multiplies
    (Sapphire Rapids and later), which oneDNN uses for bf16 convolutions and matmuls."""

    device_type: str
    cpu_capability: str = "DEFAULT"
    avx512_bf16: bool = False
    amx_bf16: bool = False
    cuda_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        """Whether the device computes bf16 in hardware (CUDA with bf16; CPUs with AVX512-BF16 or AMX)."""
        if self.device_type == "cuda":
            return self.cuda_bf16
        return self.device_type == "cpu" and (self.avx512_bf16 or self.amx_bf16)

    def describe(self) -> str:
        """E.g. "CPU AVX512 with AVX512-BF16, no AMX" (what error messages and benchmarks name)."""
        if self.device_type != "cpu":
            return f"{self.device_type}{' with bf16' if self.cuda_bf16 else ''}"
        bf16 = [name for name, present in (("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx_bf16)) if present]
        return f"CPU {self.cpu_capability} " + (f"with {' and '.join(bf16)}" if bf16 else "without AVX512-BF16 or AMX")


def detect_hardware(device: torch.device) -> Hardware:
    """The :class:`Hardware` of ``device`` as torch reports it."""
    if device.type == "cuda":
        return Hardware("cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return Hardware(device.type)
    capabilities = torch.cpu.get_capabilities()
    return Hardware("cpu", torch.backends.cpu.get_cpu_capability(), bool(capabilities.get("avx512_bf16")),
                    bool(capabilities.get("amx_bf16")))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA with bf16; CPUs with AVX512-BF16 or AMX)."""
    return detect_hardware(device).native_bf16


def autocast_dtype(precision: str, device: torch.device, *, training: bool = False,
                   hardware: Hardware | None = None) -> torch.dtype | None:
    """The network's autocast dtype for ``precision`` on ``device`` (None = plain fp32);
    ``hardware`` defaults to :func:`detect_hardware`.

    Generation: "auto" is bf16 on CUDA GPUs that support it, else fp32 (no fp16 unasked: without
    a loss to scale it can overflow); "fast" (interactive use) also takes bf16 on CPUs that
    compute it natively and fp16 on older CUDA GPUs, trading bit-exactness across machines for
    speed (within 0.3% of fp32 on the demo, benchmarks/results/quality.json).

    Training (``training=True``): "auto" is bf16 on CUDA where supported, else fp16 with a
    gradient scaler, and fp32 on other devices (so CPU runs repeat bit for bit); "bf16" also runs
    on CPUs that compute bf16 natively (no loss scaling: bf16 has fp32's exponent range) and is
    refused, naming the CPU, on the others; "fp16" needs CUDA (its gradient scaler).
    """
    names = TRAINING_PRECISIONS if training else PRECISIONS
    if precision not in names:
        what = "optim.precision" if training else "precision"
        raise InputError(f"{what} must be one of {', '.join(names)}, got {precision!r}")
    cuda = device.type == "cuda"
    if training:
        if precision == "fp16" and not cuda:
            raise InputError(f"optim.precision=fp16 needs a CUDA GPU; use auto, fp32 or bf16 on {device.type}")
        if precision == "bf16" and not cuda:
            hardware = hardware or detect_hardware(device)
            if not hardware.native_bf16:
                raise InputError(f"optim.precision=bf16 needs native bf16 (a CPU with AVX512-BF16 or AMX, or a GPU); "
                                 f"this is a {hardware.describe()}: use optim.precision=fp32 here")
        if precision == "auto":
            return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        return DTYPES[precision]
    if precision == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if precision == "fast":
        if (hardware or detect_hardware(device)).native_bf16:
            return torch.bfloat16
        return torch.float16 if cuda else None
    return DTYPES[precision]


# Execution policy (docs/speed.md, The CPU path, has the measurements behind each number).
# channels_last on a CPU pays only where oneDNN would otherwise reorder every bf16 activation
# into its blocked layout and back (AMX) and the convolutions are wide enough to outweigh the
# NHWC kernels' cost on narrow ones: on an AMX Xeon the paper preset (256 channels at full
# resolution) gains 1.8-1.9x in bf16, the demo (16) loses 1.35x; without AMX neither gains more
# than a few percent. WIDE_CHANNELS lies between the two measured models.
WIDE_CHANNELS = 128
# Images per forward on a CPU: as many as keep the largest activation below glibc's mmap
# threshold (32 MiB; process.keep_freed_memory), at most 128 (the demo: 8 MiB activations) and
# at least 32; a multiple of 16. Wide models need the floor (the paper preset's activation is
# 18 MiB per image): their compute outweighs the page faults, so there the cap only bounds
# memory. A multiple of 16, so a forward of 16m images splits into parts of 16k (the screen's
# 2 x 256 = 512 -> 4 x 128), in which MKL's fp32 GEMMs give each image the same bits as in one
# forward; ragged parts can differ in the last bit.
MAX_IMAGES_PER_FORWARD = 128
MIN_IMAGES_PER_FORWARD = 32


@dataclass(frozen=True)
class ExecutionPlan:
    """How :func:`napari_cellflux.api.generate` runs the network: autocast dtype (None = fp32),
    NHWC layout, the most images one forward takes (None = all of a guided evaluation), and
    whether the C allocator keeps freed memory for reuse (:func:`process.keep_freed_memory`)."""

    dtype: torch.dtype | None
    channels_last: bool
    images_per_forward: int | None
    keep_freed_memory: bool


def activation_bytes_per_image(config, image_size: int) -> int:
    """The largest fp32 activation of one image in a UNet of ``config`` (a decoder level
    concatenates its input with the skip: 2 x width x side^2 x 4 bytes)."""
    widths = [config.model_channels * m for m in config.channel_mult]
    return max(2 * width * (image_size >> level) ** 2 * 4 for level, width in enumerate(widths))


def execution_plan(config, image_size: int, device: torch.device, speed: SpeedOptions = SpeedOptions(),
                   hardware: Hardware | None = None) -> ExecutionPlan:
    """The :class:`ExecutionPlan` for a UNet of ``config`` (core.unet.UNetConfig) on images of
    ``image_size`` px on ``device``, with ``speed``'s explicit choices kept; ``hardware``
    defaults to :func:`detect_hardware`. channels_last (when None): always on CUDA; on a CPU
    for bf16 on AMX with wide models (narrowest level >= WIDE_CHANNELS); else off, so fp32 CPU
    runs keep their bits. Images per forward (when None): capped on CPUs only."""
    hardware = hardware or detect_hardware(device)
    dtype = autocast_dtype(speed.precision, device, hardware=hardware)
    channels_last = speed.channels_last
    if channels_last is None:
        wide = config.model_channels * config.channel_mult[0] >= WIDE_CHANNELS
        channels_last = device.type == "cuda" or (
            device.type == "cpu" and dtype == torch.bfloat16 and hardware.amx_bf16 and wide)
    cpu = device.type == "cpu"
    images = speed.images_per_forward
    if images is None and cpu:
        fit = MMAP_THRESHOLD_BYTES // activation_bytes_per_image(config, image_size)
        images = max(MIN_IMAGES_PER_FORWARD, min(MAX_IMAGES_PER_FORWARD, fit // 16 * 16))
    return ExecutionPlan(dtype, bool(channels_last), images, keep_freed_memory=cpu)


def precision_name(dtype: torch.dtype | None) -> str:
    """The name in settings.PRECISIONS of the precision a network runs at: "fp32" for None (plain
    fp32), "bf16", "fp16"; what run metadata records, so it can be passed back as ``precision``."""
    return next(name for name, value in DTYPES.items() if value == dtype)

