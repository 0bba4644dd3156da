"""Typed training configs, read from YAML files with ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from napari_cellflux.core.flow import TIME_MEAN, TIME_STD
from napari_cellflux.data.dataset import PairingConfig
from napari_cellflux.data.synthetic import SYNTHETIC_COUNTS
from napari_cellflux.errors import InputError
from napari_cellflux.settings import DEVICES, TRAINING_PRECISIONS, SamplingConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Where the screen is and how to read it.

    format: an IMPA convention (bbbc021, rxrx1, cpg0000) or "plain". root: the folder of cell
    files; metadata / embeddings: CSVs, relative to root unless absolute. synthetic: build the
    synthetic screen in root first if it is not there (the demo), of synthetic_seed and the counts
    in synthetic_screen (SyntheticScreenConfig's SYNTHETIC_COUNTS; {} = its defaults, as `cellflux
    synth` with the same options writes it). coupling: how treated
    cells get their controls, "independent" (the paper) or "ot" (minibatch optimal transport
    within each perturbation and batch; napari_cellflux.data.dataset). control_targets: the share
    of training pairs that are control -> control under the control's name (0: the paper).
    """

    root: str = "data"
    format: str = "bbbc021"
    metadata: str = "metadata.csv"
    embeddings: str = "emb_fp.csv"
    kind: str = "compound"
    channels: str = "bbbc021"
    held_out: list[str] = field(default_factory=list)
    flip_prob: float = 0.3
    coupling: str = "independent"
    control_targets: float = 0.0
    synthetic: bool = False
    synthetic_seed: int = 0
    synthetic_screen: dict = field(default_factory=dict)
    num_workers: int = 0

    def __post_init__(self) -> None:
        for key, value in self.synthetic_screen.items():
            if key not in SYNTHETIC_COUNTS or isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"data.synthetic_screen: {key}={value!r} is not a count of the synthetic screen; "
                                 f"give whole numbers for {', '.join(SYNTHETIC_COUNTS)}")
        try:  # the dataset's own checks, run now so a bad value stops the run before any work
            PairingConfig(flip_prob=self.flip_prob, coupling=self.coupling, control_targets=self.control_targets)
        except InputError as err:
            raise InputError(f"data.{err}") from None


