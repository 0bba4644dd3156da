"""(e) The CPU fast path (issue 16), as ratios measured in one run: every comparison is timed
interleaved (variant A, B, C, then A, B, C again, ...) and reported as medians.

- the paper preset (56 M parameters, 96 px, random weights): one guided network evaluation of 1
  and of 8 cells, and a short sampling run (2 cells, Heun / EDM, 4 evaluations, guidance 0.2), for
  the authors'-style eager fp32 path (separate conditional / unconditional forwards, default
  layout) and ours: default options, ``fast``, ``fast`` + channels_last;
- the demo's Generate as the widget runs it (16 cells, the model's default sampling, all states,
  ``precision="fast"``), target < 1 s, and with channels_last, which the policy turns down for it;
- the CPU screen (cells/s, 4 Euler steps, guided; each setting in fresh processes, since the
  allocator setting is process-wide): before the images-per-forward cap and the allocator
  setting, with each, and with ``fast`` on top; peak RSS and minor page faults;
- the paper config's training step (batch 2), fp32 against bf16 autocast.

- the demo Generate in fresh processes with OpenMP's default waiting and the passive policy.

Child modes (one measurement each): ``python -m benchmarks.cpu_path --screen-child JSON`` and
``--openmp-child JSON``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_cellflux import api
from napari_cellflux.core.unet import UNet, count_parameters, preset
from napari_cellflux.process import OPENMP_WAIT
from napari_cellflux.runtime import detect_hardware, execution_plan
from napari_cellflux.settings import SamplingConfig, SpeedOptions

from . import common as C

CPU = torch.device("cpu")
# The authors' way of sampling, and ours.
VARIANTS = {
    "authors_eager_fp32": SpeedOptions(precision="fp32", channels_last=False, batch_guidance=False),
    "ours_default": SpeedOptions(),
    "ours_fast": SpeedOptions(precision="fast", channels_last=False),
    "ours_fast_channels_last": SpeedOptions(precision="fast", channels_last=True),
}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
TARGETS = {"paper_sampling_speedup": 4.0, "demo_generate_s": 1.0, "screen_speedup": 2.5, "screen_cells_per_s": 80.0,
           "training_bf16_speedup": 2.0}


def machine() -> dict:
    """The CPU as torch, lscpu and /proc/cpuinfo name it, and what the policy makes of it."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=20).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        model = None
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        flags = set()
    capabilities = torch.cpu.get_capabilities()
    return {
        "lscpu_model_name": model or C.cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flags_of_interest": {f: f in flags for f in FLAGS},
        "torch_capabilities": {k: capabilities.get(k) for k in ("avx512_bf16", "amx_bf16", "amx_tile", "num_physical_cores")},
        "hardware": detect_hardware(CPU).describe(),
        "openmp_environment": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")},
        "parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip(),
    }


