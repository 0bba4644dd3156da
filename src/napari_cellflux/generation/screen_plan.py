"""Which perturbations a virtual screen makes, where each one's chunks go, and which process makes them.

A screen's list is vocabulary names, SMILES of compounds the model never saw (name -> SMILES, e.g.
from a CSV read by :func:`read_smiles_csv`), the whole vocabulary, or nothing (one unconditional
run). The whole list is checked before anything is written: every unknown name is reported in one
error with the closest vocabulary names, and every SMILES is parsed. Entry p's chunks go to the
folder ``<p:04d>_<name made file-safe>`` of the screen folder. The work is cut into (perturbation,
chunk) units in perturbation-major order, u = p * n_chunks + chunk; rank r of W makes u = r, r + W, ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_cellflux.errors import InputError, UnknownNameError
from napari_cellflux.models.fingerprints import morgan_count_fingerprint

if TYPE_CHECKING:
    from napari_cellflux.models.model_file import CellFluxModel

SMILES_COLUMNS = ("name", "smiles")
UNCONDITIONAL = "unconditional"
_LISTED = 8  # unknown names / bad rows spelled out in one error line before "and N more"


@dataclass(frozen=True)
class ScreenEntry:
    """One perturbation of a screen. ``name``: the vocabulary name, a SMILES table's name or the
    SMILES itself; ``condition``: "vocabulary", "smiles" or "none"; ``folder``: its chunk folder,
    relative to the screen folder; ``is_control``: the vocabulary's control (e.g. DMSO)."""

    name: str
    condition: str
    folder: str
    smiles: str | None = None
    is_control: bool = False

    def generate_args(self) -> dict:
        """The condition as :func:`napari_cellflux.generation.generate.generate` takes it."""
        if self.condition == "smiles":
            return {"smiles": self.smiles}
        return {"perturbation": self.name if self.condition == "vocabulary" else None}

    def to_dict(self) -> dict:
        entry = {"name": self.name, "condition": self.condition, "folder": self.folder, "is_control": self.is_control}
        return entry | ({"smiles": self.smiles} if self.smiles is not None else {})


def plan_screen(
    model: "CellFluxModel",
    perturbation: str | Sequence[str] | None = None,
    *,
    smiles: str | Mapping[str, str] | None = None,
    all_perturbations: bool = False,
) -> list[ScreenEntry]:
    """The screen's perturbations in order: ``perturbation`` names (or the whole vocabulary), then
    the unseen compounds of ``smiles`` (one SMILES, or name -> SMILES). Nothing given: one
    unconditional entry. Unknown names, bad SMILES and repeated names are InputErrors."""
    vocab = model.vocabulary
    names = [perturbation] if isinstance(perturbation, str) else list(perturbation or [])
    if all_perturbations:
        if names:
            raise InputError("give perturbation names or all_perturbations (--all-perturbations), not both")
        names = list(vocab.names)
    known = resolve_names(model, names)
    unseen = {smiles: smiles} if isinstance(smiles, str) else dict(smiles or {})
    if unseen and vocab.kind != "compound":
        raise InputError(f"this model is conditioned on {vocab.kind} embeddings, not compound fingerprints; "
                         "SMILES cannot be screened with it")
    bad = [name for name, s in unseen.items() if _smiles_problem(s)]
    if bad:
        raise InputError(f"SMILES of {_listing([repr(n) for n in bad])} could not be parsed by RDKit; "
                         "fix them (e.g. copy the isomeric SMILES from PubChem) or leave them out")
    pairs = [(name, "vocabulary", None) for name in known] + [(str(n), "smiles", str(s)) for n, s in unseen.items()]
    if not pairs:
        pairs = [(UNCONDITIONAL, "none", None)]
    repeated = _repeated([name for name, _, _ in pairs])
    if repeated:
        raise InputError(f"perturbations {_listing([repr(n) for n in repeated])} are listed more than once "
                         "(names are case-insensitive); list each once")
    width = max(4, len(str(len(pairs) - 1)))
    control = (vocab.control or "").lower()
    return [ScreenEntry(name=name, condition=kind, smiles=s, folder=f"{p:0{width}d}_{file_safe(name)}",
                        is_control=kind == "vocabulary" and name.lower() == control)
            for p, (name, kind, s) in enumerate(pairs)]


