"""The pins file of a zoo cache (``<cache>/pins.json``): the sha256 of each download pinned on first
use, and of each converted model file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.errors import InputError

PINS_FORMAT = "napari-cellflux zoo pins"


def read_pins(path: Path) -> dict:
    """The pins in ``path``, none if it does not exist; ValueError (saying what to do) if it is unreadable."""
    if not path.is_file():
        return {"format": PINS_FORMAT, "version": 1, "files": {}, "models": {}}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != PINS_FORMAT:
            raise InputError(f"format is {data.get('format')!r}, not {PINS_FORMAT!r}")
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(
            f"the zoo pins file {path} is unreadable ({err}); delete it to start pinning afresh "
            "(the record of first downloads is then lost)"
        ) from err
    data.setdefault("files", {})
    data.setdefault("models", {})
    return data


def write_pins(
    path: Path,
    pins: dict,
    files: Mapping[str, str] | None = None,
    models: Mapping[str, str] | None = None,
    drop_files: tuple[str, ...] | list[str] = (),
    drop_models: tuple[str, ...] | list[str] = (),
) -> None:
    """Write ``pins`` (as read by :func:`read_pins`) to ``path`` atomically, with these pins added and dropped."""
    pins["files"].update(files or {})
    pins["models"].update(models or {})
    for key in drop_files:
        pins["files"].pop(key, None)
    for key in drop_models:
        pins["models"].pop(key, None)
    atomic_write_text(path, json.dumps(pins, indent=2, sort_keys=True) + "\n")
