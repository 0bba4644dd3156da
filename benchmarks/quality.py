"""(c) Quality against network evaluations (NFE): euler / midpoint / heun on the uniform and the EDM
grid, compared with the paper's sampler (Heun, EDM grid, 100 evaluations) from the same control
cells and the same noise.

Per configuration: the trajectory-endpoint error (RMS difference of the generated cells from the
reference's, in model space, relative to the RMS distance the reference moved the cells), the
morphology measured from the pixels (nuclear area, cell elongation, texture, per-channel
intensity: ``training.metrics.measure_cells``) as the relative difference of each mean from the
reference's, and FID against the reference cells where Inception weights are given. "Within 5%":
endpoint error <= 5% and every morphology mean within 5% of the reference's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_cellflux import api
from napari_cellflux.core.unet import count_parameters
from napari_cellflux.errors import InputError
from napari_cellflux.settings import (
    EVALUATIONS_PER_STEP,
    GRID_MIN_STEPS,
    GRID_NAMES,
    SOLVER_NAMES,
    SamplingConfig,
    SpeedOptions,
)

from . import common as C

TOLERANCE = 0.05
FEW_STEP_LIMIT = 20


def sampling_for(solver: str, grid: str, nfe: int, base: SamplingConfig) -> SamplingConfig | None:
    """``base`` (guidance, noise level, autoguidance) with ``solver`` on ``grid`` at exactly ``nfe``
    evaluations, or None where there is none."""
    per_step = EVALUATIONS_PER_STEP[solver]
    steps = nfe // per_step
    if nfe % per_step or steps < GRID_MIN_STEPS[grid]:
        return None
    return base.with_overrides(solver=solver, grid=grid, steps=steps)


def morphology_means(pixels: np.ndarray) -> dict[str, float]:
    from training import metrics as M

    table = M.measure_cells(pixels)
    return {c: float(np.nanmean(table[c])) if table[c].notna().any() else math.nan
            for c in M.effect_columns(pixels.shape[1])}


def relative_differences(means: dict, reference: dict) -> dict[str, float | None]:
    out = {}
    for key, ref in reference.items():
        value = means.get(key, math.nan)
        out[key] = None if not (math.isfinite(ref) and math.isfinite(value)) or abs(ref) < 1e-9 else abs(value - ref) / abs(ref)
    return out


def quality_vs_nfe(model, model_description: str, *, device: torch.device, cells: int, nfes: tuple[int, ...],
                   reference_nfe: int, perturbation: str | None, seed: int, inception_weights: str | None,
                   fast_options: dict) -> dict:
    name = C.pick_perturbation(model, perturbation)
    model.to(device)
    controls = C.controls_for(model, cells, seed)
    # The model's own guidance, noise level and autoguidance (an evaluation is then two networks)
    own = model.sampling

    def generate(sampling: SamplingConfig, **options) -> torch.Tensor:
        opts = dict(precision="fp32", channels_last=False, compile=False, batch_guidance=True)
        opts.update(options)
        return api.generate(model, controls, name, sampling=sampling, seed=seed, batch_size=cells,
                            final_only=True, speed=SpeedOptions(**opts)).final

    reference_sampling = sampling_for("heun", "edm", reference_nfe, own)
    if reference_sampling is None:
        raise InputError(f"--reference-nfe must be an even number >= 4, got {reference_nfe}")
    reference = generate(reference_sampling)
    noise = torch.randn(controls.shape, generator=torch.Generator().manual_seed(seed))
    start = controls + own.noise_level * noise  # x_init, exactly as generate() draws it
    moved = float((reference - start).pow(2).mean().sqrt())
    reference_pixels = model.normalization.to_pixels(reference)
    reference_morphology = morphology_means(reference_pixels)

    fid = None
    if inception_weights:
        fid = _FID(inception_weights, device, reference_pixels)

    def score(final: torch.Tensor) -> dict:
        pixels = model.normalization.to_pixels(final)
        error = float((final - reference).pow(2).mean().sqrt())
        rel = relative_differences(morphology_means(pixels), reference_morphology)
        known = [v for v in rel.values() if v is not None]
        worst = max(known) if known else None
        relative = error / moved if moved > 0 else math.nan
        return {
            "endpoint_rmse": error,
            "relative_endpoint_error": relative,
            "morphology_relative_difference": rel,
            "morphology_max_relative_difference": worst,
            "fid_vs_reference": fid(pixels) if fid else None,
            "within_5pct": bool(relative <= TOLERANCE and (worst is None or worst <= TOLERANCE)),
        }

    rows = []
    for solver in SOLVER_NAMES:
        for grid in GRID_NAMES:
            for nfe in nfes:
                sampling = sampling_for(solver, grid, nfe, own)
                if sampling is None:
                    continue
                final = reference if sampling == reference_sampling else generate(sampling)
                rows.append({"solver": solver, "grid": grid, "steps": sampling.steps, "nfe": nfe, **score(final)})

    fast_row = {"solver": "heun", "grid": "edm", "steps": reference_sampling.steps, "nfe": reference_nfe,
                "options": fast_options, **score(generate(reference_sampling, **fast_options))}
    controls_row = {"what": "the control cells themselves (+ noise), i.e. no generation", **score(start)}

    few = [r for r in rows if r["nfe"] <= FEW_STEP_LIMIT]
    best = min(few, key=lambda r: (r["relative_endpoint_error"], r["nfe"])) if few else None
    cheapest = {}
    for solver in SOLVER_NAMES:
        for grid in GRID_NAMES:
            passing = [r["nfe"] for r in rows if r["solver"] == solver and r["grid"] == grid and r["within_5pct"]]
            cheapest[f"{solver}_{grid}"] = min(passing) if passing else None
    passing = [r for r in rows if r["within_5pct"]]
    overall = min(passing, key=lambda r: (r["nfe"], r["relative_endpoint_error"])) if passing else None
    return {
        "model": model_description,
        "parameters": count_parameters(model.unet),
        "perturbation": name,
        "cells": cells,
        "seed": seed,
        "guidance": own.guidance,
        "noise_level": own.noise_level,
        "autoguidance": own.autoguidance,
        "reference": {"solver": "heun", "grid": "edm", "nfe": reference_nfe, "precision": "fp32"},
        "reference_rms_displacement": moved,
        "reference_morphology": reference_morphology,
        "tolerance": TOLERANCE,
        "fid": ("FID of each configuration's cells against the reference cells (Inception pool features; "
                f"{cells} cells, so small-sample biased)") if fid else "not run: no --inception-weights",
        "rows": rows,
        "fast_path_at_reference": fast_row,
        "controls_vs_reference": controls_row,
        "best_at_most_20_nfe": best and {k: best[k] for k in ("solver", "grid", "steps", "nfe", "relative_endpoint_error",
                                                               "morphology_max_relative_difference", "within_5pct")},
        "fewest_nfe_within_5pct": cheapest,
        "cheapest_within_5pct": overall and {k: overall[k] for k in ("solver", "grid", "steps", "nfe", "relative_endpoint_error",
                                                                      "morphology_max_relative_difference")},
        "environment": C.environment(device),
    }


class _FID:
    """FID of cells against fixed reference cells, on the FID Inception network."""

    def __init__(self, weights: str, device: torch.device, reference_pixels: np.ndarray):
        from training import metrics as M
        from training.inception import inception_features, load_inception

        self.M, self.features = M, inception_features
        self.network = load_inception(weights, device)
        self.rgb = M.rgb_matrix("plain", reference_pixels.shape[1])
        self.reference = self._features(reference_pixels)

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return self.features(self.network, self.M.to_inception_rgb(pixels, self.rgb)).numpy()

    def __call__(self, pixels: np.ndarray) -> float:
        return float(self.M.fid(self._features(pixels), self.reference))
