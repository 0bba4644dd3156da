"""A generation run as the plugin keeps it: the trajectory plus what is needed to show and export
it in stored pixel values. No Qt, no napari (the napari writer and the widget both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from napari_cellflux.generation.cost import CostEstimate
    from napari_cellflux.generation.generate import Trajectory
    from napari_cellflux.models.channels import Channel
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.normalization import Normalization


@dataclass
class GenerationResult:
    """trajectory: the run (model space). controls: (N, C, H, W) stored pixels of the control
    cells it started from. channels / normalization: the model's, for display and export.
    pixel_size_um: µm per pixel of the model's crops (None: unknown), for scale bars and export.

    What is shown and exported are the *frames*: frame 0 is always the real control cells' own
    pixels at t = 0; then, where the run started from control + noise (mode "sample", noise
    level > 0), that noised start, named as such; then the grid states up to t = 1. A start
    without noise (mode "morph") equals the controls, so it is not repeated."""

    trajectory: "Trajectory"
    controls: np.ndarray
    channels: "tuple[Channel, ...]"
    normalization: "Normalization"
    pixel_size_um: float | None = None

    @cached_property
    def pixels(self) -> np.ndarray:
        """(T, N, C, H, W) the trajectory's grid states as stored pixels (uint8 for 8-bit models);
        pixels[0] is x_init. What to show is :attr:`frames`."""
        return self.normalization.to_pixels(self.trajectory.states)

    @property
    def times(self) -> np.ndarray:
        """(T,) the flow times of the trajectory's grid states (of :attr:`pixels`)."""
        return self.trajectory.times.numpy()

    @property
    def mode(self) -> str:
        """"morph" or "sample" (settings.MODES)."""
        return self.trajectory.metadata.get("mode", "sample")

    @property
    def noise_level(self) -> float:
        """The noise level the run started with (0 in mode "morph")."""
        return float(self.trajectory.metadata.get("noise_level", 0.0))

    @property
    def _first_state(self) -> int:
        """The first grid state shown after the controls: 1 where states[0] is x_init without
        noise (exactly the controls), else 0 (the noised start, or the final state alone)."""
        all_states = self.trajectory.metadata.get("states", "all") == "all"
        return 1 if all_states and self.noise_level == 0 and len(self.times) > 1 else 0

    @cached_property
    def frames(self) -> np.ndarray:
        """(F, N, C, H, W) stored pixels: frame 0 the controls exactly, then the noised start (if
        any), then the grid states to t = 1."""
        states = self.pixels[self._first_state:]
        dtype = np.result_type(self.controls.dtype, states.dtype)  # uint8 controls stay exact
        return np.concatenate([self.controls[None].astype(dtype), states.astype(dtype, copy=False)])

    @property
    def frame_times(self) -> np.ndarray:
        """(F,) flow time of each frame; the controls are at t = 0."""
        return np.concatenate([[0.0], self.times[self._first_state:]]).astype(np.float64)

    @property
    def frame_names(self) -> list[str]:
        """F readable names: "controls (t = 0)", "noised start (t = 0, control + 0.5 x noise)",
        "t = 0.250", ..., "t = 1 (perturbed)"."""
        names = ["controls (t = 0)"]
        all_states = self.trajectory.metadata.get("states", "all") == "all"
        last = len(self.times) - 1
        for i in range(self._first_state, len(self.times)):
            t = float(self.times[i])
            if i == last:
                names.append("t = 1 (perturbed)")
            elif i == 0 and all_states:
                names.append(f"noised start (t = {_time(t)}, control + {self.noise_level:g} x noise)")
            else:
                names.append(f"t = {_time(t)}")
        return names

    def frame_at(self, t: float) -> int:
        """Index of the frame nearest to flow time ``t`` in [0, 1]; t = 0 is the controls (frame 0)."""
        from napari_cellflux.errors import InputError

        if isinstance(t, bool) or not isinstance(t, Real) or not 0.0 <= t <= 1.0:
            raise InputError(f"t must be a number in [0, 1], got {t!r}")
        return int(np.argmin(np.abs(self.frame_times - t)))  # ties: the earlier frame, so t = 0 -> controls

    @property
    def domain_messages(self) -> list[str]:
        """What the check of the controls against the model's training controls found, or why it
        checked nothing (empty when they look alike)."""
        from napari_cellflux.models.domain import DomainReport

        check = self.trajectory.metadata.get("domain_check")
        return DomainReport(**check).messages() if check else []

    @property
    def label(self) -> str:
        """The perturbation's name, or its SMILES for an unseen compound."""
        return self.trajectory.metadata.get("perturbation") or "unconditional"

    def write_tiff(self, path: str | Path, index: int | None = None) -> Path:
        """Write every frame, or only frame ``index`` (of :attr:`frames`; -1 = t = 1), as a Fiji
        hyperstack in the channels' colours, with the pixel size where known (atomic)."""
        from napari_cellflux.atomic import check_writable
        from napari_cellflux.generation.export import TIFF_SUFFIXES, write_frames_tiff

        path = check_writable(path, what="export", suffixes=TIFF_SUFFIXES)
        frames, names, times = self.frames, self.frame_names, self.frame_times
        if index is not None:
            if not -len(frames) <= index < len(frames):
                raise IndexError(f"frame {index} does not exist; the run has {len(frames)} frames (0..{len(frames) - 1})")
            index %= len(frames)  # -1 = the final state, as in Python indexing
            frames, names, times = frames[index:index + 1], names[index:index + 1], times[index:index + 1]
        metadata = {**self.trajectory.metadata, "frame_times": [float(t) for t in times]}
        return write_frames_tiff(path, frames, names, self.channels, metadata, self.pixel_size_um)

    def write_animation(self, path: str | Path, cells: "Sequence[int] | None" = None, fps: float = 4.0) -> Path:
        """Write the morph of ``cells`` (indices into the controls; None = all) as a looping GIF,
        one frame per frame of :attr:`frames`, channels in their colours, each frame's name on it."""
        from napari_cellflux.atomic import check_writable
        from napari_cellflux.errors import InputError
        from napari_cellflux.generation.export import ANIMATION_SUFFIXES, write_animation

        path = check_writable(path, what="export", suffixes=ANIMATION_SUFFIXES)
        n = len(self.controls)
        chosen = list(range(n)) if cells is None else [int(i) for i in cells]
        if not chosen or any(not -n <= i < n for i in chosen):
            raise InputError(f"cells {list(cells or [])}: choose cell indices from 0 to {n - 1}")
        return write_animation(path, self.frames[:, chosen], self.frame_names, self.channels,
                               self.normalization.max_value, fps=fps)


