"""How close the pre-run cost estimate (generation/cost.py) comes to the run it announces: the
paper preset (56 M parameters, 96 x 96, random weights) and the bundled demo, on this machine.

    python -m benchmarks.cost_estimate [--out benchmarks/results/cost_estimate.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.core.unet import preset
from napari_cellflux.errors import run_main
from napari_cellflux.generation.cost import estimate_cost
from napari_cellflux.generation.generate import generate

from . import common as C

RESULTS = Path(__file__).parent / "results" / "cost_estimate.json"


def measure(model, cells: int, sampling, perturbation: str) -> dict:
    controls = torch.rand(cells, model.config.in_channels, model.image_size, model.image_size,
                          generator=torch.Generator().manual_seed(0)) * 2 - 1
    estimate = estimate_cost(model, controls, cells, sampling, condition={"perturbation": perturbation})
    started = time.perf_counter()
    generate(model, controls, perturbation, sampling=sampling, final_only=True)
    actual = time.perf_counter() - started
    return {"cells": cells, "sampling": sampling.to_dict(), "evaluations": sampling.evaluations,
            "estimated_s": round(estimate.seconds, 2), "probe_s": round(estimate.probe_seconds, 2),
            "actual_s": round(actual, 2), "estimate_over_actual": round(estimate.seconds / actual, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost_estimate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        demo = C.load_demo_model(None, torch.device("cpu"))[0]
        paper = C.random_model(preset("bbbc021"), 96)
        rows = [
            {"model": "demo", **measure(demo, 64, demo.sampling, "colchicine")},
            {"model": "paper preset", **measure(paper, 4, paper.sampling.with_overrides(solver="heun", steps=2), "drug")},
        ]
        C.write_json(args.out, {"environment": C.environment(torch.device("cpu")), "rows": rows})
        for row in rows:
            print(row)
        return 0

    return run_main("python -m benchmarks.cost_estimate", run)


if __name__ == "__main__":
    raise SystemExit(main())
