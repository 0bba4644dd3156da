"""The job behind `cellflux profile`: measure every cell of a screen, compare each perturbation
with the controls, rank the perturbations and write tables and figures (docs/phenotype.md).

Profiles are in robust units of the controls (median / 1.4826 MAD, pycytominer's robustize_mad).
A feature is kept when the controls give it a robust unit (not constant) and measure it in at
least half of the cells; the others are listed as dropped in profile.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_cellflux.errors import InputError
from napari_cellflux.phenotype import FEATURE_GROUPS
from napari_cellflux.phenotype.effects import (
    EffectOptions,
    activity_map,
    check_enough,
    energy_effect,
    feature_shifts,
    nearest,
    robust_center_scale,
    robust_units,
)
from napari_cellflux.phenotype.features import FeatureOptions, feature_names, measure_cells, with_metadata, write_table
from napari_cellflux.phenotype.sources import CellSource

PERTURBATION = "Metadata_Perturbation"
MIN_MEASURED = 0.5  # a feature measured in fewer of the controls than this is dropped
# Robust values beyond this are clipped for the multivariate readouts (effect size, mAP, profiles):
# a feature with a tiny control spread must not outweigh the hundreds of others.
CLIP = 10.0
# pycytominer's drop_outliers cutoff: a feature whose median robust value passes it for some
# perturbation has a degenerate control spread (e.g. a stain absent from the nucleus), not an effect.
OUTLIER = 500.0


@dataclass(frozen=True)
class ProfileOptions:
    """groups: cp-measure feature groups; effects: intervals and p-values; reference: a
    profiles.csv of known perturbations (another `cellflux profile` run) to find the nearest
    among (default: the other perturbations of this screen); nearest: how many to list."""

    groups: tuple[str, ...] = FEATURE_GROUPS
    effects: EffectOptions = field(default_factory=EffectOptions)
    reference: Path | None = None
    nearest: int = 3


@dataclass
class Profile:
    """A profiled screen. cells: per-cell features with Metadata_ columns; profiles: one median
    robust profile per perturbation (rows); shifts: long table perturbation, feature, shift, low,
    high; ranked: one row per perturbation, strongest effect first; dropped: features left out."""

    cells: pd.DataFrame
    profiles: pd.DataFrame
    shifts: pd.DataFrame
    ranked: pd.DataFrame
    dropped: list[str]
    summary: dict


def measure_source(source: CellSource, groups: tuple[str, ...],
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per-cell features of the controls and every group, with Metadata_Perturbation,
    Metadata_IsControl, Metadata_Source and Metadata_Cell (index within its group)."""
    options = FeatureOptions(channels=source.channels, groups=groups)
    parts = [("control", True, source.controls)] + [(g.name, False, g.pixels) for g in source.groups]
    total, done = sum(len(p) for _, _, p in parts), 0
    tables = []
    for name, is_control, pixels in parts:
        def step(i: int, n: int, offset=done) -> None:
            if progress is not None:
                progress(offset + i, total)

        features = measure_cells(pixels, options, max_value=source.max_value, progress=step)
        done += len(pixels)
        tables.append(with_metadata(features, {
            "Perturbation": [name] * len(pixels), "IsControl": [is_control] * len(pixels),
            "Source": [source.kind] * len(pixels), "Cell": range(len(pixels)),
        }))
    return pd.concat(tables, ignore_index=True)


