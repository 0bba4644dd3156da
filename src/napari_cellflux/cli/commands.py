"""The ``cellflux`` subcommands: each a ``cmd_<name>(args) -> exit code``, a thin wrapper over the
headless API; their options are declared in :mod:`napari_cellflux.cli.parser`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cellflux.atomic import check_writable


def cmd_verify_parity(args: argparse.Namespace) -> int:
    from napari_cellflux.models.parity import verify_parity

    report = verify_parity(args.fixture, tolerance=args.tol)
    print("\n".join(report.lines()))
    print(f"parity {'PASSED' if report.passed else 'FAILED'} at tolerance {args.tol:g}")
    return 0 if report.passed else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from napari_cellflux.models.channels import parse_channels
    from napari_cellflux.models.model_file import save_model
    from napari_cellflux.models.published import load_published

    model = load_published(
        args.checkpoint,
        embeddings=args.embeddings,
        kind=args.kind,
        channels=parse_channels(args.channels) if args.channels else None,
        image_size=args.image_size,
        use_ema=not args.live_weights,
        config=args.preset,
    )
    digest = save_model(model, args.out)
    print(f"wrote {args.out} (sha256 {digest[:12]}…): {describe_model(model)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from napari_cellflux.api import load_model

    model = load_model(args.model, device="cpu")
    print(describe_model(model))
    size = "unknown" if model.pixel_size_um is None else f"{model.pixel_size_um:g} µm"
    source = "" if model.pixel_size_source == size else f" ({model.pixel_size_source})"
    print(f"pixel size of the training crops: {size}{source}")
    print(f"architecture: {model.config.to_dict()}")
    print(f"sampling defaults: {model.sampling.to_dict()}")
    if model.guide is not None:
        print(f"autoguidance guide: the same run at step {model.guide_step} (sample mode; --autoguidance)")
    if model.morph is not None:
        print(f"morph network: its own, trained on clean sources for {model.morph_step} steps (morph mode)")
    print(f"provenance: {model.provenance}")
    if args.perturbations:
        print("\n".join(model.vocabulary.names))
    return 0


def describe_model(model) -> str:
    from napari_cellflux.core.unet import count_parameters
    from napari_cellflux.models.channels import describe

    vocab = model.vocabulary
    return (
        f"{count_parameters(model.unet) / 1e6:.2f}M-parameter UNet, {describe(model.channels)}, "
        f"{model.image_size} x {model.image_size} px, {len(vocab)} {vocab.kind} perturbations "
        f"({vocab.dim}-d embeddings)"
    )


def control_pixels(args: argparse.Namespace, model, n_synthetic: int):
    """(N, C, H, W) stored pixels from ``--controls``, else ``n_synthetic`` synthetic control cells
    at the model's scale (the demo's own kind of cells)."""
    from napari_cellflux.data.samples import synthetic_controls
    from napari_cellflux.generation.controls import crops_from_file

    if args.controls is None:
        return synthetic_controls(n_synthetic, model.image_size, model.config.in_channels, args.seed)
    return crops_from_file(args.controls, model)


def sampling_from_args(args: argparse.Namespace, defaults):
    """The model's sampling defaults with the options given on the command line."""
    return defaults.with_overrides(
        solver=args.solver, grid=args.grid, steps=args.steps, guidance=args.guidance, noise_level=args.noise_level,
        autoguidance=args.autoguidance,
    )


