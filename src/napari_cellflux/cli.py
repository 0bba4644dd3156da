"""The ``cellflux`` command line: thin wrappers over the headless API.

Each subcommand is a ``cmd_<name>(args) -> exit code`` plus its parser in ``build_parser``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def cmd_verify_parity(args: argparse.Namespace) -> int:
    from .parity import verify_parity

    report = verify_parity(args.fixture, tolerance=args.tol)
    print("\n".join(report.lines()))
    print(f"parity {'PASSED' if report.passed else 'FAILED'} at tolerance {args.tol:g}")
    return 0 if report.passed else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from .channels import parse_channels
    from .checkpoint import save_model
    from .published import load_published

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
    from .api import load_model

    model = load_model(args.model, device="cpu")
    print(describe_model(model))
    print(f"architecture: {model.config.to_dict()}")
    print(f"sampling defaults: {model.sampling.to_dict()}")
    print(f"provenance: {model.provenance}")
    if args.perturbations:
        print("\n".join(model.vocabulary.names))
    return 0


def describe_model(model) -> str:
    from .channels import describe
    from .model import count_parameters

    vocab = model.vocabulary
    return (
        f"{count_parameters(model.unet) / 1e6:.2f}M-parameter UNet, {describe(model.channels)}, "
        f"{model.image_size} x {model.image_size} px, {len(vocab)} {vocab.kind} perturbations "
        f"({vocab.dim}-d embeddings)"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import generate, load_model
    from .channels import describe
    from .crops import read_crops
    from .export import write_trajectory_tiff
    from .sampling import SamplingConfig

    model = load_model(args.model, device=args.device)
    pixels = read_crops(args.controls, model.config.in_channels)[: args.n_cells]
    controls = model.normalization.to_model(pixels)
    defaults = model.sampling
    sampling = SamplingConfig(
        solver=args.solver or defaults.solver,
        grid=args.grid or defaults.grid,
        steps=args.steps or defaults.steps,
        guidance=defaults.guidance if args.guidance is None else args.guidance,
        noise_level=defaults.noise_level if args.noise_level is None else args.noise_level,
    )
    with tqdm(total=1, desc="generating", unit="step", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        trajectory = generate(
            model, controls, args.perturbation, smiles=args.smiles, sampling=sampling,
            seed=args.seed, batch_size=args.batch_size, progress=progress,
        )
    states, times = trajectory.states, trajectory.times
    if args.final_only:
        states, times = states[-1:], times[-1:]
    write_trajectory_tiff(args.out, states, times, model.channels, model.normalization, trajectory.metadata)
    label = trajectory.metadata["perturbation"] or "no perturbation (unconditional)"
    print(f"wrote {args.out}: {len(times)} times x {states.shape[1]} cells x {describe(model.channels)} for {label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellflux", description="CellFlux: simulate perturbed cells by flow matching.")
    parser.add_argument("--version", action="version", version=f"napari-cellflux {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("verify-parity", help="check this implementation against a fixture made with the authors' code")
    p.add_argument("fixture", type=Path, help="parity fixture (.pt), e.g. shared/reference/official_small_golden.pt")
    p.add_argument("--tol", type=float, default=1e-5, help="largest allowed max-abs error (default 1e-5)")
    p.set_defaults(run=cmd_verify_parity)

    p = sub.add_parser("convert", help="turn a published checkpoint.pth (+ embedding CSV) into a self-contained model file")
    p.add_argument("checkpoint", type=Path, help="published CellFlux checkpoint.pth")
    p.add_argument("out", type=Path, help="output model file (.safetensors)")
    p.add_argument("--embeddings", type=Path, help="perturbation embedding CSV (name column, then one float row each)")
    p.add_argument("--channels", help="'DNA:blue,tubulin:green,actin:red' or a dataset name (bbbc021, rxrx1, cpg0000)")
    p.add_argument("--kind", choices=["compound", "gene", "other"], help="perturbation kind (default: from the dataset)")
    p.add_argument("--image-size", type=int, default=96, help="crop side in pixels (default 96)")
    p.add_argument("--preset", choices=["bbbc021", "rxrx1", "cpg0000"], help="architecture preset (default: inferred from the weights)")
    p.add_argument("--live-weights", action="store_true", help="use the live weights instead of the EMA weights")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("info", help="describe a model file or published checkpoint")
    p.add_argument("model", type=Path)
    p.add_argument("--perturbations", action="store_true", help="also list the vocabulary")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("generate", help="generate perturbed cells from control crops and write a TIFF")
    p.add_argument("--model", type=Path, required=True, help="model file (.safetensors) or published checkpoint.pth")
    p.add_argument("--controls", type=Path, required=True, help="control crops: .npy / .tif stack (N, C, H, W or N, H, W, C) or a folder of them")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--perturbation", help="perturbation name from the model's vocabulary")
    cond.add_argument("--smiles", help="SMILES of a compound the model never saw (compound models)")
    p.add_argument("--out", type=Path, required=True, help="output TIFF (ImageJ hyperstack T x cells x C)")
    p.add_argument("--n-cells", type=int, default=None, help="use only the first N control cells")
    p.add_argument("--solver", choices=["euler", "midpoint", "heun"], help="ODE solver (default: the model's)")
    p.add_argument("--grid", choices=["edm", "uniform"], help="time grid (default: the model's)")
    p.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance w (default: the model's)")
    p.add_argument("--noise-level", type=float, help="noise added to the controls (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--final-only", action="store_true", help="write only the final (t = 1) state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellflux {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
