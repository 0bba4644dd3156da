"""Evaluate a model on a screen's test split: ``python -m training.evaluate --checkpoint CKPT --data DIR --out metrics.json``.

For every treated test cell a control cell of the same batch is drawn and carried to the cell's
perturbation by the model; the generated cells are compared with the real treated cells by
FIDo / FIDc / KIDo / KIDc on Inception-v3 features (with ``--inception-weights``), by
morphology measured from the pixels, by the recovered effect (treated / control ratios, and the
designed truth on a synthetic screen), by MoA accuracy (where the data has MoA labels) and by
per-batch intensity. The copy-the-control baseline (generated = the control cells themselves)
gets the same metrics, side by side. Perturbations the model saw in training ("seen") and
held-out ones ("unseen") are summarised separately. See the README, section Evaluation.

This module holds the config, the run and the command line; the parts are in
``training.evaluation`` (data, generation, measure, moa, scores, targets).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_cellflux.atomic import atomic_write_text, check_writable
from napari_cellflux.cli import add_mode_option, add_sampling_options
from napari_cellflux.data.cells import SPLITS
from napari_cellflux.data.screens import FORMATS
from napari_cellflux.errors import InputError, run_main
from napari_cellflux.models.model_file import CellFluxModel
from napari_cellflux.runtime import resolve_device
from napari_cellflux.settings import DEFAULT_MODE, DEVICES, PRECISIONS, SamplingConfig, check_mode_noise

from . import metrics as M
from .evaluation.data import EvalData, Selection, held_out_names, load_eval_data, load_pixels, select_cells
from .evaluation.generation import check_model, checkpoint_info, generate_cells, load_checkpoint
from .evaluation.measure import CellMeasurer, rgb_description
from .evaluation.moa import classifier_info, train_moa_classifier
from .evaluation.scores import SUMMARY_KEYS, score

# The parts tests and scripts reach through this module (tests patch generate_cells here).
__all__ = [
    "SCHEMA", "SUMMARY_KEYS", "EvalConfig", "EvalData", "Selection", "build_parser", "evaluate", "generate_cells",
    "load_eval_data", "load_pixels", "main", "select_cells",
]

SCHEMA = "napari-cellflux/evaluation/1"


@dataclass
class EvalConfig:
    """The command line's options (see ``build_parser``); None: the model's or the data's default."""

    checkpoints: list[str]
    data: str
    out: str
    format: str | None = None
    metadata: str | None = None
    embeddings: str | None = None
    split: str = "test"
    inception_weights: str | None = None
    n_cells: int | None = None
    max_perturbations: int | None = None
    perturbations: list[str] | None = None
    steps: int | None = None
    solver: str | None = None
    grid: str | None = None
    guidance: float | None = None
    noise_level: float | None = None
    autoguidance: float | None = None
    mode: str = DEFAULT_MODE
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    nuclear_channel: int = 0
    moa_cells: int = 200
    kid_subsets: int = 100
    rgb_composite: str = M.RGB_COMPOSITES[0]
    report: str | None = None
    quiet: bool = False


def sampling_for(model: CellFluxModel, cfg: EvalConfig) -> SamplingConfig:
    """The model's sampler with the given options, as ``cfg.mode`` runs it (morph: noise level 0, no autoguidance)."""
    return model.sampling.with_overrides(steps=cfg.steps, solver=cfg.solver, grid=cfg.grid, guidance=cfg.guidance,
                                         noise_level=cfg.noise_level, autoguidance=cfg.autoguidance).for_mode(cfg.mode)


