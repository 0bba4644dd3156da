"""Perturbation vocabularies and the embedding CSV layout (index = name, one row of floats each)."""

from __future__ import annotations

import pytest
import torch

from napari_cellflux.models.vocabulary import Vocabulary, read_embedding_csv


def _vocabulary() -> Vocabulary:
    return Vocabulary(
        names=["DMSO", "taxol", "cytochalasin D", "cytochalasin B"],
        embeddings=torch.arange(12, dtype=torch.float32).reshape(4, 3),
        kind="compound",
        control="DMSO",
    )


def test_lookup_is_case_insensitive():
    vocab = _vocabulary()
    assert vocab.index("TAXOL") == 1
    assert torch.equal(vocab.embedding("cytochalasin d"), torch.tensor([6.0, 7.0, 8.0]))
    assert len(vocab) == 4 and vocab.dim == 3


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="did you mean cytochalasin D.*SMILES"):
        _vocabulary().index("cytochalasin  D")
    with pytest.raises(KeyError, match="knows 4 perturbations"):
        _vocabulary().index("zzzz")


def test_search_orders_prefix_matches_first():
    assert _vocabulary().search("cyto") == ["cytochalasin B", "cytochalasin D"]
    assert _vocabulary().search("in") == ["cytochalasin B", "cytochalasin D"]
    assert _vocabulary().search("ax") == ["taxol"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(names=["a", "b"], embeddings=torch.zeros(3, 2)), "one row per name"),
        (dict(names=["a", "A"], embeddings=torch.zeros(2, 2)), "unique"),
        (dict(names=["a"], embeddings=torch.tensor([[float("nan")]])), "NaN"),
        (dict(names=["a"], embeddings=torch.zeros(1, 2), kind="protein"), "kind must be one of"),
    ],
)
def test_invalid_vocabularies(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(**kwargs)


def test_metadata_round_trip():
    vocab = _vocabulary()
    again = Vocabulary.from_metadata(vocab.to_metadata(), vocab.embeddings)
    assert again.names == vocab.names and torch.equal(again.embeddings, vocab.embeddings)
    assert (again.kind, again.control, again.smiles) == ("compound", "DMSO", {})


def test_read_embedding_csv(tmp_path):
    """The emb_fp.csv layout: a header row of column indices, then name,float,float,..."""
    path = tmp_path / "emb_fp.csv"
    path.write_text(",0,1,2\nDMSO,0,0,0\ntaxol,3,0,15\nAZ841,1,2,3\n")
    vocab = read_embedding_csv(path, kind="compound")
    assert vocab.names == ["DMSO", "taxol", "AZ841"]
    assert vocab.control == "DMSO" and vocab.kind == "compound"
    assert vocab.embeddings.dtype == torch.float32
    assert torch.equal(vocab.embedding("taxol"), torch.tensor([3.0, 0.0, 15.0]))


def test_read_embedding_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_embedding_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(",0,1\nDMSO,0,x\n")
    with pytest.raises(ValueError, match="not numeric"):
        read_embedding_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text(",0,1\n")
    with pytest.raises(ValueError, match="no rows"):
        read_embedding_csv(empty)
