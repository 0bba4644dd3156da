"""A synthetic screen with known ground truth, written in the IMPA BBBC021 layout.

Real compounds (real SMILES, Morgan count fingerprints as embeddings) are given designed effects
on drawn cells; batches differ by a per-channel gain and background offset. Because every cell's
parameters are saved, a model trained on it can be scored against the truth on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from napari_cellflux.atomic import atomic_write_bytes, atomic_write_text
from napari_cellflux.data.cells import CellTable
from napari_cellflux.data.drawing import CellParameters, draw_cells
from napari_cellflux.data.impa import bbbc021_key_path, read_impa
from napari_cellflux.errors import InputError

if TYPE_CHECKING:
    from napari_cellflux.models.vocabulary import Vocabulary

CONTROL_NAME = "DMSO"
CONTROL_SMILES = "CS(C)=O"
BASE_CHANNEL_NAMES = ("DNA", "cytoskeleton", "cytoplasm")
DRAW_CHUNK = 128  # cells drawn at once: bounds memory for large screens and images


def channel_names(channels: int) -> tuple[str, ...]:
    """Names of the drawn channels; channels past the third are further cytoplasmic stains."""
    return tuple(BASE_CHANNEL_NAMES[:channels]) + tuple(f"stain{c}" for c in range(3, channels))


@dataclass(frozen=True)
class SyntheticPerturbation:
    """A compound and its designed effect: factors on the control mean (1 = no change).

    intensity: one factor per channel (missing channels: 1). DOSE in the metadata is a label only.
    """

    name: str
    smiles: str
    moa: str
    nuclear_area: float = 1.0
    cell_elongation: float = 1.0
    texture: float = 1.0
    intensity: tuple[float, ...] = ()
    dose: float = 1.0

    def intensity_factors(self, channels: int) -> np.ndarray:
        return np.array([*self.intensity, *[1.0] * channels][:channels], dtype=np.float64)


MT_DESTABILISER = dict(moa="Microtubule destabilizers", texture=0.3, cell_elongation=0.77)
DEFAULT_PERTURBATIONS = (
    SyntheticPerturbation("colchicine", "COc1cc2c(c(OC)c1OC)-c1ccc(OC)c(=O)cc1[C@@H](NC(C)=O)CC2", **MT_DESTABILISER),
    SyntheticPerturbation(
        "camptothecin", "CC[C@@]1(O)C(=O)OCc2c1cc1-c3nc4ccccc4cc3Cn1c2=O", "Topoisomerase inhibitors", nuclear_area=1.6
    ),
    SyntheticPerturbation(
        "mitoxantrone", "OCCNCCNc1ccc(NCCNCCO)c2C(=O)c3c(O)ccc(O)c3C(=O)c12", "DNA damage", intensity=(0.5,)
    ),
    SyntheticPerturbation("PP-2", "CC(C)(C)n1nc(-c2ccc(Cl)cc2)c2c(N)ncnc21", "Epithelial", cell_elongation=1.4),
    SyntheticPerturbation(
        "MG-132",
        "CC(C)C[C@H](NC(=O)[C@H](CC(C)C)NC(=O)OCc1ccccc1)C(=O)N[C@@H](CC(C)C)C=O",
        "Protein degradation",
        intensity=(1.0, 1.0, 1.8),
    ),
    SyntheticPerturbation(
        "alsterpaullone",
        "O=C1Cc2c([nH]c3ccc([N+](=O)[O-])cc23)-c2ccccc2N1",
        "Kinase inhibitors",
        texture=1.5,
        intensity=(1.0, 1.8),
    ),
    # Held out by default: a close analogue of colchicine and an unrelated scaffold, both with
    # colchicine's effect, so unseen-compound generalisation can be scored easy and hard.
    SyntheticPerturbation("demecolcine", "COc1cc2c(c(OC)c1OC)-c1ccc(OC)c(=O)cc1[C@@H](NC)CC2", **MT_DESTABILISER),
    SyntheticPerturbation("nocodazole", "COC(=O)Nc1nc2cc(C(=O)c3cccs3)ccc2[nH]1", **MT_DESTABILISER),
)


@dataclass(frozen=True)
class Morphology:
    """Control cells' mean morphology; lengths as fractions of the image side.

    intensity: signal per channel (channels past the list use the last value).
    size_cv / intensity_cv: cell-to-cell log-normal spread of areas and intensities.
    """

    nuclear_radius: float = 0.16
    nuclear_elongation: float = 1.15
    cell_radius: float = 0.30
    cell_elongation: float = 1.3
    texture: float = 0.5
    intensity: tuple[float, ...] = (0.45, 0.18, 0.30, 0.25)
    size_cv: float = 0.10
    intensity_cv: float = 0.12

    def intensities(self, channels: int) -> np.ndarray:
        values = list(self.intensity) + [self.intensity[-1]] * channels
        return np.array(values[:channels], dtype=np.float64)


# The sizes a screen may be asked for by count (`cellflux synth` options, data.synthetic_screen).
SYNTHETIC_COUNTS = ("batches", "controls_per_batch", "cells_per_perturbation")
SCREEN_INFO = "screen.json"  # a synthetic screen's config, channel names and designed effects


@dataclass(frozen=True)
class SyntheticScreenConfig:
    """Size and content of a synthetic screen; defaults train on a CPU in minutes.

    Per batch: ``controls_per_batch`` DMSO cells and ``cells_per_perturbation`` cells of each
    perturbation. ``held_out`` perturbations go entirely to the test split; the others are split
    by ``test_fraction``. Batch b multiplies channel c by a gain drawn from ``gain_range`` and adds
    a background drawn from ``offset_range`` (fractions of full scale), then pixel noise.
    """

    image_size: int = 32
    channels: int = 3
    batches: int = 3
    controls_per_batch: int = 100
    cells_per_perturbation: int = 40
    perturbations: tuple[SyntheticPerturbation, ...] = DEFAULT_PERTURBATIONS
    held_out: tuple[str, ...] = ("demecolcine", "nocodazole")
    test_fraction: float = 0.2
    gain_range: tuple[float, float] = (0.8, 1.2)
    offset_range: tuple[float, float] = (0.02, 0.10)
    noise_sigma: float = 0.02
    morphology: Morphology = field(default_factory=Morphology)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.channels < 1 or self.batches < 1:
            raise InputError("image_size must be >= 16 and channels, batches >= 1")
        if min(self.controls_per_batch, self.cells_per_perturbation) < 2:
            raise InputError("controls_per_batch and cells_per_perturbation must be >= 2 (one train, one test)")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InputError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        names = [p.name for p in self.perturbations]
        unknown = set(self.held_out) - set(names)
        if unknown:
            raise InputError(f"held_out {sorted(unknown)} are not among the perturbations {names}")


@dataclass(frozen=True)
class SyntheticScreen:
    """A synthetic screen read back: its cell table, vocabulary, held-out names and screen.json."""

    table: CellTable
    vocabulary: Vocabulary
    held_out: tuple[str, ...]
    info: dict


def sample_cell_parameters(
    rng: np.random.Generator,
    effects: list[SyntheticPerturbation | None],
    size: int,
    channels: int,
    morphology: Morphology = Morphology(),
) -> CellParameters:
    """Draw one cell per entry of ``effects`` (None: a control cell) at image side ``size`` px."""
    n = len(effects)
    area_f = np.array([e.nuclear_area if e else 1.0 for e in effects])
    elong_f = np.array([e.cell_elongation if e else 1.0 for e in effects])
    texture_f = np.array([e.texture if e else 1.0 for e in effects])
    intensity_f = np.stack([e.intensity_factors(channels) if e else np.ones(channels) for e in effects])
    m = morphology
    nuclear_area = np.pi * (m.nuclear_radius * size) ** 2 * area_f * rng.lognormal(0.0, m.size_cv, n)
    nuclear_radius = np.sqrt(nuclear_area / np.pi)
    cell_radius = np.maximum(m.cell_radius * size * rng.lognormal(0.0, m.size_cv, n), 1.5 * nuclear_radius)
    return CellParameters(
        nuclear_radius=nuclear_radius,
        nuclear_elongation=np.maximum(1.0, m.nuclear_elongation + rng.normal(0.0, 0.07, n)),
        cell_radius=cell_radius,
        cell_elongation=np.maximum(1.0, m.cell_elongation * elong_f * (1.0 + rng.normal(0.0, 0.08, n))),
        angle=rng.uniform(0.0, np.pi, n),
        intensity=m.intensities(channels) * intensity_f * rng.lognormal(0.0, m.intensity_cv, (n, channels)),
        texture=np.clip(m.texture * texture_f + rng.normal(0.0, 0.05, n), 0.0, 1.0),
        centre=rng.normal(0.0, 0.5, (n, 2)),
    )


@dataclass(frozen=True)
class ScreenPlan:
    """Every cell of a synthetic screen before drawing: per cell its key, batch, split and drawn
    parameters, and per batch its artefacts (gains, offsets: (batches, C))."""

    keys: list[str]
    effects: list[SyntheticPerturbation | None]
    batch_of: np.ndarray
    splits: list[str]
    params: CellParameters
    gains: np.ndarray
    offsets: np.ndarray


def plan_screen(config: SyntheticScreenConfig, rng: np.random.Generator) -> ScreenPlan:
    """Draw the screen's layout and every cell's parameters from ``rng`` (the first draws of a screen)."""
    gains = rng.uniform(*config.gain_range, (config.batches, config.channels))
    offsets = rng.uniform(*config.offset_range, (config.batches, config.channels))
    groups = [None, *config.perturbations]  # None: the DMSO controls
    rows = []
    for b in range(config.batches):
        for well, effect in enumerate(groups):
            count = config.controls_per_batch if effect is None else config.cells_per_perturbation
            test = rng.permutation(count) < round(count * config.test_fraction)
            held = effect is not None and effect.name in config.held_out
            for i in range(count):
                rows.append((b, effect, _well_name(well), "test" if held or test[i] else "train", i))
    effects = [r[1] for r in rows]
    params = sample_cell_parameters(rng, effects, config.image_size, config.channels, config.morphology)
    return ScreenPlan(
        keys=[f"Week{b + 1}_{well}_{i:04d}" for b, _, well, _, i in rows], effects=effects,
        batch_of=np.array([r[0] for r in rows]), splits=[r[3] for r in rows], params=params, gains=gains, offsets=offsets,
    )


def draw_screen(plan: ScreenPlan, config: SyntheticScreenConfig, rng: np.random.Generator) -> Iterator[tuple[slice, np.ndarray]]:
    """The planned cells as uint8 pixels (n, C, H, W), ``DRAW_CHUNK`` cells at a time with the
    rows of the plan they are, so memory stays bounded for large screens."""
    for start in range(0, len(plan.keys), DRAW_CHUNK):
        chunk = slice(start, start + DRAW_CHUNK)
        signal, _ = draw_cells(plan.params.take(chunk), config.image_size, rng)
        noise = rng.normal(0.0, config.noise_sigma, signal.shape)
        gain = plan.gains[plan.batch_of[chunk]][:, :, None, None]
        offset = plan.offsets[plan.batch_of[chunk]][:, :, None, None]
        yield chunk, np.round(np.clip(offset + gain * signal + noise, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_synthetic_screen(out_dir: str | Path, config: SyntheticScreenConfig = SyntheticScreenConfig()) -> Path:
    """Write a synthetic screen into the new or empty folder ``out_dir``; returns ``out_dir``.

    Files: ``<batch>/<well>/<n>.npy`` (uint8 (H, W, C) per cell), ``metadata.csv`` (IMPA BBBC021
    columns), ``emb_fp.csv`` (Morgan count fingerprints, DMSO included), ``ground_truth.csv``
    (every cell's drawn parameters and batch artefacts) and ``screen.json`` (config, channel
    names, true effects, batch artefacts). The same config (seed included) gives identical bytes.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} is not empty; write a synthetic screen into a new or empty folder")
    # Built beside its destination and renamed into place, so a killed build leaves no half
    # screen that a reader (another torchrun rank, a rerun) could take for a whole one.
    for stale in out.parent.glob(f".{out.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    building = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        building.mkdir(parents=True)
        _write_screen(building, config)
        if out.exists():
            out.rmdir()
        os.replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out


def _write_screen(out: Path, config: SyntheticScreenConfig) -> None:
    rng = np.random.default_rng(config.seed)
    plan = plan_screen(config, rng)
    for chunk, pixels in draw_screen(plan, config, rng):
        for key, cell in zip(plan.keys[chunk], pixels):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(np.moveaxis(cell, 0, -1)))
            atomic_write_bytes(out / bbbc021_key_path(key), buffer.getvalue(), durable=False)  # metadata.csv indexes them
    effects, batch_of = plan.effects, plan.batch_of
    metadata = pd.DataFrame(
        {
            "SAMPLE_KEY": plan.keys,
            "SPLIT": plan.splits,
            "STATE": [0 if e is None else 1 for e in effects],
            "ANNOT": [CONTROL_NAME if e is None else e.moa for e in effects],
            "CPD_NAME": [CONTROL_NAME if e is None else e.name for e in effects],
            "BATCH": [f"Week{b + 1}" for b in batch_of],
            "DOSE": [0.0 if e is None else e.dose for e in effects],
            "SMILES": [CONTROL_SMILES if e is None else e.smiles for e in effects],
        }
    )
    atomic_write_text(out / "metadata.csv", metadata.to_csv())
    from napari_cellflux.models.fingerprints import compound_vocabulary  # torch: not needed to draw cells

    vocabulary = compound_vocabulary({p.name: p.smiles for p in config.perturbations}, control=CONTROL_NAME)
    embedding = pd.DataFrame(vocabulary.embeddings.numpy(), index=pd.Index(vocabulary.names, name="compound"))
    atomic_write_text(out / "emb_fp.csv", embedding.to_csv(float_format="%g"))
    truth = _ground_truth(metadata, plan.params, plan.gains[batch_of], plan.offsets[batch_of], config.channels)
    atomic_write_text(out / "ground_truth.csv", truth.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / SCREEN_INFO, json.dumps(_describe(config, plan.gains, plan.offsets), indent=2, sort_keys=True))


