"""Perturbation vocabularies: names, their kind, and the embedding the model is conditioned on."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_cellflux.errors import InputError, UnknownNameError

KINDS = ("compound", "gene", "other")


@dataclass
class Vocabulary:
    """The perturbations a model knows.

    names: V names, in row order of ``embeddings`` (V, D) float32 (fed to the model unscaled).
    kind: "compound" (Morgan count fingerprints), "gene" (e.g. gene2vec) or "other".
    smiles: compound name -> SMILES, where known. control: the control's name (e.g. "DMSO"), if any.
    """

    names: list[str]
    embeddings: torch.Tensor
    kind: str = "other"
    smiles: dict[str, str] = field(default_factory=dict)
    control: str | None = None

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.embeddings = torch.as_tensor(self.embeddings, dtype=torch.float32)
        if self.kind not in KINDS:
            raise InputError(f"perturbation kind must be one of {KINDS}, got {self.kind!r}")
        if self.embeddings.dim() != 2 or self.embeddings.shape[0] != len(self.names):
            raise InputError(
                f"embeddings must be (V, D) with one row per name: {len(self.names)} names, "
                f"embeddings of shape {tuple(self.embeddings.shape)}"
            )
        if len(set(n.lower() for n in self.names)) != len(self.names):
            raise InputError("perturbation names must be unique (case-insensitive)")
        if not torch.isfinite(self.embeddings).all():
            raise InputError("perturbation embeddings contain NaN or inf; fix the embedding table")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Row of ``name`` (case-insensitive); an unknown name lists the closest known ones."""
        lowered = [n.lower() for n in self.names]
        key = str(name).lower()
        if key in lowered:
            return lowered.index(key)
        close = difflib.get_close_matches(str(name), self.names, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the model knows {len(self.names)} perturbations"
        extra = " (or give a SMILES for an unseen compound)" if self.kind == "compound" else ""
        raise UnknownNameError(f"unknown perturbation {name!r}{hint}{extra}")

    def embedding(self, name: str) -> torch.Tensor:
        """The (D,) condition vector of ``name``."""
        return self.embeddings[self.index(name)]

    def search(self, query: str) -> list[str]:
        """Names containing ``query`` (case-insensitive), those starting with it first."""
        q = query.strip().lower()
        hits = [n for n in self.names if q in n.lower()]
        return sorted(hits, key=lambda n: (not n.lower().startswith(q), n.lower()))

    def to_metadata(self) -> dict:
        """Everything but the embedding matrix, as JSON-ready values."""
        return {"names": self.names, "kind": self.kind, "smiles": self.smiles, "control": self.control}

    @classmethod
    def from_metadata(cls, meta: dict, embeddings: torch.Tensor) -> "Vocabulary":
        return cls(embeddings=embeddings, **meta)


def read_embedding_csv(path: str | Path, kind: str = "other", control: str | None = None) -> Vocabulary:
    """Read a perturbation embedding CSV: first column the name, one row of floats per perturbation.

    This is the layout of the authors' ``emb_fp.csv`` / gene2vec tables.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding CSV {path} does not exist")
    try:
        table = pd.read_csv(path, index_col=0)
    except Exception as err:  # pandas raises many parser error types
        raise InputError(f"embedding CSV {path} could not be parsed: {err}") from err
    if table.empty:
        raise InputError(f"embedding CSV {path} has no rows; expected one row of floats per perturbation")
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise InputError(
            f"embedding CSV {path}: columns {non_numeric[:5]} are not numeric; expected the name in the "
            "first column and only numbers after it"
        )
    names = [str(n) for n in table.index]
    seen: set[str] = set()
    repeated = sorted({n for n in names if n.lower() in seen or seen.add(n.lower())})
    if repeated:
        raise InputError(f"embedding CSV {path}: names {repeated[:5]} appear more than once (names are case-insensitive); "
                         "keep one row per perturbation")
    values = table.to_numpy(np.float64)
    if not np.isfinite(values).all():
        rows = [names[i] for i in np.flatnonzero(~np.isfinite(values).all(axis=1))]
        raise InputError(f"embedding CSV {path}: rows {rows[:5]} hold empty, NaN or infinite values; fill them in or drop them")
    if control is None:
        control = next((n for n in names if n.lower() in ("dmso", "control", "negative_control")), None)
    return Vocabulary(names=names, embeddings=torch.tensor(table.to_numpy(np.float32)), kind=kind, control=control)
