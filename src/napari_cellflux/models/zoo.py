"""The model zoo: one registry of ready-to-use models, read by ``cellflux zoo``, by
``api.load_model("bbbc021")`` and by the widget's model list.

An entry is *bundled* (an own-format model file shipped in ``napari_cellflux/assets``) or
*published* (the authors' ``checkpoint.pth`` plus its perturbation embedding table). Published
files are downloaded with pooch into the cache (``CELLFLUX_CACHE``, default the platform cache
dir) from the authors' hosts or a mirror (``CELLFLUX_ZOO_URL``), converted once to the own
format and loaded from there. A remote file whose hash the registry does not know is pinned by
its first verified download (trust on first use); a different file later is an error.

Cache layout::

    <cache>/pins.json                              sha256 of pinned downloads and converted models
    <cache>/downloads/<remote path>                raw downloads (a checkpoint is deleted once converted)
    <cache>/models/<name>.safetensors              converted, with the registry's embedding table
    <cache>/models/<name>+emb-<sha12>.safetensors  converted, with a user-supplied embedding table

Importing this module does not import torch (napari lists the models at start-up).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Union

from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.models.channels import DATASET_CHANNELS, Channel

if TYPE_CHECKING:
    from napari_cellflux.core.unet import UNetConfig
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.vocabulary import Vocabulary

HF_BASE = "https://huggingface.co/suyc21/CellFlux/resolve/main/"
# The IMPA repository (theislab/IMPA) publishes the embedding tables CellFlux was trained with
# (CellFlux reuses IMPA's preprocessing). Commits are pinned, so a URL always names the same bytes.
IMPA_BBBC021_BASE = "https://raw.githubusercontent.com/theislab/IMPA/e4a28351d6ea1e729c5196a42421fb022a5f6fac/"
IMPA_RXRX1_BASE = "https://raw.githubusercontent.com/theislab/IMPA/823f3d1fb72739ab65b57d3ea44327c6472bf322/"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
ENV_CACHE = "CELLFLUX_CACHE"
ENV_URL = "CELLFLUX_ZOO_URL"
PINS_FORMAT = "napari-cellflux zoo pins"
DOWNLOAD_TIMEOUT_S = 60
STALE_TEMP_S = 24 * 3600  # a temp file this old belongs to a download that was killed


class ZooError(ValueError):
    """A zoo model cannot be fetched or loaded; the message says why and what to do."""


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class RemoteFile:
    """A file on a public host at ``base_url + path``; ``sha256`` None = pinned by its first download."""

    path: str
    base_url: str = HF_BASE
    sha256: str | None = None
    size: str = ""  # approximate, for people

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"RemoteFile path {self.path!r} must be relative to its base URL, without '..'")
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise ValueError(f"RemoteFile {self.path}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    def url(self, mirror: str | None = None) -> str:
        """Where to download it: from ``mirror`` (same relative path) if given, else its own host."""
        return (mirror or self.base_url).rstrip("/") + "/" + self.path


@dataclass(frozen=True)
class BundledModel:
    """A model file shipped inside the package, ``napari_cellflux/assets/<file>``, in the own format."""

    name: str
    file: str
    sha256: str
    description: str = ""
    kind: ClassVar[str] = "bundled"

    def __post_init__(self) -> None:
        if not _is_sha256(self.sha256):
            raise ValueError(f"bundled model {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class PublishedModel:
    """The authors' checkpoint plus what makes it a self-contained model.

    config: a UNet preset name (the published architecture) or a UNetConfig (tests use tiny ones).
    embeddings: the perturbation embedding table, None if none is published (the model is then
    conditioned on explicit embeddings or a user table only).
    """

    name: str
    dataset: str
    checkpoint: RemoteFile
    embeddings: RemoteFile | None
    perturbation_kind: str
    channels: tuple[Channel, ...]
    config: Union[str, "UNetConfig"]
    image_size: int = 96
    description: str = ""
    trained_on: str = ""
    licence: str = ""
    kind: ClassVar[str] = "published"

    def unet_config(self) -> "UNetConfig":
        from napari_cellflux.core.unet import preset

        return preset(self.config) if isinstance(self.config, str) else self.config


ZooEntry = Union[BundledModel, PublishedModel]

_LICENCE = (
    "no licence stated on the Hugging Face model repo; the authors' GitHub README shows an MIT "
    "badge. Check with the authors before redistributing the weights"
)

REGISTRY: tuple[ZooEntry, ...] = (
    BundledModel("demo", "demo.safetensors", sha256="3918131537108478b7ccad280cb2d4d7a5ba3eac63b59bd0fd16b2d5ae222066",
                 description="demo model (0.73M parameters, 3 channels, 32 px) trained on the synthetic screen; python -m training.train --config demo"),
    PublishedModel(
        name="bbbc021",
        dataset="bbbc021",
        checkpoint=RemoteFile("checkpoints/cellflux/bbbc021/checkpoint.pth", size="~0.9 GB"),
        embeddings=RemoteFile("embeddings/bbbc021/csv/emb_fp.csv", IMPA_BBBC021_BASE, size="~80 kB"),
        perturbation_kind="compound",
        channels=DATASET_CHANNELS["bbbc021"],
        config="bbbc021",
        description="CellFlux, BBBC021 (MCF-7, 34 compounds + DMSO; DNA, tubulin, actin)",
        trained_on="BBBC021 in IMPA's preprocessing, 8 compounds held out; checkpoint of epoch 99",
        licence=_LICENCE,
    ),
    PublishedModel(
        name="rxrx1",
        dataset="rxrx1",
        checkpoint=RemoteFile("checkpoints/cellflux/rxrx1/checkpoint.pth", size="~0.9 GB"),
        embeddings=RemoteFile("embeddings/csv/rxrx1_gene2vec_embeddings.csv", IMPA_RXRX1_BASE, size="~2.5 MB"),
        perturbation_kind="gene",
        channels=DATASET_CHANNELS["rxrx1"],
        config="rxrx1",
        description="CellFlux, RxRx1 (siRNA, 1,042 genes; 6 channels)",
        trained_on="RxRx1 in IMPA's preprocessing; checkpoint of epoch 29",
        licence=_LICENCE,
    ),
    PublishedModel(
        name="cpg0000",
        dataset="cpg0000",
        checkpoint=RemoteFile("checkpoints/cellflux/cpg0000/checkpoint.pth", size="~0.9 GB"),
        embeddings=RemoteFile("data/cpg0000/cpg0000_combined_embeddings.csv"),
        perturbation_kind="other",
        channels=DATASET_CHANNELS["cpg0000"],
        config="cpg0000",
        description="CellFlux, JUMP cpg0000 (U2OS; compounds, CRISPR, ORF; 5 channels)",
        trained_on="JUMP cpg0000 in IMPA's preprocessing; checkpoint of epoch 79",
        licence=_LICENCE,
    ),
)


@dataclass(frozen=True)
class ModelStatus:
    """One row of :meth:`Zoo.list_models`: ``state`` is ready (usable now, no download),
    downloadable, or unavailable (``detail`` says why)."""

    name: str
    kind: str
    state: Literal["ready", "downloadable", "unavailable"]
    detail: str
    description: str
    path: Path | None = None


@dataclass(frozen=True)
class Zoo:
    """The registry ``entries`` with a cache directory and an optional mirror ``base_url`` that
    replaces every remote file's host (the mirror holds the files under the same relative paths)."""

    cache_dir: Path
    base_url: str | None = None
    entries: tuple[ZooEntry, ...] = REGISTRY
    assets_dir: Path = ASSETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        object.__setattr__(self, "assets_dir", Path(self.assets_dir))
        object.__setattr__(self, "entries", tuple(self.entries))
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"zoo entry names must be unique, got {names}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://", "ftp://")):
            raise ValueError(
                f"zoo mirror URL {self.base_url!r} must start with http://, https:// or ftp:// "
                f"(e.g. {ENV_URL}=https://mirror.example.org/cellflux/)"
            )

    # ---- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> ZooEntry:
        for e in self.entries:
            if e.name == name:
                return e
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown zoo model {name!r}{hint} Known: {', '.join(self.names())} (see `cellflux zoo list`)")

    @property
    def pins_path(self) -> Path:
        return self.cache_dir / "pins.json"

    def list_models(self) -> list[ModelStatus]:
        """Every entry with whether it is usable now; cheap (no hashing, no network)."""
        try:
            pinned = self._pins()["models"]
        except ZooError:
            pinned = {}  # fetch reports the broken pins file; a listing should still work
        rows = []
        for e in self.entries:
            if isinstance(e, BundledModel):
                path = self.assets_dir / e.file
                if path.is_file():
                    rows.append(ModelStatus(e.name, e.kind, "ready", "shipped with napari-cellflux", e.description, path))
                else:
                    rows.append(ModelStatus(e.name, e.kind, "unavailable", _missing_asset(path), e.description))
                continue
            target = self._model_file(e, None)
            if target.is_file() and target.name in pinned:
                rows.append(ModelStatus(e.name, e.kind, "ready", f"cached at {target}", e.description, target))
            else:
                size = f" ({e.checkpoint.size})" if e.checkpoint.size else ""
                host = e.checkpoint.url(self.base_url).split("/")[2]
                rows.append(ModelStatus(e.name, e.kind, "downloadable", f"download{size} from {host}", e.description))
        return rows

    def path(self, name: str, *, embeddings: str | Path | None = None) -> Path:
        """The local model file of ``name`` without downloading anything (FileNotFoundError if absent)."""
        entry = self.entry(name)
        if isinstance(entry, BundledModel):
            path = self.assets_dir / entry.file
            if not path.is_file():
                raise FileNotFoundError(_missing_asset(path))
            return path
        target = self._model_file(entry, embeddings)
        if not (target.is_file() and target.name in self._pins()["models"]):
            extra = f" --embeddings {embeddings}" if embeddings is not None else ""
            raise FileNotFoundError(
                f"zoo model {name!r} is not in the cache {self.cache_dir} yet; run `cellflux zoo fetch {name}{extra}` "
                f"(or point {ENV_CACHE} at a cache that holds it)"
            )
        return target

    # ---- fetch and load ----------------------------------------------------------------------

    def fetch(self, name: str, *, embeddings: "str | Path | Vocabulary | None" = None, progress: bool = True) -> Path:
        """The local own-format file of ``name``: downloaded, verified and converted if needed.

        embeddings: a perturbation embedding CSV (or Vocabulary) to use instead of the registry's
        table, e.g. your own BBBC021 ``emb_fp.csv``; it is cached as a separate model file.
        progress: show download progress bars (stderr).
        """
        entry = self.entry(name)
        if isinstance(entry, BundledModel):
            return self._verified_asset(entry)
        target = self._model_file(entry, embeddings)
        if target.is_file() and target.name in self._pins()["models"]:
            return target
        from napari_cellflux.models.model_file import load_model_file, save_model

        pending: dict[str, str] = {}
        vocabulary, embedding_source = self._vocabulary(entry, embeddings, progress, pending)
        base = self._converted(entry)
        raw = None
        if base is not None:
            # Any converted file of this entry holds the weights: swap the vocabulary, skip the download.
            model = load_model_file(base)
            model = replace(model, vocabulary=vocabulary, sha256="")
        else:
            raw = self._download(entry.name, entry.checkpoint, progress, pending)
            model = self._convert(entry, raw, vocabulary)
        model.provenance = {
            **model.provenance,
            "zoo": {"name": entry.name, "checkpoint": entry.checkpoint.url(self.base_url), **embedding_source},
        }
        digest = save_model(model, target)
        self._update_pins(files=pending, models={target.name: digest})
        if raw is not None:
            raw.unlink(missing_ok=True)  # the converted file replaces it (optimizer state is ~3/4 of it)
        return target

    def load(
        self,
        name: str,
        device: str = "cpu",
        *,
        embeddings: "str | Path | Vocabulary | None" = None,
        progress: bool = True,
    ) -> "CellFluxModel":
        """Fetch ``name`` if needed and load it onto ``device``; the file's hash is checked against
        the pin (or the registry) so a cache file changed after conversion is refused."""
        from napari_cellflux.models.model_file import load_model_file

        entry = self.entry(name)
        path = self.fetch(name, embeddings=embeddings, progress=progress)
        model = load_model_file(path, device)
        expected = entry.sha256 if isinstance(entry, BundledModel) else self._pins()["models"].get(path.name)
        if model.sha256 != expected:
            raise ZooError(
                f"{path} changed after it was verified (sha256 {model.sha256[:12]}…, expected {str(expected)[:12]}…); "
                f"run `cellflux zoo rm {name}` and fetch it again"
            )
        return model

    def remove(self, name: str, *, unpin: bool = False) -> list[Path]:
        """Delete the cached files of ``name``. Pins of its downloads are kept (so a re-download is
        still checked) unless ``unpin``, which accepts whatever the host serves next time."""
        entry = self.entry(name)
        if isinstance(entry, BundledModel):
            raise ZooError(f"{name!r} is bundled with napari-cellflux; there is nothing in the cache to remove")
        files = [self._download_path(f) for f in (entry.checkpoint, entry.embeddings) if f is not None]
        removed = []
        for path in self._model_files(entry) + files:
            if path.is_file():
                path.unlink()
                removed.append(path)
        drop_files = [f.path for f in (entry.checkpoint, entry.embeddings) if f is not None] if unpin else []
        self._update_pins(drop_models=[p.name for p in self._model_files(entry, pinned=True)], drop_files=drop_files)
        return removed

    # ---- internals ---------------------------------------------------------------------------

    @property
    def _models_dir(self) -> Path:
        return self.cache_dir / "models"

    def _download_path(self, file: RemoteFile) -> Path:
        return self.cache_dir / "downloads" / file.path

    def _model_file(self, entry: PublishedModel, embeddings: "str | Path | Vocabulary | None") -> Path:
        if embeddings is None:
            return self._models_dir / f"{entry.name}.safetensors"
        return self._models_dir / f"{entry.name}+emb-{_embedding_digest(embeddings)[:12]}.safetensors"

    def _model_files(self, entry: PublishedModel, pinned: bool = False) -> list[Path]:
        """This entry's converted files on disk (or, with ``pinned``, named in the pins)."""
        names = self._pins()["models"] if pinned else [p.name for p in self._models_dir.glob("*.safetensors")]
        own = [n for n in names if n == f"{entry.name}.safetensors" or n.startswith(f"{entry.name}+emb-")]
        return [self._models_dir / n for n in sorted(own)]

    def _converted(self, entry: PublishedModel) -> Path | None:
        """A converted file of ``entry`` whose hash still matches its pin, if any."""
        from napari_cellflux.models.model_file import file_sha256

        pinned = self._pins()["models"]
        for path in self._model_files(entry):
            if path.name in pinned and file_sha256(path) == pinned[path.name]:
                return path
        return None

    def _verified_asset(self, entry: BundledModel) -> Path:
        from napari_cellflux.models.model_file import file_sha256

        path = self.assets_dir / entry.file
        if not path.is_file():
            raise FileNotFoundError(_missing_asset(path))
        digest = file_sha256(path)
        if digest != entry.sha256:
            raise ZooError(
                f"bundled model {path} has sha256 {digest[:12]}… but the registry expects {entry.sha256[:12]}…; "
                "the installation is damaged or the registry entry is stale: reinstall napari-cellflux"
            )
        return path

    def _vocabulary(
        self, entry: PublishedModel, embeddings, progress: bool, pending: dict[str, str]
    ) -> tuple["Vocabulary", dict]:
        """The perturbation vocabulary (a user table wins over the registry's) and where it came from;
        its width must match the checkpoint's condition_dim."""
        import torch

        from napari_cellflux.models.model_file import file_sha256
        from napari_cellflux.models.vocabulary import Vocabulary, read_embedding_csv

        config = entry.unet_config()
        if isinstance(embeddings, Vocabulary):
            vocabulary, source = embeddings, {"embeddings": "user Vocabulary"}
        elif embeddings is not None:
            path = Path(embeddings)
            vocabulary = read_embedding_csv(path, kind=entry.perturbation_kind)
            source = {"embeddings": f"user file {path.name}", "embeddings_sha256": file_sha256(path)}
        elif entry.embeddings is None:
            vocabulary = Vocabulary(names=[], embeddings=torch.zeros(0, config.condition_dim), kind=entry.perturbation_kind)
            source = {"embeddings": None}
        else:
            csv = self._download(entry.name, entry.embeddings, progress, pending)
            try:
                vocabulary = read_embedding_csv(csv, kind=entry.perturbation_kind)
            except ValueError as err:
                csv.unlink(missing_ok=True)
                pending.pop(entry.embeddings.path, None)
                raise ZooError(
                    f"{entry.embeddings.url(self.base_url)} is not a usable embedding table ({err}); it was removed "
                    f"from the cache. Give your own table with `cellflux zoo fetch {entry.name} --embeddings FILE.csv`"
                ) from err
            source = {"embeddings": entry.embeddings.url(self.base_url), "embeddings_sha256": file_sha256(csv)}
        if vocabulary.dim != config.condition_dim:
            raise ZooError(
                f"{entry.name}: the embedding table ({source['embeddings']}) has {vocabulary.dim}-d rows but the "
                f"checkpoint's condition_dim is {config.condition_dim}; use the table the model was trained with "
                f"({config.condition_dim} numbers per perturbation)"
            )
        return vocabulary, source

    def _convert(self, entry: PublishedModel, raw: Path, vocabulary: "Vocabulary") -> "CellFluxModel":
        """The published checkpoint as an own-format model: EMA weights, the entry's architecture."""
        from napari_cellflux.models.published import load_published

        try:
            return load_published(
                raw, embeddings=vocabulary, kind=entry.perturbation_kind, channels=entry.channels,
                image_size=entry.image_size, use_ema=True, config=entry.config,
            )
        except ValueError as err:  # includes UnsafeCheckpointError
            raw.unlink(missing_ok=True)
            raise ZooError(
                f"{entry.checkpoint.url(self.base_url)} could not be converted ({err}); the download was removed "
                f"from the cache and nothing was pinned. If a mirror is set ({ENV_URL}), check that it serves the "
                "authors' file"
            ) from err

    def _download(self, label: str, file: RemoteFile, progress: bool, pending: dict[str, str]) -> Path:
        """``file`` in the cache, verified against the registry hash or its pin; an unpinned file's hash
        goes into ``pending``, written only once the whole fetch succeeded."""
        import pooch
        import requests

        from napari_cellflux.models.model_file import file_sha256

        dest = self._download_path(file)
        _sweep_stale_temps(dest.parent)
        expected = file.sha256 or self._pins()["files"].get(file.path)
        url = file.url(self.base_url)
        try:
            with _quiet_pooch():
                pooch.retrieve(
                    url, known_hash=f"sha256:{expected}" if expected else None, fname=dest.name,
                    path=dest.parent, downloader=_downloader(f"{label}: {dest.name}", progress),
                )
        except requests.exceptions.RequestException as err:
            raise ZooError(
                f"could not download {file.path} for zoo model {label!r} from {url} ({err}). Nothing partial was kept "
                f"in the cache; run the fetch again (it starts over). Offline? Point {ENV_CACHE} at a cache that holds "
                f"{label!r}, or set {ENV_URL} to a reachable mirror"
            ) from err
        except ValueError as err:  # pooch: the hash does not match (the temporary file is already deleted)
            if expected is None:
                raise
            if file.sha256:
                why = "the registry's hash; the host serves another file. Report it, or use a mirror that has the right one"
            else:
                why = (
                    f"the hash pinned when it was first downloaded here (trust on first use): the file on the server "
                    f"changed or was tampered with. If you trust the new file, run `cellflux zoo rm {label} --unpin` "
                    "and fetch again"
                )
            raise ZooError(
                f"{file.path} from {url} does not match {why}. The download was discarded. (expected sha256 "
                f"{expected}; detail: {err})"
            ) from err
        if expected is None:
            pending[file.path] = file_sha256(dest)
        return dest

    def _pins(self) -> dict:
        path = self.pins_path
        if not path.is_file():
            return {"format": PINS_FORMAT, "version": 1, "files": {}, "models": {}}
        try:
            data = json.loads(path.read_text())
            if data.get("format") != PINS_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {PINS_FORMAT!r}")
        except (OSError, ValueError, AttributeError) as err:
            raise ZooError(
                f"the zoo pins file {path} is unreadable ({err}); delete it to start pinning afresh "
                "(the record of first downloads is then lost)"
            ) from err
        data.setdefault("files", {})
        data.setdefault("models", {})
        return data

    def _update_pins(
        self,
        files: Mapping[str, str] | None = None,
        models: Mapping[str, str] | None = None,
        drop_files: tuple[str, ...] | list[str] = (),
        drop_models: tuple[str, ...] | list[str] = (),
    ) -> None:
        # Read-modify-write right before the atomic replace keeps the window for a concurrent
        # fetch of another model short; a lost pin is re-pinned by the next download.
        data = self._pins()
        data["files"].update(files or {})
        data["models"].update(models or {})
        for key in drop_files:
            data["files"].pop(key, None)
        for key in drop_models:
            data["models"].pop(key, None)
        atomic_write_text(self.pins_path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def default_zoo(environ: Mapping[str, str] | None = None) -> Zoo:
    """The registry with the cache in ``$CELLFLUX_CACHE`` (default: the platform cache dir, e.g.
    ~/.cache/napari-cellflux) and files from ``$CELLFLUX_ZOO_URL`` if set (a mirror), else the authors' hosts."""
    import platformdirs

    env = os.environ if environ is None else environ
    cache = env.get(ENV_CACHE) or platformdirs.user_cache_dir("napari-cellflux")
    return Zoo(cache_dir=Path(cache), base_url=env.get(ENV_URL) or None)


def _missing_asset(path: Path) -> str:
    return (
        f"the bundled file {path.name} is not in this installation ({path.parent}); reinstall napari-cellflux "
        "from a complete wheel or source checkout"
    )


def _embedding_digest(embeddings) -> str:
    """sha256 of a user embedding table: the CSV's bytes, or a Vocabulary's names and values."""
    if isinstance(embeddings, (str, os.PathLike)):
        path = Path(embeddings)
        if not path.is_file():
            raise FileNotFoundError(f"embedding CSV {path} does not exist")
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(embeddings.names).encode())
    digest.update(embeddings.embeddings.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sweep_stale_temps(directory: Path) -> None:
    # pooch streams into tmp* files beside the target and deletes them on errors; only a killed
    # process leaves one behind. Old ones are removed, fresh ones may belong to a running fetch.
    if not directory.is_dir():
        return
    now = time.time()
    for temp in directory.glob("tmp*"):
        with contextlib.suppress(OSError):
            if now - temp.stat().st_mtime > STALE_TEMP_S:
                temp.unlink()


def _downloader(label: str, progress: bool):
    """A pooch downloader with a labelled tqdm bar, created only when pooch actually downloads."""
    import pooch

    def download(url: str, output_file, pooch_instance) -> None:
        if not progress:
            return pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)(url, output_file, pooch_instance)
        from tqdm.auto import tqdm

        # total=1 because pooch tests the bar's truthiness, which tqdm refuses for an unknown total;
        # pooch sets the real total from Content-Length.
        bar = tqdm(total=1, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=True)
        try:
            pooch.HTTPDownloader(progressbar=bar, timeout=DOWNLOAD_TIMEOUT_S)(url, output_file, pooch_instance)
        finally:
            bar.close()

    return download


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    # pooch logs every download and suggests pasting hashes into pooch calls; our progress bars
    # and errors say what matters to a napari-cellflux user.
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