def interleaved(runs: dict, repeats: int, warmup: int) -> dict:
    """name -> (median s, all times) over ``repeats`` rounds of every run in turn."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def _rows(timings: dict, baseline: str, **head) -> list[dict]:
    base = timings[baseline][0]
    return [{**head, "variant": name, "median_s": m, "times_s": t, "speedup_vs_authors": base / m}
            for name, (m, t) in timings.items()]


def paper_section(image_size: int, batches: list[int], sampling_cells: int, repeats: int) -> dict:
    """The paper preset: one guided evaluation per batch size, then the short sampling run."""
    model = C.random_model(preset("bbbc021", dropout=0.0), image_size)
    controls = C.controls_for(model, max(max(batches), sampling_cells))
    one_step = SamplingConfig("euler", "uniform", 1, 0.2, 0.5)
    short = SamplingConfig("heun", "edm", 2, 0.2, 0.5)  # 4 network evaluations

    def runner(cells: int, sampling: SamplingConfig, speed: SpeedOptions):
        return lambda: api.generate(model, controls[:cells], "drug", sampling=sampling, batch_size=cells,
                                    final_only=True, speed=speed)

    rows = []
    for i, batch in enumerate(batches):
        runs = {name: runner(batch, one_step, speed) for name, speed in VARIANTS.items()}
        # the first batch size warms every variant (oneDNN primitives, weight layouts)
        rows += _rows(interleaved(runs, repeats, warmup=int(i == 0)), "authors_eager_fp32", measure="evaluation", cells=batch)
    runs = {name: runner(sampling_cells, short, speed) for name, speed in VARIANTS.items()}
    rows += _rows(interleaved(runs, repeats, warmup=0), "authors_eager_fp32", measure="sampling", cells=sampling_cells,
                  network_evaluations=short.evaluations)
    plan = execution_plan(model.config, image_size, CPU, SpeedOptions(precision="fast"))
    return {"image_size": image_size, "parameters": count_parameters(model.unet), "rows": rows,
            "policy_picks": _describe(plan)}


def _describe(plan) -> dict:
    return {"dtype": str(plan.dtype or torch.float32).removeprefix("torch."), "channels_last": plan.channels_last,
            "images_per_forward": plan.images_per_forward}


def demo_section(model, cells: int, repeats: int) -> dict:
    """The widget's Generate: all states kept, the model's default sampling."""
    name = C.pick_perturbation(model, None)
    controls = C.controls_for(model, cells)
    runs = {v: (lambda speed=VARIANTS[v]: api.generate(model, controls, name, batch_size=cells, speed=speed))
            for v in ("authors_eager_fp32", "ours_default")}
    runs["ours_fast_policy"] = lambda: api.generate(model, controls, name, batch_size=cells, speed=SpeedOptions(precision="fast"))
    # the layout the policy turns down for a narrow model, measured so the choice can be checked per machine
    runs["ours_fast_channels_last"] = lambda: api.generate(model, controls, name, batch_size=cells,
                                                           speed=VARIANTS["ours_fast_channels_last"])
    rows = _rows(interleaved(runs, repeats, warmup=1), "authors_eager_fp32", cells=cells,
                 network_evaluations=model.sampling.evaluations)
    plan = execution_plan(model.config, model.image_size, CPU, SpeedOptions(precision="fast"))
    return {"sampling": model.sampling.to_dict(), "rows": rows, "policy_picks": _describe(plan)}


SCREEN_SETTINGS = {  # name -> (precision, images per forward (None: the policy's), allocator setting)
    "before": ("auto", 1 << 20, False),
    "cap": ("auto", None, False),
    "cap_allocator": ("auto", None, True),
    "cap_allocator_fast": ("fast", None, True),
}


def screen_section(model_spec: str, n_cells: int, chunk: int, batch: int, steps: int, rounds: int) -> dict:
    """cells/s of ``run_screen`` per setting, each run in a fresh process, settings interleaved."""
    results = {name: [] for name in SCREEN_SETTINGS}
    with tempfile.TemporaryDirectory(prefix="cellflux-cpu-path-") as tmp:
        for r in range(rounds):
            for name in SCREEN_SETTINGS:
                spec = {"model": model_spec, "setting": name, "n_cells": n_cells, "chunk": chunk, "batch": batch,
                        "steps": steps, "out": f"{tmp}/{name}-{r}"}
                proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_path", "--screen-child", json.dumps(spec)],
                                      capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=3600)
                if proc.returncode != 0:
                    raise RuntimeError(f"screen child {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
                results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    before = statistics.median(x["cells_per_s"] for x in results["before"])
    rows = []
    for name, runs in results.items():
        speed = statistics.median(x["cells_per_s"] for x in runs)
        rows.append({"setting": name, "cells_per_s": speed, "cells_per_s_runs": [x["cells_per_s"] for x in runs],
                     "speedup_vs_before": speed / before,
                     **{k: statistics.median(x[k] for x in runs) for k in ("peak_rss_mib", "minor_faults", "user_s", "system_s")},
                     "images_per_forward": runs[0]["images_per_forward"], "precision": runs[0]["precision"]})
    return {"n_cells": n_cells, "chunk_size": chunk, "batch_size": batch, "steps": steps, "rounds": rounds,
            "guidance": results["before"][0]["guidance"], "rows": rows}


def screen_child(spec: dict) -> int:
    """One screen in this fresh process; prints one JSON line."""
    from napari_cellflux.data.samples import synthetic_controls
    from napari_cellflux.generation import generate as generation
    from napari_cellflux.generation.screen import run_screen

    precision, images, allocator = SCREEN_SETTINGS[spec["setting"]]
    if not allocator:  # the C allocator as it was before issue 16
        generation.keep_freed_memory = lambda: False
    model, _ = C.load_demo_model(spec["model"], CPU)
    pool = synthetic_controls(64, model.image_size, model.config.in_channels, 0)
    sampling = model.sampling.with_overrides(solver="euler", grid="uniform", steps=spec["steps"])
    speed = SpeedOptions(precision=precision, images_per_forward=images)
    name = C.pick_perturbation(model, None)

    def screen(out: str, n: int):
        return run_screen(model, pool, out, n_cells=n, chunk_size=spec["chunk"], perturbation=name, sampling=sampling,
                          batch_size=spec["batch"], speed=speed)

    screen(spec["out"] + "-warm", min(spec["batch"], spec["n_cells"]))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    screen(spec["out"], spec["n_cells"])
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    plan = execution_plan(model.config, model.image_size, CPU, speed)
    print(json.dumps({"cells_per_s": spec["n_cells"] / seconds, "seconds": seconds, "peak_rss_mib": C.max_rss_mib(),
                      "minor_faults": after.ru_minflt - before.ru_minflt, "user_s": after.ru_utime - before.ru_utime,
                      "system_s": after.ru_stime - before.ru_stime, "images_per_forward": plan.images_per_forward,
                      "precision": _describe(plan)["dtype"], "guidance": sampling.guidance}))
    return 0


def openmp_section(model_spec: str, cells: int, repeats: int, rounds: int) -> dict:
    """The demo Generate in fresh processes with OpenMP's default waiting and with the passive
    policy the ``cellflux`` command sets (process.prepare_openmp): what passive costs or saves on
    this machine as it is (idle, for the lead's run; the issue measured 7-16x on a busy one)."""
    settings = {"default_wait": {}, "passive_wait": dict(OPENMP_WAIT)}
    results = {name: [] for name in settings}
    base_env = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT}
    for _ in range(rounds):
        for name, extra in settings.items():
            spec = {"model": model_spec, "cells": cells, "repeats": repeats}
            proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_path", "--openmp-child", json.dumps(spec)],
                                  capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=1800,
                                  env={**base_env, **extra})
            if proc.returncode != 0:
                raise RuntimeError(f"OpenMP child {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"])
    default = statistics.median(results["default_wait"])
    return {"cells": cells, "repeats_per_process": repeats, "rounds": rounds,
            "rows": [{"setting": name, "environment": settings[name], "median_s": statistics.median(r), "runs_s": r,
                      "speedup_vs_default": default / statistics.median(r)} for name, r in results.items()]}


