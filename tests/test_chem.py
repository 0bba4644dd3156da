"""Morgan count fingerprints and compound vocabularies from SMILES."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellflux.models.fingerprints import compound_vocabulary, morgan_count_fingerprint

COLCHICINE = "COc1cc2c(c(OC)c1OC)-c1ccc(OC)c(=O)cc1[C@@H](NC(C)=O)CC2"


def test_fingerprint_is_hashed_counts():
    fp = morgan_count_fingerprint(COLCHICINE)
    assert fp.shape == (1024,) and fp.dtype == np.float32
    assert np.all(fp >= 0) and np.array_equal(fp, np.round(fp))
    assert fp.max() > 1  # counts, not bits: colchicine's four methoxy groups repeat
    # One count per atom environment at radius 0, 1, 2 (minus duplicates): far more than the slots set.
    assert fp.sum() > np.count_nonzero(fp)


def test_fingerprint_matches_rdkit_hashed_morgan_counts():
    # The long-standing RDKit call for hashed Morgan counts (before the generator API), so tables
    # made with it, as published count-fingerprint tables predating the generators likely were, match.
    from rdkit import RDLogger
    from rdkit.Chem import AllChem, MolFromSmiles

    if not hasattr(AllChem, "GetHashedMorganFingerprint"):
        pytest.skip("this RDKit no longer has the legacy Morgan API")
    RDLogger.DisableLog("rdApp.*")  # the legacy call prints a deprecation notice
    try:
        legacy = AllChem.GetHashedMorganFingerprint(MolFromSmiles(COLCHICINE), 2, nBits=1024)
    finally:
        RDLogger.EnableLog("rdApp.*")
    expected = np.zeros(1024, dtype=np.float32)
    for slot, count in legacy.GetNonzeroElements().items():
        expected[slot] = count
    np.testing.assert_array_equal(morgan_count_fingerprint(COLCHICINE), expected)


def test_fingerprint_depends_on_the_molecule_not_its_spelling():
    assert np.array_equal(morgan_count_fingerprint("CS(C)=O"), morgan_count_fingerprint("O=S(C)C"))
    assert not np.array_equal(morgan_count_fingerprint("CS(C)=O"), morgan_count_fingerprint("CCO"))


def test_fingerprint_size_and_radius_are_honoured():
    assert morgan_count_fingerprint(COLCHICINE, n_bits=2048).shape == (2048,)
    r1 = morgan_count_fingerprint(COLCHICINE, radius=1)
    r2 = morgan_count_fingerprint(COLCHICINE, radius=2)
    assert r2.sum() > r1.sum()


@pytest.mark.parametrize("bad", ["C1CC", "not a smiles", ""])
def test_invalid_smiles_is_a_clear_error_without_rdkit_noise(bad, capfd):
    with pytest.raises(ValueError, match="could not be parsed") as err:
        morgan_count_fingerprint(bad)
    assert repr(bad) in str(err.value)
    assert capfd.readouterr().err == ""


def test_compound_vocabulary_adds_the_control_fingerprint():
    vocab = compound_vocabulary({"colchicine": COLCHICINE, "ethanol": "CCO"}, control="DMSO")
    assert vocab.names == ["colchicine", "ethanol", "DMSO"]
    assert vocab.kind == "compound" and vocab.control == "DMSO" and vocab.dim == 1024
    assert vocab.smiles["DMSO"] == "CS(C)=O" and vocab.smiles["ethanol"] == "CCO"
    np.testing.assert_array_equal(vocab.embedding("dmso").numpy(), morgan_count_fingerprint("CS(C)=O"))
    np.testing.assert_array_equal(vocab.embedding("colchicine").numpy(), morgan_count_fingerprint(COLCHICINE))


def test_compound_vocabulary_keeps_a_given_control_smiles():
    vocab = compound_vocabulary({"DMSO": "CS(C)=O", "ethanol": "CCO"}, control="DMSO")
    assert vocab.names == ["DMSO", "ethanol"]


def test_compound_vocabulary_errors_name_the_compound():
    with pytest.raises(ValueError, match="compound 'broken'"):
        compound_vocabulary({"ethanol": "CCO", "broken": "C1CC"})
    with pytest.raises(ValueError, match="control 'PBS' has no SMILES"):
        compound_vocabulary({"ethanol": "CCO"}, control="PBS")
