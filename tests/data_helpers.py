"""Helpers for the data-layer tests: small IMPA-layout trees and vocabularies built on the fly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.data.impa import CONVENTIONS
from napari_cellflux.models.vocabulary import Vocabulary

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Square regions of real DNA channels, uint16, uncompressed (origin, region and licence:
# fixtures/SOURCES.md): JUMP cpg0000 BR00116991 A01 site 1 Hoechst, 320 x 320 (CC0), and NF1
# Schwann cells plate 2 D6 site 2 DAPI, 384 x 384 (CC BY 4.0, iNFixion Bioscience).
CPG0000_FIELD = FIXTURES / "cpg0000_A01_f01_dna_320.tif"
NF1_FIELD = FIXTURES / "nf1_D6_dapi_384.tif"

# Columns of each convention: (perturbation, batch, state, control value, treated value).
LAYOUT = {
    "bbbc021": ("CPD_NAME", "BATCH", "STATE", "0", "1"),
    "rxrx1": ("CPD_NAME", "BATCH", "ANNOT", "negative_control", "treated"),
    "cpg0000": ("BROAD_SAMPLE", "PLATE", "STATE", "control", "trt"),
}


def sample_key(convention: str, batch: str, i: int) -> str:
    """A key of the convention's shape for cell ``i`` of ``batch`` (batch names have no '_')."""
    if convention == "bbbc021":
        return f"{batch}_W{i % 3:02d}_s1_{i}"
    if convention == "rxrx1":
        return f"U2OS-{batch}_{i % 3}_J09_s1_{i}"
    return f"{batch}_C{i % 3:02d}_1_{i}"


def cell_pixels(value: int, size: int, channels: int) -> np.ndarray:
    """(H, W, C) uint8 whose pixel (0, 0) is 200 (so flips are visible) and the rest ``value``."""
    pixels = np.full((size, size, channels), value, dtype=np.uint8)
    pixels[0, 0] = 200
    return pixels


@dataclass
class Tree:
    root: Path
    csv: Path
    cells: pd.DataFrame  # batch, perturbation, is_control, split, value, key


def write_impa_tree(
    root: Path,
    convention: str = "bbbc021",
    *,
    batches: tuple[str, ...] = ("P1", "P2"),
    controls: int = 4,
    treated: dict[str, int] | None = None,
    size: int = 8,
    channels: int | None = None,
    test_every: int = 4,
) -> Tree:
    """Write an IMPA tree: per batch ``controls`` control cells and ``treated`` cells per perturbation.

    Cell n holds the value n + 1 (unique per cell, < 200); every ``test_every``-th cell of a
    group is in the test split.
    """
    treated = {"drugA": 3, "drugB": 2} if treated is None else treated
    channels = channels or CONVENTIONS[convention].channels
    pert_col, batch_col, state_col, control_value, treated_value = LAYOUT[convention]
    rows = []
    for batch in batches:
        groups = [("DMSO", True, controls)] + [(name, False, count) for name, count in treated.items()]
        for name, is_control, count in groups:
            for j in range(count):
                n = len(rows)
                rows.append(
                    {
                        "batch": batch,
                        "perturbation": name,
                        "is_control": is_control,
                        "split": "test" if j % test_every == test_every - 1 else "train",
                        "value": n + 1,
                        "key": sample_key(convention, batch, n),
                    }
                )
    cells = pd.DataFrame(rows)
    for key, value in zip(cells["key"], cells["value"]):
        path = root / CONVENTIONS[convention].key_to_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, cell_pixels(value, size, channels))
    metadata = pd.DataFrame(
        {
            "SAMPLE_KEY": cells["key"],
            "SPLIT": cells["split"],
            state_col: np.where(cells["is_control"], control_value, treated_value),
            pert_col: cells["perturbation"],
            batch_col: cells["batch"],
        }
    )
    if convention == "bbbc021":
        metadata["ANNOT"] = np.where(cells["is_control"], "DMSO", "some MoA")
        metadata["SMILES"] = np.where(cells["is_control"], "CS(C)=O", "CCO")
    csv = root / "metadata.csv"
    metadata.to_csv(csv)
    return Tree(root=root, csv=csv, cells=cells)


def toy_vocabulary(names=("DMSO", "drugA", "drugB"), dim: int = 4) -> Vocabulary:
    return Vocabulary(names=list(names), embeddings=np.eye(len(names), dim, dtype=np.float32), kind="other")
