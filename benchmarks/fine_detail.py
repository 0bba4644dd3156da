"""How strong each mode draws a compound's fine detail, against the real cells, and how much of a
texture share pixel noise could explain (issue 14's texture misses, docs/modes.md).

    python -m benchmarks.fine_detail --checkpoint M.safetensors [--screen runs/modes/screen_5x]
        [--perturbation alsterpaullone] [--guidance 0.2] [--out benchmarks/results/fine_detail.json]

Part 1: the screen's test cells of the compound, its batch-matched controls (as training.evaluate
draws them, seed 0) and each mode's cells generated from those controls: per set, the mean over
cells of channel 1's fine detail (``training.metrics.fine_detail``: the crop minus its Gaussian
blur at H/16, 2 px on 32-px crops) as a standard deviation over the cell (where the blur exceeds
half its 95th percentile), the mean signal there, and the texture readout (texture_c1). Part 2:
cells drawn with the compound's designed effect and k x the screen's pixel noise (controls at
1 x), so the texture share that k x noise alone gives.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import run_main
from napari_cellflux.settings import MODE_NAMES

from . import common as C

RESULTS = Path(__file__).parent / "results" / "fine_detail.json"
NOISE_FACTORS = (1.0, 1.25, 1.5, 2.0)


def detail_summary(pixels: np.ndarray, channel: int = 1) -> dict:
    """Means over (N, C, H, W) cells: fine-detail std and signal mean (grey levels) over the cell
    (``training.metrics.fine_detail``, as fibre coherence and fibre origin see them), and texture_c1."""
    from training.metrics import fine_detail, measure_cells

    std, mean = [], []
    for image in pixels[:, channel].astype(np.float64):
        fine, cell = fine_detail(image)
        std.append(fine[cell].std())
        mean.append(image[cell].mean())
    return {"fine_detail_std": float(np.mean(std)), "signal_mean": float(np.mean(mean)),
            "texture_c1": float(measure_cells(pixels)["texture_c1"].mean())}


def generated_detail(checkpoint: Path, screen: Path, perturbation: str, guidance: float) -> dict:
    from training.evaluation.data import (
        held_out_names,
        load_eval_data,
        load_pixels,
        select_cells,
    )
    from training.evaluation.generation import (
        check_model,
        generate_cells,
        load_checkpoint,
    )

    data = load_eval_data(screen)
    model = load_checkpoint(str(checkpoint), "auto", None)
    selection = select_cells(data, split="test", perturbations=[perturbation], held_out=held_out_names(data, [model]), seed=0)
    controls = load_pixels(data.table, selection.controls, data.shape)
    sets = {"controls": controls, "real": load_pixels(data.table, selection.treated, data.shape)}
    condition = check_model(model, data, selection, checkpoint)
    for mode in MODE_NAMES:
        sampling = model.sampling.with_overrides(guidance=guidance).for_mode(mode)
        sets[mode] = generate_cells(model, controls, selection, condition, sampling, seed=0, batch_size=64,
                                    precision="fp32", mode=mode)
    out = {name: detail_summary(pixels) for name, pixels in sets.items()}
    for name in MODE_NAMES:
        out[name]["fine_detail_over_real"] = out[name]["fine_detail_std"] / out["real"]["fine_detail_std"]
    out["cells"] = len(controls)
    return out


def noise_alone(perturbation: str, cells: int = 400, seed: int = 1) -> dict:
    """Texture share of cells drawn with the designed effect and k x pixel noise, over k = 1's."""
    from napari_cellflux.data.drawing import draw_cells
    from napari_cellflux.data.synthetic import (
        DEFAULT_PERTURBATIONS,
        Morphology,
        SyntheticScreenConfig,
        sample_cell_parameters,
    )
    from training.metrics import measure_cells

    config, rng = SyntheticScreenConfig(), np.random.default_rng(seed)
    effect = {p.name: p for p in DEFAULT_PERTURBATIONS}[perturbation]
    offset = float(np.mean(config.offset_range))

    def draw(which):
        params = sample_cell_parameters(rng, [which] * cells, config.image_size, config.channels, Morphology())
        return offset + draw_cells(params, config.image_size, rng)[0]

    def pixels(signal, k):
        noisy = signal + k * rng.normal(0.0, config.noise_sigma, signal.shape)
        return np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)

    control = measure_cells(pixels(draw(None), 1.0))["texture_c1"].mean()
    signal = draw(effect)
    ratios = {k: float(measure_cells(pixels(signal, k))["texture_c1"].mean() / control) for k in NOISE_FACTORS}
    return {f"{k:g}x": {"texture_ratio": r, "share_of_1x": (r - 1) / (ratios[1.0] - 1)} for k, r in ratios.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fine_detail", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="the model file to generate with")
    p.add_argument("--screen", type=Path, default=Path("runs/modes/screen_5x"), help="a synthetic screen (cellflux synth)")
    p.add_argument("--perturbation", default="alsterpaullone")
    p.add_argument("--guidance", type=float, default=0.2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    def run() -> int:
        check_writable(args.out, what="--out", suffixes=(".json",))
        torch.set_num_threads(1)
        started = time.perf_counter()
        detail = generated_detail(args.checkpoint, args.screen, args.perturbation, args.guidance)
        noise = noise_alone(args.perturbation)
        C.write_json(args.out, {"environment": C.environment(torch.device("cpu")),
                                "command": "python -m benchmarks.fine_detail " + " ".join(argv or []),
                                "perturbation": args.perturbation, "guidance": args.guidance,
                                "generated": detail, "pixel_noise_alone": noise,
                                "elapsed_s": round(time.perf_counter() - started, 1)})
        for name in ("controls", "real", *MODE_NAMES):
            d = detail[name]
            print(f"{name:8s} fine detail {d['fine_detail_std']:.1f} grey, signal {d['signal_mean']:.1f}, texture_c1 {d['texture_c1']:.3f}")
        for k, v in noise.items():
            print(f"real cells at {k} pixel noise: texture share {100 * v['share_of_1x']:.0f}% of 1x's")
        return 0

    return run_main("python -m benchmarks.fine_detail", run)


if __name__ == "__main__":
    raise SystemExit(main())
