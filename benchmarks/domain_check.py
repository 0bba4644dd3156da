"""The domain check's margins and findings, as the Markdown tables of docs/domain-check.md:
``python -m benchmarks.domain_check [--real DIR]``.

Margins: every measure of the bundled samples (``synthetic_controls(64)``, seeds 0-3) and of the
cells the widget cuts from ``synthetic_field()`` (seeds 0-3) against the bundled demo's statistics,
with the range the check allows, and how often single cells and small groups of them get a
finding. Findings: real DNA fields copied into the demo's 3 channels and
cut at its 32 px (the test fixture, and with ``--real`` the reference fields it came from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tifffile

from napari_cellflux import api
from napari_cellflux.data.samples import synthetic_controls, synthetic_field
from napari_cellflux.generation.controls import crops_from_field
from napari_cellflux.models.domain import compare

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "domain" / "nf1_D6_dapi_256.tif"
SEEDS = (0, 1, 2, 3)
# Under --real DIR: (label, files); one file is copied into the 3 channels, three are the channels.
REAL = (
    ("nf1 D6 DAPI field, copied x3", ("nf1-schwann/D6_01_1_2_DAPI_001.tif",)),
    ("nf1 D6 DAPI, GFP, RFP (3 real stains)", ("nf1-schwann/D6_01_1_2_DAPI_001.tif", "nf1-schwann/D6_01_2_2_GFP_001.tif",
                                               "nf1-schwann/D6_01_3_2_RFP_001.tif")),
    ("cpg0000 A01 Hoechst (ch5), copied x3", ("cpg0000-BR00116991/r01c01f01p01-ch5sk1fk1fl1.tiff",)),
)


def margins(model) -> list[str]:
    """One row per measure: the allowed range, the values of the samples and of the field cells."""
    values: dict[str, dict[str, list[float]]] = {}
    allowed: dict[str, list[float]] = {}
    for seed in SEEDS:
        inputs = {"samples": synthetic_controls(64, seed=seed),
                  "field": crops_from_field([synthetic_field(seed).image], model, "synthetic field")}
        for kind, pixels in inputs.items():
            report = compare(model.control_statistics, pixels)
            assert report.ok, f"{kind} seed {seed}: {report.findings}"
            for m in report.measures:
                values.setdefault(m["measure"], {}).setdefault(kind, []).append(m["value"])
                allowed[m["measure"]] = m["allowed"]
    rows = ["| measure | allowed | samples (4 seeds) | field cells (4 seeds) | closest approach |", "|---|---|---|---|---|"]
    for name, (low, high) in allowed.items():
        seen = [v for kind in values[name].values() for v in kind]
        rows.append(f"| {name} | {low:.3g} to {high:.3g} | {_span(values[name]['samples'])} | {_span(values[name]['field'])} "
                    f"| {_closest(name, seen, low, high)} |")
    return rows


def _span(values: list[float]) -> str:
    return f"{min(values):.3g} to {max(values):.3g}"


def _closest(name: str, values: list[float], low: float, high: float) -> str:
    """How near the values come to a bound: a factor for intensities and areas, else a difference."""
    if "intensity" in name or "area" in name:
        factor = min(min(values) / low, high / max(values))
        return f"{factor:.1f}x inside"
    gaps = [high - max(values)] + ([] if "saturated" in name else [min(values) - low])  # no fraction is below 0
    return f"{min(gaps):.3g} inside"


def small_sets(model) -> list[str]:
    """How often single cells and small groups of the samples and field cells get a finding (a
    median of few cells is noisy)."""
    lines = []
    for kind, sets in (("sample cells, seeds 0-7", [synthetic_controls(64, seed=s) for s in range(8)]),
                       ("field cells, seeds 0-19", [crops_from_field([synthetic_field(s).image], model, "field") for s in range(20)])):
        for n in (1, 4, 16):
            groups = [cells[i:i + n] for cells in sets for i in range(0, len(cells) - n + 1, n)]
            flagged = [f for g in groups for f in compare(model.control_statistics, g).findings]
            lines.append(f"- {kind}, groups of {n}: {len(groups)} groups, findings: {len(flagged)}"
                         + "".join(f"\n  - {f}" for f in flagged))
    return lines


def findings(model, real: Path | None) -> list[str]:
    cases = [("test fixture `nf1_D6_dapi_256.tif`, copied x3", [tifffile.imread(FIXTURE)] * 3)]
    for label, files in REAL if real else ():
        try:
            images = [tifffile.imread(real / f) for f in files]
        except (OSError, ValueError) as err:  # the cpg0000 TIFFs are LZW: tifffile needs imagecodecs
            cases.append((label, f"not read: {err}"))
            continue
        cases.append((label, images * 3 if len(images) == 1 else images))
    lines = []
    for label, images in cases:
        if isinstance(images, str):
            lines += [f"- **{label}**: {images}"]
            continue
        cells = crops_from_field(images, model, label)
        report = compare(model.control_statistics, cells)
        lines.append(f"- **{label}** ({len(cells)} cells):")
        lines += [f"  - {f}" for f in report.findings] or ["  - no finding"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.domain_check", description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, help="the reference data folder holding nf1-schwann/ and cpg0000-BR00116991/")
    args = parser.parse_args(argv)
    model = api.load_model("demo", device="cpu")
    print("\n".join(["## Margins", "", *margins(model), "", "## Single cells and small groups", "", *small_sets(model), "",
                     "## Real fields in the demo", "", *findings(model, args.real)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
