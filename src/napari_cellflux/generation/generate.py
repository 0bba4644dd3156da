"""Generation: carry control cells to the perturbed state by integrating dx/dt = v(x, t, c).
No Qt, no napari; :mod:`napari_cellflux.api` is its public face."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from napari_cellflux import __version__
from napari_cellflux.core.flow import network_velocity, x_init
from napari_cellflux.core.solvers import integrate, solver, time_grid
from napari_cellflux.core.speed import compile_mode, fast_network, set_memory_format
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import describe
from napari_cellflux.models.fingerprints import morgan_count_fingerprint
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.process import keep_freed_memory
from napari_cellflux.runtime import execution_plan, precision_name
from napari_cellflux.settings import DEFAULT_MODE, SamplingConfig, SpeedOptions


class GenerationCancelled(Exception):
    """Raised inside :func:`generate` when its ``cancel`` callable returns True."""


@dataclass
class Trajectory:
    """Generated cells at every grid time.

    states: (T, N, C, H, W) float32 in the model's [-1, 1] space, on the CPU; states[0] is
    x_init = control + noise_level * noise at times[0] (exactly the controls in mode "morph",
    noise level 0), states[-1] the perturbed cells at t = 1.
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
            raise InputError(f"t must lie in [0, 1], got {t}")
        return int(torch.argmin((self.times - t).abs()))

    def at(self, t: float) -> torch.Tensor:
        """(N, C, H, W) the state at the grid time nearest to ``t``."""
        return self.states[self.index_at(t)]


ProgressCallback = Callable[[int, int], None]
"""progress(done, total): network-evaluation steps finished so far out of the whole run."""


def condition_vector(model: CellFluxModel, perturbation: str | None = None, *, smiles: str | None = None,
                     embedding: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor | None, dict]:
    """The (D,) condition for a perturbation name, a SMILES (unseen compound) or a raw embedding,
    with a description for the metadata; all None -> unconditional (None)."""
    given = [v is not None for v in (perturbation, smiles, embedding)]
    if sum(given) > 1:
        raise InputError("give only one of perturbation, smiles and embedding")
    vocab = model.vocabulary
    if perturbation is not None:
        name = vocab.names[vocab.index(perturbation)]
        return vocab.embedding(name), {"perturbation": name, "condition": "vocabulary"}
    if smiles is not None:
        if vocab.kind != "compound":
            raise InputError(f"this model is conditioned on {vocab.kind} embeddings, not compound fingerprints; a SMILES cannot be used")
        vector = torch.as_tensor(morgan_count_fingerprint(smiles, n_bits=model.config.condition_dim))
        return vector, {"perturbation": smiles, "condition": "smiles", "smiles": smiles}
    if embedding is not None:
        vector = torch.as_tensor(np.asarray(embedding), dtype=torch.float32).reshape(-1)
        if vector.numel() != model.config.condition_dim:
            raise InputError(f"embedding has {vector.numel()} values; the model expects condition_dim = {model.config.condition_dim}")
        if not torch.isfinite(vector).all():
            raise InputError("embedding contains NaN or inf")
        return vector, {"perturbation": None, "condition": "embedding", "embedding": vector.tolist()}
    return None, {"perturbation": None, "condition": "none"}


