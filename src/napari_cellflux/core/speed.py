"""Speed machinery for the UNet: autocast, torch.compile (with CUDA graphs), memory layout,
images per forward. Each changes how the network runs, never what it computes beyond the
bf16/fp16 tolerance; which to use where is runtime.execution_plan's choice."""

from __future__ import annotations

import torch

from napari_cellflux.errors import InputError
from napari_cellflux.settings import COMPILE_MODES

_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def autocast_network(unet, dtype: torch.dtype | None):
    """``unet`` run under autocast to ``dtype`` (if any), returning fp32 velocities."""
    if dtype is None:
        return unet

    def network(*args):
        with torch.autocast(args[0].device.type, dtype=dtype):
            return unet(*args).float()

    return network


def compile_mode(compile: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode for generate's ``compile`` option (None = eager): True picks
    "reduce-overhead" (CUDA graphs) on CUDA and "default" elsewhere; a string names the mode."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile not in COMPILE_MODES:
        raise InputError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    return compile


class _CompiledCache(dict):
    """mode -> compiled UNet. Copies and pickles of the UNet start with an empty cache."""

    def __deepcopy__(self, memo):
        return _CompiledCache()

    def __reduce__(self):
        return _CompiledCache, ()


def compiled_unet(unet, mode: str):
    """``torch.compile(unet, mode=mode)``, built once per (UNet, mode) and kept on the UNet object,
    so repeated :func:`generate` calls reuse the compiled code (it is traced on first use, and
    again only for a new input shape, dtype or memory format). The cache lives in a plain dict
    attribute, not a submodule: it never shows up in the state dict, and a deep copy of the UNet
    starts without it."""
    cache = unet.__dict__.setdefault("_cellflux_compiled", _CompiledCache())
    if mode not in cache:
        cache[mode] = torch.compile(unet, mode=mode)
    return cache[mode]


def split_forward(network, images_per_forward: int | None):
    """``network(x, t, cond[, mask])`` run in parts of ``images_per_forward`` images (the last
    may be smaller), outputs concatenated; the network sees smaller batches, the caller the same
    result: bit for bit on CPUs where the forward is a multiple of 16 images, as then are all
    its parts with runtime.execution_plan's caps, else within fp32 rounding (MKL sums the rows
    of ragged batches in another order); tested."""
    if images_per_forward is None:
        return network

    def in_parts(*args):
        if len(args[0]) <= images_per_forward:
            return network(*args)
        parts = -(-len(args[0]) // images_per_forward)
        pieces = [a.split(images_per_forward) if a is not None else [None] * parts for a in args]
        return torch.cat([network(*chunk) for chunk in zip(*pieces)])

    return in_parts


def fast_network(unet, device: torch.device, dtype: torch.dtype | None, compile: str | None,
                 images_per_forward: int | None = None):
    """The UNet as generate calls it: optionally compiled, run under autocast to ``dtype``,
    returning fp32 velocities, at most ``images_per_forward`` images per forward
    (:func:`split_forward`). With CUDA graphs (compile modes "reduce-overhead" and
    "max-autotune" on CUDA) every call starts a new graph step and its output is copied out of
    the graph's memory, because a solver step keeps one evaluation while it makes the next."""
    if compile is None:
        return split_forward(autocast_network(unet, dtype), images_per_forward)
    network = autocast_network(compiled_unet(unet, compile), dtype)
    if device.type != "cuda" or compile not in _CUDA_GRAPH_MODES:
        return split_forward(network, images_per_forward)

    def graphed(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return network(*args).clone()

    return split_forward(graphed, images_per_forward)


def set_memory_format(unet, channels_last: bool) -> None:
    """Put the UNet's 4-d weights in channels_last (NHWC) or the default layout, if not already.
    The values do not change, only their order in memory (tensor-core convolutions prefer NHWC)."""
    probe = unet.out[-1].weight  # (C, >= 32, 3, 3): its layout is never ambiguous
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    if not probe.is_contiguous(memory_format=wanted):
        unet.to(memory_format=wanted)
