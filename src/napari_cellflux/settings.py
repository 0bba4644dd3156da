"""Names and settings that need no torch: the one registry of every choice the CLI, the widget,
training and evaluation offer, and the typed settings validated against it.

The torch code keys its tables by these names (``core.solvers.SOLVERS``, ``core.unet.PRESETS``,
``runtime.DTYPES``), and the tests check that both sides list the same names, so a choice is
added in one place and every front end offers it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from napari_cellflux.errors import InputError

# ODE solvers: name -> network evaluations per step. "heun2" is the authors' name for Heun.
EVALUATIONS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2}
SOLVER_NAMES = tuple(EVALUATIONS_PER_STEP)
SOLVER_ALIASES = {"heun2": "heun"}
# Time grids: name -> the fewest steps it is defined for (EDM's formula divides by steps - 1).
GRID_MIN_STEPS = {"uniform": 1, "edm": 2}
GRID_NAMES = tuple(GRID_MIN_STEPS)

# What a generation run answers (docs/modes.md). "morph" integrates from the clean control
# (noise level 0; training draws a clean source half the time, noise_prob 0.5, so it is in the
# model's training distribution; a model file may carry a network trained on clean sources alone
# for it) and keeps each cell's shape; "sample" is the paper's sampling.
MODES = {
    "morph": "morph each cell: what would this cell look like under the perturbation; the flow from the clean control, noise level 0, by the model's morph network where it has one",
    "sample": "sample treated cells: what do treated cells of this batch look like; the paper's sampling from control + noise",
}
MODE_NAMES = tuple(MODES)
# The API's and CLI's default: the paper's sampling, so evaluation numbers stay comparable with it.
DEFAULT_MODE = "sample"

# Network precision for generation. "auto" is reproducible across CPUs (fp32 there, bf16 on
# GPUs that have it); "fast" also takes bf16 on CPUs that compute it natively (runtime.py).
PRECISIONS = ("auto", "fast", "fp32", "bf16", "fp16")
# Training has no "fast": a run's precision is part of the run, chosen once.
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICES = ("auto", "cpu", "cuda", "mps")

# The published CellFlux models: their UNet presets and what each is conditioned on.
PRESET_NAMES = ("bbbc021", "rxrx1", "cpg0000")
DATASET_KINDS = {"bbbc021": "compound", "rxrx1": "gene", "cpg0000": "other"}
KINDS = ("compound", "gene", "other")


def _choice(what: str, value, names) -> None:
    if value not in names:
        raise InputError(f"unknown {what} {value!r}; choose one of {sorted(names)}")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of MODE_NAMES, else an InputError naming the choices."""
    _choice("mode", mode, MODE_NAMES)
    return mode


def check_mode_noise(mode: str, noise_level: float | None, autoguidance: float | None = None) -> None:
    """The command lines' ``--mode`` and an explicit ``--noise-level`` or ``--autoguidance`` must
    agree: morph starts from the clean control without autoguidance, so either > 0 with it is an
    error rather than silently dropped. (The API's SamplingConfig always carries both; there
    morph uses 0 and records it.)"""
    check_mode(mode)
    if mode == "morph" and noise_level:
        raise InputError(f"--mode morph starts from the clean controls (noise level 0), but --noise-level {noise_level:g} was given; "
                         "drop --noise-level, or use --mode sample to sample from control + noise")
    if mode == "morph" and autoguidance:
        raise InputError(f"--mode morph runs without autoguidance, but --autoguidance {autoguidance:g} was given; "
                         "drop --autoguidance, or use --mode sample")


def canonical_solver(name: str) -> str:
    """``name`` with the authors' aliases resolved ("heun2" -> "heun"); unknown names are an error."""
    name = SOLVER_ALIASES.get(name, name)
    _choice("solver", name, SOLVER_NAMES)
    return name


