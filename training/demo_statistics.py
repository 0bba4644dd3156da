"""Write the bundled demo's training-control statistics beside it:
``python -m training.demo_statistics`` (``--check``: only say whether the shipped file is current).

The demo file's bytes are pinned by the zoo, so its statistics cannot go inside it; they are
computed here exactly as ``training.train.export_model`` records them, from the screen the demo
was trained on (``training/configs/demo.yaml``: the five-times synthetic screen, seed 0), built in a
temporary folder, and the zoo attaches them when it loads the demo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from napari_cellflux.atomic import atomic_write_text
from napari_cellflux.errors import run_main
from napari_cellflux.models.channels import parse_channels
from napari_cellflux.models.domain import statistics_path
from napari_cellflux.models.zoo import ASSETS, REGISTRY, BundledModel

from .config import load_config
from .data import load_training_data
from .train import training_control_statistics

DEMO = next(e for e in REGISTRY if isinstance(e, BundledModel) and e.name == "demo")


def demo_statistics() -> dict:
    """The statistics of the demo's training controls (builds its screen, ~2 s)."""
    cfg = load_config("demo")
    with tempfile.TemporaryDirectory() as tmp:
        data_cfg = dataclasses.replace(cfg.data, root=str(Path(tmp) / "screen"))
        data = load_training_data(data_cfg, image_size=cfg.model.image_size, seed=cfg.run.seed, build=True)
        return training_control_statistics(data, parse_channels(cfg.data.channels))


def as_text(statistics: dict) -> str:
    return json.dumps(statistics, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo_statistics", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped file differs from a fresh computation")
    args = parser.parse_args(argv)
    path = statistics_path(ASSETS / DEMO.file)

    def run() -> int:
        text = as_text(demo_statistics())
        if args.check:
            current = path.is_file() and path.read_text(encoding="utf-8") == text
            print(f"{path}: {'up to date' if current else 'differs from a fresh computation; run without --check'}")
            return 0 if current else 1
        atomic_write_text(path, text)
        print(f"wrote {path}")
        return 0

    return run_main("python -m training.demo_statistics", run)


if __name__ == "__main__":
    sys.exit(main())
