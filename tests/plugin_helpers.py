"""Helpers shared by the plugin tests (widget, layout, controls, results): a tiny compound model
at the demo's scale (3 synthetic channels, 32 x 32 crops), fast enough for 2 CPU cores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from helpers import randomize, tiny_config

import napari_cellflux
from napari_cellflux.core.unet import UNet
from napari_cellflux.data.samples import synthetic_channels
from napari_cellflux.models.fingerprints import compound_vocabulary
from napari_cellflux.models.model_file import CellFluxModel, save_model
from napari_cellflux.settings import SamplingConfig

PLUGIN = "napari-cellflux"  # the npe2 plugin name
DEMO = Path(napari_cellflux.__file__).parent / "assets" / "demo.safetensors"
COMPOUNDS = {"colchicine": "COc1cc2c(c(OC)c1OC)-c1ccc(OC)c(=O)cc1[C@@H](NC(C)=O)CC2", "PP-2": "CC(C)(C)n1nc(-c2ccc(Cl)cc2)c2c(N)ncnc21"}
FAST = SamplingConfig(solver="euler", grid="uniform", steps=4, guidance=0.2, noise_level=0.5)
TWO_STEPS = SamplingConfig(solver="euler", grid="uniform", steps=2, guidance=0.2, noise_level=0.5)  # screens, phenotype runs


def random_pool() -> np.ndarray:
    """A reproducible pool of 5 control cells, uint8 (5, 3, 32, 32)."""
    return np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)


def tiny_model(seed: int = 0, image_size: int = 32) -> CellFluxModel:
    """Random weights (all non-zero, so every step changes the cells), compound vocabulary with DMSO."""
    vocabulary = compound_vocabulary(COMPOUNDS, control="DMSO")
    unet = randomize(UNet(tiny_config(condition_dim=vocabulary.dim)), seed)
    return CellFluxModel(unet=unet, vocabulary=vocabulary, channels=synthetic_channels(3), image_size=image_size, sampling=FAST)


def guided_model(seed: int = 0, guide_seed: int = 1, autoguidance: float = 0.0) -> CellFluxModel:
    """tiny_model with an autoguidance guide of the same architecture and other random weights."""
    model = tiny_model(seed)
    model.guide, model.guide_step = randomize(UNet(model.config), guide_seed).eval(), 12
    model.sampling = replace(model.sampling, autoguidance=autoguidance)
    return model


def tiny_model_file(path: Path, image_size: int = 32) -> Path:
    save_model(tiny_model(image_size=image_size), path)
    return path


def channel_model_file(path: Path, channels, image_size: int, pixel_size_um: float | None = None,
                       pixel_size_source: str = "unknown") -> Path:
    """A model file with random weights for ``channels`` (e.g. a dataset's stains) and crops of
    ``image_size`` px at ``pixel_size_um``: what plate extraction and the plate source read."""
    from data_helpers import toy_vocabulary

    vocabulary = toy_vocabulary()
    n = len(channels)
    unet = randomize(UNet(tiny_config(in_channels=n, out_channels=n, condition_dim=vocabulary.dim)), 0)
    save_model(CellFluxModel(unet=unet, vocabulary=vocabulary, channels=tuple(channels), image_size=image_size,
                             sampling=FAST, pixel_size_um=pixel_size_um, pixel_size_source=pixel_size_source), path)
    return path
