"""Imaging channels: names and the napari colormap each is shown with."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from napari_cellflux.errors import InputError

COLOR_CYCLE = ("blue", "green", "red", "magenta", "cyan", "yellow")


@dataclass(frozen=True)
class Channel:
    name: str
    color: str = "gray"

    def to_dict(self) -> dict:
        return asdict(self)


def _channels(*pairs: str) -> tuple[Channel, ...]:
    return tuple(Channel(*pair.split(":")) for pair in pairs)


# Stains of the published screens (docs/method.md, Datasets); the cpg0000 order is that of the
# JUMP load_data tables (DNA, ER, RNA, AGP, Mito).
DATASET_CHANNELS: dict[str, tuple[Channel, ...]] = {
    "bbbc021": _channels("DNA:blue", "tubulin:green", "actin:red"),
    "rxrx1": _channels(
        "Hoechst (nucleus):blue", "ConA (ER):green", "phalloidin (actin):red",
        "SYTO14 (RNA):magenta", "MitoTracker (mito):yellow", "WGA (Golgi/membrane):cyan",
    ),
    "cpg0000": _channels("DNA:blue", "ER:green", "RNA:magenta", "AGP:red", "Mito:yellow"),
}


def default_channels(count: int) -> tuple[Channel, ...]:
    """Generic names ("channel 1", ...) with distinct colours, for data that names none."""
    return tuple(Channel(f"channel {i + 1}", COLOR_CYCLE[i % len(COLOR_CYCLE)]) for i in range(count))


def parse_channels(spec: str) -> tuple[Channel, ...]:
    """Parse "DNA:blue,tubulin:green,actin:red" (colours optional) or a dataset name ("bbbc021")."""
    if spec.lower() in DATASET_CHANNELS:
        return DATASET_CHANNELS[spec.lower()]
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise InputError(f"channels {spec!r}: expected e.g. 'DNA:blue,tubulin:green,actin:red' or one of {sorted(DATASET_CHANNELS)}")
    defaults = default_channels(len(items))
    return tuple(
        Channel(*(part.strip() for part in item.split(":", 1))) if ":" in item else Channel(item, defaults[i].color)
        for i, item in enumerate(items)
    )


def describe(channels: tuple[Channel, ...] | list[Channel]) -> str:
    """'3 channels (DNA, tubulin, actin)' for error messages."""
    return f"{len(channels)} channels ({', '.join(c.name for c in channels)})"


NUCLEAR_STAINS = re.compile(r"dna|dapi|hoechst|nucle", re.IGNORECASE)


def nucleus_channel(names: Sequence[str]) -> int:
    """Index of the first channel named like a DNA stain (DNA, DAPI, Hoechst, nucleus), else 0:
    the channel nuclei are segmented and measured on."""
    return next((i for i, name in enumerate(names) if NUCLEAR_STAINS.search(name)), 0)
