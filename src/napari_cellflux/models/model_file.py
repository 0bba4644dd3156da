"""The project's self-contained model file: one safetensors file that the plugin needs nothing beside.

Layout: tensors ``unet.<parameter name>`` (the weights to sample with, EMA where trained with
EMA), optionally ``guide.<parameter name>`` (the same architecture at fewer training steps, for
autoguidance; format version 2), optionally ``morph.<parameter name>`` (the same architecture trained
for morph mode alone; format version 3) and ``vocabulary.embeddings`` (V, D); the safetensors header's metadata holds one JSON
string under ``"cellflux"`` with the architecture, vocabulary names and kind, channels and
colours, image size, normalisation, sampling defaults, training config and provenance.
safetensors holds only tensors and strings, so loading a file can never execute code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from napari_cellflux import __version__
from napari_cellflux.atomic import atomic_write_bytes
from napari_cellflux.core.unet import UNet, UNetConfig
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import Channel, describe
from napari_cellflux.models.normalization import Normalization
from napari_cellflux.models.vocabulary import Vocabulary
from napari_cellflux.settings import SamplingConfig

FORMAT = "napari-cellflux"
# 2: sampling.autoguidance and the optional guide network; 3: the optional morph network;
# 4: sampling.morph_main_share. Older versions are read as before (without what they lack).
FORMAT_VERSION = 4


@dataclass
class CellFluxModel:
    """A velocity network with everything needed to use it on images.

    unet: the network (in eval mode). vocabulary: perturbations it was trained on (possibly
    empty for a published model converted without its embedding table). channels: one per
    input channel. image_size: side of the square crops it was trained on, in pixels.
    pixel_size_um: µm per pixel of those crops (None: unknown), with ``pixel_size_source`` saying
    where the number comes from. control_statistics: summary statistics of the training
    controls (for checking that new controls are like them; empty when not recorded).
    sha256: hash of the file it was loaded from ("" for a model built in memory).
    guide: the autoguidance guide (``sampling.autoguidance``): a UNet of the same architecture
    from the same training run at ``guide_step`` steps, or None. morph: the network morph mode
    runs, trained on clean sources alone for ``morph_step`` steps (``TrainConfig.morph``), or None:
    morph then runs ``unet`` like sample (:meth:`network_for`).
    """

    unet: UNet
    vocabulary: Vocabulary
    channels: tuple[Channel, ...]
    image_size: int
    normalization: Normalization = field(default_factory=Normalization)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    sha256: str = ""
    pixel_size_um: float | None = None
    pixel_size_source: str = "unknown"
    control_statistics: dict = field(default_factory=dict)
    guide: UNet | None = None
    guide_step: int | None = None
    morph: UNet | None = None
    morph_step: int | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        self.channels = tuple(self.channels)
        if len(self.channels) != cfg.in_channels:
            raise InputError(
                f"the model takes {cfg.in_channels} channels but {describe(self.channels)} were given; "
                f"name exactly {cfg.in_channels}"
            )
        if self.vocabulary.dim != cfg.condition_dim:
            raise InputError(
                f"perturbation embeddings are {self.vocabulary.dim}-d but the model's condition_dim is "
                f"{cfg.condition_dim}; use the embedding table the model was trained with"
            )
        if self.image_size % cfg.downsample_factor:
            raise InputError(
                f"image_size {self.image_size} must be divisible by {cfg.downsample_factor} "
                f"({len(cfg.channel_mult)} UNet levels)"
            )
        self.unet.eval()
        for name, network in (("guide", self.guide), ("morph", self.morph)):
            if network is not None:
                if not cfg.fits_weights_of(network.config):
                    raise InputError(f"the {name} network must have the model's own architecture (trained with the same config)")
                network.eval()

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def network_for(self, mode: str) -> UNet:
        """The network ``mode`` (settings.MODES) runs: morph's own where the file carries one."""
        return self.morph if mode == "morph" and self.morph is not None else self.unet

    def main_share_for(self, mode: str, sampling: SamplingConfig) -> float:
        """The share of the main network's velocity a run in ``mode`` mixes into the morph
        network's: ``sampling.morph_main_share`` where morph runs the file's morph network, else 0."""
        return sampling.morph_main_share if mode == "morph" and self.morph is not None else 0.0

    def to(self, device: str | torch.device) -> "CellFluxModel":
        for network in (self.unet, self.guide, self.morph):
            if network is not None:
                network.to(device)
        return self

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "unet_config": self.config.to_dict(),
            "vocabulary": self.vocabulary.to_metadata(),
            "channels": [c.to_dict() for c in self.channels],
            "image_size": self.image_size,
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_source": self.pixel_size_source,
            "control_statistics": self.control_statistics,
            "guide": None if self.guide is None else {"step": self.guide_step},
            "morph": None if self.morph is None else {"step": self.morph_step},
            "normalization": self.normalization.to_dict(),
            "sampling": self.sampling.to_dict(),
            "training": self.training,
            "provenance": self.provenance,
        }


