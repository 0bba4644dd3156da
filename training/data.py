"""The training screen: read it (building the synthetic demo screen first if asked), pair cells,
and batch them in an order fixed by (seed, epoch) so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from napari_cellflux.data.dataset import CellPairDataset, PairingConfig
from napari_cellflux.data.screens import OptionNames, read_screen_table, under
from napari_cellflux.data.synthetic import (
    SCREEN_INFO,
    SYNTHETIC_COUNTS,
    SyntheticScreenConfig,
    make_synthetic_screen,
    screen_info,
)
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import Channel, default_channels
from napari_cellflux.models.vocabulary import Vocabulary, read_embedding_csv

from .config import DataConfig

OPTION_NAMES = OptionNames(root="data.root", format="data.format", metadata="data.metadata")


class SeededItems(Dataset):
    """Item i of ``pairs`` drawn with a generator seeded from (seed, epoch, i): the same draw
    (control, dequantisation, flips) whichever worker or resumed run asks for it. With the "ot"
    coupling the epoch's controls are assigned up front from (seed, epoch)."""

    def __init__(self, pairs: CellPairDataset, seed: int, epoch: int):
        self.pairs, self.seed, self.epoch = pairs, seed, epoch
        self.controls = None
        if pairs.config.coupling == "ot":
            self.controls = pairs.coupled_controls(np.random.default_rng([seed, epoch]))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        entropy = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1, np.uint64)[0]
        control = None if self.controls is None else int(self.controls[i])
        return self.pairs.item(i, torch.Generator().manual_seed(int(entropy)), control)


@dataclass
class TrainingData:
    pairs: CellPairDataset
    vocabulary: Vocabulary
    source: Path
    seed: int

    @property
    def channels(self) -> int:
        return self.pairs.shape[0]

    @property
    def default_channels(self) -> tuple[Channel, ...]:
        return default_channels(self.channels)

    def batches_per_epoch(self, batch_size: int, world_size: int) -> int:
        """Full batches each process sees per epoch (the sampler drops the remainder)."""
        return len(self.pairs) // world_size // batch_size

    def loader(self, epoch: int, *, start_batch: int, batch_size: int, rank: int, world_size: int,
               num_workers: int) -> Iterator[dict]:
        """The batches of ``epoch`` for this rank from ``start_batch`` on (full batches only)."""
        sampler = DistributedSampler(self.pairs, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        batches = [indices[i * batch_size:(i + 1) * batch_size] for i in range(self.batches_per_epoch(batch_size, world_size))]
        if not batches:
            raise InputError(
                f"{self.source}: {len(self.pairs)} training cells make no full batch of {batch_size} per process "
                f"({world_size} processes); lower optim.batch_size"
            )
        items = SeededItems(self.pairs, self.seed, epoch)
        return iter(DataLoader(items, batch_sampler=batches[start_batch:], num_workers=num_workers))


def check_synthetic_screen(cfg: DataConfig, *, image_size: int, build: bool) -> None:
    """Build the synthetic screen ``cfg`` asks for in ``cfg.root`` if it is missing (``build``), and
    refuse a screen there that was made with other settings: it would train another model silently."""
    root = Path(cfg.root)
    asked = SyntheticScreenConfig(seed=cfg.synthetic_seed, image_size=image_size, **cfg.synthetic_screen)
    if build and not under(root, cfg.metadata).is_file():
        make_synthetic_screen(root, asked)
    info = screen_info(root)
    if info is None:
        return  # not a synthetic screen: read_screen_table names what is missing
    found = info.get("config", {})
    keys = ("seed", "image_size", *SYNTHETIC_COUNTS)
    differ = [f"{k} {found.get(k)} (asked {getattr(asked, k)})" for k in keys if found.get(k) != getattr(asked, k)]
    if differ:
        raise InputError(f"{root / SCREEN_INFO}: the synthetic screen in data.root was made with {', '.join(differ)}; "
                         "point data.root at a new folder (it is built there) or match data.synthetic_seed / "
                         "data.synthetic_screen to it")


def load_training_data(cfg: DataConfig, *, image_size: int, seed: int, build: bool) -> TrainingData:
    """Read the screen of ``cfg`` (train split, held-out perturbations removed).

    ``build``: make the synthetic screen in ``cfg.root`` first when ``cfg.synthetic`` is set and
    it is missing (only rank 0 builds; the others wait and read).
    """
    root = Path(cfg.root)
    if cfg.synthetic:
        check_synthetic_screen(cfg, image_size=image_size, build=build)
    table, _, metadata = read_screen_table(root, cfg.format, cfg.metadata, names=OPTION_NAMES)
    vocabulary = read_embedding_csv(under(root, cfg.embeddings), kind=cfg.kind)
    vocabulary.smiles = {name: s for name, s in table.smiles.items() if name in vocabulary.names}
    pairs = CellPairDataset(table, vocabulary, PairingConfig(split="train", held_out=tuple(cfg.held_out), flip_prob=cfg.flip_prob,
                                                           coupling=cfg.coupling, control_targets=cfg.control_targets))
    if pairs.shape[1:] != (image_size, image_size):
        raise InputError(
            f"{metadata}: cells are {pairs.shape[1]} x {pairs.shape[2]} px but model.image_size is {image_size}; "
            "set model.image_size to the crop size"
        )
    return TrainingData(pairs=pairs, vocabulary=vocabulary, source=metadata, seed=seed)
