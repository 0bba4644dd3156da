"""The authors' published checkpoint layout (``checkpoint.pth``), read safely and converted.

A published file is a ``torch.save`` dict: ``model`` (``model.<unet name>`` live weights,
``num_updates`` and ``shadow_params.<i>`` EMA weights in the UNet's trainable-parameter
order), ``epoch``, ``args`` (an ``argparse.Namespace``), and optimiser state we ignore.
It is unpickled with ``weights_only=True`` and only ``argparse.Namespace`` allowed, so a
file that tries to run code is refused before anything in it runs.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_cellflux.core.unet import UNet, UNetConfig, preset
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import DATASET_CHANNELS, Channel, default_channels
from napari_cellflux.models.model_file import CellFluxModel, file_sha256, load_weights
from napari_cellflux.models.normalization import Normalization
from napari_cellflux.models.vocabulary import Vocabulary, read_embedding_csv
from napari_cellflux.settings import DATASET_KINDS, GRID_MIN_STEPS, SOLVER_ALIASES, SOLVER_NAMES, SamplingConfig

ALLOWED_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(InputError):
    """The file holds Python objects outside the allow-list: loading it could run code."""


def torch_load_safely(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True``; only ``argparse.Namespace`` is allowed beyond tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # the allow-list refused a named Python object
            raise UnsafeCheckpointError(
                f"refused to load {path}: it contains Python objects that are not on the allow-list "
                f"(only tensors, plain containers and argparse.Namespace are), so unpickling it could run "
                f"code. Only load checkpoints from a source you trust, in the published layout. Detail: "
                f"{str(err).splitlines()[-3] if len(str(err).splitlines()) > 3 else err}"
            ) from err
        raise _not_a_checkpoint(path, "its bytes are no pickle torch can read") from err
    except Exception as err:  # garbage bytes fail in torch's legacy reader in many ways
        raise _not_a_checkpoint(path, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from err


def _not_a_checkpoint(path: Path, detail: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable torch checkpoint ({detail[:120]}); it may be truncated or another kind of "
        "file: download it again or check the path"
    )


@dataclass
class PublishedCheckpoint:
    """The parts of a published checkpoint that matter for sampling."""

    live: dict[str, torch.Tensor]
    ema: list[torch.Tensor] | None
    num_updates: int | None
    epoch: int | None
    args: dict
    source: str

    @classmethod
    def from_dict(cls, obj: object, source: str) -> "PublishedCheckpoint":
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise InputError(
                f"{source} is not a CellFlux checkpoint: expected a dict with a 'model' entry "
                "(the published checkpoint.pth layout)"
            )
        state = obj["model"]
        live = {k.removeprefix("model."): v for k, v in state.items() if not _is_ema_key(k)}
        shadow = {int(k.split(".")[1]): v for k, v in state.items() if k.startswith("shadow_params.")}
        if shadow and sorted(shadow) != list(range(len(shadow))):
            raise InputError(f"{source}: shadow_params indices are not 0..{len(shadow) - 1}; the file is corrupt")
        args = obj.get("args")
        return cls(
            live=live,
            ema=[shadow[i] for i in range(len(shadow))] or None,
            num_updates=int(state["num_updates"]) if "num_updates" in state else None,
            epoch=obj.get("epoch"),
            args=_plain(vars(args)) if isinstance(args, argparse.Namespace) else _plain(args or {}),
            source=source,
        )

    def weights(self, unet: UNet, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """Weights for ``unet`` by name: the EMA copy (``shadow_params.<i>`` follows the order of
        ``unet.named_parameters()``) or the live weights."""
        if not use_ema:
            return self.live
        names = [name for name, p in unet.named_parameters() if p.requires_grad]
        if self.ema is None:
            raise InputError(f"{self.source} holds no EMA weights (shadow_params); load the live weights instead")
        if len(self.ema) != len(names):
            raise InputError(
                f"{self.source}: {len(self.ema)} EMA tensors for a UNet with {len(names)} parameters; "
                "the architecture config does not match this checkpoint"
            )
        return {**self.live, **dict(zip(names, self.ema))}

    def sampling_defaults(self) -> SamplingConfig:
        """The authors' sampling settings recorded in ``args``, else the paper's (steps: see
        :func:`recorded_steps`)."""
        a, paper = self.args, SamplingConfig()
        solver = a.get("ode_method", paper.solver)
        grid = {True: "edm", False: "uniform"}.get(a.get("edm_schedule"), paper.grid)
        return SamplingConfig(
            # An adaptive solver of theirs (e.g. dopri5) has no fixed-grid twin here: use the paper's.
            solver=solver if solver in SOLVER_NAMES or solver in SOLVER_ALIASES else paper.solver,
            grid=grid,
            steps=recorded_steps(a.get("ode_options"), grid, paper.steps),
            guidance=float(a.get("cfg_scale", paper.guidance)),
            noise_level=float(a.get("noise_level", paper.noise_level)),
        )


def recorded_steps(ode_options, grid: str, default: int) -> int:
    """Solver steps of the authors' ``args.ode_options`` for ``grid``, else ``default``.

    On the EDM grid their sampler builds the grid with ``get_time_discretization(nfes=nfe)``:
    nfe + 1 times, so ``nfe`` is the number of solver steps, not of network evaluations (their
    Heun takes 2 evaluations a step: nfe 50 = 100 evaluations, the paper's count). On the uniform
    grid they step by ``step_size``: 1 / step_size steps. Anything else (no options, a value that
    is no whole number of steps the grid allows) keeps ``default``.
    """
    if not isinstance(ode_options, dict):
        return default
    if grid == "edm":
        steps = ode_options.get("nfe")
    else:
        size = ode_options.get("step_size")
        steps = 1.0 / size if _is_number(size) and size > 0 else None
        steps = round(steps) if steps is not None and abs(steps - round(steps)) < 1e-6 else None
    if not _is_number(steps) or steps != int(steps) or steps < GRID_MIN_STEPS[grid]:
        return default
    return int(steps)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_ema_key(key: str) -> bool:
    return key == "num_updates" or key.startswith("shadow_params.")


def _plain(values: dict) -> dict:
    """JSON-ready copy of ``args``: numbers, strings, bools, None, lists and dicts of them stay
    (``ode_options`` is a dict); the rest is str()."""
    def convert(v):
        if isinstance(v, (int, float, str, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        return str(v)

    return {str(k): convert(v) for k, v in values.items()}


def infer_unet_config(weights: dict[str, torch.Tensor], *, num_heads: int = 1, use_new_attention_order: bool = True) -> UNetConfig:
    """Recover the UNet config from tensor shapes (heads and attention order cannot be seen in shapes).

    Input blocks are a stem conv, then per level ``num_res_blocks`` ResBlocks (with an attention
    layer ``.1`` at attention resolutions) and, between levels, a downsample with no weights.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in weights:
            raise InputError(f"cannot infer the UNet config: weight {key!r} is missing; pass a config or preset")
        return tuple(weights[key].shape)

    model_channels = shape("time_embed.0.weight")[1]
    indices = sorted({int(m[1]) for k in weights if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]
    for i in range(1, indices[-1] + 1):
        if f"input_blocks.{i}.0.in_layers.2.weight" in weights:
            levels[-1].append(i)
        else:
            levels.append([])
    blocks_per_level = {len(level) for level in levels}
    if len(blocks_per_level) != 1:
        raise InputError(f"cannot infer the UNet config: levels have different block counts {sorted(blocks_per_level)}")
    first = [level[0] for level in levels]
    widths = [shape(f"input_blocks.{i}.0.in_layers.2.weight")[0] for i in first]
    return UNetConfig(
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        model_channels=model_channels,
        channel_mult=tuple(w // model_channels for w in widths),
        num_res_blocks=blocks_per_level.pop(),
        attention_resolutions=tuple(2**lvl for lvl, i in enumerate(first) if f"input_blocks.{i}.1.qkv.weight" in weights),
        num_heads=num_heads,
        use_new_attention_order=use_new_attention_order,
        use_scale_shift_norm=shape(f"input_blocks.{first[0]}.0.emb_layers.1.weight")[0] == 2 * widths[0],
        conv_resample=any(k.endswith(".op.weight") for k in weights),
        condition_dim=shape("mol_embed_transform.weight")[1],
    )


def build_unet(
    checkpoint: PublishedCheckpoint, *, use_ema: bool = True, config: UNetConfig | str | None = None
) -> UNet:
    """The UNet of ``checkpoint`` with its EMA (or live) weights, on the CPU, in eval mode.

    ``config``: a UNetConfig, a preset name, or None to infer it from the tensor shapes.
    """
    if isinstance(config, str):
        config = preset(config)
    if config is None:
        config = infer_unet_config(checkpoint.live, num_heads=int(checkpoint.args.get("num_heads", 1)))
    with torch.device("meta"):
        unet = UNet(config)
    load_weights(unet, checkpoint.weights(unet, use_ema), source=checkpoint.source)
    return unet.eval()


def load_published(
    path: str | Path,
    *,
    embeddings: str | Path | Vocabulary | None = None,
    kind: str | None = None,
    channels: tuple[Channel, ...] | None = None,
    image_size: int = 96,
    use_ema: bool = True,
    config: UNetConfig | str | None = None,
) -> CellFluxModel:
    """A published ``checkpoint.pth`` (plus its embedding table) as a :class:`CellFluxModel`.

    embeddings: the perturbation embedding CSV (or a Vocabulary); without it the model can only
    be conditioned on explicit embeddings or SMILES. kind / channels default from the dataset
    recorded in the checkpoint's args (bbbc021, rxrx1, cpg0000). image_size: 96 for the
    published screens.
    """
    checkpoint = PublishedCheckpoint.from_dict(torch_load_safely(path), source=str(path))
    digest = file_sha256(path)
    unet = build_unet(checkpoint, use_ema=use_ema, config=config)
    dataset = str(checkpoint.args.get("dataset", "")).lower()
    if isinstance(config, str):
        dataset = config
    kind = kind or DATASET_KINDS.get(dataset, "other")
    if isinstance(embeddings, Vocabulary):
        vocabulary = embeddings
    elif embeddings is not None:
        vocabulary = read_embedding_csv(embeddings, kind=kind)
    else:
        vocabulary = Vocabulary(names=[], embeddings=torch.zeros(0, unet.config.condition_dim), kind=kind)
    if channels is None:
        channels = DATASET_CHANNELS.get(dataset, default_channels(unet.config.in_channels))
    return CellFluxModel(
        unet=unet,
        vocabulary=vocabulary,
        channels=tuple(channels),
        image_size=image_size,
        normalization=Normalization(255.0),
        sampling=checkpoint.sampling_defaults(),
        training=checkpoint.args,
        provenance={
            "source": Path(path).name,
            "source_sha256": digest,
            "format": "published CellFlux checkpoint.pth",
            "weights": "ema" if use_ema else "live",
            "epoch": checkpoint.epoch,
            "num_updates": checkpoint.num_updates,
            "dataset": dataset or None,
        },
        sha256=digest,
    )