def resolve_names(model: "CellFluxModel", names: Sequence[str]) -> list[str]:
    """The vocabulary's spelling of each name (case-insensitive). Every unknown name is reported in
    ONE UnknownNameError, each with the closest vocabulary names (difflib)."""
    vocab = model.vocabulary
    lowered = {n.lower(): n for n in vocab.names}
    unknown = [str(n) for n in names if str(n).lower() not in lowered]
    if unknown:
        hints = []
        for name in unknown:
            close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
            hints.append(f"{name!r} (closest: {', '.join(close)})" if close else f"{name!r} (nothing close)")
        extra = "; unseen compounds go in a SMILES table (--smiles-csv)" if vocab.kind == "compound" else ""
        raise UnknownNameError(
            f"unknown perturbation{'s' if len(unknown) > 1 else ''} {_listing(hints)}; the model knows {len(vocab)} "
            f"(`cellflux info MODEL --perturbations` lists them){extra}"
        )
    return [lowered[str(n).lower()] for n in names]


def read_smiles_csv(path: str | Path) -> dict[str, str]:
    """name -> SMILES from a CSV with the columns ``name`` and ``smiles`` (case-insensitive; others
    are ignored), one compound per row. A missing column, an empty cell, a repeated name or a
    SMILES that RDKit cannot parse is an InputError naming the file's line numbers."""
    from napari_cellflux.data.cells import read_text_table

    path = Path(path)
    example = "e.g. a header 'name,smiles' then rows like 'aspirin,CC(=O)Oc1ccccc1C(=O)O'"
    table = read_text_table(path, "SMILES CSV", f"expected the columns name and smiles ({example})")
    columns = {c.lower(): c for c in table.columns}
    missing = [c for c in SMILES_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"SMILES CSV {path}: no column {' or '.join(missing)}; expected the columns name and smiles "
                         f"({example}), got {', '.join(map(repr, table.columns)) or 'none'}")
    if table.empty:
        raise InputError(f"SMILES CSV {path} has no rows; add one row per compound ({example})")
    names = [s.strip() for s in table[columns["name"]]]
    smiles = [s.strip() for s in table[columns["smiles"]]]
    line = lambda row: row + 2  # noqa: E731 - the header is line 1
    empty = [line(r) for r in range(len(names)) if not names[r] or not smiles[r]]
    if empty:
        raise InputError(f"SMILES CSV {path}: line {_listing(map(str, empty))} has an empty name or smiles; "
                         "fill it in or delete the row")
    bad = [f"{line(r)} ({smiles[r]!r})" for r in range(len(smiles)) if _smiles_problem(smiles[r])]
    if bad:
        raise InputError(f"SMILES CSV {path}: the SMILES on line {_listing(bad)} could not be parsed by RDKit; "
                         "fix them (e.g. copy the isomeric SMILES from PubChem) or delete those rows")
    repeated = _repeated(names)
    if repeated:
        lines = [f"{n!r} (lines {', '.join(str(line(r)) for r in range(len(names)) if names[r].lower() == n.lower())})"
                 for n in repeated]
        raise InputError(f"SMILES CSV {path}: names {_listing(lines)} appear more than once (case-insensitive); "
                         "keep one row per compound")
    return dict(zip(names, smiles))


def rank_units(n_perturbations: int, n_chunks: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """The (perturbation, chunk) units rank ``rank`` of ``world_size`` makes: u = rank, rank + W, ...
    of the perturbation-major order u = p * n_chunks + chunk."""
    return [divmod(u, n_chunks) for u in range(rank, n_perturbations * n_chunks, world_size)]


def file_safe(name: str) -> str:
    """``name`` as a file-name part: runs of characters other than letters, digits, '.', '-', '_'
    become '_' (SMILES hold '/', '#', '='), at most 40 characters."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", name).strip("._-")[:40] or "perturbation"


def _smiles_problem(smiles: str) -> bool:
    try:
        morgan_count_fingerprint(smiles)
    except InputError:
        return True
    return False


def _repeated(names: list[str]) -> list[str]:
    """Names that occur more than once (case-insensitive), each in its first spelling."""
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for n in names:
        first.setdefault(n.lower(), n)
        counts[n.lower()] = counts.get(n.lower(), 0) + 1
    return [first[k] for k, c in counts.items() if c > 1]


def _listing(items) -> str:
    items = list(items)
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")