def openmp_child(spec: dict) -> int:
    """The demo Generate (fast) ``repeats`` times in this process; prints the median as JSON."""
    model, _ = C.load_demo_model(spec["model"], CPU)
    name, controls = C.pick_perturbation(model, None), C.controls_for(model, spec["cells"])
    run = lambda: api.generate(model, controls, name, batch_size=spec["cells"], speed=SpeedOptions(precision="fast"))  # noqa: E731
    median, _ = C.timed(run, CPU, spec["repeats"], warmup=1)
    print(json.dumps({"median_s": median}))
    return 0


def training_section(image_size: int, batch: int, repeats: int) -> dict:
    """One optimiser step of the paper config (preset bbbc021, its dropout), fp32 against bf16."""
    from training.config import load_config
    from training.train import training_step

    cfg = load_config("bbbc021")
    torch.manual_seed(0)
    unet = UNet(preset("bbbc021")).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(2, batch, 3, image_size, image_size, generator=gen) * 2 - 1
    batch_dict = {"control": cells[0], "target": cells[1], "perturbation": torch.zeros(batch, dtype=torch.long)}
    embeddings = torch.rand(2, unet.config.condition_dim, generator=gen)

    def step(dtype):
        def run():
            optimizer.zero_grad(set_to_none=True)
            training_step(unet, batch_dict, embeddings, cfg, CPU, dtype).backward()
            optimizer.step()
        return run

    runs = {"fp32": step(None)}
    native = detect_hardware(CPU).native_bf16
    if native:
        runs["bf16_autocast"] = step(torch.bfloat16)
    timings = interleaved(runs, repeats, warmup=1)
    rows = [{"precision": k, "median_s": m, "times_s": t, "speedup_vs_fp32": timings["fp32"][0] / m} for k, (m, t) in timings.items()]
    if not native:
        rows.append({"precision": "bf16_autocast", "status": "not run: this CPU has no native bf16 (training refuses it)"})
    return {"image_size": image_size, "batch_size": batch, "rows": rows}