def screen_info(root: str | Path) -> dict | None:
    """The ``screen.json`` of a synthetic screen folder (config, channel names, designed effects),
    None where the folder has none; a damaged one is an InputError naming it."""
    path = Path(root) / SCREEN_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); the synthetic screen is damaged: write it again with "
                         "`cellflux synth` into a new folder") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: not a synthetic screen's description; write it again with `cellflux synth`")
    return info


def read_synthetic_screen(path: str | Path) -> SyntheticScreen:
    """Read a folder written by :func:`make_synthetic_screen` (table, compound vocabulary, held-out names)."""
    from napari_cellflux.models.vocabulary import Vocabulary, read_embedding_csv

    root = Path(path)
    info = screen_info(root)
    if info is None:
        raise FileNotFoundError(f"{root / SCREEN_INFO} is missing; {root} is not a synthetic screen (run `cellflux synth`)")
    table = read_impa(root / "metadata.csv", root, "bbbc021", channels=info["config"]["channels"])
    embedded = read_embedding_csv(root / "emb_fp.csv", kind="compound", control=CONTROL_NAME)
    vocabulary = Vocabulary(
        names=embedded.names,
        embeddings=embedded.embeddings,
        kind="compound",
        smiles={n: table.smiles[n] for n in embedded.names if n in table.smiles},
        control=CONTROL_NAME,
    )
    return SyntheticScreen(table=table, vocabulary=vocabulary, held_out=tuple(info["config"]["held_out"]), info=info)


