"""Compound embeddings from SMILES: Morgan count fingerprints, as in the BBBC021 ``emb_fp.csv``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from napari_cellflux.errors import InputError
from napari_cellflux.models.vocabulary import Vocabulary

# Vehicle controls whose SMILES everyone agrees on, so a control needs no SMILES from the user.
KNOWN_CONTROLS = {"dmso": "CS(C)=O"}


def morgan_count_fingerprint(smiles: str, n_bits: int = 1024, radius: int = 2) -> np.ndarray:
    """Hashed Morgan count fingerprint of ``smiles``: float32 (n_bits,), small non-negative integers.

    Counts (not bits) of the circular substructures up to ``radius`` bonds, folded into
    ``n_bits`` slots, without chirality; radius 2 / 1024 slots match the BBBC021 embedding.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    # RDKit prints parse errors to stderr; the ValueError below says it better.
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(str(smiles)) if str(smiles).strip() else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise InputError(
            f"SMILES {smiles!r} could not be parsed by RDKit; check it (e.g. copy the isomeric SMILES from "
            "PubChem) or give the compound an embedding row in the embedding CSV instead"
        )
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    return generator.GetCountFingerprintAsNumPy(mol).astype(np.float32)


def compound_vocabulary(
    smiles_by_name: Mapping[str, str], control: str | None = None, n_bits: int = 1024, radius: int = 2
) -> Vocabulary:
    """A compound Vocabulary whose embeddings are the Morgan count fingerprints of the SMILES.

    The control (e.g. "DMSO") is a row like any other; a known vehicle missing from
    ``smiles_by_name`` is added with its SMILES (DMSO: CS(C)=O).
    """
    smiles = {str(name): str(s) for name, s in smiles_by_name.items()}
    if control is not None and control.lower() not in {n.lower() for n in smiles}:
        if control.lower() not in KNOWN_CONTROLS:
            raise InputError(
                f"control {control!r} has no SMILES; add it to the SMILES table (known vehicles: "
                f"{', '.join(KNOWN_CONTROLS)})"
            )
        smiles[control] = KNOWN_CONTROLS[control.lower()]
    if not smiles:
        raise InputError("no compounds given; pass a mapping of compound name -> SMILES")
    rows = []
    for name, s in smiles.items():
        try:
            rows.append(morgan_count_fingerprint(s, n_bits=n_bits, radius=radius))
        except ValueError as err:
            raise InputError(f"compound {name!r}: {err}") from None
    return Vocabulary(names=list(smiles), embeddings=np.stack(rows), kind="compound", smiles=smiles, control=control)
