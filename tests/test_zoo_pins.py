"""The registry pins the bytes of IMPA's two embedding tables (issue 15), so even their first
download is checked rather than trusted: served wrong bytes, a fetch is refused with a clear
message and leaves nothing behind. The server is http.server on 127.0.0.1, as in test_zoo.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_zoo import CKPT, FileServer, embedding_csv

from napari_cellflux.models.zoo import REGISTRY, RemoteFile, Zoo, ZooError

# The files as the issue gives them: (commit, path, bytes, sha256).
KNOWN = {
    "bbbc021": ("e4a2835", "embeddings/bbbc021/csv/emb_fp.csv", 76_090,
                "6c61c5851b1b6d6a9f6d122614684a1f97ce94c2e024aa1f54b31eca630fcbe9"),
    "rxrx1": ("823f3d1", "embeddings/csv/rxrx1_gene2vec_embeddings.csv", 2_489_502,
              "ea80e88865d448063079a863043d36b73de06eede7b7b8941971833224132b53"),
}


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = FileServer()
    try:
        yield s
    finally:
        s.stop()


def entry(name: str):
    return next(e for e in REGISTRY if e.name == name)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_the_registry_pins_the_known_tables(name):
    commit, path, size, sha256 = KNOWN[name]
    table = entry(name).embeddings
    assert table.path == path and table.sha256 == sha256
    assert f"/theislab/IMPA/{commit}" in table.url() and table.size == f"{size:,} B"


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_wrong_bytes_for_a_pinned_table_are_refused(name, server, tmp_path):
    path = KNOWN[name][1]
    server.files[path] = embedding_csv()  # a well-formed table, but not the pinned bytes
    zoo = Zoo(cache_dir=tmp_path / "cache", base_url=server.url,
              entries=(replace(entry(name), checkpoint=RemoteFile(CKPT)),))
    with pytest.raises(ZooError) as err:
        zoo.fetch(name, progress=False)
    message = str(err.value)
    assert "does not match the registry's hash" in message and path in message and "discarded" in message
    assert KNOWN[name][3] in message and "\n" not in message
    assert server.count(path) == 1 and server.count(CKPT) == 0  # refused before the checkpoint is fetched
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing kept, nothing pinned
