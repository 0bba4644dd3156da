"""Is this something the model knows? Summary statistics of a model's training controls, and the
comparison of new control cells with them before generating.

A model carries any input somewhere, so a real field fed to a model trained on other cells gives
confident nonsense. The check names what differs (copied channels, intensities, saturation, how
much of a crop a stain covers, nuclear area, correlations between channels) and warns; it never
refuses. Thresholds are generous: the bundled samples pass with wide margins and the mistakes it
is meant for miss them by far (docs/domain-check.md gives both). numpy and scikit-image; no torch.

Statistics are in stored pixel values over a few hundred cells (N, C, H, W): per channel the
percentiles of the pixel values, of each cell's mean and of each cell's fraction above background
(an Otsu threshold of the channel over the set), the saturated fraction; the area of the nucleus
at the crop centre on the DNA channel (px, and µm² when the pixel size is known); and the per-cell
Pearson r between channels (mean and percentiles over cells, C x C).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import nucleus_channel

if TYPE_CHECKING:
    from napari_cellflux.models.model_file import CellFluxModel

T = TypeVar("T")
STATISTICS_VERSION = 1
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
LOW, MEDIAN, HIGH = 0, 3, 6  # indices of the 1st, 50th and 99th percentile in PERCENTILES
MAX_CELLS = 500  # a larger set is measured on this many evenly spaced cells (deterministic, bounded time)
CHUNK = 128  # cells per step of the per-cell loops (bounds the float32 copies)

# Thresholds; docs/domain-check.md lists how far the bundled samples stay from each.
INTENSITY_FACTOR = 2.5  # median cell mean this many times below the 1st / above the 99th percentile
NEAR_BLACK = 0.1  # a channel whose 99th pixel percentile is under this fraction of full scale
SATURATED = 0.02  # fraction of pixels at full scale (and over 4x the training controls')
FOREGROUND_SLACK = 0.5  # median foreground fraction under half the 1st percentile, or this share of the way from the 99th to 1
AREA_FACTOR = 2.0  # median nuclear area this many times the training median, or under 1 / it
CORRELATION_SLACK = 0.2  # mean r this far outside the training cells' 1st-99th percentile
COPY_R = 0.99  # channels this correlated in every sense are one stain twice
SCALE_HINT = "wrong scale? cut the cells at the model's pixel size (pass --pixel-size)"
NOT_CHECKED = "the model records no training statistics; not checked"


class DomainWarning(UserWarning):
    """New control cells are unlike the model's training controls; the message is one finding."""


@dataclass(frozen=True)
class Measure:
    """One compared quantity of the new cells: ``value``, the range ``low`` .. ``high`` the training
    controls allow, and the finding when it lies outside."""

    name: str
    value: float
    low: float
    high: float
    finding: str = ""

    def to_dict(self) -> dict:
        return {"measure": self.name, "value": _rounded(self.value), "allowed": [_rounded(self.low), _rounded(self.high)],
                "ok": not self.finding}


@dataclass
class DomainReport:
    """The comparison of new control cells with a model's training controls.

    ok: no finding. findings: one sentence each, naming the channel, the measure, the training
    controls' range and the value. checked: False when there was nothing to compare with (``note``
    says why). cells: how many cells were measured. measures: every compared quantity
    (:meth:`Measure.to_dict`), inside its range or not.
    """

    ok: bool
    findings: list[str] = field(default_factory=list)
    checked: bool = True
    note: str = ""
    cells: int = 0
    measures: list[dict] = field(default_factory=list)

    def messages(self) -> list[str]:
        """What to tell the user: the findings, or why nothing was checked."""
        return list(self.findings) if self.checked else [self.note]

    def to_dict(self) -> dict:
        return asdict(self)


def _measure(pixels: np.ndarray, dna: int, max_value: float) -> dict:
    """Per-cell and per-set measures of (N, C, H, W) stored values (the raw material of both the
    statistics and the comparison)."""
    from skimage.filters import threshold_otsu

    x = np.asarray(pixels)
    if len(x) > MAX_CELLS:
        x = x[np.linspace(0, len(x) - 1, MAX_CELLS).round().astype(int)]
    n, c = x.shape[:2]
    by_channel = np.moveaxis(x, 1, 0).reshape(c, -1)
    # A constant channel has no background to separate; every pixel then counts as background.
    thresholds = np.array([threshold_otsu(v) if v.min() < v.max() else float(v.max()) for v in by_channel], dtype=np.float64)
    cell_mean = np.empty((n, c))
    foreground = np.empty((n, c))
    area = np.empty(n)
    r = np.empty((n, c, c))
    for start in range(0, n, CHUNK):
        part = x[start:start + CHUNK].astype(np.float32)
        rows = slice(start, start + len(part))
        cell_mean[rows] = part.mean(axis=(2, 3))
        above = part > thresholds[None, :, None, None]
        foreground[rows] = above.mean(axis=(2, 3))
        area[rows] = [_centre_nucleus_area(mask) for mask in above[:, dna]]
        r[rows] = _pearson(part.reshape(len(part), c, -1))
    return {
        "cells": n,
        "pixels": np.percentile(by_channel, PERCENTILES, axis=1).T,
        "cell_mean": cell_mean,
        "foreground": foreground,
        "thresholds": thresholds,
        "saturated": (by_channel >= max_value).mean(axis=1),
        "area": area,
        "r": r,
    }


