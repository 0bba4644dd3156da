"""The ``cellflux`` options: one parser per subcommand, the option groups that several share, and
the one-line error format. Needs no torch, so ``cellflux --help`` is instant."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_cellflux import __version__
from napari_cellflux.cli.commands import (
    cmd_convert,
    cmd_extract,
    cmd_generate,
    cmd_info,
    cmd_screen,
    cmd_synth,
    cmd_verify_parity,
    cmd_zoo,
)
from napari_cellflux.cli.profile import add_profile_parser
from napari_cellflux.settings import (
    COMPILE_MODES,
    DEFAULT_MODE,
    GRID_NAMES,
    KINDS,
    MODE_NAMES,
    MODES,
    PRECISIONS,
    PRESET_NAMES,
    SOLVER_NAMES,
)


def add_model_and_condition(p: argparse.ArgumentParser, controls_help: str, *, many: bool = False) -> None:
    """--model, --controls and the --perturbation / --smiles choice (generate and screen); ``many``
    (screen): several names, the whole vocabulary or a SMILES CSV."""
    p.add_argument("--model", default="demo", help="zoo name (default: the bundled demo), model file (.safetensors) or published checkpoint.pth")
    p.add_argument("--controls", type=Path, help=controls_help)
    if not many:
        cond = p.add_mutually_exclusive_group()
        cond.add_argument("--perturbation", help="perturbation name from the model's vocabulary")
        cond.add_argument("--smiles", help="SMILES of a compound the model never saw (compound models)")
        return
    names = p.add_mutually_exclusive_group()
    names.add_argument("--perturbation", nargs="+", action="extend", metavar="NAME",
                       help="perturbation names from the model's vocabulary (several, or the option repeated)")
    names.add_argument("--all-perturbations", action="store_true", help="every perturbation of the model's vocabulary")
    unseen = p.add_mutually_exclusive_group()
    unseen.add_argument("--smiles", help="SMILES of a compound the model never saw (compound models)")
    unseen.add_argument("--smiles-csv", type=Path, metavar="FILE",
                        help="CSV with the columns name and smiles: compounds the model never saw, one per row")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampler options that :func:`sampling_from_args` reads (unset: the model's default)."""
    p.add_argument("--solver", choices=SOLVER_NAMES, help="ODE solver (default: the model's)")
    p.add_argument("--grid", choices=GRID_NAMES, help="time grid (default: the model's)")
    p.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance w (default: the model's)")
    p.add_argument("--noise-level", type=float, help="noise added to the controls (default: the model's)")
    p.add_argument("--autoguidance", type=float, metavar="A",
                   help="sample mode: push away from the model file's guide network, v = (1 + A) v - A v_guide; "
                        "0 = none, each evaluation then costs twice (default: the model's; docs/modes.md)")


def add_mode_option(p: argparse.ArgumentParser) -> None:
    """--mode (generate and evaluation): what the run answers (settings.MODES); a noise level or
    autoguidance given with morph is refused by :func:`napari_cellflux.settings.check_mode_noise`."""
    p.add_argument("--mode", choices=MODE_NAMES, default=DEFAULT_MODE,
                   help="; ".join(f"{name}: {text}" for name, text in MODES.items())
                   + f" (default {DEFAULT_MODE}, the paper's; docs/modes.md)")


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """The options that :func:`speed_from_args` reads (generate and screen)."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network precision (auto: bf16 on GPUs that support it; fast: also bf16 on CPUs with native bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC layout (default: on for CUDA)")
    p.add_argument("--compile", nargs="?", const="auto", default=None, choices=("auto", *COMPILE_MODES),
                   help="torch.compile the UNet (auto: CUDA graphs on CUDA); pays off for long screens")
    p.add_argument("--images-per-forward", type=positive_int, default=None, metavar="N",
                   help="the most images one network forward takes; larger forwards run in parts (default: the "
                        "hardware policy's, 32-128 on a CPU, all on a GPU; docs/speed.md)")


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


def cell_indices(text: str) -> list[int]:
    """An argparse type: comma-separated cell indices >= 0 ("0,3,5")."""
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated cell numbers such as 0,3,5, got {text!r}") from None
    if not indices or min(indices) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated cell numbers >= 0 such as 0,3,5, got {text!r}")
    return indices


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
    p.add_argument("--out", type=Path, required=True,
                   help="output TIFF (ImageJ hyperstack frames x cells x C, frame 0 the controls; channel colours, µm scale)")
    p.add_argument("--n-cells", type=positive_int, default=None, help="use only the first N control cells")
    add_mode_option(p)
    add_sampling_options(p)
    p.add_argument("--gif", type=Path, help="also write the morph as a looping GIF (channels in their colours)")
    p.add_argument("--gif-cells", type=cell_indices, metavar="I,J,...", help="cells (0-based) in the GIF (default: all)")
    p.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    add_speed_options(p)
    p.add_argument("--final-only", action="store_true", help="write only the final (t = 1) state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_generate)
    p = sub.add_parser("screen", help="virtual screen: many cells of one or many perturbations in chunks streamed to disk (resumable, torchrun-ready)")
    add_model_and_condition(p, controls_help="control crop pool: .npy / .tif stack or a folder of them; cells are drawn from it with replacement (default: 64 synthetic control cells)", many=True)
    p.add_argument("--n-cells", type=positive_int, required=True, help="cells to generate per perturbation, e.g. 100000")
    p.add_argument("--chunk-size", type=positive_int, default=1024, help="cells per chunk file (default 1024); memory is one chunk")
    p.add_argument("--out", type=Path, required=True, help="screen folder: manifest.json + a folder of chunk_<i>.npy per perturbation; run again to resume")
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

    p = sub.add_parser("extract", help="segment nuclei in fields (channel files, a LoadData CSV or a plate folder) and write centred single-cell crops (plain format)")
    p.add_argument("field", type=Path, nargs="*", help="one field: a TIFF per channel in the model's order, or one (C, H, W) / (H, W, C) TIFF")
    p.add_argument("--loaddata", type=Path, help="CellProfiler LoadData CSV: every field (row) of a plate")
    p.add_argument("--images", type=Path, help="plate folder of TIFFs named by --name-pattern (needs --plate-map)")
    p.add_argument("--plate-map", type=Path, help="CSV well,perturbation,is_control[,batch]: each well's treatment")
    p.add_argument("--name-pattern", help="file names of --images: imagexpress (default), opera, or a regex with groups well (or row, col), site, channel")
    p.add_argument("--channels", help="channel names in order (DNA,Tubulin,Actin) or NAME=KEY, KEY the LoadData column or file-name channel (DNA=5); default: the model's")
    p.add_argument("--model", help="zoo name or model file: crop size, channel order and pixel size to match")
    p.add_argument("--pixel-size", type=float, help="µm per pixel of the input (default: from the TIFF metadata)")
    p.add_argument("--out", type=Path, required=True, help="plain-format folder (cells.csv + TIFFs); fields accumulate")
    p.add_argument("--perturbation", help="what the field(s) were treated with, e.g. DMSO (or use --plate-map)")
    p.add_argument("--batch", help="batch of the field(s) (controls pair within a batch; default for plates: the plate)")
    p.add_argument("--control", action="store_true", help="the field(s) show control (e.g. DMSO) cells")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--prefix", help="crop file name prefix (default: the field's file name; plates: <plate>_<well>)")
    p.add_argument("--crop-size", type=positive_int, help="crop side in pixels (default: the model's, else 96)")
    p.add_argument("--nucleus-channel", type=non_negative_int, help="channel of the DNA stain (default: the one named DNA/DAPI/Hoechst, else 0)")
    p.add_argument("--channel-axis", type=int, help="channel axis of a 3-D image (default: guessed)")
    p.add_argument("--labels", type=Path, help="nucleus label image (TIFF, same H x W) of one field instead of segmenting")
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
    add_profile_parser(sub)
    return parser