@dataclass
class ModelConfig:
    """A UNet preset (bbbc021, rxrx1, cpg0000) or None, plus field overrides; image_size in pixels."""

    preset: str | None = "bbbc021"
    image_size: int = 96
    overrides: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The paper's optimisation (docs/method.md, Training) unless changed."""

    lr: float = 1e-4
    # Steps at the end over which the learning rate falls linearly to 0 (a cool-down; 0 = constant
    # throughout, the paper's). Earlier steps run at exactly ``lr``.
    decay_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01  # torch's AdamW default; the paper sets none
    batch_size: int = 32
    steps: int = 100_000
    epochs: int | None = None  # if set, overrides steps: epochs x full batches per epoch
    ema_max_decay: float = 0.999
    noise_prob: float = 0.5
    noise_level: float = 0.5
    class_drop_prob: float = 0.2
    # Training times t = 1 / (1 + exp(N(time_mean, time_std^2))) (core.flow.sample_t_skewed); the
    # paper's -1.2 puts the median at t ~ 0.77, near the perturbed end.
    time_mean: float = TIME_MEAN
    time_std: float = TIME_STD
    # The mean and std for batches whose sources stay clean (the other 1 - noise_prob: the regime
    # `morph` generates in); None = time_mean / time_std. On the demo, mean 0 lost shapes in both
    # modes (docs/modes.md).
    clean_time_mean: float | None = None
    clean_time_std: float | None = None
    precision: str = "auto"
    # Keep the EMA weights at this step as the model file's guide network, for autoguidance
    # (SamplingConfig.autoguidance, docs/modes.md); None = no guide.
    guide_step: int | None = None

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size", "steps")
        if self.guide_step is not None:
            _at_least(self, 1, "guide_step")
        _at_least(self, 0, "decay_steps")
        if self.epochs is not None:
            _at_least(self, 1, "epochs")
        if not self.lr > 0:
            raise InputError(f"optim.lr must be > 0, got {self.lr}")
        for name in ("noise_prob", "class_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"optim.{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_max_decay < 1.0 or self.noise_level < 0 or self.weight_decay < 0:
            raise InputError("optim.ema_max_decay must be in [0, 1), optim.noise_level and optim.weight_decay >= 0")
        for name in ("time_std", "clean_time_std"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise InputError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if self.precision not in TRAINING_PRECISIONS:
            raise InputError(f"optim.precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {self.precision!r}")


@dataclass
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (None: torch's default); fixes float summation order

    def __post_init__(self) -> None:
        _at_least(self, 1, "checkpoint_every", "log_every")
        if self.threads is not None:
            _at_least(self, 1, "threads")
        if self.device.split(":")[0] not in DEVICES:
            raise InputError(f"run.device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")


@dataclass
class MorphNetworkConfig:
    """A second network for morph mode alone (docs/modes.md, A network for each mode): after the
    main run, the same config trained again from the same start on clean-source batches only
    (optim.noise_prob 0, no guide) for ``steps`` steps in run.out/morph; the model file then
    carries it as its morph network. 0 = none: morph runs the main network. ``dropout``: the
    morph run's (None: model.overrides' own); it has no weights, so the file's morph network keeps
    the model's architecture."""

    steps: int = 0
    dropout: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise InputError(f"morph.steps must be >= 0, got {self.steps}; 0 trains no morph network")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise InputError(f"morph.dropout must be in [0, 1) or null (the model's own), got {self.dropout}")


@dataclass
class TrainConfig:
    """``sampling``: the defaults the trained model file recommends (solver, grid, steps, guidance,
    noise level); the paper's unless changed."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    morph: MorphNetworkConfig = field(default_factory=MorphNetworkConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclasses; unknown keys
    and values of the wrong type are errors that name the key."""
    if not isinstance(values, dict):
        raise InputError(f"config {where.rstrip('.') or 'file'}: expected a mapping, got {values!r}")
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"config {where or 'file'}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        kind = fields[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{where}{key}.")
        else:
            kwargs[key] = _typed(value, kind, f"{where}{key}")
    try:
        return cls(**kwargs)
    except InputError as err:
        raise InputError(f"config {where.rstrip('.')}: {err}" if where else f"config: {err}") from None


def _typed(value, kind, key: str):
    """``value`` as the field's type ``kind`` (YAML reads 1e-4 as text, so numbers in text are
    accepted); anything else is an error naming ``key``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _typed(value, kind, key)
    if kind is float and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            return number
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            return int(value)
    elif kind in (str, bool, dict) and isinstance(value, kind):
        return value
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = [_typed(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple and len(args) == 2 and args[1] is not Ellipsis and len(items) != len(args):
            raise InputError(f"config {key}: expected {len(args)} values, got {len(items)}")
        return tuple(items) if origin is tuple else items
    name = getattr(kind, "__name__", str(kind))
    raise InputError(f"config {key}: expected {'a finite ' if kind is float else 'a ' if kind is not int else 'an '}"
                     f"{name}, got {value!r}")


def _at_least(section, low: int, *names: str) -> None:
    for name in names:
        if getattr(section, name) < low:
            raise InputError(f"{name} must be >= {low}, got {getattr(section, name)}")


def load_config(name_or_path: str, overrides: list[str] = ()) -> TrainConfig:
    """Read a named config (``training/configs/<name>.yaml``) or a YAML file, then apply
    ``section.key=value`` overrides (values parsed as YAML: numbers, lists, booleans)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config {name_or_path!r} not found; give a YAML file or one of {known}")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r} must look like section.key=value, e.g. optim.steps=500")
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise InputError(f"override {item!r}: {part!r} is not a section")
        target[leaf] = yaml.safe_load(raw)
    return _build(TrainConfig, values, "")
