"""Virtual screens: generate any number of perturbed cells in chunks streamed to disk.

A screen of ``n_cells`` cells is cut into chunks of ``chunk_size``. Chunk i draws its control
cells from the control pool with replacement (seeded by (seed, i)) and its sampling noise from
a seed derived from (seed, i), so every chunk is reproducible on its own, whatever process,
GPU or order makes it. Each finished chunk is written atomically as ``chunk_<i:06d>.npy``
(stored pixels, uint8 for 8-bit models: (n, C, H, W) final states, or (n, T, C, H, W) with all
states), beside ``manifest.json`` (model hash, condition, sampling, seed, sizes, control pool
hash, the pool's domain check). Memory is one chunk, whatever ``n_cells`` is.

Restart the same command and it skips the chunks already on disk (the atomic rename means a
chunk file that exists is complete) after checking that the manifest describes the same screen.
Under ``torchrun`` (or with RANK / WORLD_SIZE set), rank r makes chunks r, r + W, r + 2W, ...
on GPU LOCAL_RANK; no process group is needed. No Qt, no napari.

>>> report = run_screen(model, control_pixels, "screen/", perturbation="taxol", n_cells=100_000)
>>> screen = read_screen("screen/")                  # manifest + chunk files
>>> for index, cells in screen.chunks(): ...          # (n, C, H, W) uint8, memory-mapped
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_cellflux.atomic import atomic_write, atomic_write_text
from napari_cellflux.errors import InputError
from napari_cellflux.generation.controls import check_crops
from napari_cellflux.generation.generate import GenerationCancelled, condition_vector, generate
from napari_cellflux.models.domain import check_domain
from napari_cellflux.runtime import autocast_dtype, distributed_env, dtype_name
from napari_cellflux.settings import SpeedOptions

if TYPE_CHECKING:
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.settings import SamplingConfig

MANIFEST = "manifest.json"
FORMAT = "napari-cellflux/screen"
FORMAT_VERSION = 1
# Manifest keys that describe the run, not the screen: they may differ on a resume.
NOT_IDENTITY = ("created_by", "domain_check")


def chunk_name(index: int) -> str:
    return f"chunk_{index:06d}.npy"


def chunk_count(n_cells: int, chunk_size: int) -> int:
    return -(-n_cells // chunk_size)


def chunk_size_of(index: int, n_cells: int, chunk_size: int) -> int:
    """Cells in chunk ``index`` (the last one may be smaller)."""
    return min(chunk_size, n_cells - index * chunk_size)


def chunk_control_indices(seed: int, index: int, n: int, pool_size: int) -> np.ndarray:
    """The control-pool rows (drawn with replacement) that chunk ``index`` starts from."""
    return np.random.default_rng([seed, index, 0]).integers(0, pool_size, n)


def chunk_seed(seed: int, index: int) -> int:
    """The sampling-noise seed of chunk ``index`` (independent of the chunks around it)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1, np.uint64)[0] >> 1)


def rank_chunks(n_chunks: int, rank: int, world_size: int) -> range:
    """The chunks rank ``rank`` of ``world_size`` makes: rank, rank + W, ..."""
    return range(rank, n_chunks, world_size)