def run(demo_model, demo_spec: str, *, quick: bool, repeats: int, paper_repeats: int, screen_rounds: int) -> dict:
    """Every measurement of this section; the ratio-against-target lines are printed as they come."""
    size = 16 if quick else C.PAPER_IMAGE_SIZE
    print("cpu_path: paper preset ...", flush=True)
    paper = paper_section(size, [1] if quick else [1, 8], 1 if quick else 2, paper_repeats)
    print("cpu_path: demo Generate ...", flush=True)
    demo = demo_section(demo_model, 4 if quick else 16, repeats)
    print("cpu_path: screen ...", flush=True)
    screen = screen_section(demo_spec, *((24, 12, 12, 1) if quick else (1024, 512, 256, 4)), rounds=screen_rounds)
    print("cpu_path: OpenMP wait policy ...", flush=True)
    openmp = openmp_section(demo_spec, 4 if quick else 16, 1 if quick else 5, screen_rounds)
    print("cpu_path: training step ...", flush=True)
    training = training_section(size, 2, paper_repeats)
    result = {"machine": machine(), "environment": C.environment(CPU), "paper": paper, "demo": demo, "screen": screen,
              "openmp": openmp, "training": training}
    result["targets"] = target_lines(result)
    for line in result["targets"]:
        print(line, flush=True)
    return result


def target_lines(d: dict) -> list[str]:
    """One line per target of issue 16: the measured ratio or time, the target, met or not."""
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    sampling = {r["variant"]: r for r in d["paper"]["rows"] if r["measure"] == "sampling"}
    best = max((r for n, r in sampling.items() if n != "authors_eager_fp32"), key=lambda r: r["speedup_vs_authors"])
    t = TARGETS["paper_sampling_speedup"]
    lines.append(f"paper sampling vs authors' eager fp32: {best['speedup_vs_authors']:.2f}x ({best['variant']}), "
                 f"target >= {t:g}x: {mark(best['speedup_vs_authors'] >= t)}")
    fast = next(r for r in d["demo"]["rows"] if r["variant"] == "ours_fast_policy")
    t = TARGETS["demo_generate_s"]
    lines.append(f"demo Generate (fast): {fast['median_s']:.3f} s, target < {t:g} s: {mark(fast['median_s'] < t)}")
    top = next(r for r in d["screen"]["rows"] if r["setting"] == "cap_allocator_fast")
    t, c = TARGETS["screen_speedup"], TARGETS["screen_cells_per_s"]
    lines.append(f"CPU screen: {top['cells_per_s']:.1f} cells/s = {top['speedup_vs_before']:.2f}x before, target >= {t:g}x: "
                 f"{mark(top['speedup_vs_before'] >= t)}; >= {c:g} cells/s (on the issue's Intel CPU): {mark(top['cells_per_s'] >= c)}")
    bf16 = next(r for r in d["training"]["rows"] if r["precision"] == "bf16_autocast")
    t = TARGETS["training_bf16_speedup"]
    if "median_s" in bf16:
        verdict = mark(bf16["speedup_vs_fp32"] >= t) if d["machine"]["torch_capabilities"].get("amx_bf16") else \
            "no AMX here, the target does not apply"
        lines.append(f"training step bf16 vs fp32: {bf16['speedup_vs_fp32']:.2f}x, target >= {t:g}x where AMX is present: {verdict}")
    else:
        lines.append(f"training step bf16: {bf16['status']}")
    return lines


