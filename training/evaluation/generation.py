"""The evaluated models: loading and checking them against the screen, and the generated cells."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from napari_cellflux import api
from napari_cellflux.errors import InputError
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.settings import DEFAULT_MODE, SamplingConfig, SpeedOptions

from .data import EvalData, Selection


def load_checkpoint(path: str | Path, device: str, embeddings: str | None) -> CellFluxModel:
    """The model in ``path`` (own format or a published checkpoint); errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist; pass a model.safetensors written by training.train")
    options = {"embeddings": embeddings} if embeddings else {}
    try:
        return api.load_model(path, device=device, **options)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise InputError(
            f"--checkpoint {path} is not a usable model ({err}); pass a model.safetensors written by "
            "training.train or a published CellFlux checkpoint.pth (with --embeddings for the latter)"
        ) from err


def checkpoint_info(model: CellFluxModel, path: str) -> dict:
    return {"path": str(Path(path).resolve()), "sha256": model.sha256 or None,
            "step": model.provenance.get("step"), "epoch": model.provenance.get("epoch")}


def check_model(model: CellFluxModel, data: EvalData, selection: Selection, source: Path) -> dict[str, dict]:
    """How each selected perturbation is conditioned ({"perturbation": name} or {"smiles": s});
    raises if the cells do not fit the model or a perturbation has no embedding."""
    c, h, w = data.shape
    if c != model.config.in_channels or (h, w) != (model.image_size, model.image_size):
        raise InputError(
            f"--data cells are (C, H, W) = {data.shape} but the model {source} takes "
            f"({model.config.in_channels}, {model.image_size}, {model.image_size}); evaluate on the screen it was trained for"
        )
    if model.normalization.max_value != 255:
        raise InputError(f"model {source} works on {model.normalization.max_value:g}-valued pixels; evaluation needs 8-bit (255) models")
    conditions = {}
    missing = []
    vocab = model.vocabulary
    for name in selection.names:
        try:
            conditions[name] = {"perturbation": vocab.names[vocab.index(name)]}
        except KeyError:
            smiles = data.table.smiles.get(name)
            if vocab.kind == "compound" and smiles:
                conditions[name] = {"smiles": smiles}
            else:
                missing.append(name)
    if missing:
        raise InputError(
            f"perturbations {missing[:10]} of --data {data.table.source} have no embedding in the vocabulary of "
            f"{source} ({len(vocab)} perturbations, kind {vocab.kind}); pass --embeddings with the table the model "
            "was trained with, or leave them out with --perturbations"
        )
    return conditions


def generate_cells(
    model: CellFluxModel,
    controls: np.ndarray,
    selection: Selection,
    conditions: dict[str, dict],
    sampling: SamplingConfig,
    *,
    seed: int,
    batch_size: int,
    precision: str,
    mode: str = DEFAULT_MODE,
    log=None,
) -> np.ndarray:
    """uint8 (N, C, H, W): each control carried to its treated cell's perturbation (t = 1) in
    ``mode`` (settings.MODES)."""
    out = np.empty_like(controls)
    names = selection.names
    speed = SpeedOptions(precision=precision)
    for k, name in enumerate(names):
        index = selection.index(name)
        if log:
            log(f"generating {name} ({k + 1}/{len(names)}, {len(index)} cells)")
        # Seeded by the name, so a cell's noise does not depend on which other perturbations are evaluated.
        name_seed = int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1, np.uint64)[0] >> 1)
        trajectory = api.generate(model, model.normalization.to_model(controls[index]), sampling=sampling,
                                  mode=mode, seed=name_seed, batch_size=batch_size, speed=speed, final_only=True,
                                  **conditions[name])
        out[index] = model.normalization.to_pixels(trajectory.final)
    return out
