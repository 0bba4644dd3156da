"""Which training recipe recovers the designed effects: the shares of ``benchmarks.modes`` (generated
effect / real effect of each seen compound's designed feature) for several model files, in both
modes and at several guidances, on one screen, with the real and control cells measured once.

    python -m benchmarks.recipes --checkpoints A.safetensors B.safetensors [--screen runs/modes/screen_5x]
        [--guidance 0.1 0.2] [--autoguidance 0 1.5] [--morph-main-share 0 0.15] [--noise-level L] [--steps S]
        [--modes sample morph]
        [--split test] [--cells N] [--out benchmarks/results/recipes.json]

The goal it scores (issue 14): every share within 10% of the real cells' (0.9-1.1) in both modes.
Each model is generated with its own sampler, at the given guidance (default: the model's own in
each mode); the screen's test split, seed 0, as ``training.evaluate`` selects it. ``--split train``
scores the training split instead: on the models' own screen, the cells they learnt from (so that
a miss on the test cells can be told from a miss of what was learnt); on a larger screen of the
same design (``cellflux synth``, the same seed, more cells), fresh cells, as many as ``--cells N``
per compound. Each real effect comes with its bootstrap 95% interval as shares: how far a share
can stray by which real cells were drawn. Fibre coherence
(``training.metrics.fibre_coherence``) is reported beside, as generated / real averaged over the
seen compounds whose real cells keep fibres, with where those cells' fibres come from
(``training.metrics.fibre_origin``: the share of its control's own fibre pattern each carries,
against the real cells' share, about 0, and the rest of its fine detail over the real cells'), and
so is what each mode does to the test controls under the model's control perturbation (DMSO ->
DMSO): each effect feature's generated / real ratio, 1 where the controls are left as they are. A
model trained only on treated targets (the demo) never learnt that null, so this shows what its
untrained control condition, which the widget and ``--all-perturbations`` screens offer, does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.data.cells import SPLITS
from napari_cellflux.errors import InputError, run_main
from napari_cellflux.settings import MODE_NAMES

from . import common as C
from .modes import KEEPS_FIBRES, designed_effects, real_interval

RESULTS = Path(__file__).parent / "results" / "recipes.json"
WITHIN = 0.10  # the goal: every share within 10% of the real cells'


def score_models(checkpoints: list[str], screen: Path, guidances: list[float | None], seed: int = 0,
                 noise_level: float | None = None, modes: tuple[str, ...] = MODE_NAMES,
                 steps: int | None = None, autoguidances: tuple[float | None, ...] = (None,),
                 split: str = "test", cells: int | None = None,
                 main_shares: tuple[float | None, ...] = (None,)) -> list[dict]:
    """One row per model, mode, guidance and autoguidance or main share: the seen compounds' shares, the unseen
    ones', and fibre coherence generated / real. A guidance of None is the model's own for the
    mode (``SamplingConfig.for_mode``). ``noise_level`` replaces each model's own for
    ``sample`` (``morph`` starts from the clean controls whatever it is), and so does each of
    ``autoguidances`` (None: the model's own; ``morph`` runs without, so once), and each of
    ``main_shares`` is a ``morph`` row (None: the model's own ``morph_main_share``).
    ``steps`` replaces each model's solver steps. ``split`` and ``cells``: the cells scored (as
    ``training.evaluate``'s ``--split`` and ``--n-cells``)."""
    from training import metrics as M
    from training.evaluation.data import held_out_names, load_eval_data, load_pixels, select_cells
    from training.evaluation.generation import check_model, checkpoint_info, generate_cells, load_checkpoint
    from training.evaluation.measure import CellMeasurer
    from training.evaluation.scores import score

    data = load_eval_data(screen)
    models = {path: load_checkpoint(path, "auto", None) for path in checkpoints}
    selection = select_cells(data, split=split, n_cells=cells, held_out=held_out_names(data, list(models.values())),
                             seed=seed)
    measure = CellMeasurer(0, M.rgb_matrix(data.format, data.shape[0]), None, 64)
    real_pixels = load_pixels(data.table, selection.treated, data.shape)
    control_pixels = load_pixels(data.table, selection.controls, data.shape)
    real, copy = measure(real_pixels), measure(control_pixels)
    real_fibres = M.fibre_coherence(real_pixels)
    # Each distinct test control once, for the control -> control ratios (already loaded and measured).
    _, first = np.unique(selection.controls, return_index=True)
    own_controls, own_measured = control_pixels[first], copy.morphology.iloc[first]
    fibrous = [n for n in selection.names_in("seen") if real_fibres[selection.index(n)].mean() >= KEEPS_FIBRES]
    on_fibres = np.array([i for n in fibrous for i in selection.index(n)], dtype=int)
    real_origin = M.fibre_origin(control_pixels[on_fibres], real_pixels[on_fibres])
    rows, interval = [], None
    for path, model in models.items():
        condition = check_model(model, data, selection, Path(path))
        for mode in modes:
            settings = [(g, None, s) for g in guidances for s in main_shares] if mode == "morph" else [
                (g, a, None) for g in guidances for a in autoguidances]
            for guidance, autoguidance, share in settings:
                sampling = model.sampling.with_overrides(guidance=guidance, noise_level=noise_level, steps=steps,
                                                          autoguidance=autoguidance, morph_main_share=share).for_mode(mode)
                main_share = model.main_share_for(mode, sampling)  # what the run mixes in (0 without a morph network)
                generated = generate_cells(model, control_pixels, selection, condition, sampling, seed=seed,
                                           batch_size=64, precision="fp32", mode=mode)
                result = score(selection, data, real, {"cellflux": measure(generated), "copy_control": copy}, None,
                               kid_subsets=10, seed=seed)
                effects = designed_effects({mode: {"perturbations": result["perturbations"]}})
                fibres = M.fibre_coherence(generated)
                origin = M.fibre_origin(control_pixels[on_fibres], generated[on_fibres])
                nulls = control_ratios(model, own_controls, own_measured, measure, sampling, mode, seed)
                share = {f"{e['perturbation']} {e['feature']}": (e["group"], e[f"{mode}_recovered"]) for e in effects}
                seen = {k: v for k, (group, v) in share.items() if group == "seen"}
                if interval is None:  # how precisely the real cells fix each share: the same for every row
                    rng = np.random.default_rng(seed)
                    interval = {f"{e['perturbation']} {e['feature']}": real_interval(
                        real.morphology[e["feature"]].to_numpy()[selection.index(e["perturbation"])],
                        copy.morphology[e["feature"]].to_numpy()[selection.index(e["perturbation"])], e["real"] - 1, rng)
                        for e in effects if e["group"] == "seen"}
                rows.append({
                    "checkpoint": path, "sha256": checkpoint_info(model, path)["sha256"], "mode": mode,
                    "guidance": sampling.guidance, "autoguidance": sampling.autoguidance, "noise_level": sampling.noise_level,
                    "morph_main_share": main_share,
                    "steps": sampling.steps, "split": split, "seen": seen, "real_interval": interval,
                    "unseen": {k: v for k, (group, v) in share.items() if group != "seen"},
                    "within": sum(abs(v - 1) <= WITHIN for v in seen.values()),
                    "control_to_control": nulls,
                    "fibres_generated_over_real": float(np.mean(
                        [fibres[selection.index(n)].mean() / real_fibres[selection.index(n)].mean() for n in fibrous])),
                    # the fibrous compounds' cells: how much of its control's fine detail each carries
                    # (a real treated cell: about 0), and its other detail over the real cells'
                    "fibres_control_gain": float(origin[:, 0].mean()),
                    "fibres_control_gain_real": float(real_origin[:, 0].mean()),
                    "fibres_new_over_real": float(origin[:, 1].mean() / real_origin[:, 1].mean()),
                })
                print(f"{path} {mode} guidance {sampling.guidance:g} autoguidance {sampling.autoguidance:g} "
                      f"main share {main_share:g}: "
                      f"{rows[-1]['within']} of {len(seen)} within 10%",
                      file=sys.stderr, flush=True)
    return rows


def control_ratios(model, controls: np.ndarray, measured, measure, sampling, mode: str, seed: int) -> dict | None:
    """Each effect feature of ``controls`` (uint8 (N, C, H, W)) carried to the model's control
    perturbation in ``mode``, as generated mean / the same cells' real mean (``measured``); None
    when the model names no control."""
    from napari_cellflux import api
    from napari_cellflux.settings import SpeedOptions
    from training import metrics as M

    if model.vocabulary.control is None:
        return None
    trajectory = api.generate(model, model.normalization.to_model(controls), model.vocabulary.control, sampling=sampling,
                              mode=mode, seed=seed, batch_size=64, speed=SpeedOptions(precision="fp32"), final_only=True)
    generated = measure(model.normalization.to_pixels(trajectory.final)).morphology
    return {c: float(generated[c].mean() / measured[c].mean()) for c in M.effect_columns(controls.shape[1])}


def markdown(rows: list[dict]) -> str:
    """Two tables, one row per model, mode and guidance: the shares of the seen designed effects
    (and how precisely the real cells fix them), then the control -> control ratios of every
    effect feature."""
    def label(r: dict) -> str:
        path = Path(r["checkpoint"])
        name = path.parent.name if path.stem == "model" else path.stem
        mode = r["mode"] + (f" ({r['morph_main_share']:g} main)" if r.get("morph_main_share") else "")
        return f"| {name} | {mode} | {r['guidance']:g} | {r.get('autoguidance', 0):g} | "

    effects = list(rows[0]["seen"])
    lines = ["| model | mode | guidance | autoguidance | " + " | ".join(effects)
             + " | within 10% | fibres | control's fibres kept (real) | new fibres |",
             "|---|---|---|---|" + "---|" * len(effects) + "---|---|---|---|"]
    lines += [label(r) + " | ".join(f"{r['seen'][e]:.0%}" for e in effects)
              + f" | {r['within']}/{len(effects)} | {r['fibres_generated_over_real']:.2f}"
              + f" | {r['fibres_control_gain']:.2f} ({r['fibres_control_gain_real']:.2f}) | {r['fibres_new_over_real']:.2f} |"
              for r in rows]
    lines.append("| real cells' 95% interval | | | | " + " | ".join(
        "{:.0%} to {:.0%}".format(*rows[0]["real_interval"][e]) for e in effects) + " | | | | |")
    features = next((list(r["control_to_control"]) for r in rows if r["control_to_control"]), [])
    if features:
        lines += ["", "| model | mode | guidance | autoguidance | control -> control: " + " | ".join(features) + " |",
                  "|---|---|---|---|" + "---|" * len(features)]
        lines += [label(r) + " | ".join("–" if not r["control_to_control"] else f"{r['control_to_control'][f]:.3f}" for f in features) + " |"
                  for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="model files (.safetensors)")
    p.add_argument("--screen", type=Path, default=Path("runs/modes/screen_5x"),
                   help="synthetic screen to score on (default: the five-times screen of docs/modes.md)")
    p.add_argument("--guidance", type=float, nargs="+", default=[None],
                   help="guidance values, each a row in both modes (default: each model's own in each mode)")
    p.add_argument("--autoguidance", type=float, nargs="+", default=[None],
                   help="sample mode's autoguidance values, each a row (default: each model's own; morph runs without)")
    p.add_argument("--morph-main-share", type=float, nargs="+", default=[None],
                   help="morph mode's share of the main network's velocity, each a row (default: each model's own)")
    p.add_argument("--noise-level", type=float, default=None,
                   help="sample mode's noise level for every model (default: each model's own)")
    p.add_argument("--steps", type=int, default=None,
                   help="solver steps for every model (default: each model's own; is the sampler the cause?)")
    p.add_argument("--modes", nargs="+", choices=MODE_NAMES, default=list(MODE_NAMES),
                   help="the modes to score (default: both; one per process halves the wall time)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="the split scored (default: test; train on the models' own screen: the cells they learnt from)")
    p.add_argument("--cells", type=int, default=None,
                   help="at most this many treated cells per compound (default: all of the split's)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        if not args.screen.is_dir():
            raise FileNotFoundError(f"--screen {args.screen} is not a folder; write it with cellflux synth "
                                    "(docs/modes.md, On five times as many cells)")
        if args.cells is not None and args.cells < 1:
            raise InputError(f"--cells {args.cells}: give at least 1 cell per compound")
        started = time.perf_counter()
        rows = score_models(args.checkpoints, args.screen, args.guidance, noise_level=args.noise_level,
                            modes=tuple(args.modes), steps=args.steps, autoguidances=tuple(args.autoguidance),
                            split=args.split, cells=args.cells, main_shares=tuple(args.morph_main_share))
        C.write_json(args.out, {
            "command": " ".join(["python -m benchmarks.recipes", *(sys.argv[1:] if argv is None else argv)]),
            "screen": str(args.screen), "rows": rows, "environment": C.environment(torch.device("cpu")),
            "elapsed_s": round(time.perf_counter() - started, 1)})
        print(markdown(rows))
        return 0

    return run_main("python -m benchmarks.recipes", run)


if __name__ == "__main__":
    raise SystemExit(main())