def check_steps(grid: str, steps) -> None:
    """``steps`` must be an integer the grid ``grid`` is defined for."""
    _choice("time grid", grid, GRID_NAMES)
    minimum = GRID_MIN_STEPS[grid]
    whole = isinstance(steps, (int, float)) and not isinstance(steps, bool) and math.isfinite(steps) and float(steps).is_integer()
    if not whole or steps < minimum:
        raise InputError(f"steps must be an integer >= {minimum} for the {grid} grid, got {steps!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """How to integrate from control to perturbed; the defaults are the paper's (50 Heun steps on
    the EDM grid = 100 network evaluations, guidance w = 0.2, noise level 0.5, no autoguidance).

    autoguidance a: v = (1 + a) v_model - a v_guide, extrapolating away from the model file's guide
    network, a snapshot of the same training run at fewer steps (Karras et al. 2024, "Guiding a
    diffusion model with a bad version of itself"; their w is 1 + a). Where the two differ is what
    longer training learnt, chiefly the fine detail that sampling must rebuild from the noise;
    0 = none. Each side is guided by ``guidance`` as without it.

    morph_guidance: the guidance morph runs with, where a model file recommends another than
    sample's (None = ``guidance``). From the clean control a morph carries each cell's own detail
    and needs less push than a sample drawn from noise (docs/modes.md); a guidance the user gives
    applies in both modes (:meth:`with_overrides`).

    morph_main_share s: where the model file carries a morph network, morph's velocity is
    (1 - s) x the morph network's + s x the main network's, each guided alike. Both are trained
    on clean-source batches; the main one, trained beside sample's noised batches too, keeps more
    of the control's fibres, so a small share gives back the texture changes the morph network
    falls short of (docs/modes.md). 0 = the morph network alone; each evaluation then runs one
    network instead of two.
    """

    solver: str = "heun"
    grid: str = "edm"
    steps: int = 50
    guidance: float = 0.2
    noise_level: float = 0.5
    autoguidance: float = 0.0
    morph_guidance: float | None = None
    morph_main_share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", canonical_solver(self.solver))
        check_steps(self.grid, self.steps)
        object.__setattr__(self, "steps", int(self.steps))  # 20.0 from a YAML or JSON file is 20
        for name in ("guidance", "noise_level", "autoguidance", "morph_guidance"):
            value = getattr(self, name)
            if name == "morph_guidance" and value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be >= 0 and finite (0 = none), got {value!r}")
        share = self.morph_main_share
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            raise InputError(f"morph_main_share must be between 0 and 1 (0 = the morph network alone), got {share!r}")

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (each is two forwards with guidance, twice that with autoguidance)."""
        return self.steps * EVALUATIONS_PER_STEP[self.solver]

    def with_overrides(self, **changes) -> "SamplingConfig":
        """These settings with the given fields changed; a field given as None keeps its value, and a
        guidance given without a morph_guidance is the guidance of both modes.
        The one home of "the model's defaults plus the user's options" (CLI, evaluation, benchmarks)."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise InputError(f"unknown sampling settings {unknown}; valid: {sorted(asdict(self))}")
        given = {k: v for k, v in changes.items() if v is not None}
        if "guidance" in given and "morph_guidance" not in given:
            given["morph_guidance"] = None
        return replace(self, **given)

    def for_mode(self, mode: str) -> "SamplingConfig":
        """The settings a run in ``mode`` integrates with: morph from the clean control (noise
        level 0 and no autoguidance, whatever these settings say: the control's own fine detail
        is there from the start, and extrapolating away from the guide only exaggerates it,
        docs/modes.md) at its morph_guidance and morph_main_share, sample with these settings as
        they are but without the morph share. The result has no morph_guidance: its guidance is
        the one the run uses."""
        if check_mode(mode) == "sample":
            return replace(self, morph_guidance=None, morph_main_share=0.0)
        guidance = self.guidance if self.morph_guidance is None else self.morph_guidance
        return replace(self, guidance=guidance, noise_level=0.0, autoguidance=0.0, morph_guidance=None)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SpeedOptions:
    """How the network runs, not what it computes (each is tested against the fp32 reference).

    precision: one of PRECISIONS; the ODE state is always integrated in fp32. channels_last:
    NHWC weights and activations (None = the hardware policy's: on for CUDA, and on CPUs with AMX
    for wide models in bf16; runtime.execution_plan). compile: ``torch.compile`` the UNet (True
    = CUDA graphs on CUDA, "default" elsewhere, or a mode from COMPILE_MODES), compiled once per
    model and mode. batch_guidance: the conditional and unconditional halves of a guided step as
    one forward (False: two forwards, the authors' way). images_per_forward: the most images one
    forward takes, larger evaluations run in parts of that size (None = the hardware policy's
    cap: 32-128 on a CPU, none on GPUs); the results are the same (docs/speed.md).
    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | str = False
    batch_guidance: bool = True
    images_per_forward: int | None = None

    def __post_init__(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        n = self.images_per_forward
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InputError(f"images_per_forward must be a whole number >= 1 (or None: the hardware policy's), got {n!r}")
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_MODES:
            raise InputError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
