"""The files of a virtual screen and how to read them back; :mod:`.screen` writes them.

Layout (format 2)::

    SCREEN/manifest.json               what the screen is: model, sampling, seed, sizes, pool, and
                                       "perturbations": [{name, condition, folder, is_control[, smiles]}]
    SCREEN/<folder>/chunk_<i:06d>.npy  perturbation's chunk i: (n, C, H, W) stored pixels
                                       ((n, T, C, H, W) with all states)

Format 1 (napari-cellflux before multi-perturbation screens: one perturbation, chunks beside the
manifest) is read as a screen of one perturbation whose folder is ".". Chunk i of every
perturbation starts from the same control rows and the same noise (both seeded by (seed, i)), so
perturbations differ by their condition alone.

>>> screen = read_screen("screen/")
>>> for part in screen:                          # one ScreenPerturbation per perturbation
...     for index, cells in part.chunks(): ...   # (n, C, H, W) uint8, memory-mapped
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cellflux.errors import InputError, UnknownNameError

MANIFEST = "manifest.json"
FORMAT = "napari-cellflux/screen"
FORMAT_VERSION = 2


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


@dataclass
class ScreenPerturbation:
    """One perturbation of a screen folder: its manifest entry (name, condition, folder,
    is_control, smiles) and its chunks."""

    root: Path
    manifest: dict
    entry: dict

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def folder(self) -> Path:
        return self.root / self.entry["folder"]

    @property
    def n_chunks(self) -> int:
        return self.manifest["n_chunks"]

    def chunk_path(self, index: int) -> Path:
        return self.folder / chunk_name(index)

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
        """Rows of the control pool that chunk ``index``'s cells started from (the same rows for
        every perturbation of the screen)."""
        m = self.manifest
        n = chunk_size_of(index, m["n_cells"], m["chunk_size"])
        return chunk_control_indices(m["seed"], index, n, m["controls"]["n"])

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, cells) for every chunk on disk, in order, one memory-mapped chunk at a time."""
        for index in self.present:
            yield index, self.chunk(index)


@dataclass
class Screen:
    """A virtual screen folder read back: its manifest and, per perturbation, its chunks.
    ``screen["taxol"]`` (case-insensitive) or ``for part in screen`` give :class:`ScreenPerturbation`."""

    root: Path
    manifest: dict

    @property
    def perturbations(self) -> list[str]:
        return [e["name"] for e in self.manifest["perturbations"]]

    @property
    def n_chunks(self) -> int:
        """Chunks per perturbation."""
        return self.manifest["n_chunks"]

    def __len__(self) -> int:
        return len(self.manifest["perturbations"])

    def __iter__(self) -> Iterator[ScreenPerturbation]:
        for entry in self.manifest["perturbations"]:
            yield ScreenPerturbation(self.root, self.manifest, entry)

    def __getitem__(self, name: str) -> ScreenPerturbation:
        for part in self:
            if part.name.lower() == str(name).lower():
                return part
        close = difflib.get_close_matches(str(name), self.perturbations, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it holds {len(self)}: {', '.join(self.perturbations[:8])}"
        raise UnknownNameError(f"screen {self.root} has no perturbation {name!r}{hint}")

    @property
    def missing(self) -> dict[str, list[int]]:
        """Perturbation -> its chunks not on disk, for the incomplete ones."""
        return {part.name: gone for part in self if (gone := part.missing)}

    @property
    def complete(self) -> bool:
        return not self.missing


def read_manifest(path: Path) -> dict:
    """The JSON object in a screen's ``manifest.json`` as written; anything else is an InputError naming it."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); the screen folder is damaged: write the screen to a new --out") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a napari-cellflux screen manifest; write the screen to a new or empty --out folder")
    if not isinstance(manifest.get("format_version", 0), int) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: a screen manifest of a newer napari-cellflux; upgrade napari-cellflux to read it")
    if manifest.get("format_version", 0) >= 2:
        entries = manifest.get("perturbations")
        if not isinstance(entries, list) or not entries or not all(_valid_entry(e) for e in entries):
            raise InputError(f"{path}: 'perturbations' must be a list of {{name, condition, folder}} entries with plain "
                             "folder names; the screen folder is damaged: write the screen to a new --out")
    return manifest


def _valid_entry(entry) -> bool:
    # A folder is one plain name inside the screen: a manifest must never point reads elsewhere.
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("folder"), str)
            and entry["folder"] not in ("", ".", "..") and Path(entry["folder"]).name == entry["folder"])


def as_current(manifest: dict) -> dict:
    """A format-1 manifest (one perturbation, chunks in the screen folder itself) in format 2's shape."""
    if manifest.get("format_version", 0) >= 2:
        return manifest
    condition = dict(manifest.get("condition") or {})
    entry = {"name": condition.get("perturbation") or "unconditional", "condition": condition.get("condition", "none"),
             "folder": ".", "is_control": False}
    if condition.get("smiles"):
        entry["smiles"] = condition["smiles"]
    return {**manifest, "perturbations": [entry], "n_perturbations": 1}


def read_screen(root: str | Path) -> Screen:
    """The screen in folder ``root`` (written by `cellflux screen` / ``run_screen``, format 1 or 2)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {root} is not a virtual screen written by `cellflux screen`")
    return Screen(root, as_current(read_manifest(path)))
