"""Typed training configs, read from YAML files with ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from napari_cellflux.settings import SamplingConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    """Where the screen is and how to read it.

    format: an IMPA convention (bbbc021, rxrx1, cpg0000) or "plain". root: the folder of cell
    files; metadata / embeddings: CSVs, relative to root unless absolute. synthetic: build the
    default synthetic screen in root first if it is not there (the demo).
    """

    root: str = "data"
    format: str = "bbbc021"
    metadata: str = "metadata.csv"
    embeddings: str = "emb_fp.csv"
    kind: str = "compound"
    channels: str = "bbbc021"
    held_out: list[str] = field(default_factory=list)
    flip_prob: float = 0.3
    synthetic: bool = False
    synthetic_seed: int = 0
    num_workers: int = 0


@dataclass
class ModelConfig:
    """A UNet preset (bbbc021, rxrx1, cpg0000) or None, plus field overrides; image_size in pixels."""

    preset: str | None = "bbbc021"
    image_size: int = 96
    overrides: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The paper's optimisation (FACTS.md, Training) unless changed."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01  # torch's AdamW default; the paper sets none
    batch_size: int = 32
    steps: int = 100_000
    epochs: int | None = None  # if set, overrides steps: epochs x full batches per epoch
    ema_max_decay: float = 0.999
    noise_prob: float = 0.5
    noise_level: float = 0.5
    class_drop_prob: float = 0.2
    precision: str = "auto"


@dataclass
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (None: torch's default); fixes float summation order


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Instantiate dataclass ``cls`` from a dict, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ValueError(f"config {where or 'file'}: expected a mapping, got {values!r}")
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"config {where or 'file'}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        kind = fields[key]
        kwargs[key] = _build(kind, value, f"{where}{key}.") if dataclasses.is_dataclass(kind) else value
    config = cls(**kwargs)
    if cls is OptimConfig:
        config.betas = tuple(config.betas)
    return config


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
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. optim.steps=500")
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        target[leaf] = yaml.safe_load(raw)
    return _build(TrainConfig, values, "")
