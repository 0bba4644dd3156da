"""How much of each designed effect the two generation modes recover (docs/modes.md): the
evaluation (``training.evaluate``) of a model on its synthetic screen's test split, once per mode,
reduced to generated effect / real effect per compound and feature, how precisely the real
cells fix each effect (the measurement floor), how parallel the generated fibres run against the
real cells' (fibre coherence), and how much of its own control each generated cell keeps.

    python -m benchmarks.modes [--checkpoint MODEL] [--screen runs/modes/screen] [--out benchmarks/results/modes.json]

The screen is written with ``cellflux synth``'s defaults (the demo's screen) where the folder
does not exist yet. Effects are treated / control ratios of the measured features
(``training.metrics``); "recovered" is (generated ratio - 1) / (real ratio - 1): 1 = the real
cells' effect, 0 = none (the copy-control baseline).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import run_main
from napari_cellflux.settings import MODE_NAMES, MODES

from . import common as C

RESULTS = Path(__file__).parent / "results" / "modes.json"
DEMO = Path("src/napari_cellflux/assets/demo.safetensors")  # the bundled demo, from the repository root
# Real cells keep their fibres at coherence >= this; a destabiliser's loss of them is its texture effect.
KEEPS_FIBRES = 0.5
SUMMARY = ("effect_error", "effect_error_vs_truth", "morphology_error", "moa_accuracy", "batch_intensity_error")


def evaluate_mode(checkpoint: str, screen: Path, mode: str, seed: int, cells: dict[str, np.ndarray]) -> dict:
    """The evaluation JSON of ``checkpoint`` on ``screen``'s test split in ``mode`` (model's sampler);
    its generated cells (uint8 (N, C, H, W)) go into ``cells[mode]``."""
    from training.evaluate import EvalConfig, evaluate

    def keep(path: str, generated: np.ndarray) -> None:
        cells[mode] = generated

    with tempfile.TemporaryDirectory() as folder:
        return evaluate(EvalConfig(checkpoints=[checkpoint], data=str(screen), out=str(Path(folder) / "metrics.json"),
                                   mode=mode, seed=seed, quiet=True), on_generated=keep)


def designed_effects(results: dict[str, dict]) -> list[dict]:
    """One row per compound and designed feature (truth != 1): truth, real and each mode's ratio
    and the share of the real effect it recovers."""
    first = next(iter(results.values()))
    rows = []
    for name, entry in first["perturbations"].items():
        for feature, effect in entry["effect"].items():
            if effect["truth"] is None or effect["truth"] == 1 or effect["real"] is None:
                continue
            row = {"perturbation": name, "group": entry["group"], "feature": feature, "truth": effect["truth"],
                   "real": effect["real"]}
            for mode, result in results.items():
                generated = result["perturbations"][name]["effect"][feature]["cellflux"]
                row[mode] = generated
                row[f"{mode}_recovered"] = None if generated is None else (generated - 1) / (effect["real"] - 1)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["group"] != "seen", r["perturbation"].lower(), r["feature"]))


def real_interval(treated: np.ndarray, paired: np.ndarray, effect: float, rng: np.random.Generator,
                  rounds: int = 2000) -> list[float]:
    """The bootstrap 95% interval of the real ratio mean(treated) / mean(paired) (N,) (each cell drawn
    with its paired control, as the evaluation pairs them), as shares of ``effect`` (the real ratio - 1):
    how precisely these real cells fix the effect a generated share is measured against."""
    draws = rng.integers(0, len(treated), (rounds, len(treated)))
    ratios = np.nanmean(treated[draws], 1) / np.nanmean(paired[draws], 1)
    return sorted(float((q - 1) / effect) for q in np.percentile(ratios, [2.5, 97.5]))


def measurement_floor(screen: Path, effects: list[dict], seed: int, rounds: int = 2000) -> None:
    """Add to each seen row of ``effects`` how precisely the real cells fix it: the bootstrap 95%
    interval of the real ratio (test cells over their paired controls, as the evaluation pairs
    them) as shares of the effect, and the share the *training-split* real cells of the compound
    recover (what a perfect generator would score against these test cells)."""
    from training import metrics as M
    from training.evaluation.data import load_eval_data, load_pixels, select_cells

    data = load_eval_data(screen)
    selection = select_cells(data, split="test", seed=seed)
    cells = data.table.cells
    treated = M.measure_cells(load_pixels(data.table, selection.treated, data.shape))
    paired = M.measure_cells(load_pixels(data.table, selection.controls, data.shape))
    train = cells["split"].to_numpy() == "train"
    names, is_control = cells["perturbation"].to_numpy(), cells["is_control"].to_numpy()
    train_controls = M.measure_cells(load_pixels(data.table, np.flatnonzero(train & is_control), data.shape))
    seen = [row for row in effects if row["group"] == "seen"]
    train_treated = {name: M.measure_cells(load_pixels(data.table, np.flatnonzero(train & (names == name)), data.shape))
                     for name in {row["perturbation"] for row in seen}}  # once per compound, not per feature
    rng = np.random.default_rng(seed)
    for row in seen:
        index, feature, effect = selection.index(row["perturbation"]), row["feature"], row["real"] - 1
        row["real_interval_recovered"] = real_interval(treated[feature].to_numpy()[index],
                                                       paired[feature].to_numpy()[index], effect, rng, rounds)
        other = train_treated[row["perturbation"]][feature].mean()
        row["train_real_recovered"] = float((other / train_controls[feature].mean() - 1) / effect)


def fibres(checkpoint: str, screen: Path, seed: int, generated: dict[str, np.ndarray]) -> dict:
    """Per perturbation of the test split: the mean fibre coherence (``training.metrics.fibre_coherence``,
    1 = parallel, 0 = crossing) of its real cells (test and, where it has them, training split), of
    their paired controls and of each mode's generated cells (``generated[mode]``, the cells
    ``evaluate_mode`` kept, in the order of the same selection),
    and per mode the generated / real ratio averaged over the seen compounds whose real cells keep
    their fibres (coherence >= 0.5; a microtubule destabiliser's loss of fibres is its texture
    effect, scored with the others)."""
    from training import metrics as M
    from training.evaluation.data import held_out_names, load_eval_data, load_pixels, select_cells
    from training.evaluation.generation import load_checkpoint

    data = load_eval_data(screen)
    # The evaluation's selection: the same split, seed and held-out compounds.
    selection = select_cells(data, split="test", held_out=held_out_names(data, [load_checkpoint(checkpoint, "cpu", None)]),
                             seed=seed)
    measured = {"real": M.fibre_coherence(load_pixels(data.table, selection.treated, data.shape)),
                "control": M.fibre_coherence(load_pixels(data.table, selection.controls, data.shape))}
    for mode in MODE_NAMES:
        if len(generated[mode]) != len(selection.treated):
            raise ValueError(f"{len(generated[mode])} generated {mode} cells for {len(selection.treated)} selected")
        measured[mode] = M.fibre_coherence(generated[mode])
    rows = {name: {"group": selection.groups[name],
                   **{key: float(values[selection.index(name)].mean()) for key, values in measured.items()}}
            for name in selection.names}
    cells = data.table.cells
    for name, row in rows.items():  # other real cells of the design: what a perfect generator scores
        train = np.flatnonzero((cells["split"].to_numpy() == "train") & (cells["perturbation"].to_numpy() == name))
        row["real_train"] = float(M.fibre_coherence(load_pixels(data.table, train, data.shape)).mean()) if len(train) else None
    fibrous = [name for name, row in rows.items() if row["group"] == "seen" and row["real"] >= KEEPS_FIBRES]
    return {"what": ("mean fibre coherence of channel 1 (training.metrics.fibre_coherence: 1 = parallel fibres, "
                     "0 = no preferred direction) per perturbation of the test split"),
            "perturbations": rows,
            "generated_over_real": {mode: float(np.mean([rows[n][mode] / rows[n]["real"] for n in fibrous])) for mode in MODE_NAMES},
            "averaged_over": fibrous}


def cell_kept(checkpoint: str, cells: int, seed: int) -> dict:
    """Per mode: the mean pixel correlation of each generated cell (t = 1) with its own control,
    and with another control (the level a cell unrelated to its control reaches), over the
    model's compounds."""
    from napari_cellflux import api

    model = api.load_model(checkpoint, device="cpu")
    controls = C.controls_for(model, cells, seed)
    other = torch.roll(controls, 1, dims=0)
    out = {}
    for mode in MODE_NAMES:
        own, shuffled = [], []
        for name in model.vocabulary.names:
            if name == model.vocabulary.control:
                continue
            final = api.generate(model, controls, name, mode=mode, seed=seed, final_only=True).final
            own.append(_correlation(final, controls))
            shuffled.append(_correlation(final, other))
        out[mode] = {"own_control": float(np.mean(own)), "another_control": float(np.mean(shuffled))}
    return {"cells": cells, "what": ("mean Pearson correlation over pixels of a generated cell with its own "
                                     "control and with another control, averaged over cells and compounds"), **out}


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


