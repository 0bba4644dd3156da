"""`cellflux profile SCREEN --out DIR`: CellProfiler measurements, effects and a ranking of a
generated screen or of real crops (docs/phenotype.md). The options are in ``cli.parser``
(:func:`add_profile_parser`); the work is ``phenotype.profile.run_profile``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_cellflux.phenotype import FEATURE_GROUPS


def add_profile_parser(sub) -> None:
    """The `profile` subcommand's options (torch-free, like the rest of the parser)."""
    from napari_cellflux.cli.parser import positive_int

    p = sub.add_parser("profile", help="measure cells with cp-measure (CellProfiler features), compare each perturbation "
                                       "with its controls and rank them; a generated screen or real crops")
    p.add_argument("screen", type=Path, help="screen folder from `cellflux screen` (manifest.json) or real crops "
                                             "(cells.csv, the plain format, or an IMPA metadata.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder: cells, profiles, shifts, ranked tables, figures")
    p.add_argument("--controls", type=Path, help="generated screens: the control pool given to `cellflux screen "
                                                 "--controls` (default: its synthetic pool)")
    p.add_argument("--channels", help="channel names in order, one of them DNA / DAPI / Hoechst (default: the screen's)")
    p.add_argument("--split", choices=["train", "test"], help="real crops: only this split (default: all cells)")
    p.add_argument("--max-cells", type=positive_int, help="measure at most this many cells per perturbation and of the controls")
    p.add_argument("--features", default=",".join(FEATURE_GROUPS),
                   help=f"feature groups, comma-separated (default all: {','.join(FEATURE_GROUPS)}); granularity is the slowest")
    p.add_argument("--reference", type=Path, help="profiles.csv of known perturbations (another profile run) for "
                                                  "the nearest ones (default: the other perturbations here)")
    p.add_argument("--bootstraps", type=positive_int, default=1000, help="bootstrap resamples per interval (default 1000)")
    p.add_argument("--permutations", type=positive_int, default=999, help="permutations per p-value (default 999)")
    p.add_argument("--seed", type=int, default=0, help="seed of every resample (default 0)")
    p.add_argument("--table-format", choices=["csv", "parquet"], default="csv", help="per-cell table (parquet needs pyarrow)")
    p.add_argument("--no-figures", action="store_true", help="skip heatmap.png and effects.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_cellflux.atomic import check_writable
    from napari_cellflux.models.channels import parse_channels
    from napari_cellflux.phenotype.effects import EffectOptions
    from napari_cellflux.phenotype.profile import ProfileOptions, run_profile
    from napari_cellflux.phenotype.sources import read_source

    check_writable(args.out, what="--out", folder=True)
    channels = [c.name for c in parse_channels(args.channels)] if args.channels else None
    source = read_source(args.screen, controls=args.controls, channels=channels, split=args.split,
                         max_cells=args.max_cells, seed=args.seed)
    groups = tuple(g.strip() for g in args.features.split(",") if g.strip())
    options = ProfileOptions(groups=groups, reference=args.reference, effects=EffectOptions(
        bootstraps=args.bootstraps, permutations=args.permutations, seed=args.seed))
    with tqdm(total=1, desc="measuring cells", unit="cell", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        profile = run_profile(source, args.out, options, table_format=args.table_format,
                              figures=not args.no_figures, progress=progress)
    top = profile.ranked.iloc[0]
    print(f"profiled {len(profile.ranked)} perturbation(s) of {args.screen} against {profile.summary['control_cells']} "
          f"control cells ({profile.summary['features_kept']} features); strongest: {top['perturbation']} "
          f"(effect {top['effect_size']:.2f} [{top['effect_low']:.2f}, {top['effect_high']:.2f}], p = {top['p_value']:.3g}); "
          f"wrote {args.out}")
    return 0
