"""Headless API: load a model, generate perturbed cells from controls, export. No Qt, no napari.

>>> from napari_cellflux import api
>>> model = api.load_model("model.safetensors")            # or a published checkpoint.pth
>>> traj = api.generate(model, controls, "taxol", seed=0)  # controls (N, C, H, W) in [-1, 1]
>>> traj.states.shape                                       # (T, N, C, H, W), T = steps + 1
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .checkpoint import CellFluxModel, is_own_format, load_model_file
from .channels import describe
from .flow import network_velocity, x_init
from .published import load_published
from .sampling import SamplingConfig, integrate, solver, time_grid


class GenerationCancelled(Exception):
    """Raised inside :func:`generate` when its ``cancel`` callable returns True."""


def best_device() -> torch.device:
    """CUDA if present, else Apple MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto" -> :func:`best_device`; an unavailable device is an error that says so."""
    if device is None or device == "auto":
        return best_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return device


def load_model(path: str | Path, device: str | torch.device | None = None, **published_options) -> CellFluxModel:
    """Load a napari-cellflux model file, a published CellFlux ``checkpoint.pth``, or a model zoo
    name ("bbbc021", see ``cellflux zoo list``; downloaded and converted on first use) onto ``device``.

    ``published_options`` go to :func:`napari_cellflux.published.load_published` (embeddings,
    channels, kind, image_size, use_ema, config) and only apply to published checkpoints; a zoo
    name takes only ``embeddings`` (your own embedding table).
    """
    path = Path(path)
    if not path.is_file():
        from . import zoo

        registry = zoo.default_zoo()
        if str(path) not in registry.names():
            raise FileNotFoundError(
                f"model file {path} does not exist, and {str(path)!r} is not a zoo model name "
                f"({', '.join(registry.names())}; see `cellflux zoo list`)"
            )
        others = sorted(set(published_options) - {"embeddings"})
        if others:
            raise ValueError(f"zoo model {str(path)!r} takes only the embeddings option, not {others}")
        return registry.load(str(path), resolve_device(device), embeddings=published_options.get("embeddings"))
    device = resolve_device(device)
    if is_own_format(path):
        if published_options:
            raise ValueError(f"{path} is a napari-cellflux model file; options {sorted(published_options)} apply only to published checkpoints")
        return load_model_file(path, device)
    return load_published(path, **published_options).to(device)


@dataclass
class Trajectory:
    """Generated cells at every grid time.

    states: (T, N, C, H, W) float32 in the model's [-1, 1] space, on the CPU; states[0] is
    x_init = control + noise_level * noise at times[0], states[-1] the perturbed cells at t = 1.
    times: (T,) flow times. controls: (N, C, H, W) the control cells used. metadata: what is
    needed to reproduce the run (model hash, perturbation, seed, sampling settings, ...).
    """

    states: torch.Tensor
    times: torch.Tensor
    controls: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def final(self) -> torch.Tensor:
        """(N, C, H, W) the perturbed cells (t = 1)."""
        return self.states[-1]

    def index_at(self, t: float) -> int:
        """Index of the grid state nearest to time ``t`` in [0, 1]."""
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        return int(torch.argmin((self.times - t).abs()))

    def at(self, t: float) -> torch.Tensor:
        """(N, C, H, W) the state at the grid time nearest to ``t``."""
        return self.states[self.index_at(t)]


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (CUDA with bf16; CPUs with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The network's autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    "auto": bf16 on CUDA GPUs that support it, else fp32. "fast" (interactive use): also bf16 on
    CPUs that compute it natively and fp16 on older CUDA GPUs; it trades bit-exactness across
    machines for speed (within 0.3% of fp32 on the demo, benchmarks/results/quality.json).
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fast":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fast, fp32, bf16 or fp16, got {precision!r}")
    return PRECISIONS[precision]