def speed_from_args(args: argparse.Namespace):
    """The speed options of :func:`add_speed_options` (unset: the API's defaults)."""
    from napari_cellflux.settings import SpeedOptions

    compile_option = {None: False, "auto": True}.get(args.compile, args.compile)
    return SpeedOptions(precision=args.precision, channels_last=args.channels_last, compile=compile_option,
                        images_per_forward=args.images_per_forward)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_cellflux.api import load_model
    from napari_cellflux.errors import InputError
    from napari_cellflux.generation.cost import announce
    from napari_cellflux.generation.export import ANIMATION_SUFFIXES, TIFF_SUFFIXES, check_fps
    from napari_cellflux.generation.result import generate_from_pixels
    from napari_cellflux.models.channels import describe
    from napari_cellflux.models.domain import print_warnings
    from napari_cellflux.settings import check_mode_noise

    check_mode_noise(args.mode, args.noise_level, args.autoguidance)
    check_writable(args.out, what="--out", suffixes=TIFF_SUFFIXES)
    if args.gif is not None:
        check_writable(args.gif, what="--gif", suffixes=ANIMATION_SUFFIXES)
        check_fps(args.fps, what="--fps")
    elif args.gif_cells:
        raise InputError("--gif-cells chooses the cells of the GIF; give --gif PATH too")
    model = load_model(args.model, device=args.device)
    pixels = control_pixels(args, model, args.n_cells or 16)
    n_cells = len(pixels[:args.n_cells])
    if args.gif_cells and max(args.gif_cells) >= n_cells:
        raise InputError(f"--gif-cells {max(args.gif_cells)}: the run has {n_cells} cells, numbered 0 to {n_cells - 1}")
    sampling = sampling_from_args(args, model.sampling)
    with tqdm(total=1, desc="generating", unit="step", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = print_warnings("cellflux generate", lambda: generate_from_pixels(
            model, pixels, n_cells=args.n_cells, device=args.device, perturbation=args.perturbation,
            smiles=args.smiles, sampling=sampling, mode=args.mode, seed=args.seed, batch_size=args.batch_size,
            speed=speed_from_args(args), final_only=args.final_only, progress=progress,
            before_run=announce("cellflux generate"),
        ))
    result.write_tiff(args.out, index=-1 if args.final_only else None)
    frames = 1 if args.final_only else len(result.frames)
    print(f"wrote {args.out}: {frames} frames x {len(result.controls)} cells x {describe(model.channels)} for {result.label} "
          f"(mode {result.mode}{'' if args.final_only else ', frame 0 = the controls'})")
    if args.gif is not None:
        result.write_animation(args.gif, cells=args.gif_cells, fps=args.fps)
        print(f"wrote {args.gif}: {len(result.frames)} frames of {len(args.gif_cells or result.controls)} cells")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_cellflux.api import load_model
    from napari_cellflux.generation.cost import announce
    from napari_cellflux.generation.screen import run_screen
    from napari_cellflux.generation.screen_plan import read_smiles_csv
    from napari_cellflux.models.domain import print_warnings
    from napari_cellflux.runtime import distributed_env, resolve_device

    check_writable(args.out, what="--out", folder=True)
    smiles = read_smiles_csv(args.smiles_csv) if args.smiles_csv else args.smiles
    dist = distributed_env()
    rank, world = dist.rank, dist.world_size
    device = resolve_device(args.device, dist)  # under torchrun: this process's own GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    model = load_model(args.model, device=device)
    pixels = control_pixels(args, model, 64)
    sampling = sampling_from_args(args, model.sampling)
    with tqdm(total=1, desc=f"screen (rank {rank}/{world})" if world > 1 else "screen", unit="chunk",
              disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = print_warnings("cellflux screen", lambda: run_screen(
            model, pixels, args.out, n_cells=args.n_cells, chunk_size=args.chunk_size,
            perturbation=args.perturbation, smiles=smiles, all_perturbations=args.all_perturbations, sampling=sampling,
            seed=args.seed, batch_size=args.batch_size, speed=speed_from_args(args), all_states=args.all_states,
            max_chunks=args.max_chunks, progress=progress, before_run=announce("cellflux screen"),
        ))
    who = f"rank {rank} of {world}: " if world > 1 else ""
    rate = f" ({report.cells_written / report.seconds:.1f} cells/s)" if report.cells_written and report.seconds else ""
    print(
        f"{who}wrote {len(report.written)} chunk(s), {report.cells_written} cells{rate}; "
        f"{len(report.skipped)} already on disk; {len(report.remaining)} left to make "
        f"(of {report.n_units} chunks: {len(report.perturbations)} perturbation(s) x {report.n_chunks} in {args.out})"
    )
    if report.remaining:
        print("run the same command again to resume")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from napari_cellflux.data.synthetic import (
        SYNTHETIC_COUNTS,
        SyntheticScreenConfig,
        make_synthetic_screen,
        read_synthetic_screen,
    )

    options = ("seed", "image_size", "channels", *SYNTHETIC_COUNTS)
    config = SyntheticScreenConfig(**{k: getattr(args, k) for k in options if getattr(args, k) is not None})
    screen = read_synthetic_screen(make_synthetic_screen(args.out, config))
    seen = [p for p in screen.table.perturbations if p not in screen.held_out]
    print(
        f"wrote {args.out}: {len(screen.table)} cells of {config.image_size} x {config.image_size} px x {config.channels} channels "
        f"in {len(screen.table.batches)} batches; DMSO controls, {len(seen)} training perturbations "
        f"({', '.join(seen)}), held out: {', '.join(screen.held_out) or 'none'}"
    )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from napari_cellflux.data.extract import ExtractionConfig
    from napari_cellflux.data.images import read_tiff
    from napari_cellflux.data.intensity import IntensityScaling
    from napari_cellflux.data.plate_extraction import extract_fields
    from napari_cellflux.data.plates import find_fields
    from napari_cellflux.data.scale import check_pixel_size
    from napari_cellflux.errors import InputError
    from napari_cellflux.models.channels import nucleus_channel

    def warn(line: str) -> None:
        print(f"cellflux extract: warning: {line}", file=sys.stderr)

    model = None
    if args.model:
        model = _crop_target(args.model)
        if args.crop_size not in (None, model.image_size):
            raise InputError(f"--crop-size {args.crop_size}: the model takes {model.image_size} x {model.image_size} crops; drop --crop-size")
        if model.pixel_size_um is None and args.pixel_size is not None:
            warn(f"model {args.model} records no pixel size, so fields keep their own scale (--pixel-size is only recorded)")
    names = tuple(c.name for c in model.channels) if model else None
    pixel_size = None if args.pixel_size is None else check_pixel_size(args.pixel_size, "--pixel-size")
    fields = find_fields(args.field, loaddata=args.loaddata, images=args.images, plate_map=args.plate_map, name_pattern=args.name_pattern,
                         channels=args.channels, model_channels=names, perturbation=args.perturbation, batch=args.batch,
                         is_control=args.control, warn=warn)
    scaling = IntensityScaling("range", *args.range) if args.range else IntensityScaling("percentile", *args.percentiles)
    nucleus = nucleus_channel(fields[0].channels) if args.nucleus_channel is None else args.nucleus_channel
    config = ExtractionConfig(crop_size=args.crop_size or (model.image_size if model else 96), nucleus_channel=nucleus,
                              smoothing_sigma=args.sigma, min_area=args.min_area, split_touching=not args.no_split, scaling=scaling)
    check_writable(args.out, what="--out", folder=True)
    summary = extract_fields(fields, args.out, config, pixel_size_um=pixel_size, model_pixel_size_um=model and model.pixel_size_um,
                             model_channels=names, split=args.split, prefix=args.prefix, channel_axis=args.channel_axis,
                             labels=read_tiff(args.labels) if args.labels else None, warn=warn)
    print(summary.line())
    return 0


def _crop_target(source: str):
    """What extraction needs of a model (channels, image_size, pixel_size_um): a published zoo entry's
    registry row, so cutting cells for bbbc021 does not download its 0.9 GB of weights; else the model."""
    from napari_cellflux.models.zoo import PublishedModel, default_zoo

    zoo = default_zoo()
    if not Path(source).is_file() and source in zoo.names() and isinstance(zoo.entry(source), PublishedModel):
        return zoo.entry(source)
    from napari_cellflux.api import load_model

    return load_model(source, device="cpu")


def cmd_zoo(args: argparse.Namespace) -> int:
    from napari_cellflux.models import zoo as zoo_module

    zoo = zoo_module.default_zoo()
    if args.action == "list":
        rows = zoo.list_models()
        width = max((len(r.name) for r in rows), default=4)
        for r in rows:
            print(f"{r.name:<{width}}  {r.kind:<9}  {r.state:<12}  {r.description}")
            print(f"{'':<{width}}  {r.detail}")
        print(f"cache: {zoo.cache_dir} (set {zoo_module.ENV_CACHE} to move it)")
        if zoo.base_url:
            print(f"mirror: {zoo.base_url} (from {zoo_module.ENV_URL})")
    elif args.action == "fetch":
        print(zoo.fetch(args.name, embeddings=args.embeddings, progress=not args.quiet))
    elif args.action == "path":
        print(zoo.path(args.name, embeddings=args.embeddings))
    elif args.action == "rm":
        removed = zoo.remove(args.name, unpin=args.unpin)
        pins = "; its pins were dropped" if args.unpin else "; pins kept (a re-download is checked against them)"
        print(f"removed {len(removed)} cached file(s) of {args.name}{pins}")
    return 0