def kept_features(controls: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(kept, dropped) feature columns: kept ones have a robust unit and are measured in at least
    MIN_MEASURED of the control cells."""
    import warnings

    values = controls.to_numpy(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, scale = robust_center_scale(values)
    ok = np.isfinite(scale) & (np.isfinite(values).mean(axis=0) >= MIN_MEASURED)
    columns = list(controls.columns)
    return [c for c, k in zip(columns, ok) if k], [c for c, k in zip(columns, ok) if not k]


def drop_outliers(controls: pd.DataFrame, treated: pd.DataFrame, features: list[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped): features whose per-perturbation median robust value stays within OUTLIER."""
    import warnings

    center, scale = robust_center_scale(controls[features].to_numpy(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = treated.groupby(PERTURBATION, sort=False)[features].median().to_numpy(np.float64)
    extreme = (np.abs(robust_units(medians, center, scale)) > OUTLIER).any(axis=0)
    return [f for f, x in zip(features, extreme) if not x], [f for f, x in zip(features, extreme) if x]


def profile_table(cells: pd.DataFrame, options: ProfileOptions = ProfileOptions()) -> Profile:
    """Effects of every perturbation in a per-cell table (:func:`measure_source`) against its controls."""
    measured = cells[cells[feature_names(cells)].notna().any(axis=1)]  # cells whose nucleus was found
    is_control = measured["Metadata_IsControl"].astype(bool).to_numpy()
    controls = measured.loc[is_control, feature_names(cells)]
    check_enough(len(controls), "the control set", "give more control cells (or a larger --max-cells)")
    kept, dropped = kept_features(controls)
    if not kept:
        raise InputError("no feature varies over the control cells; check that the controls are real cells")
    treated = measured[~is_control]
    names = list(dict.fromkeys(treated[PERTURBATION]))
    if not names:
        raise InputError("the screen holds no treated cells to compare with the controls")
    kept, outliers = drop_outliers(controls[kept], treated, kept)
    dropped += outliers
    control_values = controls[kept].to_numpy(np.float64)
    center, scale = robust_center_scale(control_values)
    control_profiles = np.clip(robust_units(control_values, center, scale), -CLIP, CLIP)
    profiles, shift_tables, rows = {}, [], []
    for name in names:
        values = treated.loc[treated[PERTURBATION] == name, kept].to_numpy(np.float64)
        what = f"perturbation {name!r}"
        shifts = feature_shifts(values, control_values, options.effects, kept, what)
        robust = np.clip(robust_units(values, center, scale), -CLIP, CLIP)
        effect = energy_effect(robust, control_profiles, options.effects, what)
        activity, activity_p = activity_map(robust, control_profiles, options.effects)
        profiles[name] = np.nanmedian(robust, axis=0)
        shift_tables.append(shifts.assign(perturbation=name).rename_axis("feature").reset_index())
        rows.append({"perturbation": name, "n_cells": len(values), "effect_size": effect.size, "effect_low": effect.low,
                     "effect_high": effect.high, "p_value": effect.p_value, "mAP": activity, "mAP_p_value": activity_p,
                     "top_features": top_features(shifts, options.effects.top)})
    profile_frame = pd.DataFrame.from_dict(profiles, orient="index", columns=kept)
    profile_frame.index.name = PERTURBATION
    reference = read_profiles(options.reference) if options.reference else profile_frame
    for row in rows:
        exclude = None if options.reference else row["perturbation"]
        row["nearest"] = "; ".join(f"{n} ({s:.2f})" for n, s in
                                   nearest(profile_frame.loc[row["perturbation"]], reference, options.nearest, exclude))
    ranked = pd.DataFrame(rows).sort_values("effect_size", ascending=False, kind="stable").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    counts = {"control_cells": int(len(controls)), "unmeasured_cells": int(len(cells) - len(measured)),
              "features_measured": len(feature_names(cells)), "features_kept": len(kept)}
    return Profile(cells=cells, profiles=profile_frame, dropped=dropped, ranked=ranked, summary=counts,
                   shifts=pd.concat(shift_tables, ignore_index=True)[["perturbation", "feature", "shift", "low", "high"]])


def top_features(shifts: pd.DataFrame, k: int) -> str:
    """The ``k`` largest |shift| whose interval excludes 0, as 'feature +1.9 [1.2, 2.7]; ...'."""
    clear = shifts[(shifts["low"] > 0) | (shifts["high"] < 0)]
    order = clear["shift"].abs().sort_values(ascending=False, kind="stable").index[:k]
    return "; ".join(f"{f} {clear.at[f, 'shift']:+.2f} [{clear.at[f, 'low']:.2f}, {clear.at[f, 'high']:.2f}]" for f in order)


def read_profiles(path: str | Path) -> pd.DataFrame:
    """A profiles.csv written by :func:`write_profile` (rows: perturbations)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference profiles {path} do not exist; give the profiles.csv of a `cellflux profile` run")
    frame = pd.read_csv(path)
    if PERTURBATION not in frame.columns:
        raise InputError(f"{path}: no {PERTURBATION} column; give the profiles.csv of a `cellflux profile` run")
    return frame.set_index(PERTURBATION).drop(columns=[c for c in frame.columns if c.startswith("Metadata_") and c != PERTURBATION])


def write_profile(profile: Profile, out: str | Path, *, table_format: str = "csv", figures: bool = True,
                  about: dict | None = None) -> list[Path]:
    """Write cells.<csv|parquet>, profiles.csv, shifts.csv, ranked.csv, profile.json and (figures)
    heatmap.png and effects.png into ``out``, each atomically. Returns the paths."""
    from napari_cellflux.atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_table(profile.cells, out / f"cells.{table_format}")]
    counts = profile.ranked.set_index("perturbation")["n_cells"]
    profiles = profile.profiles.copy()
    profiles.insert(0, "Metadata_Cells", counts.reindex(profiles.index).to_numpy())
    written += [write_table(profiles.reset_index(), out / "profiles.csv"),
                write_table(profile.shifts, out / "shifts.csv"), write_table(profile.ranked, out / "ranked.csv")]
    if figures:
        from napari_cellflux.phenotype.figures import effect_chart, heatmap

        written += [heatmap(profile, out / "heatmap.png"), effect_chart(profile.ranked, out / "effects.png")]
    summary = {"format": "napari-cellflux/profile", "format_version": 1, **(about or {}), **profile.summary,
               "dropped_features": profile.dropped}
    atomic_write_text(out / "profile.json", json.dumps(summary, indent=2, default=str))
    return [*written, out / "profile.json"]


def run_profile(source: CellSource, out: str | Path, options: ProfileOptions = ProfileOptions(), *,
                table_format: str = "csv", figures: bool = True,
                progress: Callable[[int, int], None] | None = None) -> Profile:
    """Measure ``source``, profile it and write everything into ``out``; returns the profile."""
    if table_format not in ("csv", "parquet"):
        raise InputError(f"table format {table_format!r}: choose csv or parquet")
    started = time.perf_counter()
    cells = measure_source(source, options.groups, progress)
    measured_s = time.perf_counter() - started
    profile = profile_table(cells, options)
    about = {"source": str(source.path), "kind": source.kind, "channels": list(source.channels),
             "options": {**asdict(options), "reference": str(options.reference) if options.reference else None},
             "measure_seconds": round(measured_s, 1), "seconds": round(time.perf_counter() - started, 1)}
    write_profile(profile, out, table_format=table_format, figures=figures, about=about)
    return profile
