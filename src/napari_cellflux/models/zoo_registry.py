"""The zoo's registry: which models exist and where their files are. An entry is *bundled* (an
own-format model file shipped in ``napari_cellflux/assets``) or *published* (the authors'
``checkpoint.pth`` plus its perturbation embedding table, with hashes where known). Fetching,
verifying and caching them is :mod:`napari_cellflux.models.zoo`.

No torch here: napari lists the models at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Union

from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import DATASET_CHANNELS, Channel

if TYPE_CHECKING:
    from napari_cellflux.core.unet import UNetConfig

HF_BASE = "https://huggingface.co/suyc21/CellFlux/resolve/main/"
# The IMPA repository (theislab/IMPA) publishes the embedding tables CellFlux was trained with
# (CellFlux reuses IMPA's preprocessing). Commits are pinned, so a URL always names the same bytes.
IMPA_BBBC021_BASE = "https://raw.githubusercontent.com/theislab/IMPA/e4a28351d6ea1e729c5196a42421fb022a5f6fac/"
IMPA_RXRX1_BASE = "https://raw.githubusercontent.com/theislab/IMPA/823f3d1fb72739ab65b57d3ea44327c6472bf322/"
# The bytes of the two IMPA tables at those commits (issue 15), so their first download is checked
# too instead of trusted: emb_fp.csv 76,090 B, rxrx1_gene2vec_embeddings.csv 2,489,502 B.
EMB_FP_SHA256 = "6c61c5851b1b6d6a9f6d122614684a1f97ce94c2e024aa1f54b31eca630fcbe9"
RXRX1_GENE2VEC_SHA256 = "ea80e88865d448063079a863043d36b73de06eede7b7b8941971833224132b53"


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
            raise InputError(f"RemoteFile path {self.path!r} must be relative to its base URL, without '..'")
        if self.sha256 is not None and not _is_sha256(self.sha256):
            raise InputError(f"RemoteFile {self.path}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

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
            raise InputError(f"bundled model {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class PublishedModel:
    """The authors' checkpoint plus what makes it a self-contained model.

    config: a UNet preset name (the published architecture) or a UNetConfig (tests use tiny ones).
    embeddings: the perturbation embedding table, None if none is published (the model is then
    conditioned on explicit embeddings or a user table only). pixel_size_um: µm per pixel of the
    training crops (None: unknown), with ``pixel_size_source`` saying where the number comes from
    (docs/zoo.md cites each); converted files record both.
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
    pixel_size_um: float | None = None
    pixel_size_source: str = "unknown"
    kind: ClassVar[str] = "published"

    def unet_config(self) -> "UNetConfig":
        from napari_cellflux.core.unet import preset

        return preset(self.config) if isinstance(self.config, str) else self.config


ZooEntry = Union[BundledModel, PublishedModel]

_LICENCE = (
    "no licence stated on the Hugging Face model repo; the authors' GitHub repository carries an MIT "
    "LICENSE file. Check with the authors before redistributing the weights"
)


# Pixel sizes of the published training crops. IMPA's preprocessing code (which CellFlux reuses) is
# not public (theislab/IMPA holds none; its README points to the preprocessed data on Zenodo,
# record 8307629), so the acquisition's pixel size is recorded, with the inference that the 96 px
# crops keep it: a crop then spans 48 µm (BBBC021) or 57 µm (cpg0000), one cell with its
# surroundings as in the papers' example crops, where half resolution would put several cells in
# one crop. docs/zoo.md gives the evidence.
_BBBC021_SCALE = (0.496, "BBBC021 acquisition: MetaMorph calibration 0.496298 µm/px of the raw 20X fields "
                         "(binning 1x1); 96 px crops taken at full resolution (inferred, IMPA's preprocessing is not public)")
_CPG0000_SCALE = (0.598, "cpg0000 acquisition: Opera Phenix Harmony metadata, 6.5 µm camera pixel x binning 2 / "
                         "(20x objective x 1.087); 96 px crops taken at full resolution (inferred, IMPA's preprocessing is not public)")
_RXRX1_SCALE = (None, "unknown: RxRx1's documentation (rxrx.ai, recursionpharma/rxrx-datasets) states no pixel size "
                      "for its 512 x 512 images")


def _authors_model(dataset: str, embeddings: RemoteFile | None, kind: str, description: str, trained_on: str,
                   scale: tuple[float | None, str]) -> PublishedModel:
    """The authors' checkpoint for ``dataset`` on Hugging Face, named after the dataset, with the
    dataset's published architecture and channels; ``scale`` = (µm per pixel or None, its source)."""
    return PublishedModel(
        name=dataset,
        dataset=dataset,
        checkpoint=RemoteFile(f"checkpoints/cellflux/{dataset}/checkpoint.pth", size="~0.9 GB"),
        embeddings=embeddings,
        perturbation_kind=kind,
        channels=DATASET_CHANNELS[dataset],
        config=dataset,
        description=description,
        trained_on=trained_on,
        licence=_LICENCE,
        pixel_size_um=scale[0],
        pixel_size_source=scale[1],
    )


REGISTRY: tuple[ZooEntry, ...] = (
    BundledModel("demo", "demo.safetensors", sha256="7dad085e497fa218c77cbdd56adff316d15571062a100e945cbe5dd20e05aed3",
                 description="demo model (0.73M parameters + its autoguidance guide and morph network, 3 channels, 32 px) trained on the five-times synthetic screen; python -m training.train --config demo"),
    _authors_model(
        "bbbc021", RemoteFile("embeddings/bbbc021/csv/emb_fp.csv", IMPA_BBBC021_BASE, sha256=EMB_FP_SHA256,
                              size="76,090 B"), "compound",
        description="CellFlux, BBBC021 (MCF-7, 34 compounds + DMSO; DNA, tubulin, actin)",
        trained_on="BBBC021 in IMPA's preprocessing, 8 compounds held out; checkpoint of epoch 99", scale=_BBBC021_SCALE,
    ),
    _authors_model(
        "rxrx1", RemoteFile("embeddings/csv/rxrx1_gene2vec_embeddings.csv", IMPA_RXRX1_BASE, sha256=RXRX1_GENE2VEC_SHA256,
                            size="2,489,502 B"), "gene",
        description="CellFlux, RxRx1 (siRNA, 1,042 genes; 6 channels)",
        trained_on="RxRx1 in IMPA's preprocessing; checkpoint of epoch 29", scale=_RXRX1_SCALE,
    ),
    _authors_model(
        "cpg0000", RemoteFile("data/cpg0000/cpg0000_combined_embeddings.csv"), "other",
        description="CellFlux, JUMP cpg0000 (U2OS; compounds, CRISPR, ORF; 5 channels)",
        trained_on="JUMP cpg0000 in IMPA's preprocessing; checkpoint of epoch 79", scale=_CPG0000_SCALE,
    ),
)