def _well_name(index: int) -> str:
    return f"{'BCDEFGHIJKLMNO'[index // 22 % 14]}{index % 22 + 2:02d}"


def _ground_truth(
    metadata: pd.DataFrame, params: CellParameters, gains: np.ndarray, offsets: np.ndarray, channels: int
) -> pd.DataFrame:
    truth = {
        "SAMPLE_KEY": metadata["SAMPLE_KEY"],
        "CPD_NAME": metadata["CPD_NAME"],
        "BATCH": metadata["BATCH"],
        "SPLIT": metadata["SPLIT"],
        "nuclear_radius_px": params.nuclear_radius,
        "nuclear_area_px": np.pi * params.nuclear_radius**2,
        "nuclear_elongation": params.nuclear_elongation,
        "cell_radius_px": params.cell_radius,
        "cell_area_px": np.pi * params.cell_radius**2,
        "cell_elongation": params.cell_elongation,
        "angle_rad": params.angle,
        "texture": params.texture,
        "nucleus_row_offset_px": params.centre[:, 0],
        "nucleus_col_offset_px": params.centre[:, 1],
    }
    for c in range(channels):
        truth[f"intensity_c{c}"] = params.intensity[:, c]
        truth[f"gain_c{c}"] = gains[:, c]
        truth[f"offset_c{c}"] = offsets[:, c]
    return pd.DataFrame(truth)