def pool_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(str((pixels.shape, str(pixels.dtype))).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


@dataclass
class ScreenReport:
    """What one :func:`run_screen` call did. ``written``: chunks made now; ``skipped``: chunks of
    this rank found on disk; ``remaining``: chunks of this rank still to make (after a cancel or
    ``max_chunks``). ``domain_check``: the control pool against the model's training controls
    (:meth:`napari_cellflux.models.domain.DomainReport.to_dict`), also in the manifest."""

    out: Path
    n_chunks: int
    rank: int
    world_size: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0
    cells_written: int = 0
    domain_check: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """This rank has nothing left to make."""
        return not self.remaining


def screen_manifest(
    model: "CellFluxModel",
    controls: np.ndarray,
    *,
    condition: dict,
    sampling: "SamplingConfig",
    n_cells: int,
    chunk_size: int,
    seed: int,
    precision: str,
    all_states: bool,
) -> dict:
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
        "condition": condition,
        "sampling": sampling.to_dict(),
        "seed": seed,
        "n_cells": n_cells,
        "chunk_size": chunk_size,
        "n_chunks": chunk_count(n_cells, chunk_size),
        "chunk_files": "chunk_<index:06d>.npy",
        "chunk_layout": layout,
        "dtype": np.dtype(dtype).name,
        **states,
        "cell_shape": [model.config.in_channels, model.image_size, model.image_size],
        "channels": [c.name for c in model.channels],
        "normalization": model.normalization.to_dict(),
        "precision": precision,
        "controls": {"n": int(len(controls)), "sha256": pool_sha256(controls)},
        "controls_per_chunk": "rows of the control pool drawn with replacement, "
                              "numpy default_rng([seed, chunk, 0]).integers(0, n, size)",
        "created_by": {"napari_cellflux_version": __version__, "torch_version": torch.__version__},
    }


def _identity(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in NOT_IDENTITY}


def check_or_write_manifest(out: Path, manifest: dict) -> None:
    """Write ``manifest.json`` in a new screen folder; in an existing one, it must describe the
    same screen (else a ValueError names the differences: use another --out, or the old settings)."""
    path = out / MANIFEST
    if path.is_file():
        old = read_manifest(path)
        a, b = _identity(old), _identity(json.loads(json.dumps(manifest)))
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            details = "; ".join(f"{k}: on disk {_short(a.get(k))}, now {_short(b.get(k))}" for k in differ[:6])
            raise InputError(
                f"{out} holds a different virtual screen ({details}). Resume it with its original settings, "
                "or write this screen to another --out folder"
            )
        return
    if out.exists() and any(p.name.startswith("chunk_") for p in out.iterdir()):
        raise InputError(f"{out} holds chunk files but no {MANIFEST}; it is not a screen this program can resume. "
                         "Use an empty --out folder")
    atomic_write_text(path, json.dumps(manifest, indent=2))


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


