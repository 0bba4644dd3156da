"""The effect of a perturbation on per-cell features, against control cells (docs/phenotype.md,
Effects): robust units, bootstrap intervals, one multivariate effect size with a permutation
p-value, phenotypic activity (mAP, copairs) and the nearest known perturbations.

Arrays are (cells, features) float; NaN marks a value that could not be measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd

from napari_cellflux.errors import InputError

MIN_CELLS = 10  # per group, for a bootstrap interval and a permutation p-value that mean something
# MAD of a normal distribution -> its SD, 1 / Phi^-1(3/4) = 1.4826 (scipy's and pycytominer's "normal" scale)
MAD_TO_SD = 1.0 / NormalDist().inv_cdf(0.75)


@dataclass(frozen=True)
class EffectOptions:
    """bootstraps: resamples for the intervals; permutations: label shuffles for the p-values;
    level: the interval's coverage; seed: every random draw; top: changed features listed."""

    bootstraps: int = 1000
    permutations: int = 999
    level: float = 0.95
    seed: int = 0
    top: int = 5


def check_enough(n: int, what: str, fix: str = "generate or select more cells") -> None:
    """Fewer than MIN_CELLS cells is an InputError that says how many are needed."""
    if n < MIN_CELLS:
        raise InputError(f"{what} has {n} measured cell(s); an interval needs at least {MIN_CELLS}: {fix}")