def _centre_nucleus_area(mask: np.ndarray) -> int:
    """Pixels of the foreground component at the crop centre (else the largest one), (H, W) mask."""
    from skimage.measure import label

    labels = label(mask, connectivity=1)
    centre = labels[mask.shape[0] // 2, mask.shape[1] // 2]
    if centre:
        return int((labels == centre).sum())
    counts = np.bincount(labels.ravel())[1:]
    return int(counts.max()) if len(counts) else 0


def _pearson(flat: np.ndarray) -> np.ndarray:
    """(n, C, C) Pearson r between the channels of each cell, flat (n, C, P); NaN where a channel is constant."""
    centred = flat - flat.mean(axis=-1, keepdims=True)
    norm = np.sqrt((centred ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("nip,njp->nij", centred, centred) / (norm[:, :, None] * norm[:, None, :])


def _quiet(reduce, *args, **kwargs) -> np.ndarray:
    """A nan-reduction that leaves all-NaN pairs (a constant channel) NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(*args, **kwargs)


def _rounded(value):
    """JSON-ready nested lists, 4 decimals (None for NaN)."""
    if isinstance(value, np.ndarray):
        return [_rounded(v) for v in value]
    value = float(value)
    return None if np.isnan(value) else round(value, 4)


def control_statistics(
    pixels: np.ndarray, channel_names: Sequence[str], pixel_size_um: float | None = None, max_value: float = 255.0
) -> dict:
    """Summary of control cells (N, C, H, W) in stored values (0..``max_value``) for
    :func:`compare`; JSON-serialisable, with a version key. ``pixel_size_um`` (µm per pixel)
    adds the nuclear area in µm²."""
    x = np.asarray(pixels)
    if x.ndim != 4 or len(x) == 0 or x.shape[1] != len(channel_names):
        raise InputError(f"control statistics need (N, C, H, W) cells with C = {len(channel_names)} channels, got shape {x.shape}")
    dna = nucleus_channel(channel_names)
    m = _measure(x, dna, max_value)
    area = np.percentile(m["area"], PERCENTILES)
    return {
        "version": STATISTICS_VERSION,
        "cells": m["cells"],
        "image_size": int(x.shape[-1]),
        "channels": list(channel_names),
        "dna_channel": dna,
        "max_value": float(max_value),
        "pixel_size_um": pixel_size_um,
        "percentiles": list(PERCENTILES),
        "pixel_intensity": _rounded(m["pixels"]),  # (C, percentiles)
        "cell_mean_intensity": _rounded(np.percentile(m["cell_mean"], PERCENTILES, axis=0).T),
        "foreground_threshold": _rounded(m["thresholds"]),
        "foreground_fraction": _rounded(np.percentile(m["foreground"], PERCENTILES, axis=0).T),
        "saturated_fraction": _rounded(m["saturated"]),
        "nuclear_area_px": _rounded(area),
        "nuclear_area_um2": None if pixel_size_um is None else _rounded(area * pixel_size_um ** 2),
        "correlation": _rounded(_quiet(np.nanmean, m["r"], axis=0)),  # (C, C) mean per-cell r
        "correlation_percentiles": _rounded(np.moveaxis(_quiet(np.nanpercentile, m["r"], PERCENTILES, axis=0), 0, -1)),  # (C, C, percentiles)
    }


def statistics_path(model_file: str | Path) -> Path:
    """Where statistics live beside a model file that cannot carry them (the bundled demo, whose
    bytes the zoo pins): ``<stem>_control_statistics.json``."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.stem}_control_statistics.json")


def statistics_beside(model_file: str | Path) -> dict:
    """The statistics saved beside ``model_file`` ({} when there are none)."""
    path = statistics_path(model_file)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def compare(statistics: dict, pixels: np.ndarray, *, pixel_size_um: float | None = None, max_value: float | None = None) -> DomainReport:
    """New control cells (N, C, H, W, stored values) against a model's training-control
    ``statistics`` (:func:`control_statistics`); ``pixel_size_um`` of the new cells compares
    nuclear areas in µm² when the statistics know theirs too."""
    if not statistics:
        return DomainReport(ok=True, checked=False, note=NOT_CHECKED)
    version = statistics.get("version")
    if not isinstance(version, int) or version > STATISTICS_VERSION:
        return DomainReport(ok=True, checked=False, note=f"the model's training statistics are version {version!r}, "
                                                         "newer than this napari-cellflux reads; not checked")
    x = np.asarray(pixels)
    names = statistics["channels"]
    if x.ndim != 4 or x.shape[1] != len(names):
        return DomainReport(ok=True, checked=False, note=f"the training statistics describe {len(names)} channels, "
                                                         f"the cells have shape {x.shape}; not checked")
    top = statistics["max_value"] if max_value is None else max_value
    m = _measure(x, statistics["dna_channel"], top)
    copies, measures = _copies(statistics, m, x)
    # A copied channel repeats its original's findings; a saturated or near-black one has no
    # meaningful shape or correlation: only the first finding about each is worth reading.
    skip = set(copies)
    for k in range(len(names)):
        if k not in copies:
            found, scaled_wrongly = _intensity(statistics, m, k, top)
            measures += found
            skip |= {k} if scaled_wrongly else set()
    measures += [f for k in range(len(names)) if k not in skip for f in _foreground(statistics, m, k)]
    measures += _correlations(statistics, m, skip)
    measures.append(_area(statistics, m, pixel_size_um))
    findings = [f.finding for f in measures if f.finding]
    return DomainReport(ok=not findings, findings=findings, cells=m["cells"], measures=[f.to_dict() for f in measures])


def _label(statistics: dict, channels: Sequence[int]) -> str:
    """'channel 0 (DNA)' or 'channels 1 and 2 (cytoskeleton, cytoplasm)'."""
    names = statistics["channels"]
    if len(channels) == 1:
        return f"channel {channels[0]} ({names[channels[0]]})"
    listed = ", ".join(map(str, channels[:-1])) + f" and {channels[-1]}"
    return f"channels {listed} ({', '.join(names[k] for k in channels)})"


def _copies(statistics: dict, m: dict, x: np.ndarray) -> tuple[set[int], list[Measure]]:
    """Channels that repeat an earlier one (identical, or r >= COPY_R where the training controls'
    r is lower), as one finding per original channel."""
    r, trained = _quiet(np.nanmean, m["r"], axis=0), statistics["correlation"]
    copy_of: dict[int, int] = {}
    for j in range(1, x.shape[1]):
        for i in range(j):
            if i in copy_of:  # a copy's copies are named as copies of the original
                continue
            if (np.array_equal(x[:, i], x[:, j]) or r[i, j] >= COPY_R) and (trained[i][j] or 0.0) < COPY_R:
                copy_of[j] = i
                break
    measures = []
    for i in sorted(set(copy_of.values())):
        js = [j for j, original in copy_of.items() if original == i]
        verb = "are copies" if len(js) > 1 else "is a copy"
        low = min(float(r[i, j]) if np.isfinite(r[i, j]) else 1.0 for j in js)
        train = " and ".join(_number(trained[i][j]) for j in js)
        finding = (f"{_label(statistics, js)} {verb} of {_label(statistics, [i])} (r = {low:.2f}; "
                   f"the model's training controls have r = {train})")
        measures.append(Measure(f"copies of {statistics['channels'][i]}", low, -1.0, COPY_R, finding))
    return set(copy_of), measures


def _intensity(statistics: dict, m: dict, k: int, top: float) -> tuple[list[Measure], bool]:
    """Saturation and brightness of channel ``k``, and whether it looks saturated or near-black."""
    name, label = statistics["channels"][k], _label(statistics, [k])
    saturated, trained = float(m["saturated"][k]), statistics["saturated_fraction"][k]
    limit = max(SATURATED, 4 * trained)
    too_saturated = saturated > limit
    finding = (f"{label}: {saturated:.0%} of the pixels are saturated ({top:g}; the model's training controls "
               f"{trained:.1%}): 16-bit values scaled wrongly?") if too_saturated else ""
    saturation = Measure(f"{name} saturated fraction", saturated, 0.0, limit, finding)
    mean = float(np.median(m["cell_mean"][:, k]))
    low, high = statistics["cell_mean_intensity"][k][LOW], statistics["cell_mean_intensity"][k][HIGH]
    finding = ""
    dark = mean * INTENSITY_FACTOR < low and m["pixels"][k][HIGH] < NEAR_BLACK * top
    if mean * INTENSITY_FACTOR < low:
        hint = "near-black: 16-bit values scaled wrongly?" if dark else "another stain or exposure?"
        finding = (f"{label} intensity (median cell mean) {mean:.3g} is {low / max(mean, 1e-9):.1f}x below the 1st "
                   f"percentile of the model's training controls ({low:.3g}); {hint}")
    elif mean > INTENSITY_FACTOR * high and not too_saturated:
        finding = (f"{label} intensity (median cell mean) {mean:.3g} is {mean / high:.1f}x above the 99th "
                   f"percentile of the model's training controls ({high:.3g}); another stain or exposure?")
    brightness = Measure(f"{name} cell mean intensity", mean, low / INTENSITY_FACTOR, high * INTENSITY_FACTOR, finding)
    return [saturation, brightness], too_saturated or dark


def _foreground(statistics: dict, m: dict, k: int) -> list[Measure]:
    """The share of a crop above background of channel ``k`` (not of the DNA channel: the nuclear
    area measures its extent)."""
    if k == statistics["dna_channel"]:
        return []
    share = float(np.median(m["foreground"][:, k]))
    low, high = statistics["foreground_fraction"][k][LOW], statistics["foreground_fraction"][k][HIGH]
    allowed = (FOREGROUND_SLACK * low, high + FOREGROUND_SLACK * (1 - high))
    finding = ""
    if not allowed[0] <= share <= allowed[1]:
        finding = (f"{_label(statistics, [k])} covers {share:.0%} of a crop above background (median); the model's "
                   f"training controls {low:.0%} to {high:.0%} (1st to 99th percentile): another stain?")
    return [Measure(f"{statistics['channels'][k]} foreground fraction", share, *allowed, finding)]


def _correlations(statistics: dict, m: dict, skip: set[int]) -> list[Measure]:
    r, spread, names = _quiet(np.nanmean, m["r"], axis=0), statistics["correlation_percentiles"], statistics["channels"]
    measures = []
    for i in range(len(r)):
        for j in range(i + 1, len(r)):
            low, high = spread[i][j][LOW], spread[i][j][HIGH]
            if i in skip or j in skip or low is None or not np.isfinite(r[i, j]):
                continue
            allowed = (low - CORRELATION_SLACK, high + CORRELATION_SLACK)
            finding = ""
            if not allowed[0] <= r[i, j] <= allowed[1]:
                finding = (f"{_label(statistics, [i, j])} correlate with r = {r[i, j]:.2f}; the model's training controls "
                           f"have r = {_number(statistics['correlation'][i][j])} ({low:.2f} to {high:.2f} in 98% of cells): "
                           "another stain, or the channels in another order?")
            measures.append(Measure(f"r {names[i]}-{names[j]}", float(r[i, j]), *allowed, finding))
    return measures


def _area(statistics: dict, m: dict, pixel_size_um: float | None) -> Measure:
    area = float(np.median(m["area"]))
    trained, unit = statistics["nuclear_area_px"][MEDIAN], "px"
    if pixel_size_um is not None and statistics.get("nuclear_area_um2"):
        area, trained, unit = area * pixel_size_um ** 2, statistics["nuclear_area_um2"][MEDIAN], "µm²"
    ratio = area / max(trained, 1e-9)
    finding = ""
    if not 1 / AREA_FACTOR <= ratio <= AREA_FACTOR:
        finding = (f"nuclei are {ratio:.1f}x the training controls' area (median {area:.0f} {unit} vs {trained:.0f} {unit} "
                   f"on {_label(statistics, [statistics['dna_channel']])}): {SCALE_HINT}")
    return Measure(f"nuclear area {unit}", area, trained / AREA_FACTOR, trained * AREA_FACTOR, finding)


def _number(value) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def print_warnings(prefix: str, run: Callable[[], T]) -> T:
    """``run()``, each DomainWarning it raises printed at once as one ``<prefix>: warning: ...``
    line on stderr (above a tqdm progress bar), like the entry points' ``<prefix>: error: ...``
    lines, instead of Python's two-line form."""
    from tqdm import tqdm

    show = warnings.showwarning

    def showwarning(message, category, *rest, **options):
        if issubclass(category, DomainWarning):
            tqdm.write(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **options)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DomainWarning)  # every finding, however often its text recurs
        warnings.showwarning = showwarning
        return run()


def check_domain(model: "CellFluxModel", pixels: np.ndarray, *, pixel_size_um: float | None = None) -> DomainReport:
    """Compare control cells (N, C, H, W, stored values) with ``model``'s training controls and
    warn (:class:`DomainWarning`, one per finding, or one saying nothing was checked)."""
    report = compare(model.control_statistics, pixels, pixel_size_um=pixel_size_um, max_value=model.normalization.max_value)
    for message in report.messages():
        warnings.warn(message, DomainWarning, stacklevel=3)
    return report
