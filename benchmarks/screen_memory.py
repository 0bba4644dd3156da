"""(d) Virtual-screen memory against the number of cells: each size runs ``run_screen`` in a fresh
process, which reports its own peak RSS (and peak CUDA memory); flat memory = the same peak for
1k and 4k cells.

Child mode: ``python -m benchmarks.screen_memory --model SPEC --n-cells N --chunk-size C --out DIR``
prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import common as C

STEPS = 4  # memory does not depend on the number of steps (final states only); keep the run short


def measure(model_spec: str, sizes: list[int], *, chunk_size: int, batch_size: int, device: str, steps: int = STEPS,
            threads: int | None = None, parallel: bool = False, timeout: float = 1800) -> dict:
    def command(n: int, out: str) -> list[str]:
        return [sys.executable, "-m", "benchmarks.screen_memory", "--model", model_spec, "--n-cells", str(n),
                "--chunk-size", str(chunk_size), "--batch-size", str(batch_size), "--device", device,
                "--steps", str(steps), "--out", out] + (["--threads", str(threads)] if threads else [])

    root = Path(__file__).parents[1]
    with tempfile.TemporaryDirectory(prefix="cellflux-screen-bench-") as tmp:
        # one after the other (timings stay clean), or all at once where only memory matters (--quick)
        def start(i: int, n: int) -> subprocess.Popen:
            return subprocess.Popen(command(n, f"{tmp}/{i}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=root)

        finished = []
        if parallel:
            procs = [start(i, n) for i, n in enumerate(sizes)]
            finished = [(proc, *proc.communicate(timeout=timeout)) for proc in procs]
        else:
            for i, n in enumerate(sizes):
                proc = start(i, n)
                finished.append((proc, *proc.communicate(timeout=timeout)))
        rows = []
        for n, (proc, stdout, stderr) in zip(sizes, finished):
            if proc.returncode != 0:
                rows.append({"n_cells": n, "status": f"error: {stderr.strip().splitlines()[-1:]}"})
            else:
                rows.append({"status": "ok", **json.loads(stdout.strip().splitlines()[-1])})
    ok = [r for r in rows if r["status"] == "ok"]
    ratio = ok[-1]["peak_rss_mib"] / ok[0]["peak_rss_mib"] if len(ok) >= 2 else None
    return {
        "what": ("peak memory of a whole `run_screen` process (model, control pool, one chunk in flight) for "
                 "each number of cells; euler, uniform grid, final states only"),
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "steps": steps,
        "parallel_processes": parallel,
        "rows": rows,
        "rss_ratio_largest_to_smallest": ratio,
        "flat": ratio is not None and ratio < 1.10,
        "in_memory_equivalent_mib": {str(r["n_cells"]): r["all_states_in_memory_mib"] for r in ok},
    }


def child(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--n-cells", type=int, required=True)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_cellflux import api
    from napari_cellflux.data.samples import synthetic_controls
    from napari_cellflux.generation.screen import run_screen

    device = api.resolve_device(args.device)
    model, _ = C.load_demo_model(args.model, device)
    pool = synthetic_controls(32, model.image_size, model.config.in_channels, 0)
    perturbation = C.pick_perturbation(model, None)
    sampling = model.sampling.with_overrides(solver="euler", grid="uniform", steps=args.steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    report = run_screen(model, pool, args.out, n_cells=args.n_cells, chunk_size=args.chunk_size,
                        perturbation=perturbation, sampling=sampling, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    cell_bytes = int(np.prod([model.config.in_channels, model.image_size, model.image_size])) * 4
    print(json.dumps({
        "n_cells": args.n_cells,
        "chunks": len(report.written),
        "seconds": seconds,
        "peak_rss_mib": C.max_rss_mib(),
        "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "on_disk_mib": sum(p.stat().st_size for p in args.out.rglob("chunk_*.npy")) / 2**20,
        "all_states_in_memory_mib": args.n_cells * cell_bytes * (args.steps + 1) / 2**20,
        "device": str(device),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(child())