def _describe(config: SyntheticScreenConfig, gains: np.ndarray, offsets: np.ndarray) -> dict:
    m = config.morphology
    control = {
        "nuclear_area_px": float(np.pi * (m.nuclear_radius * config.image_size) ** 2),
        "cell_elongation": m.cell_elongation,
        "texture": m.texture,
        "intensity": m.intensities(config.channels).tolist(),
    }
    effects = {}
    for p in config.perturbations:
        factors = p.intensity_factors(config.channels)
        effects[p.name] = {
            "smiles": p.smiles,
            "moa": p.moa,
            "held_out": p.name in config.held_out,
            "factors": {
                "nuclear_area": p.nuclear_area,
                "cell_elongation": p.cell_elongation,
                "texture": p.texture,
                "intensity": factors.tolist(),
            },
            "expected_means": {
                "nuclear_area_px": control["nuclear_area_px"] * p.nuclear_area,
                "cell_elongation": m.cell_elongation * p.cell_elongation,
                "texture": min(1.0, m.texture * p.texture),
                "intensity": (np.array(control["intensity"]) * factors).tolist(),
            },
        }
    return {
        "format": "impa-bbbc021",
        "config": asdict(config),
        "channel_names": list(channel_names(config.channels)),
        "control": {"name": CONTROL_NAME, "smiles": CONTROL_SMILES, "expected_means": control},
        "perturbations": effects,
        "batches": {
            f"Week{b + 1}": {"gain": gains[b].tolist(), "offset": offsets[b].tolist()} for b in range(config.batches)
        },
        "fingerprint": {"type": "Morgan count", "radius": 2, "n_bits": 1024, "chirality": False},
    }