def evaluate(cfg: EvalConfig, on_generated: Callable[[str, np.ndarray], None] | None = None) -> dict:
    """Run the evaluation of ``cfg``; writes ``cfg.out`` (and the report) and returns the result.

    ``on_generated(path, cells)``, if given, receives each checkpoint's generated cells (uint8
    (N, C, H, W), in the order of the selection), to measure more than the evaluation does
    without generating them again."""
    log = (lambda message: None) if cfg.quiet else (lambda message: print(f"evaluate: {message}", file=sys.stderr, flush=True))
    started = time.time()
    if not cfg.checkpoints:
        raise InputError("give at least one --checkpoint")
    notes: list[str] = []
    if cfg.report:
        from .report import check_matplotlib

        check_matplotlib()
    inception = _load_inception(cfg, notes)
    # Load every model first, so a bad checkpoint fails before hours of generation.
    models = [load_checkpoint(path, cfg.device, cfg.embeddings) for path in cfg.checkpoints]
    data = load_eval_data(cfg.data, cfg.format, cfg.metadata)
    selection = select_cells(data, split=cfg.split, perturbations=cfg.perturbations, n_cells=cfg.n_cells,
                             max_perturbations=cfg.max_perturbations, held_out=held_out_names(data, models), seed=cfg.seed)
    notes += selection.notes
    conditions = [check_model(model, data, selection, Path(path)) for model, path in zip(models, cfg.checkpoints)]
    for model, condition in zip(models, conditions):
        if len(model.vocabulary):  # a SMILES had to stand in for a name the model's vocabulary lacks: never trained on
            selection.groups.update({name: "unseen" for name, how in condition.items() if "smiles" in how})
    measure = CellMeasurer(cfg.nuclear_channel, M.rgb_matrix(data.format, data.shape[0]), inception, cfg.batch_size,
                           cfg.rgb_composite)
    log(f"{len(selection.treated)} treated {cfg.split} cells of {len(selection.names)} perturbations "
        f"({sum(g == 'unseen' for g in selection.groups.values())} unseen)")

    real_pixels = load_pixels(data.table, selection.treated, data.shape)
    control_pixels = load_pixels(data.table, selection.controls, data.shape)
    log("measuring real and control cells")
    real, copy = measure(real_pixels), measure(control_pixels)
    classifier, why_not = train_moa_classifier(data, cfg.split, cfg.moa_cells, measure, cfg.seed)
    if why_not:
        notes.append(f"MoA accuracy skipped: {why_not}")

    checkpoints = []
    for model, path, condition in zip(models, cfg.checkpoints, conditions):
        sampling = sampling_for(model, cfg)
        log(f"checkpoint {path}: mode {cfg.mode}, {sampling.steps} {sampling.solver} steps, guidance {sampling.guidance:g}")
        generated = generate_cells(model, control_pixels, selection, condition, sampling, seed=cfg.seed,
                                   batch_size=cfg.batch_size, precision=cfg.precision, mode=cfg.mode, log=log)
        if on_generated:
            on_generated(path, generated)
        log("measuring generated cells")
        result = score(selection, data, real, {"cellflux": measure(generated), "copy_control": copy}, classifier,
                       kid_subsets=cfg.kid_subsets, seed=cfg.seed)
        checkpoints.append({**checkpoint_info(model, path), "sampling": {"mode": cfg.mode, **sampling.to_dict()},
                            "summary": result["methods"]["cellflux"]})
    output = _clean({
        "schema": SCHEMA,
        "checkpoint": {k: checkpoints[-1][k] for k in ("path", "sha256", "step", "epoch")},
        "checkpoints": checkpoints,
        "data": {
            "path": str(Path(cfg.data).resolve()), "format": data.format, "table": str(data.table.source),
            "split": cfg.split, "cell_shape": list(data.shape), "n_treated": len(selection.treated),
            "perturbations": selection.names, "seen": selection.names_in("seen"), "unseen": selection.names_in("unseen"),
            "synthetic_truth": data.truth is not None,
        },
        "sampling": checkpoints[-1]["sampling"] | {"seed": cfg.seed},
        "features": {
            "inception_weights": str(Path(cfg.inception_weights).resolve()) if cfg.inception_weights else None,
            "fid_images": "8-bit, [0, 1], " + rgb_description(data.format, data.shape[0], cfg.rgb_composite) + ", resized bilinearly to 299 x 299",
            "morphology": M.morphology_columns(data.shape[0]),
            "effects": M.effect_columns(data.shape[0]),
            "nuclear_channel": cfg.nuclear_channel,
        },
        "moa": classifier_info(classifier),
        **{k: result[k] for k in ("methods", "reference", "perturbations", "batches", "targets")},
        "notes": notes,
        "elapsed_s": round(time.time() - started, 2),
    })
    atomic_write_text(cfg.out, json.dumps(output, indent=2, allow_nan=False) + "\n")
    log(f"metrics written to {cfg.out}")
    if cfg.report:
        from .report import write_report

        write_report(cfg.report, output, selection=selection, real=real_pixels, controls=control_pixels,
                     generated=generated, models=models, checkpoints=cfg.checkpoints)
        log(f"report written to {cfg.report}")
    return output