def autocast_network(unet, dtype: torch.dtype | None):
    """``unet`` run under autocast to ``dtype`` (if any), returning fp32 velocities."""
    if dtype is None:
        return unet

    def network(*args):
        with torch.autocast(args[0].device.type, dtype=dtype):
            return unet(*args).float()

    return network


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(compile: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode for generate's ``compile`` option (None = eager): True picks
    "reduce-overhead" (CUDA graphs) on CUDA and "default" elsewhere; a string names the mode."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
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


def fast_network(unet, device: torch.device, dtype: torch.dtype | None, compile: str | None):
    """The UNet as generate calls it: optionally compiled, run under autocast to ``dtype``,
    returning fp32 velocities. With CUDA graphs (compile modes "reduce-overhead" and
    "max-autotune" on CUDA) every call starts a new graph step and its output is copied out of
    the graph's memory, because a solver step keeps one evaluation while it makes the next."""
    if compile is None:
        return autocast_network(unet, dtype)
    network = autocast_network(compiled_unet(unet, compile), dtype)
    if device.type != "cuda" or compile not in _CUDA_GRAPH_MODES:
        return network

    def graphed(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return network(*args).clone()

    return graphed


def set_memory_format(unet, channels_last: bool) -> None:
    """Put the UNet's 4-d weights in channels_last (NHWC) or the default layout, if not already.
    The values do not change, only their order in memory (tensor-core convolutions prefer NHWC)."""
    probe = unet.out[-1].weight  # (C, >= 32, 3, 3): its layout is never ambiguous
    wanted = torch.channels_last if channels_last else torch.contiguous_format
    if not probe.is_contiguous(memory_format=wanted):
        unet.to(memory_format=wanted)


ProgressCallback = Callable[[int, int], None]
"""progress(done, total): network-evaluation steps finished so far out of the whole run."""


def condition_vector(model: CellFluxModel, perturbation: str | None = None, *, smiles: str | None = None,
                     embedding: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor | None, dict]:
    """The (D,) condition for a perturbation name, a SMILES (unseen compound) or a raw embedding,
    with a description for the metadata; all None -> unconditional (None)."""
    given = [v is not None for v in (perturbation, smiles, embedding)]
    if sum(given) > 1:
        raise ValueError("give only one of perturbation, smiles and embedding")
    vocab = model.vocabulary
    if perturbation is not None:
        name = vocab.names[vocab.index(perturbation)]
        return vocab.embedding(name), {"perturbation": name, "condition": "vocabulary"}
    if smiles is not None:
        if vocab.kind != "compound":
            raise ValueError(f"this model is conditioned on {vocab.kind} embeddings, not compound fingerprints; a SMILES cannot be used")
        from .chem import morgan_count_fingerprint

        vector = torch.as_tensor(morgan_count_fingerprint(smiles, n_bits=model.config.condition_dim))
        return vector, {"perturbation": smiles, "condition": "smiles", "smiles": smiles}
    if embedding is not None:
        vector = torch.as_tensor(np.asarray(embedding), dtype=torch.float32).reshape(-1)
        if vector.numel() != model.config.condition_dim:
            raise ValueError(f"embedding has {vector.numel()} values; the model expects condition_dim = {model.config.condition_dim}")
        if not torch.isfinite(vector).all():
            raise ValueError("embedding contains NaN or inf")
        return vector, {"perturbation": None, "condition": "embedding", "embedding": vector.tolist()}
    return None, {"perturbation": None, "condition": "none"}


def check_controls(model: CellFluxModel, controls: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate control cells against the model: (N, C, H, W), C and H = W as trained, finite, in [-1, 1]."""
    x = torch.as_tensor(controls)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"controls must be (N, C, H, W) cells, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("controls hold no cells")
    if c != model.config.in_channels:
        raise ValueError(f"expected {describe(model.channels)}, got {c}; controls must be (N, C, H, W) with C = {model.config.in_channels}")
    if (h, w) != (model.image_size, model.image_size):
        raise ValueError(f"expected {model.image_size} x {model.image_size} crops (the model's image size), got {h} x {w}; crop or resize the cells")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("controls contain NaN or inf values; remove or repair those cells")
    if x.min() < -1.5 or x.max() > 1.5:
        raise ValueError(
            f"controls range from {float(x.min()):.3g} to {float(x.max()):.3g} but the model works in [-1, 1]; "
            "convert stored pixels with model.normalization.to_model(pixels)"
        )
    return x


def generate(
    model: CellFluxModel,
    controls: torch.Tensor | np.ndarray,
    perturbation: str | None = None,
    *,
    smiles: str | None = None,
    embedding: torch.Tensor | np.ndarray | None = None,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool | str = False,
    batch_guidance: bool = True,
    final_only: bool = False,
) -> Trajectory:
    """Carry control cells to the perturbed state by integrating dx/dt = v(x, t, c).

    controls: (N, C, H, W) in [-1, 1] (see ``model.normalization.to_model``). The condition is
    a vocabulary name, a SMILES (compound models), a raw (D,) embedding, or nothing
    (unconditional). sampling: solver, grid, steps, guidance, noise level (default: the
    model's). seed fixes the noise, drawn on the CPU so results agree across devices.
    Cells are processed ``batch_size`` at a time; ``cancel()`` is polled after every step.
    precision: "auto" (bf16 network on GPUs that support it, else fp32), "fast" (also bf16 on
    CPUs with native bf16: the widget's choice), "fp32", "bf16", "fp16"; the ODE state is always
    integrated in fp32.

    Speed options (they change how the network runs, not what it computes; each is tested
    against the fp32 reference): ``channels_last`` keeps weights and activations in NHWC
    (None = on for CUDA); ``compile`` runs a ``torch.compile``d UNet (True = "reduce-overhead",
    i.e. CUDA graphs, on CUDA and "default" elsewhere, or name a mode), compiled once per model
    and mode and reused by later calls; ``batch_guidance`` runs the conditional and
    unconditional halves of a guided step as one forward (False: two forwards, the authors'
    way). ``final_only`` keeps only the t = 1 state (``states`` is then (1, N, C, H, W)), so
    memory does not grow with the number of steps.
    """
    sampling = sampling or model.sampling
    x = check_controls(model, controls)
    cond, condition_info = condition_vector(model, perturbation, smiles=smiles, embedding=embedding)
    if cond is None and sampling.guidance:
        sampling = replace(sampling, guidance=0.0)  # guidance needs a condition to push away from
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model.device
    dtype = autocast_dtype(precision, device)
    channels_last = device.type == "cuda" if channels_last is None else bool(channels_last)
    mode = compile_mode(compile, device)
    set_memory_format(model.unet, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = fast_network(model.unet, device, dtype, mode)
    grid = time_grid(sampling.grid, sampling.steps)
    step = solver(sampling.solver)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    n_batches = -(-len(x) // batch_size)
    total = n_batches * sampling.steps
    done = 0

    def after_step(i: int, state: torch.Tensor) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel():
            raise GenerationCancelled(f"generation cancelled after {done} of {total} steps")

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            control = x[start:start + batch_size].to(device)
            c = None if cond is None else cond.to(device).expand(len(control), -1)
            velocity = network_velocity(network, c, sampling.guidance, batched=batch_guidance)
            start_state = x_init(control, noise[start:start + batch_size].to(device), sampling.noise_level)
            start_state = start_state.contiguous(memory_format=memory_format)
            states = integrate(step, velocity, start_state, grid, after_step, keep_all=not final_only)
            chunks.append(states.float().contiguous().cpu())
    metadata = {
        **condition_info,
        "model_sha256": model.sha256,
        "seed": seed,
        **sampling.to_dict(),
        "network_evaluations": sampling.evaluations,
        "precision": str(dtype or torch.float32).removeprefix("torch."),
        "channels_last": channels_last,
        "compile": mode,
        "batch_guidance": batch_guidance,
        "states": "final" if final_only else "all",
        "channels": [c.name for c in model.channels],
        "napari_cellflux_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
    }
    times = grid[-1:] if final_only else grid
    return Trajectory(states=torch.cat(chunks, dim=1), times=times, controls=x, metadata=metadata)