def check_controls(model: CellFluxModel, controls: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate control cells against the model: (N, C, H, W), C and H = W as trained, finite, in [-1, 1]."""
    x = torch.as_tensor(controls)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise InputError(f"controls must be (N, C, H, W) cells, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n == 0:
        raise InputError("controls hold no cells")
    if c != model.config.in_channels:
        raise InputError(f"expected {describe(model.channels)}, got {c}; controls must be (N, C, H, W) with C = {model.config.in_channels}")
    if (h, w) != (model.image_size, model.image_size):
        raise InputError(f"expected {model.image_size} x {model.image_size} crops (the model's image size), got {h} x {w}; crop or resize the cells")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError("controls contain NaN or inf values; remove or repair those cells")
    if x.min() < -1.5 or x.max() > 1.5:
        raise InputError(
            f"controls range from {float(x.min()):.3g} to {float(x.max()):.3g} but the model works in [-1, 1]; "
            "convert stored pixels with model.normalization.to_model(pixels)"
        )
    return x


def check_autoguidance(model: CellFluxModel, sampling: SamplingConfig) -> None:
    """Autoguidance needs the model file's guide network."""
    if sampling.autoguidance and model.guide is None:
        raise InputError(f"autoguidance {sampling.autoguidance:g} needs a guide network, and this model file has none "
                         "(training keeps one with optim.guide_step); set autoguidance to 0")


def generate(
    model: CellFluxModel,
    controls: torch.Tensor | np.ndarray,
    perturbation: str | None = None,
    *,
    smiles: str | None = None,
    embedding: torch.Tensor | np.ndarray | None = None,
    sampling: SamplingConfig | None = None,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
    batch_size: int = 64,
    speed: SpeedOptions = SpeedOptions(),
    final_only: bool = False,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Trajectory:
    """Carry control cells to the perturbed state by integrating dx/dt = v(x, t, c).

    controls: (N, C, H, W) in [-1, 1] (see ``model.normalization.to_model``). The condition is
    a vocabulary name, a SMILES (compound models), a raw (D,) embedding, or nothing
    (unconditional). sampling: solver, grid, steps, guidance, noise level, autoguidance (default:
    the model's). mode (settings.MODES): "sample" integrates from control + noise_level x noise, the
    paper's sampling; "morph" from the clean control (noise level 0 and no autoguidance whatever
    ``sampling`` says; with the model file's morph network where it carries one, ``model.network_for``,
    and ``sampling.morph_main_share`` of the main network's velocity), so each cell changes
    continuously from itself. The metadata records the mode and the noise
    level used. seed fixes the noise, drawn on the CPU so results agree across devices.
    Cells are processed ``batch_size`` at a time; ``cancel()`` is polled after every step.
    speed: precision, memory layout, compilation, batched guidance, images per forward
    (:class:`SpeedOptions`); what they leave open the hardware policy decides
    (``runtime.execution_plan``; on a CPU it also sets glibc's malloc thresholds for the process,
    ``process.keep_freed_memory``).
    ``final_only`` keeps only the t = 1 state (``states`` is then (1, N, C, H, W)), so memory
    does not grow with the number of steps.
    """
    sampling = (sampling or model.sampling).for_mode(mode)
    x = check_controls(model, controls)
    cond, condition_info = condition_vector(model, perturbation, smiles=smiles, embedding=embedding)
    if cond is None and sampling.guidance:
        sampling = replace(sampling, guidance=0.0)  # guidance needs a condition to push away from
    check_autoguidance(model, sampling)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    device = model.device
    plan = execution_plan(model.config, model.image_size, device, speed)  # dtype, layout, images per forward
    dtype, channels_last = plan.dtype, plan.channels_last
    if plan.keep_freed_memory:
        keep_freed_memory()
    compiled = compile_mode(speed.compile, device)
    own_network = model.network_for(mode)
    set_memory_format(own_network, channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = fast_network(own_network, device, dtype, compiled, plan.images_per_forward)
    guide = partner = None
    if sampling.autoguidance:
        set_memory_format(model.guide, channels_last)
        guide = fast_network(model.guide, device, dtype, compiled, plan.images_per_forward)
    partner_share = model.main_share_for(mode, sampling)
    if partner_share:  # morph by its own network with a share of the main one's velocity
        set_memory_format(model.unet, channels_last)
        partner = fast_network(model.unet, device, dtype, compiled, plan.images_per_forward)
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

    source_noise = sampling.noise_level if model.config.condition_on_source_noise else None
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            control = x[start:start + batch_size].to(device)
            c = None if cond is None else cond.to(device).expand(len(control), -1)
            velocity = network_velocity(network, c, sampling.guidance, batched=speed.batch_guidance,
                                        source_noise=source_noise, guide=guide, autoguidance=sampling.autoguidance,
                                        partner=partner, partner_share=partner_share)
            start_state = x_init(control, noise[start:start + batch_size].to(device), sampling.noise_level)
            start_state = start_state.contiguous(memory_format=memory_format)
            states = integrate(step, velocity, start_state, grid, after_step, keep_all=not final_only)
            chunks.append(states.float().contiguous().cpu())
    metadata = {
        **condition_info,
        "mode": mode,
        "model_sha256": model.sha256,
        "network": "morph" if own_network is model.morph else "main",
        "seed": seed,
        **sampling.to_dict(),
        "morph_main_share": partner_share,  # what ran: 0 where morph ran the main network itself
        "network_evaluations": sampling.evaluations,
        "precision": precision_name(dtype),
        "channels_last": channels_last,
        "images_per_forward": plan.images_per_forward,
        "compile": compiled,
        "batch_guidance": speed.batch_guidance,
        "states": "final" if final_only else "all",
        "channels": [c.name for c in model.channels],
        "napari_cellflux_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
    }
    times = grid[-1:] if final_only else grid
    return Trajectory(states=torch.cat(chunks, dim=1), times=times, controls=x, metadata=metadata)