def markdown(data: dict) -> str:
    """The docs' table of the designed effects."""
    lines = ["| compound (group) | feature | truth | real cells | sample | recovered | morph | recovered |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["effects"]:
        cells = [f"{r['perturbation']} ({r['group']})", r["feature"], f"{r['truth']:.2f}", f"{r['real']:.2f}"]
        for mode in ("sample", "morph"):
            cells += [_fmt(r[mode], "{:.2f}"), _fmt(r[f"{mode}_recovered"], "{:.0%}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| compound | feature | real cells' 95% interval | real training-split cells recover |",
              "|---|---|---|---|"]
    for r in data["effects"]:
        if "real_interval_recovered" in r:
            lo, hi = r["real_interval_recovered"]
            lines.append(f"| {r['perturbation']} | {r['feature']} | {lo:.0%} to {hi:.0%} | {r['train_real_recovered']:.0%} |")
    if "fibres" in data:
        lines += ["", "| perturbation (group) | fibre coherence: real test cells | real training cells | controls | sample | morph |",
                  "|---|---|---|---|---|---|"]
        for name, r in data["fibres"]["perturbations"].items():
            lines.append(f"| {name} ({r['group']}) | {r['real']:.2f} | {_fmt(r['real_train'], '{:.2f}')} | {r['control']:.2f} "
                         f"| {r['sample']:.2f} | {r['morph']:.2f} |")
        ratio = data["fibres"]["generated_over_real"]
        lines.append(f"\nGenerated / real fibre coherence over {', '.join(data['fibres']['averaged_over'])}: "
                     f"sample {ratio['sample']:.2f}, morph {ratio['morph']:.2f}.")
    return "\n".join(lines)


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modes", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEMO, help=f"model file (default: the bundled demo, {DEMO})")
    p.add_argument("--screen", type=Path, default=Path("runs/modes/screen"),
                   help="its synthetic screen (written with cellflux synth's defaults if absent)")
    p.add_argument("--cells", type=int, default=32, help="control cells for the cell-kept measure (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        started = time.perf_counter()
        if not args.screen.exists():
            from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen

            make_synthetic_screen(args.screen, SyntheticScreenConfig())
        generated: dict[str, np.ndarray] = {}
        results = {mode: evaluate_mode(str(args.checkpoint), args.screen, mode, args.seed, generated) for mode in MODE_NAMES}
        effects = designed_effects(results)
        measurement_floor(args.screen, effects, args.seed)
        data = {
            "command": " ".join(["python -m benchmarks.modes", *(sys.argv[1:] if argv is None else argv)]),
            "checkpoint": results["sample"]["checkpoint"],
            "screen": str(args.screen),
            "modes": MODES,
            "sampling": {mode: r["sampling"] for mode, r in results.items()},
            "recovered": "(generated ratio - 1) / (real ratio - 1) of the treated / control ratio of each feature",
            "measurement_floor": ("seen rows: real_interval_recovered, the bootstrap 95% interval of the real test "
                                  "cells' own ratio as shares of their effect; train_real_recovered, the share "
                                  "the training split's real cells recover"),
            "effects": effects,
            "summary": {mode: {group: {k: r["methods"]["cellflux"][group][k] for k in SUMMARY}
                               for group in ("seen", "unseen")} for mode, r in results.items()},
            "copy_control": {group: {k: results["sample"]["methods"]["copy_control"][group][k] for k in SUMMARY}
                             for group in ("seen", "unseen")},
            "fibres": fibres(str(args.checkpoint), args.screen, args.seed, generated),
            "cell_kept": cell_kept(str(args.checkpoint), args.cells, args.seed),
            "environment": C.environment(torch.device("cpu")),
        }
        data["elapsed_s"] = round(time.perf_counter() - started, 1)
        C.write_json(args.out, data)
        print(markdown(data))
        return 0

    return run_main("python -m benchmarks.modes", run)


if __name__ == "__main__":
    raise SystemExit(main())
