"""Evaluation maths: image preparation for FID/KID, Frechet and kernel distances, morphology
measured from pixels, and a small classifier for MoA accuracy. numpy / scipy / scikit-image /
torch only; no learned network here (Inception lives in ``training.inception``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import linalg, ndimage
from skimage import filters, measure

from napari_cellflux.errors import InputError

# --------------------------------------------------------------------------------------------
# Images for FID / KID (docs/method.md, Evaluation protocol)

# RxRx1 6 -> 3 channels (1-based): R = c3 + c5/2 + c6/2, G = c2 + c4/2 + c6/2, B = c1 + c4/2 + c5/2.
RXRX1_TO_RGB = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.5, 0.5],
        [0.0, 1.0, 0.0, 0.5, 0.0, 0.5],
        [1.0, 0.0, 0.0, 0.5, 0.5, 0.0],
    ]
)


def rgb_matrix(data_format: str, channels: int) -> np.ndarray:
    """(3, C) linear map from a dataset's channels to the 3 channels Inception sees.

    bbbc021: the 3 channels as they are; rxrx1: the published 6 -> 3 mix; cpg0000: the first 3
    channels; plain: the first 3 channels (1 channel: grey, 2 channels: third one black).
    """
    if data_format == "rxrx1":
        if channels != 6:
            raise InputError(f"the RxRx1 colour mapping needs 6 channels, the cells have {channels}")
        return RXRX1_TO_RGB.copy()
    if data_format == "bbbc021" and channels != 3:
        raise InputError(f"BBBC021 cells have 3 channels, these have {channels}; pick the right --format")
    if data_format == "cpg0000" and channels < 3:
        raise InputError(f"cpg0000 (JUMP) cells have 5 channels, these have {channels}; pick the right --format")
    matrix = np.zeros((3, channels))
    if channels == 1:
        matrix[:, 0] = 1.0
    else:
        for c in range(min(3, channels)):
            matrix[c, c] = 1.0
    return matrix


def to_inception_rgb(pixels: np.ndarray, matrix: np.ndarray) -> torch.Tensor:
    """uint8 cells (N, C, H, W) -> float32 RGB (N, 3, H, W) in [0, 1]: the 8-bit values / 255,
    mixed by ``matrix`` (3, C) and clamped to [0, 1]."""
    if pixels.dtype != np.uint8:
        raise InputError(f"FID/KID images must be 8-bit (uint8), got {pixels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0
    rgb = torch.einsum("rc,nchw->nrhw", torch.as_tensor(matrix, dtype=torch.float32), x)
    return rgb.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Frechet and kernel distances


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise InputError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), the Frechet distance of two Gaussians.

    The matrix square root is scipy's ``sqrtm``; if the product is singular enough to give
    non-finite values, 1e-6 is added to both diagonals (as the reference FID code does). A
    numerically complex result keeps its real part.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise InputError(f"statistics differ in shape: {mu1.shape} / {mu2.shape}, {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of (n, D) and (m, D) features (n, m >= 2).

    With few images (n m < D^2, e.g. FIDc's per-perturbation sets against 2048-d features) the
    covariances are singular and sqrtm of their product is both slow and inaccurate; there the
    trace term is computed exactly from the centred features A, B instead:
    tr((S1 S2)^(1/2)) = ||A B^T||_* / sqrt((n - 1)(m - 1)) (the nonzero eigenvalues of S1 S2 are
    the squared singular values of A B^T over (n - 1)(m - 1)). Otherwise :func:`frechet_distance`.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"need two sets of >= 2 feature vectors of one dimension, got shapes {a.shape} and {b.shape}")
    n, m, d = len(a), len(b), a.shape[1]
    if n * m >= d * d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    diff = mu_a - mu_b
    value = diff @ diff + (ca**2).sum() / (n - 1) + (cb**2).sum() / (m - 1) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for rows of x (n, d) and y (m, d) -> (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with :func:`polynomial_kernel` (diagonals of k(x, x), k(y, y) left out)."""
    n, m = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    features_a: np.ndarray, features_b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` random subsets (without replacement) of
    :func:`mmd2_unbiased`. A set smaller than ``subset_size`` is used whole; if both are, there
    is only one distinct subset and it is computed once (std 0)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise InputError(f"KID needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    n, m = min(subset_size, len(a)), min(subset_size, len(b))
    if n == len(a) and m == len(b):
        return mmd2_unbiased(a, b), 0.0
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------------------------
# Morphology measured from pixels

EFFECT_FEATURES_BASE = ("nuclear_area", "cell_elongation")


def morphology_columns(channels: int) -> list[str]:
    """Columns of :func:`measure_cells` for cells with ``channels`` channels."""
    columns = ["nuclear_area", "nuclear_eccentricity", "cell_area", "cell_elongation"]
    if channels > 1:
        columns.append("texture_c1")
    columns += [f"intensity_c{c}" for c in range(channels)]
    columns += [f"crop_mean_c{c}" for c in range(channels)]
    return columns


def effect_columns(channels: int) -> list[str]:
    """The positive quantities whose treated / control ratio is reported as an effect."""
    return [*EFFECT_FEATURES_BASE, *(["texture_c1"] if channels > 1 else []), *[f"intensity_c{c}" for c in range(channels)]]


def _object_at_centre(mask: np.ndarray) -> np.ndarray:
    """The connected component of ``mask`` under the image centre, else the one nearest to it."""
    labels = measure.label(mask)
    if labels.max() == 0:
        return np.zeros_like(mask)
    h, w = labels.shape
    centre = labels[h // 2, w // 2]
    if centre:
        return labels == centre
    props = measure.regionprops(labels)
    nearest = min(props, key=lambda p: (p.centroid[0] - (h - 1) / 2) ** 2 + (p.centroid[1] - (w - 1) / 2) ** 2)
    return labels == nearest.label


def _otsu(image: np.ndarray) -> np.ndarray | None:
    if np.ptp(image) <= 1e-9:
        return None
    return image > filters.threshold_otsu(image)


def measure_cell(cell: np.ndarray, nuclear_channel: int = 0) -> dict[str, float]:
    """Morphology of one centred cell crop (C, H, W), pixel values in 0-255 units.

    nucleus: Otsu on the nuclear channel smoothed with a Gaussian of sigma 0.5 px, the component at
    the centre. cell body: Otsu on the sum of the other channels (Gaussian sigma 1 px), the
    component at the centre, holes filled, united with the nucleus (one channel: the nucleus).
    Background per channel: the median of the crop's one-pixel border, subtracted before intensities.

    nuclear_area (px), nuclear_eccentricity (0 circle - 1 line), cell_area (px), cell_elongation
    (major / minor axis of the body's fitted ellipse), texture_c1 (coefficient of variation of
    channel 1 over the cytoplasm = body minus nucleus), intensity_c<k> (mean background-subtracted
    signal: over the nucleus for the nuclear channel, over the cytoplasm for the others),
    crop_mean_c<k> (mean of the whole crop, background and artefacts included). A part that
    cannot be segmented gives NaN.
    """
    cell = np.asarray(cell, dtype=np.float64)
    channels = cell.shape[0]
    out = dict.fromkeys(morphology_columns(channels), np.nan)
    for c in range(channels):
        out[f"crop_mean_c{c}"] = float(cell[c].mean())
    border = np.concatenate([cell[:, 0, :], cell[:, -1, :], cell[:, 1:-1, 0], cell[:, 1:-1, -1]], axis=1)
    signal = cell - np.median(border, axis=1)[:, None, None]
    mask = _otsu(filters.gaussian(signal[nuclear_channel], 0.5))
    if mask is None:
        return out
    nucleus = _object_at_centre(mask)
    if nucleus.sum() < 3:
        return out
    nuc = measure.regionprops(nucleus.astype(np.uint8))[0]
    out["nuclear_area"] = float(nucleus.sum())
    out["nuclear_eccentricity"] = float(nuc.eccentricity)
    out[f"intensity_c{nuclear_channel}"] = float(signal[nuclear_channel][nucleus].mean())
    others = [c for c in range(channels) if c != nuclear_channel]
    body = nucleus
    if others:
        body_mask = _otsu(filters.gaussian(signal[others].sum(axis=0), 1.0))
        if body_mask is not None:
            body = ndimage.binary_fill_holes(_object_at_centre(body_mask | nucleus)) | nucleus
    shape = measure.regionprops(body.astype(np.uint8))[0]
    out["cell_area"] = float(body.sum())
    out["cell_elongation"] = float(shape.axis_major_length / max(shape.axis_minor_length, 1e-6))
    cytoplasm = body & ~nucleus
    region = cytoplasm if cytoplasm.sum() >= 3 else body
    for c in others:
        out[f"intensity_c{c}"] = float(signal[c][region].mean())
    if channels > 1:
        values = signal[1][region]
        mean = values.mean()
        out["texture_c1"] = float(values.std() / mean) if mean > 1e-6 else np.nan
    return out


def measure_cells(pixels: np.ndarray, nuclear_channel: int = 0) -> pd.DataFrame:
    """:func:`measure_cell` for every cell of (N, C, H, W) pixels (uint8 or 0-255 floats):
    one row per cell, columns :func:`morphology_columns`."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise InputError(f"cells must be (N, C, H, W), got shape {pixels.shape}")
    if not 0 <= nuclear_channel < pixels.shape[1]:
        raise InputError(f"nuclear channel {nuclear_channel} does not exist in {pixels.shape[1]}-channel cells")
    rows = [measure_cell(cell, nuclear_channel) for cell in pixels]
    return pd.DataFrame(rows, columns=morphology_columns(pixels.shape[1]))


# --------------------------------------------------------------------------------------------
# MoA classification on frozen features


class LogisticClassifier:
    """Multinomial logistic regression with an L2 penalty on standardised features, fitted with
    L-BFGS on the full training set (deterministic: zero initial weights). Non-finite feature
    values are replaced by the training mean."""

    def __init__(self, l2: float = 1e-3, max_iter: int = 200):
        self.l2, self.max_iter = l2, max_iter

    def fit(self, features: np.ndarray, labels: list[str] | np.ndarray) -> "LogisticClassifier":
        x = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels).astype(str)
        self.classes = np.array(sorted(set(labels)))
        if len(self.classes) < 2:
            raise InputError(f"a classifier needs at least 2 classes, got {list(self.classes)}")
        self.mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        self.mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        filled = self._fill(x)
        self.scale = filled.std(axis=0)
        self.scale[self.scale < 1e-12] = 1.0
        xt = torch.as_tensor(self._standardise(x))
        y = torch.as_tensor(np.searchsorted(self.classes, labels))
        self.weight = torch.zeros(xt.shape[1], len(self.classes), dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(len(self.classes), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ self.weight + self.bias, y) + self.l2 * (self.weight**2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return self

    def _fill(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x), x, self.mean)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (self._fill(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale

    def predict(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.as_tensor(self._standardise(features)) @ self.weight + self.bias
        return self.classes[logits.argmax(dim=1).numpy()]

    def accuracy(self, features: np.ndarray, labels) -> float:
        labels = np.asarray(labels).astype(str)
        if len(labels) == 0:
            return float("nan")
        return float((self.predict(features) == labels).mean())
