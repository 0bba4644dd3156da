"""How well the training pairs of each coupling line up: for the treated cells of some
perturbations, the angle between the long axis of each cell and that of its matched control
(masks of ``phenotype.masks``), over a few epochs' assignments (docs/data.md).

    python -m benchmarks.pair_alignment [--screen runs/modes/screen_5x] [--couplings ot ot_aligned]
        [--perturbations PP-2 colchicine] [--cells 60] [--epochs 4] [--out benchmarks/results/pair_alignment.json]
        [section.key=value ...]   # overrides of the training config, as python -m training.train takes them

A morph from a clean control heads for the treated cells it was paired with; the more their
orientations spread, the more their average outline is a rounder one (docs/modes.md).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import run_main

from . import common as C

RESULTS = Path(__file__).parent / "results" / "pair_alignment.json"


def cell_axis(x: torch.Tensor) -> float | None:
    """Orientation in degrees of the centred cell of a (C, H, W) model-space crop, None if unsegmented."""
    from skimage import measure

    from napari_cellflux.phenotype.masks import segment_cell

    masks = segment_cell(((x.numpy() * 0.5 + 0.5) * 255).clip(0, 255), 0)
    if masks is None:
        return None
    return float(np.degrees(measure.regionprops(masks.cell.astype(np.int32))[0].orientation))


def pair_angles(config_path: str, overrides: list[str], screen: Path, coupling: str, perturbations: list[str],
                cells: int, epochs: int) -> dict[str, np.ndarray]:
    """Per perturbation, the |angle| in degrees (0-90) between each of its first ``cells``
    treated cells (as trained, in its pose) and its control, over ``epochs`` epochs (seed 0)."""
    from training.config import load_config
    from training.data import load_training_data

    cfg = load_config(config_path, [f"data.root={screen}", *overrides])
    pairs = load_training_data(replace(cfg.data, coupling=coupling), image_size=cfg.model.image_size, seed=0,
                               build=False).pairs
    names = pairs.table.cells["perturbation"].to_numpy()[pairs.targets]
    out = {name: [] for name in perturbations}
    for epoch in range(epochs):
        controls, poses = pairs.coupled_controls(np.random.default_rng([0, epoch]))
        for name in perturbations:
            for i in np.flatnonzero(names == name)[:cells]:
                item = pairs.item(int(i), torch.Generator().manual_seed(0), int(controls[i]), int(poses[i]))
                a, b = cell_axis(item["control"]), cell_axis(item["target"])
                if a is not None and b is not None:
                    out[name].append(abs((a - b + 90.0) % 180.0 - 90.0))
    return {name: np.array(v) for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pair_alignment", description=__doc__.split("\n\n")[0])
    p.add_argument("--screen", type=Path, default=Path("runs/modes/screen_5x"),
                   help="synthetic screen (default: the five-times screen of docs/modes.md)")
    p.add_argument("--config", default="demo", help="training config whose data options are used (default: demo)")
    p.add_argument("--couplings", nargs="+", default=["ot", "ot_aligned"], choices=["ot", "ot_aligned"])
    p.add_argument("--perturbations", nargs="+", default=["PP-2", "colchicine"])
    p.add_argument("--cells", type=int, default=60, help="treated cells per perturbation (default: 60)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of assignments (default: 4)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the training config")
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        rows = []
        for coupling in args.couplings:
            angles = pair_angles(args.config, args.overrides, args.screen, coupling, args.perturbations, args.cells,
                                 args.epochs)
            for name, a in angles.items():
                rows.append({"coupling": coupling, "perturbation": name, "pairs": len(a),
                             "mean_abs_degrees": round(float(a.mean()), 1),
                             "rms_degrees": round(float(np.sqrt((a**2).mean())), 1),
                             "within_20_degrees": round(float((a < 20).mean()), 3)})
                print(f"{coupling:10s} {name:14s} {len(a):4d} pairs: mean {rows[-1]['mean_abs_degrees']:5.1f} deg, "
                      f"rms {rows[-1]['rms_degrees']:5.1f}, within 20 deg {rows[-1]['within_20_degrees']:.0%}")
        C.write_json(args.out, {
            "command": " ".join(["python -m benchmarks.pair_alignment", *(sys.argv[1:] if argv is None else argv)]),
            "screen": str(args.screen), "rows": rows, "environment": C.environment(torch.device("cpu"))})
        return 0

    return run_main("python -m benchmarks.pair_alignment", run)


if __name__ == "__main__":
    raise SystemExit(main())