def _load_inception(cfg: EvalConfig, notes: list[str]):
    """The FID Inception network of ``cfg.inception_weights``, or None with a note (and a warning)."""
    if cfg.inception_weights:
        from .inception import load_inception

        return load_inception(cfg.inception_weights, resolve_device(cfg.device))
    message = ("FID/KID skipped: no --inception-weights given (pass the FID Inception weights file "
               "pt_inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    notes.append(message)
    print(f"evaluate: warning: {message}", file=sys.stderr, flush=True)  # even with --quiet
    return None


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN / inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="model file (model.safetensors or a published checkpoint.pth); repeat to compare checkpoints")
    p.add_argument("--data", required=True, help="the screen's folder (IMPA layout, plain format, or a synthetic screen)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--format", choices=FORMATS, help="data layout (default: detected from the folder)")
    p.add_argument("--metadata", help="the metadata CSV, if not DIR/metadata.csv or DIR/cells.csv")
    p.add_argument("--embeddings", help="perturbation embedding CSV (published checkpoints only)")
    p.add_argument("--split", default="test", choices=SPLITS, help="cells to evaluate on (default test)")
    p.add_argument("--inception-weights", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); without it FID/KID are skipped")
    p.add_argument("--n-cells", type=int, help="at most this many treated cells per perturbation (random, seeded)")
    p.add_argument("--max-perturbations", type=int, help="at most this many perturbations (random; 100 in the RxRx1/JUMP protocol)")
    p.add_argument("--perturbations", help="comma-separated perturbations to evaluate (default: all in the split)")
    add_mode_option(p)
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--nuclear-channel", type=int, default=0, help="the DNA stain channel, 0-based (default 0)")
    p.add_argument("--moa-cells", type=int, default=200, help="real cells per perturbation to train the MoA classifier on")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--rgb-composite", choices=M.RGB_COMPOSITES, default=M.RGB_COMPOSITES[0],
                   help="how channels are mixed to Inception's RGB: authors (default; mixed in model space, as the "
                        "paper's numbers) or clip (stored pixels mixed, clamped to [0, 1]); the same for 3-channel data")
    p.add_argument("--report", help="folder for a Markdown + PNG report")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["checkpoints"] = values.pop("checkpoint")
    if values["perturbations"]:
        values["perturbations"] = [p.strip() for p in values["perturbations"].split(",") if p.strip()]

    def run() -> int:
        for name in ("n_cells", "max_perturbations", "batch_size", "moa_cells", "kid_subsets"):
            if values[name] is not None and values[name] < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {values[name]}")
        check_mode_noise(values["mode"], values["noise_level"], values["autoguidance"])
        check_writable(values["out"], what="--out", suffixes=(".json",))
        if values["report"]:
            check_writable(values["report"], what="--report", folder=True)
        evaluate(EvalConfig(**values))
        return 0

    return run_main("evaluate", run)


if __name__ == "__main__":
    sys.exit(main())
