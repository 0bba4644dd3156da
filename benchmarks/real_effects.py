"""How far the real cells a share is measured against stray from their population: each seen
compound's designed effects (screen.json factors != 1) measured on several sets of real cells of
screens of one design, and the share a generator faithful to the pooled population would score on
each set.

    python -m benchmarks.real_effects --sets runs/modes/screen_5x:test runs/modes/screen_5x:train \
        runs/modes/screen_10x:train runs/modes/screen_10x:test --out benchmarks/results/real_effects.json

A share (``benchmarks.recipes``) is generated effect / real effect on one set of real cells. Where
that set drew cells stronger or weaker than the design's population, even a perfect generator
misses 100%: its "population share" here is (pooled ratio - 1) / (this set's ratio - 1), the ratio
being mean(treated) / mean(paired control) as the evaluation pairs them. The sets must be disjoint
cells of the same design (``cellflux synth`` with one seed and more cells gives new cells).
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

from . import common as C
from .modes import real_interval

RESULTS = Path(__file__).parent / "results" / "real_effects.json"


def parse_set(text: str) -> tuple[Path, str]:
    """"SCREEN:SPLIT" -> (screen folder, split)."""
    screen, _, split = text.rpartition(":")
    if not screen or split not in SPLITS:
        raise InputError(f"--sets {text!r}: give SCREEN:SPLIT with SPLIT one of {', '.join(SPLITS)}, "
                         "e.g. runs/modes/screen_5x:test")
    if not Path(screen).is_dir():
        raise InputError(f"--sets {text!r}: {screen} is not a folder; write it with cellflux synth")
    return Path(screen), split


def measure_set(screen: Path, split: str, seed: int = 0) -> dict[str, dict]:
    """Each seen designed effect of ``split``'s cells (as ``training.evaluate`` pairs them): the sums
    of treated and paired-control values, the cell count, the ratio and its bootstrap 95% interval
    as shares of its own effect."""
    from training import metrics as M
    from training.evaluation.data import load_eval_data, load_pixels, select_cells
    from training.evaluation.measure import CellMeasurer
    from training.evaluation.scores import truth_effects

    data = load_eval_data(screen)
    if not data.truth:
        raise InputError(f"--sets {screen}: no screen.json with designed effects; give a synthetic screen")
    held = set(data.truth["config"]["held_out"])
    selection = select_cells(data, split=split, seed=seed)
    measure = CellMeasurer(0, M.rgb_matrix(data.format, data.shape[0]), None, 64)
    treated = measure(load_pixels(data.table, selection.treated, data.shape)).morphology
    paired = measure(load_pixels(data.table, selection.controls, data.shape)).morphology
    rng = np.random.default_rng(seed)
    out = {}
    for name in selection.names_in("seen"):
        if name in held:
            continue
        index = selection.index(name)
        for feature, factor in truth_effects(data.truth, name, data.shape[0]).items():
            if factor == 1:
                continue
            t, c = treated[feature].to_numpy()[index], paired[feature].to_numpy()[index]
            ratio = float(t.mean() / c.mean())
            out[f"{name} {feature}"] = {"cells": len(index), "treated_sum": float(t.sum()), "control_sum": float(c.sum()),
                                        "ratio": ratio, "interval": real_interval(t, c, ratio - 1, rng)}
    return out


def population_shares(sets: dict[str, dict[str, dict]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The pooled ratio of each effect over all sets, and on each set the share a generator that
    draws exactly the pooled ratio would score there."""
    effects = sorted(set.intersection(*(set(s) for s in sets.values())), key=str.lower)
    pooled = {e: sum(s[e]["treated_sum"] for s in sets.values()) / sum(s[e]["control_sum"] for s in sets.values())
              for e in effects}
    shares = {name: {e: (pooled[e] - 1) / (s[e]["ratio"] - 1) for e in effects} for name, s in sets.items()}
    return pooled, shares


def markdown(sets: dict[str, dict[str, dict]], pooled: dict[str, float], shares: dict[str, dict[str, float]]) -> str:
    effects = list(pooled)
    lines = ["| real cells | cells per compound | " + " | ".join(effects) + " |", "|---|---|" + "---|" * len(effects)]
    for name, s in sets.items():
        cells = sorted({s[e]["cells"] for e in effects})
        lines.append(f"| {name} | {'-'.join(map(str, cells))} | "
                     + " | ".join(f"{s[e]['ratio']:.3f} ({shares[name][e]:.1%})" for e in effects) + " |")
    lines.append("| pooled | | " + " | ".join(f"{pooled[e]:.3f}" for e in effects) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_effects", description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", required=True, help="SCREEN:SPLIT, two or more disjoint sets of one design")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        if len(args.sets) < 2:
            raise InputError("--sets: give two or more SCREEN:SPLIT sets to pool")
        started = time.perf_counter()
        sets = {text: measure_set(*parse_set(text)) for text in args.sets}
        pooled, shares = population_shares(sets)
        if not pooled:
            raise InputError(f"--sets {' '.join(args.sets)}: no designed effect common to all sets; give screens of one design")
        C.write_json(args.out, {
            "command": " ".join(["python -m benchmarks.real_effects", *(sys.argv[1:] if argv is None else argv)]),
            "what": "ratio: mean(treated) / mean(paired control) of each seen designed effect; population_share: "
                    "(pooled ratio - 1) / (ratio - 1), the share a generator drawing the pooled population scores on "
                    "the set; interval: bootstrap 95% of the set's ratio as shares of its own effect",
            "pooled_ratio": pooled, "sets": {name: {e: {**s[e], "population_share": shares[name][e]} for e in pooled}
                                             for name, s in sets.items()},
            "environment": C.environment(torch.device("cpu")), "elapsed_s": round(time.perf_counter() - started, 1)})
        print(markdown(sets, pooled, shares))
        return 0

    return run_main("python -m benchmarks.real_effects", run)


if __name__ == "__main__":
    raise SystemExit(main())