def save_model(model: CellFluxModel, path: str | Path) -> str:
    """Write ``model`` to ``path`` atomically; returns the file's sha256."""
    tensors = {f"unet.{k}": v.detach().cpu().contiguous() for k, v in model.unet.state_dict().items()}
    for prefix, network in (("guide", model.guide), ("morph", model.morph)):
        if network is not None:
            tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()})
    tensors["vocabulary.embeddings"] = model.vocabulary.embeddings.detach().cpu().contiguous()
    meta = model.metadata()
    meta["provenance"] = {"napari_cellflux_version": __version__, **model.provenance}
    data = safetensors_bytes(tensors, metadata={"cellflux": json.dumps(meta)})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def is_own_format(path: str | Path) -> bool:
    """True if ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> CellFluxModel:
    """Read a model written by :func:`save_model` onto ``device``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(
            f"{path} is not a readable napari-cellflux model file ({err}); it may be truncated: "
            "download or copy it again"
        ) from err
    if "cellflux" not in header:
        raise InputError(
            f"{path} is a safetensors file without napari-cellflux metadata; convert published "
            "checkpoints with `cellflux convert`"
        )
    meta = _metadata_object(path, header["cellflux"])
    if meta.get("format") != FORMAT or not isinstance(meta.get("format_version", 0), int) or meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{path}: format {meta.get('format')!r} version {meta.get('format_version')} is not readable "
            f"by napari-cellflux {__version__}; upgrade napari-cellflux"
        )
    try:
        config = UNetConfig.from_dict(meta["unet_config"])  # validates sizes before anything is built
        parts = dict(
            vocabulary=Vocabulary.from_metadata(meta["vocabulary"], tensors["vocabulary.embeddings"]),
            channels=tuple(Channel(**c) for c in meta["channels"]),
            image_size=_positive_int(meta["image_size"], "image_size"),
            normalization=Normalization.from_dict(meta["normalization"]),
            sampling=SamplingConfig(**meta["sampling"]),
            training=meta.get("training", {}),
            provenance=meta.get("provenance", {}),
            pixel_size_um=_pixel_size(meta.get("pixel_size_um")),
            pixel_size_source=str(meta.get("pixel_size_source", "unknown")),
            control_statistics=dict(meta.get("control_statistics") or {}),
            guide_step=(meta.get("guide") or {}).get("step"),
            morph_step=(meta.get("morph") or {}).get("step"),
        )
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise _damaged(path, f"missing {err}" if isinstance(err, KeyError) else str(err)) from None
    with torch.device("meta"):
        unet = UNet(config)
    weights = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
    load_weights(unet, weights, source=str(path))
    extra = {name: _extra_network(path, config, tensors, name) for name in ("guide", "morph")}
    model = CellFluxModel(unet=unet, sha256=file_sha256(path), **extra, **parts)
    return model.to(device)


def _extra_network(path: Path, config: UNetConfig, tensors: dict, name: str) -> UNet | None:
    """The ``<name>.*`` tensors as a UNet of ``config``, or None where the file has none."""
    weights = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
    if not weights:
        return None
    with torch.device("meta"):
        network = UNet(config)
    load_weights(network, weights, source=f"{path} ({name} network)")
    return network


def _metadata_object(path: Path, text: str) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise _damaged(path, f"not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"a JSON {type(meta).__name__}, not an object")
    return meta


def _damaged(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: its napari-cellflux metadata is damaged ({what}); the file was changed after it was written: "
        "use the original file, or write it again with `cellflux convert` or training"
    )


def _pixel_size(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 100:
        raise InputError(f"pixel_size_um must be a number of µm per pixel in [0.01, 100], got {value!r}")
    return float(value)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def load_weights(unet: UNet, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into ``unet`` (which may live on the meta device); every parameter must be
    given exactly once with its shape, else the error lists what differs."""
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: file {tuple(weights[k].shape)}, model {expected[k]})")
        raise InputError(
            f"{source}: weights do not fit the UNet architecture: {'; '.join(parts)}. "
            "The file is truncated, foreign, or needs another architecture config"
        )
    broken = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if broken:
        raise InputError(f"{source}: weights {broken[:3]} contain NaN or inf; the checkpoint is corrupt")
    unet.load_state_dict({k: v.float() for k, v in weights.items()}, assign=True)