def render_markdown(d: dict) -> list[str]:
    """The section's tables for RESULTS.md."""
    m = d["machine"]
    lines = [f"## The CPU fast path (issue 16): {m['lscpu_model_name']}, {m['hardware']}", ""]
    if d.get("quick"):
        lines += ["> **From a `--quick` run: tiny sizes that only exercise the machinery; the numbers mean nothing.**", ""]
    lines += [
             f"CPU: {m['lscpu_model_name']}, torch capability {m['cpu_capability']}, {m['hardware']}; "
             f"flags: {', '.join(f for f, on in m['flags_of_interest'].items() if on)}. Interleaved runs, medians.", "",
             "| measure | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    p = d["paper"]
    for measure, cells in sorted({(r["measure"], r["cells"]) for r in p["rows"]}, key=lambda k: (k[0] != "evaluation", k[1])):
        rows = {r["variant"]: r for r in p["rows"] if (r["measure"], r["cells"]) == (measure, cells)}
        label = f"paper preset, one guided evaluation of {cells} cells" if measure == "evaluation" else \
            f"paper preset sampling, {cells} cells x {rows['authors_eager_fp32']['network_evaluations']} evaluations, guided"
        lines.append(f"| {label} | " + " | ".join(f"{rows[v]['median_s']:.2f} s ({rows[v]['speedup_vs_authors']:.2f}x)" for v in VARIANTS) + " |")
    lines += ["", f"Policy's pick for the paper preset (`precision=\"fast\"`): {p['policy_picks']}.", ""]
    lines += ["| demo Generate, 16 cells | median s | x authors |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_s']:.3f} | {r['speedup_vs_authors']:.2f} |" for r in d["demo"]["rows"]]
    s = d["screen"]
    lines += ["", f"CPU screen: {s['n_cells']} demo cells, chunk {s['chunk_size']}, batch {s['batch_size']}, {s['steps']} Euler "
                  f"steps, guidance {s['guidance']}, fresh process per run, {s['rounds']} rounds.", "",
              "| setting | images / forward | precision | cells/s | x before | peak RSS MiB | minor faults | user s | system s |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['images_per_forward'] if r['setting'] != 'before' else 'all'} | {r['precision']} | {r['cells_per_s']:.1f} | {r['speedup_vs_before']:.2f} "
              f"| {r['peak_rss_mib']:.0f} | {r['minor_faults']:.0f} | {r['user_s']:.1f} | {r['system_s']:.1f} |" for r in s["rows"]]
    o = d["openmp"]
    lines += ["", f"| demo Generate ({o['cells']} cells, fast) in a fresh process | median s | x default |", "|---|---|---|"]
    lines += [f"| {r['setting']} {' '.join(f'{k}={v}' for k, v in r['environment'].items())} | {r['median_s']:.3f} | {r['speedup_vs_default']:.2f} |" for r in o["rows"]]
    t = d["training"]
    lines += ["", f"| paper training step, batch {t['batch_size']} | median s | x fp32 |", "|---|---|---|"]
    lines += [f"| {r['precision']} | {r['median_s']:.2f} | {r['speedup_vs_fp32']:.2f} |" if "median_s" in r else
              f"| {r['precision']} | {r['status']} | – |" for r in t["rows"]]
    return lines + ["", "Targets:", ""] + [f"- {line}" for line in d["targets"]] + [""]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--screen-child", "--openmp-child"):
        child = screen_child if sys.argv[1] == "--screen-child" else openmp_child
        sys.exit(child(json.loads(sys.argv[2])))
    sys.exit("usage: python -m benchmarks.run --sections cpu_path (child modes: --screen-child JSON, --openmp-child JSON)")
