"""Phenotype readouts on ground truth (docs/phenotype.md, Ground truth): on the synthetic screen
the bundled demo was trained on (designed effects known), generated cells of the demo, real cells
of the test split and copied controls are profiled by the same code, and scored on

- the Spearman correlation of the perturbations ranked by effect size with the realised design
  (each compound's effect size on all its real cells measured: 32 training + 24 test cells, the
  held-out ones 56 test cells), with the designed ranking (the norm of the designed log factors,
  which no profile effect size follows: see docs/phenotype.md) and with the real test cells';
- the sign (and treated / control ratio) of each designed effect, read from cp-measure features;
- top-1 retrieval: the nearest real perturbation (training-split profiles) of each seen one is itself.

    python -m benchmarks.phenotype_truth [--cells 24] [--out benchmarks/results/phenotype_truth.json]
    python -m benchmarks.phenotype_truth --rescore   # score the measured cells again, measuring nothing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import InputError, run_main
from napari_cellflux.phenotype import FEATURE_GROUPS

from . import common as C

RESULTS = Path(__file__).parent / "results" / "phenotype_truth.json"
CELLS = Path("runs/phenotype_truth/cells.csv")
CELLS_HELP = "--cells-table"
SCREEN = Path("runs/demo/screen")
FACTOR_READOUTS = {"nuclear_area": "nuclear_area", "cell_elongation": "cell_elongation", "texture": "texture_c1"}


def pick(rows: np.ndarray, n: int, rng) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, n, replace=False))


def load(table, rows) -> np.ndarray:
    from napari_cellflux.data.cells import load_cell

    return np.stack([load_cell(p) for p in table.cells["path"].iloc[rows]])


def designed_effects(info: dict, channels: int) -> dict[str, dict[str, float]]:
    """Perturbation -> readout -> designed factor, for every factor that is not 1."""
    out = {}
    for name, p in info["perturbations"].items():
        factors = {FACTOR_READOUTS[k]: v for k, v in p["factors"].items() if k in FACTOR_READOUTS}
        factors.update({f"intensity_c{c}": f for c, f in enumerate(p["factors"]["intensity"][:channels])})
        out[name] = {k: float(v) for k, v in factors.items() if abs(v - 1.0) > 1e-9}
    return out


def tagged(features: pd.DataFrame, name: str, is_control: bool) -> pd.DataFrame:
    from napari_cellflux.phenotype.features import with_metadata

    n = len(features)
    return with_metadata(features.reset_index(drop=True), {"Perturbation": [name] * n, "IsControl": [is_control] * n})


def readout_shifts(features: dict[str, pd.DataFrame], controls: pd.DataFrame, channels, dna: int) -> dict:
    """Perturbation -> readout -> treated / control ratio of medians."""
    from napari_cellflux.phenotype.readouts import designed_readouts

    base = designed_readouts(controls, channels, dna).median()
    return {name: (designed_readouts(f, channels, dna).median() / base).to_dict() for name, f in features.items()}


def score(method: dict[str, pd.DataFrame], controls: pd.DataFrame, reference: pd.DataFrame, truth: dict,
          realised: dict[str, float], seen: list[str], channels, dna: int, options) -> dict:
    from scipy.stats import spearmanr

    from napari_cellflux.phenotype.effects import nearest
    from napari_cellflux.phenotype.profile import profile_table

    cells = pd.concat([tagged(controls, "control", True)] + [tagged(f, n, False) for n, f in method.items()], ignore_index=True)
    profile = profile_table(cells, options)
    ranked = profile.ranked.set_index("perturbation")
    designed_size = {n: float(np.sqrt(sum(np.log(v) ** 2 for v in f.values()))) for n, f in truth.items()}
    names = sorted(method)
    size = [ranked.at[n, "effect_size"] for n in names]
    ratios = readout_shifts(method, controls, channels, dna)
    signs = {f"{n} {k}": {"designed": v, "measured": round(ratios[n][k], 3), "sign_right": bool(np.sign(np.log(ratios[n][k])) == np.sign(np.log(v)))}
             for n in names for k, v in truth[n].items()}
    retrieved = {n: nearest(profile.profiles.loc[n], reference, 1)[0][0] for n in names}
    return {
        "effect_size": {n: {"size": round(ranked.at[n, "effect_size"], 3), "low": round(ranked.at[n, "effect_low"], 3),
                            "high": round(ranked.at[n, "effect_high"], 3), "p_value": ranked.at[n, "p_value"],
                            "mAP": round(ranked.at[n, "mAP"], 3)} for n in names},
        "spearman_vs_designed": float(spearmanr(size, [designed_size[n] for n in names]).statistic),
        "spearman_vs_designed_seen": float(spearmanr([ranked.at[n, "effect_size"] for n in seen], [designed_size[n] for n in seen]).statistic),
        "spearman_vs_realised": float(spearmanr(size, [realised[n] for n in names]).statistic),
        "spearman_vs_realised_seen": float(spearmanr([ranked.at[n, "effect_size"] for n in seen], [realised[n] for n in seen]).statistic),
        "designed_effects": signs,
        "signs_right": f"{sum(s['sign_right'] for s in signs.values())}/{len(signs)}",
        # The size of each designed effect: |log measured ratio| against |log designed factor|.
        "effect_size_spearman_vs_designed": float(spearmanr([abs(np.log(s["measured"])) for s in signs.values()],
                                                            [abs(np.log(s["designed"])) for s in signs.values()]).statistic),
        "nearest_real": retrieved,
        "top1_retrieval_seen": f"{sum(retrieved[n] == n for n in seen)}/{len(seen)}",
        "ranking": list(profile.ranked["perturbation"]),
    }


def group_costs(pixels: np.ndarray, channels) -> dict[str, float]:
    """Seconds per cell of each cp-measure group alone, on ``pixels`` (N, C, H, W)."""
    from napari_cellflux.phenotype.features import FeatureOptions, measure_cells

    costs = {}
    for group in FEATURE_GROUPS:
        started = time.perf_counter()
        measure_cells(pixels, FeatureOptions(channels=channels, groups=(group,)))
        costs[group] = round((time.perf_counter() - started) / len(pixels), 4)
    return costs


SETS = ("reference", "test_controls", "cellflux", "real_test_cells", "copy_control", "truth_extra")
METHODS = ("cellflux", "real_test_cells", "copy_control")


def measure_sets(args, screen, channels, groups, timings: dict) -> pd.DataFrame:
    """Per-cell features of every set (``Metadata_Set``): the training-split reference, the test
    controls, and per compound the generated, real and copied cells (the slow part: cp-measure)."""
    from napari_cellflux import api
    from napari_cellflux.data.dataset import same_batch_controls
    from napari_cellflux.phenotype.features import FeatureOptions, measure_cells

    table = screen.table
    cells = table.cells
    model = api.load_model("demo", device="cpu")
    rng = np.random.default_rng(args.seed)

    def measure(pixels):
        t = time.perf_counter()
        frame = measure_cells(pixels, FeatureOptions(channels=channels, groups=groups))
        timings["measure_s"] += time.perf_counter() - t
        timings["measured_cells"] += len(pixels)
        return frame

    def rows_of(name, split):
        return np.flatnonzero((cells["perturbation"] == name).to_numpy() & ~cells["is_control"].to_numpy()
                              & (cells["split"] == split).to_numpy())

    def part(frame, set_name, name, is_control):
        return with_set(tagged(frame, name, is_control), set_name)

    seen = [n for n in table.perturbations if n not in screen.held_out]
    # Reference: real training-split profiles of the seen compounds (the "known" perturbations).
    train_controls = pick(np.flatnonzero(cells["is_control"].to_numpy() & (cells["split"] == "train").to_numpy()),
                          4 * args.reference_cells, rng)
    parts = [part(measure(load(table, train_controls)), "reference", "control", True)]
    parts += [part(measure(load(table, pick(rows_of(n, "train"), args.reference_cells, rng))), "reference", n, False)
              for n in seen]
    # Test split: real treated cells, each with a control of its batch (generated from, and copied).
    test_control_rows = np.flatnonzero(cells["is_control"].to_numpy() & (cells["split"] == "test").to_numpy())
    controls = measure(load(table, test_control_rows))
    parts.append(part(controls, "test_controls", "control", True))
    position = {row: i for i, row in enumerate(test_control_rows)}
    parts_rows = {}
    for n in table.perturbations:
        rows = parts_rows[n] = pick(rows_of(n, "test"), args.cells, rng)
        pools, _ = same_batch_controls(table, cells["batch"].iloc[rows].unique(), "test")
        paired = np.array([rng.choice(pools[str(b)]) for b in cells["batch"].iloc[rows]])
        parts.append(part(measure(load(table, rows)), "real_test_cells", n, False))
        parts.append(part(controls.iloc[[position[r] for r in paired]], "copy_control", n, False))
        t = time.perf_counter()
        start = model.normalization.to_model(load(table, paired))
        trajectory = api.generate(model, start, n, seed=args.seed, final_only=True)
        timings["generate_s"] += time.perf_counter() - t
        parts.append(part(measure(model.normalization.to_pixels(trajectory.states)[-1]), "cellflux", n, False))
    # The held-out compounds have no training cells: more of their test cells (not the ones above),
    # so that every compound's realised effect (truth_sizes) rests on as many real cells.
    for n in screen.held_out:
        rest = np.setdiff1d(rows_of(n, "test"), parts_rows[n])
        parts.append(part(measure(load(table, pick(rest, args.reference_cells, rng))), "truth_extra", n, False))
    timings["sampling"] = model.sampling.to_dict()
    return pd.concat(parts, ignore_index=True)


def with_set(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame.assign(Metadata_Set=name)


def split_sets(table: pd.DataFrame, source: Path) -> dict:
    """The per-cell table of :func:`measure_sets` (read from ``source``) back into its sets:
    reference and test controls as tagged frames, each method as perturbation -> features."""
    from napari_cellflux.phenotype.features import feature_names

    features = feature_names(table.drop(columns="Metadata_Set"))
    by_set = {name: frame for name, frame in table.groupby("Metadata_Set", sort=False)}
    missing = [s for s in SETS if s not in by_set]
    if missing:
        raise InputError(f"{CELLS_HELP} {source}: the table holds no {', '.join(missing)} cells; "
                         "measure again without --rescore")
    out = {"reference": by_set["reference"].drop(columns="Metadata_Set").reset_index(drop=True),
           "controls": by_set["test_controls"][features].reset_index(drop=True)}
    for m in METHODS:
        out[m] = {n: f[features].reset_index(drop=True) for n, f in by_set[m].groupby("Metadata_Perturbation", sort=False)}
    # The realised design: every real cell measured (training reference, test cells, the held-out
    # compounds' extra test cells) against every real control measured.
    out["truth_cells"] = pd.concat([by_set[s].drop(columns="Metadata_Set") for s in
                                    ("reference", "test_controls", "real_test_cells", "truth_extra")], ignore_index=True)
    return out


def truth_sizes(truth_cells: pd.DataFrame, options) -> dict[str, float]:
    """Each compound's effect size on all its real cells measured (56 each: 32 + 24): the ranking
    the design makes in this profile, with less sampling noise than the 24 test cells alone."""
    from napari_cellflux.phenotype.profile import profile_table

    ranked = profile_table(truth_cells, options).ranked
    return dict(zip(ranked["perturbation"], ranked["effect_size"].astype(float)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phenotype_truth", description=__doc__.split("\n\n")[0])
    p.add_argument("--screen", type=Path, default=SCREEN, help="the demo's synthetic screen (made with `cellflux synth` if missing)")
    p.add_argument("--cells", type=int, default=24, help="test cells per perturbation, generated and real (default 24)")
    p.add_argument("--reference-cells", type=int, default=32, help="training-split cells per perturbation for the reference profiles")
    p.add_argument("--features", default=",".join(FEATURE_GROUPS), help="cp-measure groups (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells-table", type=Path, default=CELLS,
                   help=f"every measured cell, written after measuring (default {CELLS}); read by --rescore")
    p.add_argument("--rescore", action="store_true", help="score the cells of --cells-table again without generating "
                                                          "or measuring them (the bootstraps and permutations still run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen, read_synthetic_screen
        from napari_cellflux.phenotype.effects import EffectOptions
        from napari_cellflux.phenotype.features import write_table
        from napari_cellflux.phenotype.masks import dna_channel
        from napari_cellflux.phenotype.profile import ProfileOptions, profile_table

        check_writable(args.out, what="--out", suffixes=(".json",))
        if not (args.screen / "screen.json").is_file():
            make_synthetic_screen(args.screen, SyntheticScreenConfig())
        screen = read_synthetic_screen(args.screen)
        info = screen.info
        channels = tuple(info["channel_names"])
        dna = dna_channel(channels)
        groups = tuple(g for g in args.features.split(",") if g)
        options = ProfileOptions(groups=groups, effects=EffectOptions(seed=args.seed))
        names = screen.table.perturbations
        seen = [n for n in names if n not in screen.held_out]
        started = time.perf_counter()
        timings = {"measured_cells": 0, "measure_s": 0.0, "generate_s": 0.0}
        if args.rescore:
            if not args.cells_table.is_file():
                raise InputError(f"{CELLS_HELP} {args.cells_table}: no such file; run once without --rescore to measure the cells")
            table = pd.read_csv(args.cells_table)
        else:
            check_writable(args.cells_table, what=CELLS_HELP, suffixes=(".csv",))
            table = measure_sets(args, screen, channels, groups, timings)
            write_table(table, args.cells_table)
        sets = split_sets(table, args.cells_table)
        reference = profile_table(sets["reference"], options).profiles
        controls = sets["controls"]
        truth = designed_effects(info, len(channels))
        realised = truth_sizes(sets["truth_cells"], options)
        result = {m: score(sets[m], controls, reference, truth, realised, seen, channels, dna, options) for m in METHODS}
        from scipy.stats import spearmanr

        for m in ("cellflux", "copy_control"):
            a, b = result[m]["effect_size"], result["real_test_cells"]["effect_size"]
            result[m]["spearman_vs_real"] = float(spearmanr([a[n]["size"] for n in names], [b[n]["size"] for n in names]).statistic)
        seconds = {"total": round(time.perf_counter() - started, 1)}
        if not args.rescore:
            per_cell = timings["measure_s"] / max(timings["measured_cells"], 1)
            seconds.update(generate=round(timings["generate_s"], 1), measure=round(timings["measure_s"], 1),
                           measure_per_cell=round(per_cell, 3),
                           per_cell_by_group=group_costs(load(screen.table, np.flatnonzero(
                               screen.table.cells["is_control"].to_numpy())[:16]), channels))
        elif args.out.is_file():  # keep the measuring run's costs
            seconds = {**json.loads(args.out.read_text()).get("seconds", {}), "rescore": seconds["total"]}
        C.write_json(args.out, {
            "environment": C.environment(torch.device("cpu")),
            "command": "python -m benchmarks.phenotype_truth " + " ".join(argv or []),
            "settings": {"screen": str(args.screen), "cells_per_perturbation": args.cells, "reference_cells": args.reference_cells,
                         "features": list(groups), "sampling": timings.get("sampling"), "seed": args.seed,
                         "seen": seen, "unseen": list(screen.held_out), "test_controls": int(len(controls)),
                         "cells_table": str(args.cells_table)},
            "seconds": seconds,
            "realised_effect_sizes": {n: round(v, 3) for n, v in realised.items()},
            "methods": result,
        })
        for m, r in result.items():
            print(f"{m}: ranking spearman vs realised {r['spearman_vs_realised']:.2f} (seen {r['spearman_vs_realised_seen']:.2f}), "
                  f"vs designed {r['spearman_vs_designed']:.2f} (seen {r['spearman_vs_designed_seen']:.2f}), "
                  f"signs {r['signs_right']}, designed effect sizes spearman {r['effect_size_spearman_vs_designed']:.2f}, "
                  f"top-1 retrieval (seen) {r['top1_retrieval_seen']}")
        print(f"wrote {args.out} and {args.cells_table} ({time.perf_counter() - started:.0f} s)")
        return 0

    return run_main("python -m benchmarks.phenotype_truth", run)


if __name__ == "__main__":
    raise SystemExit(main())
