"""The demo's quality targets, judged on the seen (training) perturbations."""

from __future__ import annotations

import numpy as np

from .data import Selection
from .measure import MethodCells

EFFECT_TOLERANCE = 0.25  # relative error allowed on an effect size (ratio - 1)
BATCH_TOLERANCE = 0.10  # relative error allowed on a batch's mean crop intensity per channel
LOWER_IS_BETTER = ("FIDo", "FIDc", "KIDo", "KIDc", "morphology_error", "effect_error", "effect_error_vs_truth",
                   "batch_intensity_error")


def targets(selection: Selection, real: MethodCells, generated: MethodCells, per_perturbation: dict,
            summaries: dict) -> dict:
    """Every designed effect (truth != 1) with the right sign and a size (ratio - 1) within 25% of
    the real cells' and of the truth's; every summary metric better than copy-control; each
    batch's mean crop intensity per channel within 10% of the real cells'."""
    effects = []
    for name in selection.names_in("seen"):
        for feature, v in per_perturbation[name]["effect"].items():
            if v["truth"] is None or v["truth"] == 1 or v["cellflux"] is None or v["real"] is None:
                continue
            size, real_size, true_size = v["cellflux"] - 1, v["real"] - 1, v["truth"] - 1
            effects.append({
                "perturbation": name, "feature": feature, "truth": v["truth"], "real": v["real"], "generated": v["cellflux"],
                "sign_right": bool(np.sign(size) == np.sign(true_size)),
                "within_25pct_of_real": bool(abs(size - real_size) <= EFFECT_TOLERANCE * abs(real_size)),
                "within_25pct_of_truth": bool(abs(size - true_size) <= EFFECT_TOLERANCE * abs(true_size)),
            })
    mine, copy = summaries["cellflux"]["seen"], summaries["copy_control"]["seen"]
    metrics = {key: bool(mine[key] < copy[key]) if key in LOWER_IS_BETTER else bool(mine[key] > copy[key])
               for key in (*LOWER_IS_BETTER, "moa_accuracy") if mine.get(key) is not None and copy.get(key) is not None}
    index = selection.index(group="seen")
    columns = [c for c in real.morphology.columns if c.startswith("crop_mean_c")]
    batches = {}
    for batch in sorted(set(selection.batches[index])):
        rows = index[selection.batches[index] == batch]
        want = real.morphology[columns].iloc[rows].mean().to_numpy()
        got = generated.morphology[columns].iloc[rows].mean().to_numpy()
        error = float(np.max(np.abs(got - want) / np.maximum(want, 1e-9)))
        batches[batch] = {"real": want.tolist(), "generated": got.tolist(), "max_relative_error": error,
                          "preserved": error <= BATCH_TOLERANCE}
    return {
        "effects": effects, "beats_copy_control": metrics, "batch_artefacts": batches,
        "met": {
            "effect_signs": all(e["sign_right"] for e in effects),
            "effect_sizes_vs_real": all(e["within_25pct_of_real"] for e in effects),
            "effect_sizes_vs_truth": all(e["within_25pct_of_truth"] for e in effects),
            "beats_copy_control": all(metrics.values()),
            "batch_artefacts": all(b["preserved"] for b in batches.values()),
        },
    }