def _remove_stale_parts(out: Path, index: int) -> None:
    # atomic_write's temporary files are ".<name>.<uuid>.part"; a killed process leaves them behind.
    for part in out.glob(f".{chunk_name(index)}.*.part"):
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
    perturbation: str | None = None,
    smiles: str | None = None,
    sampling: "SamplingConfig | None" = None,
    seed: int = 0,
    batch_size: int = 256,
    speed: SpeedOptions = SpeedOptions(),
    all_states: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    max_chunks: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ScreenReport:
    """Generate ``n_cells`` cells of ``perturbation`` (or ``smiles``) from the control pool
    ``controls`` (N, C, H, W stored pixels) into the folder ``out``, one chunk at a time.

    Resumable: chunks already in ``out`` are skipped (the manifest must match). ``rank`` /
    ``world_size`` (default: RANK / WORLD_SIZE from the environment) split the chunks between
    processes. ``max_chunks`` stops after that many new chunks; ``cancel()`` is polled every
    solver step (the chunk in progress is dropped). ``progress(done, total)`` counts this rank's
    chunks, skipped ones included. Sampling and speed options are :func:`napari_cellflux.api.generate`'s.
    The pool is first compared with the model's training controls (a DomainWarning per finding).
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
    _, condition = condition_vector(model, perturbation, smiles=smiles)
    out = Path(out)
    if (out / MANIFEST).is_file():
        read_manifest(out / MANIFEST)  # a damaged one is an error before any warning
    domain = check_domain(model, controls)  # after the errors above: a mistake is reported alone
    dtype = autocast_dtype(speed.precision, model.device)
    manifest = screen_manifest(
        model, controls, condition=condition, sampling=sampling, n_cells=n_cells, chunk_size=chunk_size,
        seed=seed, precision=dtype_name(dtype), all_states=all_states,
    )
    manifest["domain_check"] = domain.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_manifest(out, manifest)

    n_chunks = manifest["n_chunks"]
    mine = list(rank_chunks(n_chunks, rank, world_size))
    report = ScreenReport(out=out, n_chunks=n_chunks, rank=rank, world_size=world_size, domain_check=manifest["domain_check"])
    started = time.perf_counter()
    cell_shape = tuple(manifest["cell_shape"])
    n_times = len(manifest["times"]) if all_states else None
    stopped = False
    for done, index in enumerate(mine):
        n = chunk_size_of(index, n_cells, chunk_size)
        shape = (n, n_times, *cell_shape) if all_states else (n, *cell_shape)
        path = out / chunk_name(index)
        on_disk = _chunk_on_disk(path, shape, manifest["dtype"])
        if not on_disk and not stopped:
            if cancel is not None and cancel():
                report.cancelled = stopped = True
            elif max_chunks is not None and len(report.written) >= max_chunks:
                stopped = True
        if on_disk:
            report.skipped.append(index)
        elif stopped:
            report.remaining.append(index)
            continue
        else:
            _remove_stale_parts(out, index)
            rows = chunk_control_indices(seed, index, n, len(controls))
            try:
                trajectory = generate(
                    model, model.normalization.to_model(controls[rows]), perturbation, smiles=smiles,
                    sampling=sampling, seed=chunk_seed(seed, index), batch_size=batch_size, cancel=cancel,
                    speed=speed, final_only=not all_states,
                )
            except GenerationCancelled:
                report.cancelled = stopped = True
                report.remaining.append(index)
                continue
            pixels = model.normalization.to_pixels(trajectory.states)  # (T or 1, n, C, H, W)
            del trajectory
            pixels = np.ascontiguousarray(pixels.swapaxes(0, 1)) if all_states else pixels[0]
            with atomic_write(path) as f:
                np.save(f, pixels)
            report.written.append(index)
            report.cells_written += n
        if progress is not None:
            progress(done + 1, len(mine))
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class Screen:
    """A virtual screen folder read back: its manifest and which chunks are on disk."""

    root: Path
    manifest: dict

    @property
    def n_chunks(self) -> int:
        return self.manifest["n_chunks"]

    def chunk_path(self, index: int) -> Path:
        return self.root / chunk_name(index)

    @property
    def present(self) -> list[int]:
        return [i for i in range(self.n_chunks) if self.chunk_path(i).is_file()]

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.n_chunks) if not self.chunk_path(i).is_file()]

    @property
    def complete(self) -> bool:
        return not self.missing

    def chunk(self, index: int) -> np.ndarray:
        """Chunk ``index`` memory-mapped: (n, C, H, W) (or (n, T, C, H, W) with all states)."""
        return np.load(self.chunk_path(index), mmap_mode="r")

    def control_indices(self, index: int) -> np.ndarray:
        """Rows of the control pool that chunk ``index``'s cells started from."""
        m = self.manifest
        n = chunk_size_of(index, m["n_cells"], m["chunk_size"])
        return chunk_control_indices(m["seed"], index, n, m["controls"]["n"])

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, cells) for every chunk on disk, in order, one memory-mapped chunk at a time."""
        for index in self.present:
            yield index, self.chunk(index)


def read_manifest(path: Path) -> dict:
    """The JSON object in a screen's ``manifest.json``; anything else is an InputError naming it."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); the screen folder is damaged: write the screen to a new --out") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a napari-cellflux screen manifest; write the screen to a new or empty --out folder")
    if not isinstance(manifest.get("format_version", 0), int) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: a screen manifest of a newer napari-cellflux; upgrade napari-cellflux to read it")
    return manifest


def read_screen(root: str | Path) -> Screen:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {root} is not a virtual screen written by `cellflux screen`")
    return Screen(root, read_manifest(path))
