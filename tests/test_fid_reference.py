"""Our FID and KID against torchmetrics (Apache-2.0), the implementation the authors' evaluation
uses (FrechetInceptionDistance / KernelInceptionDistance in their eval_fid.py). Both metrics run
on the same features, from one fixed feature map standing in for Inception (whose weights are not
in a clone): torchmetrics accumulates its own statistics and computes its own distances, ours
come from ``training.metrics``. This checks the statistics, the Frechet distance (both of our
paths: the matrix square root, and the exact SVD form for fewer images than dimensions) and the
KID kernel and estimator. The Inception network's layout is checked in tests/test_metrics.py; its
features are not compared with another implementation's here (that needs the 92 MB weights file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import metrics as M

fid_module = pytest.importorskip("torchmetrics.image.fid")
kid_module = pytest.importorskip("torchmetrics.image.kid")


class FixedFeatures(torch.nn.Module):
    """uint8 images (N, 3, 8, 8) -> (N, num_features) float64 by one fixed random projection."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        generator = torch.Generator().manual_seed(num_features)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, num_features, generator=generator, dtype=torch.float64) / 20)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.double().flatten(1) / 255.0) @ self.projection


def image_sets(n: int, shift: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 200, (n, 3, 8, 8))
    fake = np.clip(real[rng.permutation(n)] + rng.integers(0, shift + 1, real.shape), 0, 255)
    return torch.from_numpy(real.astype(np.uint8)), torch.from_numpy(fake.astype(np.uint8))


@pytest.mark.parametrize("n, d", [(60, 16), (6, 48)])  # n^2 >= d^2: sqrtm; n^2 < d^2: the exact SVD form
def test_fid_agrees_with_torchmetrics(n, d):
    network = FixedFeatures(d)
    real, fake = image_sets(n, shift=40, seed=d)
    reference = fid_module.FrechetInceptionDistance(feature=network, normalize=False)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    with torch.no_grad():
        ours = M.fid(network(real).numpy(), network(fake).numpy())
    assert ours > 0.01
    assert ours == pytest.approx(float(reference.compute()), rel=1e-6, abs=1e-8)


def test_kid_agrees_with_torchmetrics():
    network = FixedFeatures(16)
    real, fake = image_sets(50, shift=60, seed=3)
    # one subset of every image: torchmetrics' random subset is then the whole set, as ours
    reference = kid_module.KernelInceptionDistance(feature=network, subsets=1, subset_size=50, normalize=False)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    with torch.no_grad():
        ours, spread = M.kid(network(real).numpy(), network(fake).numpy(), subset_size=50)
    assert spread == 0.0 and abs(ours) > 1e-4
    assert ours == pytest.approx(float(reference.compute()[0]), rel=1e-6)