def robust_center_scale(controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature median (D,) and 1.4826 MAD (D,) of control cells (n, D), NaN ignored (pycytominer's
    robustize_mad). A feature constant over the controls gets scale NaN: it has no robust unit."""
    center = np.nanmedian(controls, axis=0)
    scale = MAD_TO_SD * np.nanmedian(np.abs(controls - center), axis=0)
    return center, np.where(scale > 0, scale, np.nan)


def robust_units(values: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(n, D) values -> (values - center) / scale."""
    return (values - center) / scale


def _medians_of_resamples(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B, D) nan-medians of values[rows[b]] for each resample b of rows (B, n)."""
    return np.nanmedian(values[rows], axis=1)


def feature_shifts(treated: np.ndarray, controls: np.ndarray, options: EffectOptions = EffectOptions(),
                   names: list[str] | None = None, what: str = "the perturbation") -> pd.DataFrame:
    """Per-feature shift of treated cells (n, D) from controls (m, D) in robust units: (median of
    treated - median of controls) / (1.4826 MAD of controls), with a percentile bootstrap interval
    (treated and control cells resampled independently; ``options.bootstraps`` resamples, seeded).

    Returns a DataFrame indexed by feature (``names``): shift, low, high. Features without a
    robust unit (constant controls) or unmeasured in either group are NaN.
    """
    treated, controls = np.asarray(treated, dtype=np.float64), np.asarray(controls, dtype=np.float64)
    check_enough(len(treated), what)
    check_enough(len(controls), "the control set", "give more control cells")
    import warnings

    rng = np.random.default_rng(options.seed)
    with warnings.catch_warnings():  # all-NaN features give NaN, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        center, scale = robust_center_scale(controls)
        shift = (np.nanmedian(treated, axis=0) - center) / scale
        boots = []
        step = max(1, 20_000_000 // max(1, (len(treated) + len(controls)) * treated.shape[1]))
        for start in range(0, options.bootstraps, step):
            b = min(step, options.bootstraps - start)
            t_rows = rng.integers(0, len(treated), (b, len(treated)))
            c_rows = rng.integers(0, len(controls), (b, len(controls)))
            c_center = _medians_of_resamples(controls, c_rows)
            c_scale = MAD_TO_SD * np.nanmedian(np.abs(controls[c_rows] - c_center[:, None, :]), axis=1)
            boots.append((_medians_of_resamples(treated, t_rows) - c_center) / np.where(c_scale > 0, c_scale, np.nan))
        boots = np.concatenate(boots)
        tail = (1 - options.level) / 2 * 100
        low, high = np.nanpercentile(boots, [tail, 100 - tail], axis=0)
    index = names if names is not None else [f"feature_{i}" for i in range(treated.shape[1])]
    return pd.DataFrame({"shift": shift, "low": low, "high": high}, index=index)


def _pairwise(profiles: np.ndarray) -> np.ndarray:
    """(n, n) Euclidean distances of (n, D) profiles, NaN counted as 0 (the control median)."""
    x = np.nan_to_num(profiles, nan=0.0, posinf=0.0, neginf=0.0)
    squared = (x**2).sum(axis=1)
    return np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0, None))


def _energy(distances: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| for index sets (B, n) and (B, m) of pooled cells.
    Pairs of one cell with itself are left out (the U-statistic), also when a bootstrap resample
    repeats a cell: counting their zero distances would inflate the distance of resamples."""
    def block(a, b):
        distinct = a[:, :, None] != b[:, None, :]
        return (distances[a[:, :, None], b[:, None, :]] * distinct).sum(axis=(1, 2)) / np.maximum(distinct.sum(axis=(1, 2)), 1)

    return 2.0 * block(first, second) - block(first, first) - block(second, second)


@dataclass(frozen=True)
class Effect:
    """One multivariate effect: the energy distance (robust units) of treated vs control cells,
    its bootstrap interval and permutation p-value."""

    size: float
    low: float
    high: float
    p_value: float


def energy_effect(treated: np.ndarray, controls: np.ndarray, options: EffectOptions = EffectOptions(),
                  what: str = "the perturbation") -> Effect:
    """Energy distance between treated (n, D) and control (m, D) profiles in robust units, with a
    percentile bootstrap interval over cells and a permutation p-value ((k + 1) / (P + 1), k the
    shuffles of the pooled cells at least as far apart as the observed groups)."""
    check_enough(len(treated), what)
    check_enough(len(controls), "the control set", "give more control cells")
    n, m = len(treated), len(controls)
    distances = _pairwise(np.concatenate([treated, controls]))
    rng = np.random.default_rng(options.seed)
    observed = float(_energy(distances, np.arange(n)[None], np.arange(n, n + m)[None])[0])
    boots = np.concatenate([
        _energy(distances, rng.integers(0, n, (b, n)), rng.integers(n, n + m, (b, m)))
        for b in _batches(options.bootstraps, n + m)
    ])
    shuffled = np.concatenate([
        _energy(distances, order[:, :n], order[:, n:])
        for order in (rng.permuted(np.tile(np.arange(n + m), (b, 1)), axis=1) for b in _batches(options.permutations, n + m))
    ])
    tail = (1 - options.level) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    p_value = (1 + int((shuffled >= observed - 1e-12).sum())) / (1 + len(shuffled))
    return Effect(size=observed, low=float(low), high=float(high), p_value=float(p_value))


def _batches(total: int, n: int) -> list[int]:
    """Split ``total`` resamples so one batch's index arrays stay near 10^7 entries."""
    step = max(1, 10_000_000 // (n * n))
    return [min(step, total - s) for s in range(0, total, step)]


def activity_map(treated: np.ndarray, controls: np.ndarray, options: EffectOptions = EffectOptions()) -> tuple[float, float]:
    """Phenotypic activity as copairs computes it: mean average precision of retrieving a treated
    cell's fellow treated cells against the controls (cosine similarity), and its p-value against
    copairs' permutation null (``options.permutations`` samples)."""
    from copairs.map import average_precision, mean_average_precision

    n, m = len(treated), len(controls)
    profiles = np.nan_to_num(np.concatenate([treated, controls]), nan=0.0, posinf=0.0, neginf=0.0)
    # Each control is its own group, so controls have no positive pairs (only treated cells are queries).
    meta = pd.DataFrame({"group": ["treated"] * n + [f"control_{i}" for i in range(m)],
                         "is_control": [False] * n + [True] * m})
    ap = average_precision(meta, profiles, pos_sameby=["group"], pos_diffby=[], neg_sameby=[],
                           neg_diffby=["is_control"], progress_bar=False)
    ap = ap[~ap["is_control"]]
    result = mean_average_precision(ap, sameby=["group"], null_size=max(options.permutations, 100), threshold=0.05,
                                    seed=options.seed, progress_bar=False, max_workers=1)
    row = result.iloc[0]
    return float(row["mean_average_precision"]), float(row["p_value"])


def cosine_similarity(profile: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Cosine of a profile (D,) with each row of references (k, D); NaN counted as 0."""
    a = np.nan_to_num(np.asarray(profile, dtype=np.float64))
    b = np.nan_to_num(np.asarray(references, dtype=np.float64))
    norms = np.linalg.norm(b, axis=1) * np.linalg.norm(a)
    return np.divide(b @ a, norms, out=np.zeros(len(b)), where=norms > 0)


def nearest(profile: pd.Series, references: pd.DataFrame, k: int = 3, exclude: str | None = None) -> list[tuple[str, float]]:
    """The ``k`` reference perturbations (rows of ``references``, one median robust profile each)
    most similar to ``profile`` by cosine, on the features both have; ``exclude``: a name to skip."""
    shared = [c for c in profile.index if c in references.columns]
    if not shared:
        raise InputError("the reference profiles share no feature with these cells; profile both with the same --features")
    refs = references.drop(index=[exclude], errors="ignore")
    similarity = cosine_similarity(profile[shared].to_numpy(float), refs[shared].to_numpy(float))
    order = np.argsort(-similarity, kind="stable")[:k]
    return [(str(refs.index[i]), float(similarity[i])) for i in order]