def _time(t: float) -> str:
    """A flow time for a name: "0", "1", else three decimals."""
    return "0" if t == 0 else "1" if t == 1 else f"{t:.3f}"


def generate_from_pixels(
    model: "CellFluxModel",
    pixels: np.ndarray,
    *,
    n_cells: int | None = None,
    device: str = "auto",
    before_run: "Callable[[CostEstimate], bool] | None" = None,
    **generate_options,
) -> GenerationResult:
    """Run :func:`napari_cellflux.api.generate` on the first ``n_cells`` of the control crops
    ``pixels`` (N, C, H, W, stored values) on ``device``; ``generate_options`` go to generate
    (perturbation or smiles, sampling, mode, seed, progress, cancel, ...).

    The controls are first compared with the model's training controls
    (:func:`napari_cellflux.models.domain.check_domain`: a DomainWarning per finding); the report
    is ``metadata["domain_check"]`` of the trajectory. ``before_run(estimate)``, if given, is told
    what the run will cost (:func:`napari_cellflux.generation.cost.estimate_cost`) before it starts,
    and stops it (GenerationCancelled) by returning False."""
    from napari_cellflux.generation.generate import (  # torch: only once a run starts
        check_autoguidance,
        check_controls,
        condition_vector,
        generate,
    )
    from napari_cellflux.models.domain import check_domain
    from napari_cellflux.runtime import resolve_device
    from napari_cellflux.settings import DEFAULT_MODE, check_mode

    mode = check_mode(generate_options.get("mode", DEFAULT_MODE))
    sampling = (generate_options.get("sampling") or model.sampling).for_mode(mode)
    check_autoguidance(model, sampling)
    controls = np.asarray(pixels)[:n_cells]
    x = check_controls(model, model.normalization.to_model(controls))  # a wrong shape is an error before any warning
    condition_vector(model, generate_options.get("perturbation"), smiles=generate_options.get("smiles"),
                     embedding=generate_options.get("embedding"))  # so is an unknown perturbation
    domain = check_domain(model, controls.reshape(x.shape))  # (C, H, W): one cell
    model.to(resolve_device(device))
    if before_run is not None:
        from napari_cellflux.generation.cost import estimate_cost
        from napari_cellflux.generation.generate import GenerationCancelled
        from napari_cellflux.settings import SpeedOptions

        condition = {k: generate_options[k] for k in ("perturbation", "smiles", "embedding") if generate_options.get(k) is not None}
        estimate = estimate_cost(model, x, len(x), sampling,
                                 generate_options.get("speed", SpeedOptions()), condition,
                                 batch_size=generate_options.get("batch_size", 64))
        if not before_run(estimate):
            raise GenerationCancelled(f"not started: {estimate.describe()}")
        trajectory_metadata = {"cost_estimate_s": round(estimate.seconds, 2)}
    else:
        trajectory_metadata = {}
    trajectory = generate(model, x, **generate_options)
    trajectory.metadata.update(trajectory_metadata)
    trajectory.metadata["domain_check"] = domain.to_dict()
    return GenerationResult(trajectory, controls, model.channels, model.normalization, model.pixel_size_um)
