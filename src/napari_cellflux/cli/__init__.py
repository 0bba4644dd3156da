"""The ``cellflux`` command line: subcommands in :mod:`.commands`, their options in :mod:`.parser`.

Every error a user can fix is one line and exit status 2 (:mod:`napari_cellflux.errors`).
"""

from __future__ import annotations

from napari_cellflux.cli.parser import add_mode_option, add_sampling_options, build_parser

__all__ = ["add_mode_option", "add_sampling_options", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    from napari_cellflux.errors import run_main
    from napari_cellflux.process import prepare_openmp

    # Before a command imports torch (OpenMP reads these once, when it loads). Spinning is kept:
    # a command usually owns its cores, where passive waiting costs ~1.5x (docs/speed.md).
    prepare_openmp(passive_wait=False)
    args = build_parser().parse_args(argv)
    return run_main(f"cellflux {args.command}", lambda: args.run(args))

