"""The model zoo: the registry, and the whole download path against a local HTTP server.

Every download test talks to an http.server on 127.0.0.1 (port 0) that the test starts and
stops; it serves a tiny checkpoint in the authors' published layout and embedding CSVs made here.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import make_published_checkpoint, tiny_config

from napari_cellflux import api
from napari_cellflux.cli import main as cli_main
from napari_cellflux.core.unet import preset
from napari_cellflux.models import zoo as zoo_module
from napari_cellflux.models.channels import DATASET_CHANNELS
from napari_cellflux.models.model_file import file_sha256, load_model_file, save_model
from napari_cellflux.models.zoo import (
    HF_BASE,
    REGISTRY,
    BundledModel,
    PublishedModel,
    RemoteFile,
    Zoo,
    ZooError,
    default_zoo,
)
from napari_cellflux.settings import SamplingConfig

CKPT = "checkpoints/cellflux/tiny/checkpoint.pth"
EMB = "data/tiny/emb_fp.csv"
NAMES = ["DMSO", "taxol", "nocodazole", "AZ138"]
TINY = tiny_config()  # 3 channels, condition_dim 8, 16 x 16 images


class FileServer:
    """Serves ``files`` (relative path -> bytes) on 127.0.0.1; paths in ``truncated`` get a
    Content-Length twice the body, half the body, then a closed connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the test

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                owner.requests.append(path)
                body = owner.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if path in owner.truncated:
                    self.send_header("Content-Length", str(2 * len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)
            self.running = False

    def count(self, path: str) -> int:
        return self.requests.count(path)


@pytest.fixture
def server():
    s = FileServer()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # requests would send 127.0.0.1 through a proxy configured in the environment
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def checkpoint_bytes(tmp_path: Path, seed: int = 0) -> tuple[bytes, dict]:
    args = argparse.Namespace(
        dataset="bbbc021", use_ema=True, noise_level=0.5, edm_schedule=True, ode_method="heun2", cfg_scale=0.2
    )
    path = tmp_path / f"published-{seed}.pth"
    written = make_published_checkpoint(path, TINY, seed=seed, args=args, epoch=99)
    return path.read_bytes(), written


def embedding_csv(dim: int = 8, names: list[str] = NAMES, offset: int = 0) -> bytes:
    gen = torch.Generator().manual_seed(dim + offset)
    rows = torch.randint(0, 16, (len(names), dim), generator=gen)
    lines = ["," + ",".join(str(i) for i in range(dim))]
    lines += [name + "," + ",".join(str(int(v)) for v in row) for name, row in zip(names, rows)]
    return ("\n".join(lines) + "\n").encode()


def tiny_entry(**overrides) -> PublishedModel:
    values = dict(
        name="tiny", dataset="bbbc021", checkpoint=RemoteFile(CKPT), embeddings=RemoteFile(EMB),
        perturbation_kind="compound", channels=DATASET_CHANNELS["bbbc021"], config=TINY, image_size=16,
        description="tiny test model",
    )
    return PublishedModel(**{**values, **overrides})


@pytest.fixture
def published(tmp_path, server):
    """The server holding a tiny published checkpoint and its embedding table."""
    data, written = checkpoint_bytes(tmp_path)
    server.files[CKPT] = data
    server.files[EMB] = embedding_csv()
    return written


def make_zoo(tmp_path: Path, server: FileServer, *entries) -> Zoo:
    return Zoo(cache_dir=tmp_path / "cache", base_url=server.url, entries=entries or (tiny_entry(),))


def cache_files(zoo: Zoo) -> list[str]:
    return sorted(str(p.relative_to(zoo.cache_dir)) for p in zoo.cache_dir.rglob("*") if p.is_file())


def controls(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


# ---- the real registry -------------------------------------------------------------------------

# docs/method.md, Datasets and Model.
PUBLISHED_CONDITION_DIM = {"bbbc021": 1024, "rxrx1": 200, "cpg0000": 1224}
PUBLISHED_CHANNELS = {"bbbc021": 3, "rxrx1": 6, "cpg0000": 5}


def test_registry_entries_are_well_formed():
    names = [e.name for e in REGISTRY]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", n) for n in names)
    published = [e for e in REGISTRY if isinstance(e, PublishedModel)]
    assert sorted(e.name for e in published) == ["bbbc021", "cpg0000", "rxrx1"]
    for e in REGISTRY:
        assert e.kind in ("bundled", "published")
        if isinstance(e, BundledModel):
            assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and "/" not in e.file
            continue
        assert e.checkpoint.url() == f"{HF_BASE}checkpoints/cellflux/{e.dataset}/checkpoint.pth"
        assert e.checkpoint.url().startswith("https://huggingface.co/suyc21/CellFlux/resolve/main/")
        assert e.embeddings is not None and e.embeddings.url().startswith("https://")
        assert e.embeddings.path.endswith(".csv")
        for f in (e.checkpoint, e.embeddings):
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert f.url("http://mirror.example/x/") == "http://mirror.example/x/" + f.path
        config = e.unet_config()
        assert e.config == e.dataset and config == preset(e.dataset)
        assert len(e.channels) == config.in_channels == PUBLISHED_CHANNELS[e.dataset]
        assert e.channels == DATASET_CHANNELS[e.dataset]
        assert config.condition_dim == PUBLISHED_CONDITION_DIM[e.dataset]
        assert e.image_size == 96 and e.image_size % config.downsample_factor == 0
        assert e.perturbation_kind == {"bbbc021": "compound", "rxrx1": "gene", "cpg0000": "other"}[e.dataset]
        assert e.description and e.trained_on and e.licence
    # IMPA's tables are addressed at a pinned commit, so the bytes behind the URL cannot change
    impa = [e.embeddings.base_url for e in published if "theislab/IMPA" in e.embeddings.base_url]
    assert impa and all(re.search(r"/[0-9a-f]{40}/$", base) for base in impa)
    # no two remote files share a relative path: a mirror holds them all side by side
    paths = [f.path for e in published for f in (e.checkpoint, e.embeddings)]
    assert len(set(paths)) == len(paths)


def test_default_zoo_reads_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLFLUX_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("CELLFLUX_ZOO_URL", "https://mirror.example.org/cellflux/")
    zoo = default_zoo()
    assert zoo.cache_dir == tmp_path / "c" and zoo.base_url == "https://mirror.example.org/cellflux/"
    assert zoo.entries == REGISTRY
    plain = default_zoo({})
    assert plain.base_url is None and plain.cache_dir.name == "napari-cellflux"
    with pytest.raises(ValueError, match="must start with http"):
        default_zoo({"CELLFLUX_ZOO_URL": "mirror.example.org"})
    states = {r.name: r.state for r in zoo.list_models()}
    assert states == {"demo": "ready", "bbbc021": "downloadable", "rxrx1": "downloadable", "cpg0000": "downloadable"}
    assert zoo.names()[0] == "demo"  # the bundled demo comes first (the widget's default)


# ---- download, verify, convert, generate ---------------------------------------------------------


def test_fetch_converts_once_and_generates(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server)
    assert [r.state for r in zoo.list_models()] == ["downloadable"]
    with pytest.raises(FileNotFoundError, match="cellflux zoo fetch tiny"):
        zoo.path("tiny")

    path = zoo.fetch("tiny", progress=False)
    assert path == zoo.cache_dir / "models" / "tiny.safetensors" and zoo.path("tiny") == path
    # the raw checkpoint is gone (the converted file replaces it); the small CSV stays
    assert cache_files(zoo) == ["downloads/data/tiny/emb_fp.csv", "models/tiny.safetensors", "pins.json"]
    pins = json.loads(zoo.pins_path.read_text())
    assert pins["files"] == {CKPT: file_sha256(tmp_path / "published-0.pth"),
                             EMB: file_sha256(zoo.cache_dir / "downloads" / EMB)}
    assert pins["models"] == {"tiny.safetensors": file_sha256(path)}
    assert zoo.list_models()[0].state == "ready"

    model = zoo.load("tiny", progress=False)
    # the EMA weights were picked, not the live ones
    name = published["names"][3]
    assert torch.equal(model.unet.state_dict()[name], published["ema"][name])
    assert not torch.equal(model.unet.state_dict()[name], published["live"][name])
    assert model.vocabulary.names == NAMES and model.vocabulary.kind == "compound"
    assert model.vocabulary.control == "DMSO" and model.vocabulary.dim == 8
    assert [c.name for c in model.channels] == ["DNA", "tubulin", "actin"] and model.image_size == 16
    assert model.normalization.max_value == 255.0
    assert model.sampling.solver == "heun" and model.sampling.guidance == pytest.approx(0.2)
    assert model.provenance["weights"] == "ema" and model.provenance["epoch"] == 99
    assert model.provenance["zoo"]["name"] == "tiny" and model.provenance["zoo"]["embeddings"] == server.url + EMB

    # later loads use the converted file: no request reaches the server
    requests_before = len(server.requests)
    again = zoo.load("tiny", progress=False)
    assert len(server.requests) == requests_before and again.sha256 == model.sha256

    traj = api.generate(model, controls(), "taxol", sampling=SamplingConfig(steps=3), seed=1)
    assert traj.states.shape == (4, 2, 3, 16, 16) and torch.isfinite(traj.states).all()
    assert traj.metadata["perturbation"] == "taxol" and traj.metadata["model_sha256"] == model.sha256


def test_api_load_model_accepts_zoo_names(tmp_path, server, published, monkeypatch):
    zoo = make_zoo(tmp_path, server)
    monkeypatch.setattr(zoo_module, "default_zoo", lambda environ=None: zoo)
    model = api.load_model("tiny", device="cpu")
    assert model.vocabulary.names == NAMES and model.sha256 == file_sha256(zoo.path("tiny"))
    with pytest.raises(FileNotFoundError, match="not a zoo model name"):
        api.load_model("nonexistent-model", device="cpu")
    with pytest.raises(ValueError, match="only the embeddings option"):
        api.load_model("tiny", device="cpu", image_size=32)
    # an existing file of that name still wins over the zoo
    own = tmp_path / "tiny"
    own.write_bytes(zoo.path("tiny").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert api.load_model("tiny", device="cpu").sha256 == model.sha256


def test_known_hash_mismatch_is_an_error_and_leaves_nothing(tmp_path, server, published):
    entry = tiny_entry(checkpoint=RemoteFile(CKPT, sha256="0" * 64))
    zoo = make_zoo(tmp_path, server, entry)
    with pytest.raises(ZooError, match="does not match the registry's hash") as err:
        zoo.fetch("tiny", progress=False)
    assert CKPT in str(err.value) and "discarded" in str(err.value)
    assert cache_files(zoo) == ["downloads/data/tiny/emb_fp.csv"]  # the (complete, unpinned) CSV only


def test_interrupted_download_leaves_no_partial_file(tmp_path, server, published, capsys):
    zoo = make_zoo(tmp_path, server)
    server.truncated.add(CKPT)
    with pytest.raises(ZooError, match="could not download .*run the fetch again"):
        zoo.fetch("tiny", progress=False)
    assert cache_files(zoo) == ["downloads/data/tiny/emb_fp.csv"]
    assert not zoo.pins_path.exists()
    server.truncated.clear()
    path = zoo.fetch("tiny", progress=True)  # the next fetch starts over, with a labelled progress bar
    assert "tiny: checkpoint.pth" in capsys.readouterr().err
    assert zoo.load("tiny", progress=False).sha256 == file_sha256(path)


def test_offline_with_a_warm_cache(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server)
    path = zoo.fetch("tiny", progress=False)
    server.stop()
    # a fresh Zoo on the same cache, as in a new session on an offline machine
    offline = make_zoo(tmp_path, server)
    assert offline.fetch("tiny", progress=False) == path
    model = offline.load("tiny", progress=False)
    assert model.vocabulary.names == NAMES
    # not fetched yet and offline: a clear error naming the way out
    other = replace(tiny_entry(), name="tiny2", checkpoint=RemoteFile("checkpoints/cellflux/tiny2/checkpoint.pth"))
    with pytest.raises(ZooError, match="CELLFLUX_CACHE"):
        make_zoo(tmp_path, server, other).fetch("tiny2", progress=False)


def test_trust_on_first_use_pin_then_changed_remote(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server)
    zoo.fetch("tiny", progress=False)
    first_pin = json.loads(zoo.pins_path.read_text())["files"][CKPT]
    removed = zoo.remove("tiny")  # cache cleared, pins kept
    assert {p.name for p in removed} == {"tiny.safetensors", "emb_fp.csv"}
    assert zoo.list_models()[0].state == "downloadable"
    server.files[CKPT] = checkpoint_bytes(tmp_path, seed=1)[0]  # the host now serves another file
    with pytest.raises(ZooError, match="pinned when it was first downloaded") as err:
        zoo.fetch("tiny", progress=False)
    assert "cellflux zoo rm tiny --unpin" in str(err.value)
    assert not (zoo.cache_dir / "models" / "tiny.safetensors").exists()
    assert not (zoo.cache_dir / "downloads" / CKPT).exists()
    # accepting the new file is explicit
    zoo.remove("tiny", unpin=True)
    zoo.fetch("tiny", progress=False)
    assert json.loads(zoo.pins_path.read_text())["files"][CKPT] != first_pin


def test_changed_converted_file_is_refused(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server)
    path = zoo.fetch("tiny", progress=False)
    save_model(replace(zoo.load("tiny", progress=False), image_size=32), path)  # valid file, other bytes
    with pytest.raises(ZooError, match="changed after it was verified.*cellflux zoo rm tiny"):
        zoo.load("tiny", progress=False)


def test_embedding_width_must_match_condition_dim(tmp_path, server, published):
    server.files[EMB] = embedding_csv(dim=5)
    zoo = make_zoo(tmp_path, server)
    with pytest.raises(ZooError, match="5-d rows but the checkpoint's condition_dim is 8"):
        zoo.fetch("tiny", progress=False)
    assert server.count(CKPT) == 0  # checked before the big download
    assert not zoo.pins_path.exists()


def test_user_embedding_table_wins(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server)
    user_csv = tmp_path / "emb_fp.csv"
    user_csv.write_bytes(embedding_csv(names=["DMSO", "taxol", "colchicine"], offset=1))
    path = zoo.fetch("tiny", embeddings=user_csv, progress=False)
    assert path.name.startswith("tiny+emb-") and server.count(EMB) == 0
    model = zoo.load("tiny", embeddings=user_csv, progress=False)
    assert model.vocabulary.names == ["DMSO", "taxol", "colchicine"]
    assert model.provenance["zoo"]["embeddings"] == "user file emb_fp.csv"
    assert zoo.path("tiny", embeddings=user_csv) == path
    # the registry's table afterwards reuses the converted weights: no second checkpoint download
    zoo.fetch("tiny", progress=False)
    assert server.count(CKPT) == 1
    default = zoo.load("tiny", progress=False)
    assert default.vocabulary.names == NAMES
    assert all(torch.equal(a, b) for a, b in zip(default.unet.state_dict().values(), model.unet.state_dict().values()))


def test_bundled_entry(tmp_path, published):
    assets = tmp_path / "assets"
    assets.mkdir()
    source = tmp_path / "src.pth"
    source.write_bytes(published["path"].read_bytes())
    from napari_cellflux.models.published import load_published

    digest = save_model(load_published(source, config=TINY, image_size=16), assets / "demo.safetensors")
    zoo = Zoo(tmp_path / "cache", entries=(BundledModel("demo", "demo.safetensors", sha256=digest),), assets_dir=assets)
    assert zoo.list_models()[0].state == "ready"
    assert zoo.fetch("demo") == assets / "demo.safetensors" == zoo.path("demo")
    assert zoo.load("demo").sha256 == digest
    assert not zoo.cache_dir.exists()  # nothing is copied into the cache

    stale = Zoo(tmp_path / "cache", entries=(BundledModel("demo", "demo.safetensors", sha256="1" * 64),), assets_dir=assets)
    with pytest.raises(ZooError, match="reinstall napari-cellflux"):
        stale.fetch("demo")

    missing = Zoo(tmp_path / "cache", entries=(BundledModel("demo", "gone.safetensors", sha256=digest),), assets_dir=assets)
    row = missing.list_models()[0]
    assert row.state == "unavailable" and "gone.safetensors is not in this installation" in row.detail
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        missing.fetch("demo")


def test_cli_zoo_commands(tmp_path, server, published, monkeypatch, capsys):
    zoo = make_zoo(tmp_path, server)
    monkeypatch.setattr(zoo_module, "default_zoo", lambda environ=None: zoo)
    assert cli_main(["zoo", "path", "tiny"]) == 2
    assert "cellflux zoo fetch tiny" in capsys.readouterr().err
    assert cli_main(["zoo", "fetch", "tiny", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo.path("tiny"))
    assert cli_main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tiny\s+published\s+ready", out) and f"cache: {zoo.cache_dir}" in out
    assert cli_main(["zoo", "fetch", "tinny"]) == 2
    assert "did you mean tiny" in capsys.readouterr().err
    assert cli_main(["info", "tiny"]) == 0  # any command that takes a model takes a zoo name
    assert "4 compound perturbations" in capsys.readouterr().out
    assert cli_main(["zoo", "rm", "tiny"]) == 0
    assert "removed 2 cached file(s)" in capsys.readouterr().out


def test_real_registry_listing_needs_no_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CELLFLUX_CACHE", str(tmp_path))
    monkeypatch.delenv("CELLFLUX_ZOO_URL", raising=False)
    assert cli_main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("bbbc021", "rxrx1", "cpg0000"):
        assert re.search(rf"{name}\s+published\s+downloadable", out)


def test_converted_file_records_the_entrys_pixel_size(tmp_path, server, published):
    zoo = make_zoo(tmp_path, server, tiny_entry(pixel_size_um=0.5, pixel_size_source="test: a 40x camera"))
    model = zoo.load("tiny", progress=False)
    assert (model.pixel_size_um, model.pixel_size_source) == (0.5, "test: a 40x camera")
    stored = load_model_file(zoo.path("tiny"))
    assert (stored.pixel_size_um, stored.pixel_size_source) == (0.5, "test: a 40x camera")
