"""Generation speed: (a) the demo on the CPU (what the widget's Generate costs) and (b) batched
throughput per model size and batch size, the eager fp32 baseline against the fast path.

Every run goes through ``napari_cellflux.api.generate``, the one sampler the plugin, the CLI and
the screens use; the variants differ only in its speed options.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from napari_cellflux import api
from napari_cellflux.core.unet import count_parameters, preset
from napari_cellflux.errors import InputError
from napari_cellflux.settings import MODE_NAMES, SamplingConfig, SpeedOptions

from . import common as C

# How the authors sample: fp32, default layout, one conditional and one unconditional forward.
BASELINE = dict(precision="fp32", channels_last=False, compile=False, batch_guidance=False)


@dataclass(frozen=True)
class Variant:
    name: str
    options: dict
    cudnn_benchmark: bool = False
    description: str = ""


def variants(device: torch.device, compile_modes: list[str]) -> list[Variant]:
    """The baseline first, then the fast path(s) for ``device``."""
    base = Variant("eager_fp32_separate_cfg", BASELINE, False,
                   "fp32, default layout, separate conditional and unconditional forwards (the authors' way)")
    if device.type == "cuda":
        half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        out = [base, Variant(f"fast_{half}", dict(precision=half, channels_last=True, compile=False, batch_guidance=True),
                             True, f"{half} autocast, batched guidance, channels_last, cuDNN autotuning")]
    else:
        out = [
            base,
            Variant("fp32_batched_cfg", dict(BASELINE, batch_guidance=True), False, "fp32, batched guidance"),
            Variant("fp32_batched_cfg_channels_last", dict(BASELINE, batch_guidance=True, channels_last=True), False,
                    "fp32, batched guidance, channels_last"),
            Variant("bf16_batched_cfg_channels_last", dict(precision="bf16", channels_last=True, compile=False, batch_guidance=True),
                    False, "bf16 autocast (CPU AVX-512 bf16 where present), batched guidance, channels_last"),
            # Last, so compile variants build on it: what the widget runs (precision "fast").
            Variant("bf16_batched_cfg", dict(precision="bf16", channels_last=False, compile=False, batch_guidance=True),
                    False, "bf16 autocast, batched guidance, default layout (the widget's path on CPUs with native bf16)"),
        ]
    fast = out[-1]
    for mode in compile_modes:
        out.append(Variant(f"{fast.name}_compile_{mode}", dict(fast.options, compile=mode), fast.cudnn_benchmark,
                           f"{fast.description}, torch.compile mode {mode}"))
    return out


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def cpu_demo(model, model_description: str, *, cells: int, nfe: int, repeats: int, warmup: int, compile_modes: list[str],
             perturbation: str | None, solvers: tuple[str, ...] = ("euler", "heun", "midpoint")) -> dict:
    """(a) 16 cells x 20 network evaluations of the demo model on the CPU, as the widget runs
    them (all states kept for the t slider): median seconds per variant and solver, and for the
    model's own sampler in each mode (sample with its autoguidance, morph with its main-network share)."""
    device = torch.device("cpu")
    model.to(device)
    name = C.pick_perturbation(model, perturbation)
    controls = C.controls_for(model, cells)
    if nfe % 2:
        raise InputError(f"--demo-nfe must be even (Heun and midpoint take 2 evaluations per step), got {nfe}")
    # nfe evaluations of one network each (autoguidance, which doubles the cost, off), then the
    # model's own sampler in each mode, as the widget runs it (training/configs/demo.yaml).
    single = model.sampling.with_overrides(autoguidance=0.0)
    samplings = {
        (f"euler_uniform_{nfe}", "sample"): single.with_overrides(solver="euler", grid="uniform", steps=nfe),
        (f"heun_edm_{nfe // 2}", "sample"): single.with_overrides(solver="heun", grid="edm", steps=max(nfe // 2, 2)),
        (f"midpoint_uniform_{nfe // 2}", "sample"): single.with_overrides(solver="midpoint", grid="uniform", steps=max(nfe // 2, 2)),
    }
    samplings = {k: v for k, v in samplings.items() if v.solver in solvers}
    for mode in MODE_NAMES:
        own = model.sampling.for_mode(mode)
        share = model.main_share_for(mode, own)
        label = f"own_{own.solver}_{own.grid}_{own.steps}_guidance_{own.guidance:g}" + (
            f"_autoguidance_{own.autoguidance:g}" if own.autoguidance else "") + (f"_main_share_{share:g}" if share else "")
        samplings[label, mode] = own
    rows = []
    for variant in variants(device, compile_modes):
        for (label, mode), sampling in samplings.items():
            run = lambda: api.generate(model, controls, name, sampling=sampling, mode=mode, seed=0, batch_size=cells,
                                       speed=SpeedOptions(**variant.options))
            try:
                median, times = C.timed(run, device, repeats, warmup + bool(variant.options.get("compile")))
            except Exception as err:  # e.g. torch.compile without a C compiler: say so, keep going
                rows.append({"variant": variant.name, "sampling": label, "mode": mode, "error": f"{type(err).__name__}: {err}"[:300]})
                continue
            rows.append({
                "variant": variant.name, "description": variant.description, "sampling": label, "mode": mode,
                "network_evaluations": sampling.evaluations, "networks": 1 + bool(sampling.autoguidance) + bool(model.main_share_for(mode, sampling)),
                "median_s": median, "times_s": times,
                "meets_1s_target": median < 1.0,
            })
    timed_rows = [r for r in rows if "median_s" in r]
    best = min(timed_rows, key=lambda r: r["median_s"]) if timed_rows else None
    return {
        "model": model_description,
        "parameters": count_parameters(model.unet),
        "image_size": model.image_size,
        "cells": cells,
        "network_evaluations": nfe,
        "guidance": model.sampling.guidance,
        "forward_batch": cells * (2 if model.sampling.guidance else 1),
        "repeats": repeats,
        "warmup": warmup,
        "rows": rows,
        "best": best,
        "target_s": 1.0,
        "peak_rss_mib": C.max_rss_mib(),
        "environment": C.environment(device),
    }


def throughput(sizes: dict, batch_sizes: dict, *, device: torch.device, nfe: int, repeats: int, warmup: int,
               guidances: list[float], compile_modes: list[str], peak_tflops: float | None) -> dict:
    """(b) Images per second (normalised to 100 network evaluations per image) and % of the
    GPU's dense bf16 peak, for each model size, guidance and batch size, baseline and fast path.

    sizes: name -> (UNetConfig, image size). Only the demo size runs on a CPU; the others are
    listed as "not run: no GPU".
    """
    env = C.environment(device)
    peak_source = "--peak-tflops" if peak_tflops else "no GPU"
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = C.gpu_peak_tflops(env["gpu"])
        peak_source = "table of dense bf16 peaks (benchmarks/common.py)" if peak_tflops else "unknown GPU: pass --peak-tflops"
    steps = max(nfe // 2, 2)
    rows, models = [], {}
    for size, (config, image_size) in sizes.items():
        flops = C.flops_per_image(config, image_size)
        for guidance in guidances:
            sampling = SamplingConfig("heun", "edm", steps, guidance, 0.5)
            forwards_per_eval = 2 if guidance else 1
            for batch in batch_sizes.get(size, []):
                head = {"size": size, "guidance": guidance, "batch": batch, "flops_per_forward": flops}
                if device.type != "cuda" and size != "demo":
                    rows.append({**head, "status": "not run: no GPU"})
                    continue
                if size not in models:
                    models[size] = C.random_model(config, image_size).to(device)
                model = models[size]
                controls = torch.rand(batch, config.in_channels, image_size, image_size,
                                      generator=torch.Generator().manual_seed(0)) * 2 - 1
                baseline_ips = None
                for variant in variants(device, compile_modes):
                    row = {**head, "parameters": count_parameters(model.unet), "image_size": image_size,
                           "variant": variant.name, "description": variant.description,
                           "cudnn_benchmark": variant.cudnn_benchmark, "forwards_per_evaluation": forwards_per_eval}
                    run = lambda: api.generate(model, controls, "drug", sampling=sampling, seed=0, batch_size=batch,
                                               final_only=True, speed=SpeedOptions(**variant.options))
                    try:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                            torch.cuda.reset_peak_memory_stats(device)
                        with cudnn_benchmark(variant.cudnn_benchmark):
                            median, times = C.timed(run, device, repeats, warmup + bool(variant.options.get("compile")))
                    except torch.cuda.OutOfMemoryError:
                        rows.append({**row, "status": "out of memory"})
                        torch.cuda.empty_cache()
                        continue
                    except Exception as err:  # e.g. torch.compile failing on this machine: record it, go on
                        rows.append({**row, "status": f"error: {type(err).__name__}: {err}"[:300]})
                        continue
                    measured_ips = batch / median
                    ips_100 = measured_ips * sampling.evaluations / 100
                    achieved = measured_ips * sampling.evaluations * forwards_per_eval * flops / 1e12
                    row.update({
                        "status": "ok", "network_evaluations_measured": sampling.evaluations, "median_s": median,
                        "times_s": times, "images_per_s_at_100_nfe": ips_100, "achieved_tflops": achieved,
                        "percent_of_bf16_peak": None if not peak_tflops else 100 * achieved / peak_tflops,
                        "peak_memory_mib": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else C.max_rss_mib(),
                        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS so far",
                    })
                    if variant.name == BASELINE_NAME:
                        baseline_ips = ips_100
                    row["speedup_vs_baseline"] = None if not baseline_ips else ips_100 / baseline_ips
                    rows.append(row)
        models.pop(size, None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = [r for r in rows if r.get("status") == "ok"]
    summary = {}
    for size in sizes:
        for guidance in guidances:
            mine = [r for r in ok if r["size"] == size and r["guidance"] == guidance]
            fast = [r for r in mine if r["variant"] != BASELINE_NAME]
            if not fast:
                continue
            best = max(fast, key=lambda r: r["images_per_s_at_100_nfe"])
            base = max((r["images_per_s_at_100_nfe"] for r in mine if r["variant"] == BASELINE_NAME), default=None)
            summary[f"{size}, guidance {guidance:g}"] = {
                "best_fast": {k: best[k] for k in ("variant", "batch", "images_per_s_at_100_nfe", "achieved_tflops",
                                                   "percent_of_bf16_peak", "speedup_vs_baseline")},
                "best_baseline_images_per_s": base,
                "speedup_best_vs_best_baseline": best["images_per_s_at_100_nfe"] / base if base else None,
            }
    return {
        "sampling": {"solver": "heun", "grid": "edm", "steps": steps, "network_evaluations": 2 * steps,
                     "noise_level": 0.5, "guidance": guidances},
        "note": ("images/s are normalised to 100 network evaluations per image (the paper's 50 Heun steps); with "
                 "guidance each evaluation is 2 image-forwards (conditional + unconditional), counted in achieved "
                 "TFLOP/s. % of peak = achieved TFLOP/s / the GPU's dense bf16 peak, for every variant."),
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "rows": rows,
        "summary": summary,
        "environment": env,
    }


BASELINE_NAME = "eager_fp32_separate_cfg"


def default_sizes() -> dict:
    return {"demo": (C.demo_config(), C.DEMO_IMAGE_SIZE), "paper": (preset("bbbc021", dropout=0.0), C.PAPER_IMAGE_SIZE)}
