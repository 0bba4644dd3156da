"""The ``cellflux`` command line: thin wrappers over the headless API.

Each subcommand is a ``cmd_<name>(args) -> exit code`` plus its parser in ``build_parser``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cellflux import __version__
from napari_cellflux.atomic import check_writable
from napari_cellflux.settings import COMPILE_MODES, GRID_NAMES, KINDS, PRECISIONS, PRESET_NAMES, SOLVER_NAMES


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
    print(f"architecture: {model.config.to_dict()}")
    print(f"sampling defaults: {model.sampling.to_dict()}")
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
    )


def speed_from_args(args: argparse.Namespace):
    """The speed options of :func:`add_speed_options` (unset: the API's defaults)."""
    from napari_cellflux.settings import SpeedOptions

    compile_option = {None: False, "auto": True}.get(args.compile, args.compile)
    return SpeedOptions(precision=args.precision, channels_last=args.channels_last, compile=compile_option)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_cellflux.api import load_model
    from napari_cellflux.generation.result import generate_from_pixels
    from napari_cellflux.models.channels import describe

    check_writable(args.out, what="--out", suffixes=(".tif", ".tiff"))
    model = load_model(args.model, device=args.device)
    pixels = control_pixels(args, model, args.n_cells or 16)
    sampling = sampling_from_args(args, model.sampling)
    with tqdm(total=1, desc="generating", unit="step", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = generate_from_pixels(
            model, pixels, n_cells=args.n_cells, device=args.device, perturbation=args.perturbation,
            smiles=args.smiles, sampling=sampling, seed=args.seed, batch_size=args.batch_size,
            speed=speed_from_args(args), final_only=args.final_only, progress=progress,
        )
    result.write_tiff(args.out, index=-1 if args.final_only else None)
    times = 1 if args.final_only else len(result.times)
    print(f"wrote {args.out}: {times} times x {len(result.controls)} cells x {describe(model.channels)} for {result.label}")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_cellflux.api import load_model
    from napari_cellflux.generation.screen import run_screen
    from napari_cellflux.runtime import distributed_env, resolve_device

    check_writable(args.out, what="--out", folder=True)
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

        report = run_screen(
            model, pixels, args.out, n_cells=args.n_cells, chunk_size=args.chunk_size,
            perturbation=args.perturbation, smiles=args.smiles, sampling=sampling, seed=args.seed,
            batch_size=args.batch_size, speed=speed_from_args(args), all_states=args.all_states, max_chunks=args.max_chunks, progress=progress,
        )
    who = f"rank {rank} of {world}: " if world > 1 else ""
    rate = f" ({report.cells_written / report.seconds:.1f} cells/s)" if report.cells_written and report.seconds else ""
    print(
        f"{who}wrote {len(report.written)} chunk(s), {report.cells_written} cells{rate}; "
        f"{len(report.skipped)} already on disk; {len(report.remaining)} left to make "
        f"(of {report.n_chunks} chunks in {args.out})"
    )
    if report.remaining:
        print("run the same command again to resume")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, make_synthetic_screen, read_synthetic_screen

    options = ("seed", "image_size", "channels", "batches", "controls_per_batch", "cells_per_perturbation")
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
    import tifffile

    from napari_cellflux.data.extract import ExtractionConfig, extract_cells, write_extracted
    from napari_cellflux.data.intensity import IntensityScaling
    from napari_cellflux.data.plain import check_prefix

    scaling = IntensityScaling("range", *args.range) if args.range else IntensityScaling("percentile", *args.percentiles)
    config = ExtractionConfig(
        crop_size=args.crop_size, nucleus_channel=args.nucleus_channel, smoothing_sigma=args.sigma,
        min_area=args.min_area, split_touching=not args.no_split, scaling=scaling,
    )
    check_prefix(args.prefix or args.field.stem)
    check_writable(args.out, what="--out", folder=True)
    labels = tifffile.imread(args.labels) if args.labels else None
    cells = extract_cells(args.field, config, labels=labels, channel_axis=args.channel_axis)
    csv_path = write_extracted(
        cells, args.out, perturbation=args.perturbation, batch=args.batch, is_control=args.control,
        split=args.split, prefix=args.prefix or args.field.stem, source=str(args.field), config=config,
    )
    print(
        f"wrote {len(cells.crops)} cells ({cells.crops.shape[1]} channels, {args.crop_size} x {args.crop_size} px) "
        f"to {args.out}, listed in {csv_path}; {cells.dropped_at_border} nuclei too close to the border were skipped; "
        f"intensity {cells.scaling['mode']} low {cells.scaling['low']} high {cells.scaling['high']} -> 0..255"
    )
    return 0


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


def add_model_and_condition(p: argparse.ArgumentParser, controls_help: str) -> None:
    """--model, --controls and the --perturbation / --smiles choice (generate and screen)."""
    p.add_argument("--model", default="demo", help="zoo name (default: the bundled demo), model file (.safetensors) or published checkpoint.pth")
    p.add_argument("--controls", type=Path, help=controls_help)
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--perturbation", help="perturbation name from the model's vocabulary")
    cond.add_argument("--smiles", help="SMILES of a compound the model never saw (compound models)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampler options that :func:`sampling_from_args` reads (unset: the model's default)."""
    p.add_argument("--solver", choices=SOLVER_NAMES, help="ODE solver (default: the model's)")
    p.add_argument("--grid", choices=GRID_NAMES, help="time grid (default: the model's)")
    p.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance w (default: the model's)")
    p.add_argument("--noise-level", type=float, help="noise added to the controls (default: the model's)")


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """The options that :func:`speed_from_args` reads (generate and screen)."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network precision (auto: bf16 on GPUs that support it; fast: also bf16 on CPUs with native bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC layout (default: on for CUDA)")
    p.add_argument("--compile", nargs="?", const="auto", default=None, choices=("auto", *COMPILE_MODES),
                   help="torch.compile the UNet (auto: CUDA graphs on CUDA); pays off for long screens")


class Parser(argparse.ArgumentParser):
    """argparse with the package's one-line error format (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return 0 if text.strip() == "0" else positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cellflux", description="CellFlux: simulate perturbed cells by flow matching.")
    parser.add_argument("--version", action="version", version=f"napari-cellflux {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify-parity", help="check this implementation against a fixture made with the authors' code")
    p.add_argument("fixture", type=Path, help="parity fixture (.pt), e.g. tests/fixtures/parity_golden.pt")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed max-abs error (default 1e-5)")
    p.set_defaults(run=cmd_verify_parity)

    p = sub.add_parser("convert", help="turn a published checkpoint.pth (+ embedding CSV) into a self-contained model file")
    p.add_argument("checkpoint", type=Path, help="published CellFlux checkpoint.pth")
    p.add_argument("out", type=Path, help="output model file (.safetensors)")
    p.add_argument("--embeddings", type=Path, help="perturbation embedding CSV (name column, then one float row each)")
    p.add_argument("--channels", help="'DNA:blue,tubulin:green,actin:red' or a dataset name (bbbc021, rxrx1, cpg0000)")
    p.add_argument("--kind", choices=KINDS, help="perturbation kind (default: from the dataset)")
    p.add_argument("--image-size", type=positive_int, default=96, help="crop side in pixels (default 96)")
    p.add_argument("--preset", choices=PRESET_NAMES, help="architecture preset (default: inferred from the weights)")
    p.add_argument("--live-weights", action="store_true", help="use the live weights instead of the EMA weights")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("info", help="describe a model file or published checkpoint")
    p.add_argument("model", type=Path)
    p.add_argument("--perturbations", action="store_true", help="also list the vocabulary")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("generate", help="generate perturbed cells from control crops and write a TIFF")
    add_model_and_condition(p, controls_help="control crops: .npy / .tif stack (N, C, H, W or N, H, W, C) or a folder of them (default: synthetic control cells)")
    p.add_argument("--out", type=Path, required=True, help="output TIFF (ImageJ hyperstack T x cells x C)")
    p.add_argument("--n-cells", type=positive_int, default=None, help="use only the first N control cells")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_speed_options(p)
    p.add_argument("--final-only", action="store_true", help="write only the final (t = 1) state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_generate)
    p = sub.add_parser("screen", help="virtual screen: generate many cells in chunks streamed to disk (resumable, torchrun-ready)")
    add_model_and_condition(p, controls_help="control crop pool: .npy / .tif stack or a folder of them; cells are drawn from it with replacement (default: 64 synthetic control cells)")
    p.add_argument("--n-cells", type=positive_int, required=True, help="cells to generate, e.g. 100000")
    p.add_argument("--chunk-size", type=positive_int, default=1024, help="cells per chunk file (default 1024); memory is one chunk")
    p.add_argument("--out", type=Path, required=True, help="screen folder: manifest.json + chunk_<i>.npy; run again to resume")
    p.add_argument("--all-states", action="store_true", help="store every grid state, (n, T, C, H, W) per chunk (default: only the final t = 1 state)")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="screen seed; chunk i uses (seed, i) (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="cells per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1; under torchrun, auto/cuda = the process's LOCAL_RANK GPU")
    add_speed_options(p)
    p.add_argument("--max-chunks", type=non_negative_int, help="stop after making this many chunks (e.g. to fit a job's time limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_screen)

    p = sub.add_parser("synth", help="write a synthetic screen with known ground truth (IMPA BBBC021 layout)")
    # Unset options keep SyntheticScreenConfig's defaults (not imported here: it pulls in torch).
    p.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    p.add_argument("--seed", type=int, help="same seed, same files (default 0)")
    p.add_argument("--image-size", type=positive_int, help="crop side in pixels (default 32; 96 is paper-like)")
    p.add_argument("--channels", type=positive_int, help="DNA, cytoskeleton, cytoplasm, then extra stains (default 3)")
    p.add_argument("--batches", type=positive_int, help="batches with their own gain and background (default 3)")
    p.add_argument("--controls-per-batch", type=positive_int, help="DMSO cells per batch (default 100)")
    p.add_argument("--cells-per-perturbation", type=positive_int, help="cells per perturbation and batch (default 40)")
    p.set_defaults(run=cmd_synth)

    p = sub.add_parser("extract", help="segment nuclei in a field image and write centred single-cell crops (plain format)")
    p.add_argument("field", type=Path, help="field TIFF: (H, W), (C, H, W) or (H, W, C)")
    p.add_argument("--out", type=Path, required=True, help="plain-format folder (cells.csv + TIFFs); fields accumulate")
    p.add_argument("--perturbation", required=True, help="what the well was treated with, e.g. DMSO or taxol")
    p.add_argument("--batch", required=True, help="batch / plate of the field (controls pair within a batch)")
    p.add_argument("--control", action="store_true", help="the field shows control (e.g. DMSO) cells")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--prefix", help="crop file name prefix (default: the field's file name)")
    p.add_argument("--crop-size", type=positive_int, default=96, help="crop side in pixels, the model's image size (default 96)")
    p.add_argument("--nucleus-channel", type=non_negative_int, default=0, help="channel of the DNA stain (default 0)")
    p.add_argument("--channel-axis", type=int, help="channel axis of a 3-D image (default: guessed)")
    p.add_argument("--labels", type=Path, help="nucleus label image (TIFF, same H x W) instead of segmenting")
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian blur before Otsu, px (default 2)")
    p.add_argument("--min-area", type=positive_int, default=100, help="smallest nucleus kept, px (default 100)")
    p.add_argument("--no-split", action="store_true", help="do not split touching nuclei by watershed")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--percentiles", type=float, nargs=2, default=(1.0, 99.8), metavar=("LOW", "HIGH"),
                       help="per-image, per-channel percentiles mapped to 0 and 255 (default 1 99.8)")
    scale.add_argument("--range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="fixed intensities mapped to 0 and 255, e.g. 0 4095 for 12-bit images")
    p.set_defaults(run=cmd_extract)
    p = sub.add_parser("zoo", help="list, download and locate ready-to-use models (the published CellFlux checkpoints)")
    zoo_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    z = zoo_sub.add_parser("list", help="the models, whether each is ready, downloadable or unavailable, and the cache")
    z.set_defaults(run=cmd_zoo)
    for action, text in (("fetch", "download, verify and convert a model (once); prints its path"),
                         ("path", "print a model's local file without downloading (error if not fetched)")):
        z = zoo_sub.add_parser(action, help=text)
        z.add_argument("name", help="zoo model name, e.g. bbbc021 (see `cellflux zoo list`)")
        z.add_argument("--embeddings", type=Path, help="your own embedding CSV instead of the registry's (e.g. emb_fp.csv)")
        if action == "fetch":
            z.add_argument("--quiet", action="store_true", help="no progress bars")
        z.set_defaults(run=cmd_zoo)
    z = zoo_sub.add_parser("rm", help="delete a model's cached files")
    z.add_argument("name")
    z.add_argument("--unpin", action="store_true", help="also forget the pinned hashes (accept a changed remote file)")
    z.set_defaults(run=cmd_zoo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from napari_cellflux.errors import run_main

    args = build_parser().parse_args(argv)
    return run_main(f"cellflux {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
