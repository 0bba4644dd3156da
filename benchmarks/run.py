"""Run every generation benchmark and write ``<out>/<section>.json`` plus ``<out>/RESULTS.md``.

    python -m benchmarks.run                   # full run (minutes on a GPU; long on a 2-core CPU)
    python -m benchmarks.run --quick           # seconds: tiny sizes, to check the machinery
    python -m benchmarks.run --sections quality --model runs/demo/model.safetensors

Sections: cpu_demo (16 cells x 20 network evaluations on the CPU, the widget's Generate),
throughput (images/s and % of the GPU's bf16 peak per model size and batch size, eager fp32
baseline vs fast path, peak memory), quality (quality vs network evaluations for euler /
midpoint / heun on uniform and EDM grids), screen_memory (virtual-screen peak memory vs number of
cells), and, asked for by name, cpu_path (the CPU fast path of issue 16 in one run of ratios:
``--sections cpu_path``, about 30 minutes on 2 cores). RESULTS.md is rebuilt from every section
JSON in the output folder, so sections run separately still make one table. Every JSON records
the date, torch version, CPU, and on a GPU its name, driver and CUDA version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from napari_cellflux import api
from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import run_main
from napari_cellflux.runtime import DTYPES

from . import common as C

SECTIONS = ("cpu_demo", "throughput", "quality", "screen_memory")
OPT_IN_SECTIONS = ("cpu_path",)  # long on a CPU and CPU-only: run when named
DEFAULT_OUT = Path(__file__).parent / "results"


def settings(args: argparse.Namespace, device: torch.device) -> dict:
    """Sizes for this run: the full defaults, the --quick ones, then explicit options on top."""
    gpu = device.type == "cuda"
    if args.quick:
        s = dict(demo_cells=4, demo_nfe=4, repeats=1, warmup=0, throughput_nfe=4, demo_batches=[4], paper_batches=[8], throughput_guidance=[0.2],
                 quality_cells=4, nfe_list=[4], reference_nfe=4, screen_cells=[24, 72], screen_chunk=12,
                 screen_batch=12, screen_steps=1, cpu_repeats=1, screen_rounds=1)
    else:
        s = dict(demo_cells=16, demo_nfe=20, repeats=5, warmup=1, throughput_nfe=10,
                 demo_batches=[256, 1024, 4096] if gpu else [16, 64], paper_batches=[64, 256],
                 throughput_guidance=[0.2, 0.0] if gpu else [0.2],
                 quality_cells=256 if gpu else 32, nfe_list=[4, 6, 8, 10, 16, 20, 40, 100], reference_nfe=100,
                 screen_cells=[1000, 4000], screen_chunk=256, screen_batch=256, screen_steps=4,
                 cpu_repeats=3, screen_rounds=3)
        if gpu:
            s["repeats"] = 3
    for key in s:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    return s


def compile_modes(args: argparse.Namespace, device: torch.device) -> list[str]:
    if args.compile_modes:
        return args.compile_modes
    if args.compile == "off" or (args.compile == "auto" and device.type != "cuda"):
        return []  # inductor on a CPU takes minutes per shape: opt in with --compile on
    return ["reduce-overhead"] if device.type == "cuda" else ["default"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery in seconds (numbers mean nothing)")
    p.add_argument("--model", help="model for cpu_demo / quality / screen_memory: file, zoo name, or random-demo "
                                   "(default: the bundled demo if installed, else random-demo)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--device", default="auto", help="device for throughput / quality / screen_memory (cpu_demo is always the CPU)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS + OPT_IN_SECTIONS, default=list(SECTIONS),
                   help=f"default: {' '.join(SECTIONS)}; {' '.join(OPT_IN_SECTIONS)} runs only when named")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="add torch.compile variants (auto: on CUDA only; inductor on a CPU takes minutes)")
    p.add_argument("--compile-modes", nargs="+", choices=list(api.COMPILE_MODES), help="exact compile modes to add")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from the table by GPU name)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--perturbation", help="perturbation to generate (default: the first non-control one)")
    p.add_argument("--inception-weights", help="FID Inception weights file: adds FID to the quality table")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("sizes (override the full / --quick defaults)")
    g.add_argument("--demo-cells", type=int)
    g.add_argument("--demo-nfe", type=int)
    g.add_argument("--repeats", type=int)
    g.add_argument("--warmup", type=int, help="untimed runs before the timed ones (compiled variants get one more)")
    g.add_argument("--throughput-nfe", type=int, help="network evaluations per timed run (images/s are scaled to 100)")
    g.add_argument("--throughput-guidance", type=float, nargs="+", help="guidance values (0.2: the paper's, 2 forwards per evaluation; 0: one)")
    g.add_argument("--demo-batches", type=int, nargs="+")
    g.add_argument("--paper-batches", type=int, nargs="+")
    g.add_argument("--quality-cells", type=int)
    g.add_argument("--nfe-list", type=int, nargs="+")
    g.add_argument("--reference-nfe", type=int)
    g.add_argument("--screen-cells", type=int, nargs="+")
    g.add_argument("--screen-chunk", type=int)
    g.add_argument("--screen-batch", type=int)
    g.add_argument("--screen-steps", type=int)
    g.add_argument("--cpu-repeats", type=int, help="cpu_path: interleaved rounds of the paper preset and training step (default 3)")
    g.add_argument("--screen-rounds", type=int, help="cpu_path: fresh-process rounds per screen setting (default 3)")
    args = p.parse_args(argv)
    return run_main("python -m benchmarks.run", lambda: run(args, argv))


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """All sections asked for, each writing its JSON, then RESULTS.md."""
    check_writable(args.out, what="--out", folder=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = api.resolve_device(args.device)
    s = settings(args, device)
    modes = compile_modes(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"quick": args.quick, "settings": s, "command": "python -m benchmarks.run " + " ".join(argv or sys.argv[1:])}

    from . import cpu_path, quality, screen_memory, speed

    demo = None
    if {"cpu_demo", "quality", "screen_memory", "cpu_path"} & set(args.sections):
        demo = C.load_demo_model(args.model, torch.device("cpu"))
    if "cpu_demo" in args.sections:
        print("cpu_demo ...", flush=True)
        result = speed.cpu_demo(demo[0], demo[1], cells=s["demo_cells"], nfe=s["demo_nfe"], repeats=s["repeats"], warmup=s["warmup"],
                                compile_modes=[m for m in modes if device.type == "cpu"], perturbation=args.perturbation,
                                solvers=("euler",) if args.quick else ("euler", "heun", "midpoint"))
        C.write_json(args.out / "cpu_demo.json", {**common, **result})
    if "throughput" in args.sections:
        print("throughput ...", flush=True)
        sizes = speed.default_sizes()
        if args.quick:  # the quick "demo" size is the given model's architecture when one is given
            sizes["demo"] = (demo[0].config, demo[0].image_size) if demo else sizes["demo"]
        result = speed.throughput(sizes, {"demo": s["demo_batches"], "paper": s["paper_batches"]}, device=device,
                                  nfe=s["throughput_nfe"], repeats=s["repeats"], warmup=s["warmup"],
                                  guidances=s["throughput_guidance"], compile_modes=modes,
                                  peak_tflops=args.peak_tflops)
        C.write_json(args.out / "throughput.json", {**common, **result})
    if "quality" in args.sections:
        print("quality ...", flush=True)
        half = {dtype: name for name, dtype in DTYPES.items()}[api.autocast_dtype("fast", device)]
        fast = dict(precision=half, channels_last=device.type == "cuda", batch_guidance=True)
        with _no_tf32():
            result = quality.quality_vs_nfe(demo[0], demo[1], device=device, cells=s["quality_cells"],
                                            nfes=tuple(s["nfe_list"]), reference_nfe=s["reference_nfe"],
                                            perturbation=args.perturbation, seed=args.seed,
                                            inception_weights=args.inception_weights, fast_options=fast)
        demo[0].to("cpu")
        C.write_json(args.out / "quality.json", {**common, **result})
    if "screen_memory" in args.sections:
        print("screen_memory ...", flush=True)
        spec = args.model or (C.RANDOM_DEMO if demo[1].startswith(C.RANDOM_DEMO) else "demo")
        result = screen_memory.measure(spec, s["screen_cells"], chunk_size=s["screen_chunk"], batch_size=s["screen_batch"],
                                       device=str(device), steps=s["screen_steps"], threads=args.threads,
                                       parallel=args.quick)
        C.write_json(args.out / "screen_memory.json", {**common, **result, "model": demo[1],
                                                        "environment": C.environment(device)})
    if "cpu_path" in args.sections:
        print("cpu_path ...", flush=True)
        spec = args.model or (C.RANDOM_DEMO if demo[1].startswith(C.RANDOM_DEMO) else "demo")
        demo[0].to("cpu")
        result = cpu_path.run(demo[0], spec, quick=args.quick, repeats=s["repeats"], paper_repeats=s["cpu_repeats"],
                              screen_rounds=s["screen_rounds"])
        C.write_json(args.out / "cpu_path.json", {**common, "model": demo[1], **result})
    markdown = render(args.out)
    from napari_cellflux.atomic import atomic_write_text

    atomic_write_text(args.out / "RESULTS.md", markdown)
    print(f"wrote {args.out / 'RESULTS.md'} and the section JSONs in {args.out}")
    return 0


class _no_tf32:
    """The quality reference is true fp32 on GPUs too (PyTorch allows TF32 convolutions by default)."""

    def __enter__(self):
        self.old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


# ------------------------------------------------------------------------------------------------
# Markdown


def _f(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.{digits}g}{suffix}"
    return f"{value}{suffix}"


def _env_line(env: dict) -> str:
    where = env.get("gpu") and f"{env['gpu']} (driver {env.get('gpu_driver')}, CUDA {env.get('cuda_runtime')})"
    cpu = f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads, load {env.get('load_average')})"
    return f"{env.get('date_utc')}, torch {env.get('torch')}, " + (where + "; " if where else "") + f"CPU {cpu}"


def render(out: Path) -> str:
    """RESULTS.md from the section JSONs present in ``out``."""
    data = {name: json.loads((out / f"{name}.json").read_text()) for name in SECTIONS if (out / f"{name}.json").is_file()}
    lines = ["# Generation benchmarks", "",
             "Written by `python -m benchmarks.run` (see the README, section Speed). Each section names where and when it was measured.", ""]
    if any(d.get("quick") for d in data.values()):
        lines += ["> **Some sections below come from a `--quick` run: tiny sizes that only exercise the machinery; "
                  "their numbers mean nothing.**", ""]

    if "cpu_demo" in data:
        d = data["cpu_demo"]
        lines += ["## Demo on the CPU (the widget's Generate)", "",
                  f"{d['cells']} cells x {d['network_evaluations']} network evaluations (guidance {d['guidance']}: "
                  f"{d['forward_batch']} images per forward), all states kept; median of {d['repeats']}. "
                  f"Model: {d['model']}, {d['parameters'] / 1e6:.2f}M parameters, {d['image_size']} px. Target: < 1 s.", "",
                  f"Measured {_env_line(d['environment'])}.", "",
                  "| variant | sampling | mode | median s | < 1 s |", "|---|---|---|---|---|"]
        for r in d["rows"]:
            mode = r.get("mode", "sample")
            if "median_s" in r:
                lines.append(f"| {r['variant']} | {r['sampling']} | {mode} | {r['median_s']:.3f} | {_f(r['meets_1s_target'])} |")
            else:
                lines.append(f"| {r['variant']} | {r['sampling']} | {mode} | {r['error']} | – |")
        lines.append("")

    if "throughput" in data:
        d = data["throughput"]
        lines += ["## Throughput and % of peak", "",
                  f"Heun on the EDM grid, {d['sampling']['network_evaluations']} evaluations per timed run, final states "
                  "only; images/s scaled to 100 evaluations per image. "
                  f"{d['note']} Peak: {_f(d['peak_tflops'])} TFLOP/s ({d['peak_source']}).", "",
                  f"Measured {_env_line(d['environment'])}.", "",
                  "| size | guidance | batch | variant | images/s @100 NFE | TFLOP/s | % of bf16 peak | x baseline | peak memory MiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            size = f"{r['size']} ({r['flops_per_forward'] / 1e9:.3g} GFLOP/forward)"
            if r.get("status") != "ok":
                lines.append(f"| {size} | {r['guidance']:g} | {r['batch']} | {r.get('variant', 'all')} | {r['status']} | – | – | – | – |")
                continue
            lines.append(
                f"| {size} | {r['guidance']:g} | {r['batch']} | {r['variant']} | {_f(r['images_per_s_at_100_nfe'], 4)} "
                f"| {_f(r['achieved_tflops'])} | {_f(r['percent_of_bf16_peak'])} | {_f(r['speedup_vs_baseline'])} "
                f"| {_f(r['peak_memory_mib'], 4)} |")
        if d.get("summary"):
            lines += ["", "Best fast variant per size and guidance:", ""]
            for key, v in d["summary"].items():
                b = v["best_fast"]
                lines.append(f"- {key}: {b['variant']} at batch {b['batch']}: {_f(b['images_per_s_at_100_nfe'], 4)} images/s, "
                             f"{_f(b['achieved_tflops'])} TFLOP/s ({_f(b['percent_of_bf16_peak'])}% of peak), "
                             f"{_f(v['speedup_best_vs_best_baseline'])}x the best baseline")
        lines.append("")

    if "quality" in data:
        d = data["quality"]
        ref = d["reference"]
        lines += ["## Quality against network evaluations", "",
                  f"{d['cells']} synthetic control cells -> {d['perturbation']}, seed {d['seed']}, guidance {d['guidance']}; "
                  f"reference: {ref['solver']} on the {ref['grid']} grid, {ref['nfe']} evaluations, fp32, same noise. "
                  "Endpoint error = RMS difference from the reference cells / RMS distance the reference moved them; "
                  "morphology = largest relative difference of a mean (nuclear area, elongation, texture, channel "
                  f"intensities) from the reference's. Model: {d['model']}. FID: {d['fid']}.", "",
                  f"Measured {_env_line(d['environment'])}.", ""]
        nfes = sorted({r["nfe"] for r in d["rows"]})
        lines += ["Endpoint error (%) / largest morphology difference (%):", "",
                  "| solver | grid | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
        for solver in ("euler", "midpoint", "heun"):
            for grid in ("uniform", "edm"):
                cells = []
                for n in nfes:
                    r = next((r for r in d["rows"] if r["solver"] == solver and r["grid"] == grid and r["nfe"] == n), None)
                    if r is None:
                        cells.append("–")
                    else:
                        morph = r["morphology_max_relative_difference"]
                        mark = " ✓" if r["within_5pct"] else ""
                        cells.append(f"{100 * r['relative_endpoint_error']:.2g} / {_f(None if morph is None else 100 * morph, 2)}{mark}")
                lines.append(f"| {solver} | {grid} | " + " | ".join(cells) + " |")
        best = d.get("best_at_most_20_nfe")
        fast = d["fast_path_at_reference"]
        ctrl = d["controls_vs_reference"]
        lines += ["", "✓ = within 5% of the reference on both.", ""]
        if best:
            lines.append(f"Best at <= 20 evaluations: **{best['solver']} on the {best['grid']} grid, {best['nfe']} evaluations** "
                         f"({best['steps']} steps): endpoint error {100 * best['relative_endpoint_error']:.2g}%, morphology "
                         f"{_f(None if best['morphology_max_relative_difference'] is None else 100 * best['morphology_max_relative_difference'], 2)}% "
                         f"-> {'within' if best['within_5pct'] else 'NOT within'} 5%.")
        cheap = d.get("cheapest_within_5pct")
        if cheap:
            lines.append(f"Cheapest within 5%: **{cheap['solver']} on the {cheap['grid']} grid, {cheap['nfe']} evaluations** "
                         f"({cheap['steps']} steps).")
        lines += ["Fewest evaluations within 5%, per solver and grid: " + ", ".join(f"{k.replace('_', ' / ')} {_f(v)}" for k, v in d["fewest_nfe_within_5pct"].items()) + ".",
                  f"Fast path ({', '.join(f'{k}={v}' for k, v in fast['options'].items())}) at the reference sampler: endpoint error "
                  f"{100 * fast['relative_endpoint_error']:.2g}%, morphology {_f(None if fast['morphology_max_relative_difference'] is None else 100 * fast['morphology_max_relative_difference'], 2)}%.",
                  f"For scale, the control cells themselves: morphology {_f(None if ctrl['morphology_max_relative_difference'] is None else 100 * ctrl['morphology_max_relative_difference'], 2)}% from the reference.", ""]

    # cpu_path.json is this folder's latest run; runs on other CPUs are kept as cpu_path_<machine>.json
    from .cpu_path import render_markdown

    for path in sorted(out.glob("cpu_path*.json")):
        lines += render_markdown(json.loads(path.read_text()))

    if "screen_memory" in data:
        d = data["screen_memory"]
        lines += ["## Virtual-screen memory", "",
                  f"{d['what']}; chunk {d['chunk_size']}, batch {d['batch_size']}, {d['steps']} steps. Model: {d['model']}.", "",
                  f"Measured {_env_line(d['environment'])}.", "",
                  "| cells | chunks | seconds | peak RSS MiB | peak CUDA MiB | on disk MiB | all states in memory would be MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['n_cells']} | {r['status']} | | | | | |")
                continue
            lines.append(f"| {r['n_cells']} | {r['chunks']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {_f(r['peak_cuda_mib'], 4)} "
                         f"| {r['on_disk_mib']:.1f} | {r['all_states_in_memory_mib']:.0f} |")
        lines += ["", f"Peak RSS ratio largest / smallest screen: {_f(d['rss_ratio_largest_to_smallest'])} "
                      f"({'flat' if d['flat'] else 'NOT flat'}: < 1.10 counts as flat).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
