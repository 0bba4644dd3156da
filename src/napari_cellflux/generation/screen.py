"""Virtual screens: generate any number of perturbed cells of one or many perturbations, in chunks
streamed to disk.

Each perturbation's ``n_cells`` cells are cut into chunks of ``chunk_size``. Chunk i draws its
control cells from the control pool with replacement (seeded by (seed, i)) and its sampling noise
from a seed derived from (seed, i), the same for every perturbation, so every chunk is reproducible
on its own, whatever process, GPU or order makes it, and perturbations differ by their condition
alone. Each finished chunk is written atomically as ``<folder>/chunk_<i:06d>.npy`` (stored pixels,
uint8 for 8-bit models: (n, C, H, W) final states, or (n, T, C, H, W) with all states), where
``folder`` is the perturbation's (:mod:`.screen_plan`), beside ``manifest.json`` (model hash, the
perturbations, sampling, seed, sizes, control pool hash, the pool's domain check; the layout is
:mod:`.screen_files`). Memory is one chunk, whatever ``n_cells`` and the number of perturbations.

Restart the same command and it skips the chunks already on disk (the atomic rename means a
chunk file that exists is complete) after checking that the manifest describes the same screen.
Under ``torchrun`` (or with RANK / WORLD_SIZE set), rank r makes the (perturbation, chunk) units
r, r + W, r + 2W, ... on GPU LOCAL_RANK; rank 0 writes the manifest and the other ranks wait for it
(no process group is needed). No Qt, no napari.

>>> report = run_screen(model, control_pixels, "screen/", perturbation=["taxol", "colchicine"], n_cells=100_000)
>>> screen = read_screen("screen/")                  # manifest + chunk files (see screen_files)
>>> for index, cells in screen["taxol"].chunks(): ...  # (n, C, H, W) uint8, memory-mapped
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_cellflux.atomic import atomic_write, atomic_write_text
from napari_cellflux.errors import InputError
from napari_cellflux.generation.controls import check_crops
from napari_cellflux.generation.generate import GenerationCancelled, generate
from napari_cellflux.generation.screen_files import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    chunk_control_indices,
    chunk_count,
    chunk_name,
    chunk_seed,
    chunk_size_of,
    read_manifest,
)
from napari_cellflux.generation.screen_plan import ScreenEntry, plan_screen, rank_units
from napari_cellflux.models.domain import check_domain
from napari_cellflux.runtime import autocast_dtype, distributed_env, precision_name
from napari_cellflux.settings import SpeedOptions

if TYPE_CHECKING:
    from napari_cellflux.generation.cost import CostEstimate
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.settings import SamplingConfig

# Manifest keys that describe the run, not the screen: they may differ on a resume.
NOT_IDENTITY = ("created_by", "domain_check")
MANIFEST_POLL_S = 0.2


def pool_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(str((pixels.shape, str(pixels.dtype))).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


@dataclass
class ScreenReport:
    """What one :func:`run_screen` call did, in (perturbation name, chunk index) units.
    ``written``: made now; ``skipped``: this rank's found on disk; ``remaining``: this rank's still
    to make (after a cancel or ``max_chunks``). ``n_chunks``: chunks per perturbation.
    ``domain_check``: the control pool against the model's training controls
    (:meth:`napari_cellflux.models.domain.DomainReport.to_dict`), also in the manifest."""

    out: Path
    perturbations: list[str]
    n_chunks: int
    rank: int
    world_size: int
    written: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    remaining: list[tuple[str, int]] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    cells_written: int = 0
    domain_check: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        """Chunks of the whole screen (all perturbations, all ranks)."""
        return len(self.perturbations) * self.n_chunks

    @property
    def complete(self) -> bool:
        """This rank has nothing left to make."""
        return not self.remaining


def screen_manifest(
    model: "CellFluxModel",
    controls: np.ndarray,
    *,
    entries: Sequence[ScreenEntry],
    sampling: "SamplingConfig",
    n_cells: int,
    chunk_size: int,
    seed: int,
    precision: str,
    all_states: bool,
) -> dict:
    """The manifest of a screen (format 2, see :mod:`.screen_files`); ``n_cells`` per perturbation."""
    import torch

    from napari_cellflux import __version__
    from napari_cellflux.core.solvers import time_grid

    states = {"states": "all", "times": time_grid(sampling.grid, sampling.steps).tolist()} if all_states else {"states": "final"}
    dtype = np.uint8 if model.normalization.max_value <= 255 else np.uint16
    layout = "(n, T, C, H, W)" if all_states else "(n, C, H, W)"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_sha256": model.sha256,
        "perturbations": [e.to_dict() for e in entries],
        "n_perturbations": len(entries),
        "sampling": sampling.to_dict(),
        "seed": seed,
        "n_cells": n_cells,
        "chunk_size": chunk_size,
        "n_chunks": chunk_count(n_cells, chunk_size),
        "counts": "n_cells cells per perturbation, in n_chunks chunks of chunk_size (the last may be smaller)",
        "chunk_files": "<perturbations[p].folder>/chunk_<index:06d>.npy",
        "chunk_layout": layout,
        "dtype": np.dtype(dtype).name,
        **states,
        "cell_shape": [model.config.in_channels, model.image_size, model.image_size],
        "channels": [c.name for c in model.channels],
        "normalization": model.normalization.to_dict(),
        "precision": precision,
        "controls": {"n": int(len(controls)), "sha256": pool_sha256(controls)},
        "controls_per_chunk": "rows of the control pool drawn with replacement, "
                              "numpy default_rng([seed, chunk, 0]).integers(0, n, size); the same for every perturbation",
        "noise_per_chunk": "torch CPU generator seeded with numpy SeedSequence([seed, chunk, 1]); the same for every perturbation",
        "work_units": "(perturbation p, chunk) as u = p * n_chunks + chunk; rank r of W makes u = r, r + W, ...",
        "created_by": {"napari_cellflux_version": __version__, "torch_version": torch.__version__},
    }


def _identity(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in NOT_IDENTITY}


def check_or_write_manifest(out: Path, manifest: dict, *, rank: int = 0, wait_s: float = 600.0) -> None:
    """Rank 0 writes ``manifest.json`` in a new screen folder; the other ranks wait up to ``wait_s``
    for it. An existing one must describe the same screen (else an InputError names the differences:
    use another --out, or the old settings)."""
    path = out / MANIFEST
    if rank > 0:
        deadline = time.monotonic() + wait_s
        while not path.is_file():
            if time.monotonic() >= deadline:
                raise InputError(f"rank {rank}: rank 0 has not written {path} within {wait_s:g} s; start every rank "
                                 "(torchrun does), with rank 0 among them")
            time.sleep(MANIFEST_POLL_S)
    if path.is_file():
        old = read_manifest(path)
        if old.get("format_version", 0) < FORMAT_VERSION:
            raise InputError(f"{out} holds a screen of an earlier napari-cellflux (format {old.get('format_version')}); "
                             "read_screen still reads it, but it cannot be resumed: write this screen to another --out folder")
        a, b = _identity(old), _identity(json.loads(json.dumps(manifest)))
        if a.get("perturbations") != b.get("perturbations"):
            raise InputError(f"{out} holds a virtual screen of other perturbations ({_list_change(a, b)}). "
                             "Resume it with its original list, or write this screen to another --out folder")
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            details = "; ".join(f"{k}: on disk {_short(a.get(k))}, now {_short(b.get(k))}" for k in differ[:6])
            raise InputError(
                f"{out} holds a different virtual screen ({details}). Resume it with its original settings, "
                "or write this screen to another --out folder"
            )
        return
    if out.exists() and (any(out.glob("chunk_*.npy")) or any(out.glob("*/chunk_*.npy"))):
        raise InputError(f"{out} holds chunk files but no {MANIFEST}; it is not a screen this program can resume. "
                         "Use an empty --out folder")
    atomic_write_text(path, json.dumps(manifest, indent=2))


def _list_change(old: dict, new: dict) -> str:
    names = lambda m: [e.get("name") for e in m.get("perturbations") or []]  # noqa: E731
    before, after = names(old), names(new)
    added, dropped = [n for n in after if n not in before], [n for n in before if n not in after]
    parts = [f"on disk {len(before)}: {_short(before)}"]
    parts += [f"added {_short(added)}"] if added else []
    parts += [f"dropped {_short(dropped)}"] if dropped else []
    if not added and not dropped:
        parts.append("same names, other order or conditions")
    return "; ".join(parts)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _chunk_on_disk(path: Path, shape: tuple[int, ...], dtype: str) -> bool:
    """True if ``path`` is a complete chunk of ``shape`` (only its header is read)."""
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return tuple(array.shape) == shape and array.dtype.name == dtype


def _remove_stale_parts(folder: Path, index: int) -> None:
    # atomic_write's temporary files are ".<name>.<uuid>.part"; a killed process leaves them behind.
    for part in folder.glob(f".{chunk_name(index)}.*.part"):
        try:
            part.unlink()
        except FileNotFoundError:
            pass


def run_screen(
    model: "CellFluxModel",
    controls: np.ndarray,
    out: str | Path,
    *,
    n_cells: int,
    chunk_size: int = 1024,
    perturbation: str | Sequence[str] | None = None,
    smiles: str | Mapping[str, str] | None = None,
    all_perturbations: bool = False,
    sampling: "SamplingConfig | None" = None,
    seed: int = 0,
    batch_size: int = 256,
    speed: SpeedOptions = SpeedOptions(),
    all_states: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    max_chunks: int | None = None,
    manifest_wait_s: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    before_run: "Callable[[CostEstimate], bool] | None" = None,
) -> ScreenReport:
    """Generate ``n_cells`` cells of each perturbation from the control pool ``controls`` (N, C, H, W
    stored pixels) into the folder ``out``, one chunk at a time. The perturbations
    (:func:`.screen_plan.plan_screen`): ``perturbation`` names (or ``all_perturbations``: the whole
    vocabulary), then ``smiles`` (one SMILES, or name -> SMILES of unseen compounds); none: unconditional.

    Resumable: chunks already in ``out`` are skipped (the manifest must match). ``rank`` /
    ``world_size`` (default: RANK / WORLD_SIZE from the environment) split the (perturbation,
    chunk) units between processes; ranks above 0 wait up to ``manifest_wait_s`` for rank 0's
    manifest. ``max_chunks`` stops after that many new chunks; ``cancel()`` is polled every solver
    step (the chunk in progress is dropped). ``progress(done, total)`` counts this rank's units,
    skipped ones included. ``before_run(estimate)`` is told what this rank's remaining chunks will
    cost and stops the run (GenerationCancelled) by returning False. Sampling and speed options are
    :func:`napari_cellflux.api.generate`'s. The pool is first compared with the model's training
    controls (a DomainWarning per finding).
    """
    if int(n_cells) != n_cells or n_cells < 1:
        raise InputError(f"n_cells must be a positive integer, got {n_cells!r}")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if max_chunks is not None and max_chunks < 0:
        raise InputError(f"max_chunks must be >= 0, got {max_chunks}")
    env = distributed_env()
    rank = env.rank if rank is None else rank
    world_size = env.world_size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} does not exist in a group of {world_size}")
    controls = np.asarray(controls)
    if controls.ndim != 4 or len(controls) == 0:
        raise InputError(f"the control pool must be (N, C, H, W) crops, got shape {controls.shape}")
    check_crops(controls, model, "control pool")
    sampling = sampling or model.sampling
    entries = plan_screen(model, perturbation, smiles=smiles, all_perturbations=all_perturbations)
    out = Path(out)
    if (out / MANIFEST).is_file():
        read_manifest(out / MANIFEST)  # a damaged one is an error before any warning
    domain = check_domain(model, controls)  # after the errors above: a mistake is reported alone
    dtype = autocast_dtype(speed.precision, model.device)
    manifest = screen_manifest(
        model, controls, entries=entries, sampling=sampling, n_cells=n_cells, chunk_size=chunk_size,
        seed=seed, precision=precision_name(dtype), all_states=all_states,
    )
    manifest["domain_check"] = domain.to_dict()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, manifest, rank=rank, wait_s=manifest_wait_s)

    n_chunks = manifest["n_chunks"]
    report = ScreenReport(out=out, perturbations=[e.name for e in entries], n_chunks=n_chunks, rank=rank,
                          world_size=world_size, domain_check=manifest["domain_check"])
    cell_shape = tuple(manifest["cell_shape"])
    n_times = len(manifest["times"]) if all_states else None

    def shape_of(index: int) -> tuple[int, ...]:
        n = chunk_size_of(index, n_cells, chunk_size)
        return (n, n_times, *cell_shape) if all_states else (n, *cell_shape)

    mine = [(entries[p], index) for p, index in rank_units(len(entries), n_chunks, rank, world_size)]
    on_disk = [_chunk_on_disk(out / e.folder / chunk_name(i), shape_of(i), manifest["dtype"]) for e, i in mine]
    if before_run is not None:
        _announce_cost(model, controls, [u for u, done in zip(mine, on_disk) if not done], n_cells, chunk_size,
                       sampling, speed, batch_size, before_run)
    started = time.perf_counter()
    stopped = False
    for done, ((entry, index), present) in enumerate(zip(mine, on_disk)):
        unit = (entry.name, index)
        if not present and not stopped:
            if cancel is not None and cancel():
                report.cancelled = stopped = True
            elif max_chunks is not None and len(report.written) >= max_chunks:
                stopped = True
        if present:
            report.skipped.append(unit)
        elif stopped:
            report.remaining.append(unit)
            continue
        else:
            folder = out / entry.folder
            folder.mkdir(exist_ok=True)
            _remove_stale_parts(folder, index)
            n = chunk_size_of(index, n_cells, chunk_size)
            rows = chunk_control_indices(seed, index, n, len(controls))
            try:
                trajectory = generate(
                    model, model.normalization.to_model(controls[rows]), **entry.generate_args(),
                    sampling=sampling, seed=chunk_seed(seed, index), batch_size=batch_size, cancel=cancel,
                    speed=speed, final_only=not all_states,
                )
            except GenerationCancelled:
                report.cancelled = stopped = True
                report.remaining.append(unit)
                continue
            pixels = model.normalization.to_pixels(trajectory.states)  # (T or 1, n, C, H, W)
            del trajectory
            pixels = np.ascontiguousarray(pixels.swapaxes(0, 1)) if all_states else pixels[0]
            with atomic_write(folder / chunk_name(index)) as f:
                np.save(f, pixels)
            report.written.append(unit)
            report.cells_written += n
        if progress is not None:
            progress(done + 1, len(mine))
    report.seconds = time.perf_counter() - started
    return report


def _announce_cost(model, controls, todo, n_cells, chunk_size, sampling, speed, batch_size, before_run) -> None:
    """Estimate the cost of the ``todo`` (entry, chunk) units and ask ``before_run`` whether to go on."""
    from napari_cellflux.generation.cost import estimate_cost

    if not todo:
        return
    cells = sum(chunk_size_of(index, n_cells, chunk_size) for _, index in todo)
    probe = model.normalization.to_model(controls[:batch_size])
    estimate = estimate_cost(model, probe, cells, sampling, speed, todo[0][0].generate_args(), batch_size=batch_size)
    if not before_run(estimate):
        raise GenerationCancelled(f"not started: {estimate.describe()}")
