"""Evaluation maths: image preparation for FID/KID, Frechet and kernel distances, morphology
measured from pixels (the phenotype readouts' cp-measure features), and a small classifier for
MoA accuracy. No learned network here (Inception lives in ``training.inception``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import linalg

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


# How the mixed channels become [0, 1] images. "authors": as the authors' evaluation does it: mix
# the channels in model space [-1, 1], clamp to [-1, 1], map to [0, 1], floor to 8 bits; for stored
# pixels p in [0, 1] that is floor(255 clip(W p - (row sum - 1) / 2, 0, 1)) / 255, i.e.
# clip(W p - 0.5, 0, 1) for RxRx1 (its rows sum to 2) and p itself for channels kept as they are.
# "clip": mix the stored pixels and clamp, clip(W p, 0, 1) (napari-cellflux before issue 15).
RGB_COMPOSITES = ("authors", "clip")


def to_inception_rgb(pixels: np.ndarray, matrix: np.ndarray, composite: str = "authors") -> torch.Tensor:
    """uint8 cells (N, C, H, W) -> float32 RGB (N, 3, H, W) in [0, 1], mixed by ``matrix`` (3, C)
    as ``composite`` (one of RGB_COMPOSITES) says."""
    if pixels.dtype != np.uint8:
        raise InputError(f"FID/KID images must be 8-bit (uint8), got {pixels.dtype}")
    if composite not in RGB_COMPOSITES:
        raise InputError(f"the RGB composite must be one of {RGB_COMPOSITES}, got {composite!r}")
    m = torch.as_tensor(matrix, dtype=torch.float32)
    if composite == "clip":
        x = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0
        return torch.einsum("rc,nchw->nrhw", m, x).clamp_(0.0, 1.0)
    # In 8-bit units the mix of the published matrices (weights 0, 1/2, 1) is exact in float32, so
    # the floor never drops a level to rounding. A row of zeros (the black third of 2-channel
    # data) stays black rather than becoming model-space 0, i.e. grey.
    rows = m.sum(dim=1)
    offset = torch.where(rows > 0, (rows - 1.0) / 2.0, torch.zeros_like(rows)) * 255.0
    rgb = torch.einsum("rc,nchw->nrhw", m, torch.from_numpy(np.ascontiguousarray(pixels)).float())
    return torch.floor((rgb - offset[None, :, None, None]).clamp_(0.0, 255.0)) / 255.0


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
# Morphology measured from pixels: the phenotype readouts (napari_cellflux.phenotype, cp-measure)

EFFECT_FEATURES_BASE = ("nuclear_area", "cell_elongation")
MIN_CROP_PX = 8  # a smaller crop holds no cell the masks can outline


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


def measure_cells(pixels: np.ndarray, nuclear_channel: int = 0) -> pd.DataFrame:
    """Morphology of every centred cell of (N, C, H, W) pixels (uint8 or 0-255 floats): one row
    per cell, columns :func:`morphology_columns`.

    The phenotype readouts' own code (docs/phenotype.md): nucleus, cell and cytoplasm masks
    (``phenotype.masks``, nucleus on ``nuclear_channel``), cp-measure's shape and intensity
    features of them, read as the designed readouts (``phenotype.readouts``: nuclear_area =
    Nuclei_AreaShape_Area, cell_elongation = major / minor axis of the cell, texture_c1 = the
    coefficient of variation of channel 1 over the cytoplasm, intensity_c<k> = mean
    background-subtracted intensity, 0-1, over the nucleus for the nuclear channel and over the
    cytoplasm for the others), plus nuclear_eccentricity (Nuclei_AreaShape_Eccentricity),
    cell_area (Cells_AreaShape_Area) and crop_mean_c<k> (the mean of the whole crop in 0-255,
    background included: the batch artefacts). A part that cannot be segmented gives NaN.
    """
    from napari_cellflux.phenotype.features import FeatureOptions
    from napari_cellflux.phenotype.features import measure_cells as measure_features
    from napari_cellflux.phenotype.readouts import READOUT_GROUPS, designed_readouts

    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise InputError(f"cells must be (N, C, H, W), got shape {pixels.shape}")
    if min(pixels.shape[2:]) < MIN_CROP_PX:
        # Channels read from the shape: cells with their channels last would be measured as
        # C "channels" of W x C px, which no mask fits.
        raise InputError(f"cells must be (N, C, H, W) crops of at least {MIN_CROP_PX} x {MIN_CROP_PX} px, got shape "
                         f"{pixels.shape}; if the channels are last, move them first: np.moveaxis(cells, -1, 1)")
    if not 0 <= nuclear_channel < pixels.shape[1]:
        raise InputError(f"nuclear channel {nuclear_channel} does not exist in {pixels.shape[1]}-channel cells")
    names = tuple(f"c{c}" for c in range(pixels.shape[1]))  # the nuclear channel is given, not found by name
    features = measure_features(pixels, FeatureOptions(channels=names, groups=READOUT_GROUPS), nucleus_channel=nuclear_channel)
    out = designed_readouts(features, names, nuclear_channel)
    out["nuclear_eccentricity"] = features["Nuclei_AreaShape_Eccentricity"]
    out["cell_area"] = features["Cells_AreaShape_Area"]
    for c in range(pixels.shape[1]):
        out[f"crop_mean_c{c}"] = pixels[:, c].reshape(len(pixels), -1).astype(np.float64).mean(axis=1)
    return out[morphology_columns(pixels.shape[1])].reset_index(drop=True)


def fibre_coherence(pixels: np.ndarray, channel: int = 1) -> np.ndarray:
    """How parallel the fibres of ``channel`` run in each cell of (N, C, H, W) pixels: (N,) floats
    in [0, 1], 1 = all parallel, 0 = no preferred direction (cross-hatched or speckled).

    The coherence (l1 - l2) / (l1 + l2) of the structure tensor of the channel's fine detail (the
    crop minus its blur, so the cell's outline does not count), summed over the cell (where the
    blurred channel exceeds half its 95th percentile). Fragmented, crossing fibres, which the eye
    sees at once and the texture readout (a coefficient of variation) does not, score low.
    Scales (blur H/16, tensor window H/32 px) follow the crop, as the synthetic fibres' period does.
    """
    from skimage.feature import structure_tensor

    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or not 0 <= channel < pixels.shape[1]:
        raise InputError(f"cells must be (N, C, H, W) with a channel {channel}, got shape {pixels.shape}")
    out = np.empty(len(pixels))
    for i, image in enumerate(pixels[:, channel].astype(np.float64)):
        fine, cell = fine_detail(image)
        rr, rc, cc = (a[cell].sum() for a in structure_tensor(fine, sigma=image.shape[-1] / 32, order="rc"))
        out[i] = np.sqrt((rr - cc) ** 2 + 4 * rc**2) / max(rr + cc, 1e-12)
    return out


def fine_detail(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W) float image's fine detail (the image minus its blur at H/16, so the cell's outline
    does not count) and the cell (where the blur exceeds half its 95th percentile)."""
    from skimage.filters import gaussian

    smooth = gaussian(image, image.shape[-1] / 16)
    return image - smooth, smooth > 0.5 * np.percentile(smooth, 95)


