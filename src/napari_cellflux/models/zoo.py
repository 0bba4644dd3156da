"""The model zoo: fetching, verifying, caching and converting the models of the registry
(:mod:`napari_cellflux.models.zoo_registry`), for ``cellflux zoo``, ``api.load_model("bbbc021")``
and the widget's model list.

Published files are downloaded with pooch into the cache (``CELLFLUX_CACHE``, default the platform
cache dir) from the authors' hosts or a mirror (``CELLFLUX_ZOO_URL``), converted once to the own
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

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from napari_cellflux.errors import InputError, UnknownNameError
from napari_cellflux.models.zoo_download import retrieve
from napari_cellflux.models.zoo_pins import read_pins, write_pins
from napari_cellflux.models.zoo_registry import HF_BASE, REGISTRY, BundledModel, PublishedModel, RemoteFile, ZooEntry

if TYPE_CHECKING:
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.vocabulary import Vocabulary

# The registry's names stay importable from here, where the zoo's users have always found them.
__all__ = [
    "ASSETS", "ENV_CACHE", "ENV_URL", "HF_BASE", "REGISTRY", "BundledModel", "ModelStatus", "PublishedModel",
    "RemoteFile", "Zoo", "ZooEntry", "ZooError", "default_zoo",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ENV_CACHE = "CELLFLUX_CACHE"
ENV_URL = "CELLFLUX_ZOO_URL"


class ZooError(InputError):
    """A zoo model cannot be fetched or loaded; the message says why and what to do."""


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
        raise UnknownNameError(f"unknown zoo model {name!r}{hint} Known: {', '.join(self.names())} (see `cellflux zoo list`)")

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
        from napari_cellflux.models.domain import statistics_beside
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
        if isinstance(entry, BundledModel) and not model.control_statistics:
            model.control_statistics = statistics_beside(path)  # pinned bytes: the statistics ship beside the file
        if isinstance(entry, PublishedModel) and model.pixel_size_um is None and entry.pixel_size_um is not None:
            # converted before the registry knew the scale: its bytes stay pinned, the registry fills the gap
            model.pixel_size_um, model.pixel_size_source = entry.pixel_size_um, entry.pixel_size_source
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
            model = load_published(
                raw, embeddings=vocabulary, kind=entry.perturbation_kind, channels=entry.channels,
                image_size=entry.image_size, use_ema=True, config=entry.config,
            )
            model.pixel_size_um, model.pixel_size_source = entry.pixel_size_um, entry.pixel_size_source
            return model
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
        import requests

        from napari_cellflux.models.model_file import file_sha256

        dest = self._download_path(file)
        expected = file.sha256 or self._pins()["files"].get(file.path)
        url = file.url(self.base_url)
        try:
            retrieve(url, dest, expected, f"{label}: {dest.name}", progress)
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
        try:
            return read_pins(self.pins_path)
        except ValueError as err:
            raise ZooError(str(err)) from err

    def _update_pins(self, **changes) -> None:
        """Add and drop pins (:func:`write_pins`'s keywords)."""
        # Read-modify-write right before the atomic replace keeps the window for a concurrent
        # fetch of another model short; a lost pin is re-pinned by the next download.
        write_pins(self.pins_path, self._pins(), **changes)


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