def fibre_origin(controls: np.ndarray, generated: np.ndarray, channel: int = 1) -> np.ndarray:
    """Where each generated cell's fibres come from: (N, 2) floats per pair of (N, C, H, W)
    pixels, generated[i] made from controls[i].

    Column 0, the gain: the least-squares multiple of the control's own fine detail (the channel
    minus its blur, as in :func:`fibre_coherence`) that the generated cell carries, over the
    generated cell (1: the control's fibres kept as they were; 0: none of them). Column 1, the
    new detail: the standard deviation (grey levels) of what that multiple leaves unexplained. A
    real treated cell shares nothing with a control, so a flow that amplifies its control's
    pattern, or draws new fibres across it (cross-hatching), shows here where the texture
    readout only sees more or less contrast.
    """
    controls, generated = np.asarray(controls), np.asarray(generated)
    if controls.shape != generated.shape or controls.ndim != 4 or not 0 <= channel < controls.shape[1]:
        raise InputError(f"controls and generated cells must be the same (N, C, H, W) shape with a channel {channel}, "
                         f"got {controls.shape} and {generated.shape}")
    out = np.empty((len(controls), 2))
    for i, (control, image) in enumerate(zip(controls[:, channel].astype(np.float64), generated[:, channel].astype(np.float64))):
        fine, cell = fine_detail(image)
        own, fine = fine_detail(control)[0][cell], fine[cell]
        gain = float(own @ fine) / max(float(own @ own), 1e-12)
        out[i] = gain, np.std(fine - gain * own)
    return out


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
