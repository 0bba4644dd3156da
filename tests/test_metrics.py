"""Evaluation maths against independent computations; morphology measured from drawn cells; the
FID Inception network's layout and weight loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cellflux.data.drawing import draw_cells
from napari_cellflux.data.synthetic import DEFAULT_PERTURBATIONS, sample_cell_parameters
from training import metrics as M
from training.inception import FEATURE_DIM, InceptionFeatures, inception_features, load_inception


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def fid_by_eigh(a: np.ndarray, b: np.ndarray) -> float:
    """Independent FID: tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)) via symmetric eigendecompositions."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = psd_sqrt(s1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(root @ s2 @ root)))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 12
    mu, sigma = rng.normal(size=d), random_spd(rng, d)
    assert M.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=d)
    assert M.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(float(shift @ shift), rel=1e-6)
    v1, v2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)  # diagonal: sum (sqrt a - sqrt b)^2
    expected = float(shift @ shift + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert M.frechet_distance(mu, np.diag(v1), mu + shift, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n, m, d", [(300, 250, 8), (9, 7, 40), (30, 5, 64)])
def test_fid_of_features_matches_an_eigendecomposition(n, m, d):
    # (300, 250, 8): the sqrtm route; the others have fewer images than dimensions: the exact low-rank route.
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.3, 1.5, size=(m, d)) @ rng.normal(size=(d, d))
    assert M.fid(a, b) == pytest.approx(fid_by_eigh(a, b), rel=1e-7, abs=1e-7)
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))


def test_low_rank_and_sqrtm_routes_agree():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 4)), rng.normal(1.0, 2.0, size=(7, 4))  # 42 >= 16: sqrtm
    stats = M.frechet_distance(*M.feature_statistics(a), *M.feature_statistics(b))
    wide = np.zeros((6, 9)), np.zeros((7, 9))  # the same points in 9-d: 42 < 81, low-rank route
    wide[0][:, :4], wide[1][:, :4] = a, b
    assert M.fid(*wide) == pytest.approx(stats, rel=1e-8)


def mmd_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda u, v: (float(u @ v) / d + 1.0) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.5, 1.0, size=(11, 5))
    mean, std = M.kid(x, y)  # both sets smaller than a subset: one exact value
    assert mean == pytest.approx(mmd_by_loops(x, y), rel=1e-10) and std == 0.0
    # Subsets: each value is the MMD of a random subset pair; their mean estimates the full-set value.
    big_x, big_y = rng.normal(size=(400, 5)), rng.normal(0.5, 1.0, size=(400, 5))
    sub_mean, sub_std = M.kid(big_x, big_y, subsets=50, subset_size=100, seed=0)
    assert sub_std > 0 and M.kid(big_x, big_y, subsets=50, subset_size=100, seed=0) == (sub_mean, sub_std)
    assert sub_mean == pytest.approx(M.mmd2_unbiased(big_x, big_y), abs=3 * sub_std / np.sqrt(50))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    same = M.kid(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), subsets=20, subset_size=100)[0]
    shifted = M.kid(rng.normal(size=(300, 16)), rng.normal(0.5, 1.0, size=(300, 16)), subsets=20, subset_size=100)[0]
    assert abs(same) < 0.02 < shifted


def test_rgb_mappings_follow_the_protocol():
    rng = np.random.default_rng(4)
    six = rng.integers(0, 256, (2, 6, 4, 4), dtype=np.uint8)
    c = six.astype(np.float64) / 255.0  # 1-based c1..c6 are c[:, 0]..c[:, 5]
    expected = np.stack([c[:, 2] + 0.5 * c[:, 4] + 0.5 * c[:, 5],
                         c[:, 1] + 0.5 * c[:, 3] + 0.5 * c[:, 5],
                         c[:, 0] + 0.5 * c[:, 3] + 0.5 * c[:, 4]], axis=1).clip(0, 1)
    np.testing.assert_allclose(M.to_inception_rgb(six, M.rgb_matrix("rxrx1", 6), "clip").numpy(), expected, atol=1e-6)
    five = six[:, :5]
    np.testing.assert_allclose(M.to_inception_rgb(five, M.rgb_matrix("cpg0000", 5)).numpy(), c[:, :3], atol=1e-6)
    three = six[:, :3]
    np.testing.assert_allclose(M.to_inception_rgb(three, M.rgb_matrix("bbbc021", 3)).numpy(), c[:, :3], atol=1e-6)
    with pytest.raises(ValueError, match="6 channels"):
        M.rgb_matrix("rxrx1", 5)
    with pytest.raises(ValueError, match="8-bit"):
        M.to_inception_rgb(three.astype(np.float32), M.rgb_matrix("bbbc021", 3))


@pytest.fixture(scope="module")
def drawn():
    """Drawn cells (no disk): 40 controls and 40 of each of four compounds, with their parameters."""
    rng = np.random.default_rng(0)
    by_name = {p.name: p for p in DEFAULT_PERTURBATIONS}
    groups = [None, "camptothecin", "colchicine", "mitoxantrone", "PP-2"]
    effects = [by_name[g] if g else None for g in groups for _ in range(40)]
    params = sample_cell_parameters(rng, effects, 32, 3)
    signal, _ = draw_cells(params, 32, rng)
    pixels = np.round(np.clip(0.05 + signal + rng.normal(0, 0.02, signal.shape), 0, 1) * 255).astype(np.uint8)
    names = np.array([g or "DMSO" for g in groups for _ in range(40)])
    return pixels, params, names, M.measure_cells(pixels)


def test_measured_morphology_tracks_the_ground_truth(drawn):
    pixels, params, names, measured = drawn
    assert list(measured.columns) == M.morphology_columns(3) and len(measured) == len(pixels)
    assert not measured.isna().any().any()
    assert np.corrcoef(measured["nuclear_area"], np.pi * params.nuclear_radius**2)[0, 1] > 0.9
    assert np.corrcoef(measured["cell_elongation"], params.cell_elongation)[0, 1] > 0.8
    assert np.corrcoef(measured["intensity_c0"], params.intensity[:, 0])[0, 1] > 0.6
    ratio = measured.groupby(names).mean() / measured[names == "DMSO"].mean()
    assert 1.35 < ratio.loc["camptothecin", "nuclear_area"] < 1.8  # designed 1.6
    assert 0.85 < ratio.loc["mitoxantrone", "nuclear_area"] < 1.15
    assert 0.4 < ratio.loc["mitoxantrone", "intensity_c0"] < 0.65  # designed 0.5
    assert ratio.loc["PP-2", "cell_elongation"] > 1.2  # designed 1.4
    assert ratio.loc["colchicine", "texture_c1"] < 0.8 and ratio.loc["colchicine", "cell_elongation"] < 0.95


def test_fibre_coherence_tells_parallel_from_crossing_fibres(drawn):
    pixels, _, names, _ = drawn
    controls = pixels[names == "DMSO"]
    parallel = M.fibre_coherence(controls)
    # Each cell laid over itself turned 90 degrees: the same outline area, fibres crossing at right angles.
    crossed = controls.astype(np.float64)
    crossed[:, 1] = (crossed[:, 1] + np.rot90(crossed[:, 1], axes=(1, 2))) / 2
    hatched = M.fibre_coherence(crossed)
    assert parallel.shape == (len(controls),) and ((0 <= parallel) & (parallel <= 1)).all()
    assert parallel.mean() > 0.6 and hatched.mean() < 0.5 * parallel.mean() and (hatched < parallel).mean() > 0.9
    # colchicine's designed texture x 0.3 dissolves the fibres: far less direction left
    assert M.fibre_coherence(pixels[names == "colchicine"]).mean() < 0.6 * parallel.mean()
    with pytest.raises(ValueError, match="channel 1"):
        M.fibre_coherence(pixels[:, :1])


def test_fibre_origin_tells_a_control_amplified_from_new_fibres(drawn):
    pixels, _, names, _ = drawn
    controls = pixels[names == "DMSO"][:20].astype(np.float64)
    others = pixels[names == "DMSO"][20:40].astype(np.float64)  # unrelated cells, as real treated cells are
    brighter = controls.copy()
    brighter[:, 1] *= 2.5  # each control's own pattern, 2.5 x the contrast
    amplified = M.fibre_origin(controls, brighter)
    assert amplified.shape == (20, 2)
    assert amplified[:, 0] == pytest.approx(2.5, abs=0.05) and (amplified[:, 1] < 0.5).all()
    unrelated = M.fibre_origin(controls, others)
    assert abs(unrelated[:, 0].mean()) < 0.2 and unrelated[:, 1].mean() > 5  # grey levels
    hatched = controls.copy()
    hatched[:, 1] = controls[:, 1] + others[:, 1]  # the control's fibres kept, new ones drawn across
    crossed = M.fibre_origin(controls, hatched)
    assert crossed[:, 0].mean() == pytest.approx(1.0, abs=0.2)
    assert crossed[:, 1].mean() == pytest.approx(unrelated[:, 1].mean(), rel=0.3)
    with pytest.raises(ValueError, match="same .N, C, H, W. shape"):
        M.fibre_origin(controls, others[:5])


def test_blank_and_one_channel_cells_measure_without_failing():
    blank = np.full((1, 3, 16, 16), 40, dtype=np.uint8)
    row = M.measure_cells(blank).iloc[0]
    assert np.isnan(row["nuclear_area"]) and row["crop_mean_c0"] == 40.0
    spot = np.zeros((1, 1, 16, 16), dtype=np.uint8)
    spot[0, 0, 5:11, 6:10] = 200
    one = M.measure_cells(spot).iloc[0]
    assert one["nuclear_area"] == 24 and one["cell_area"] == 24 and "texture_c1" not in one
    with pytest.raises(ValueError, match="nuclear channel 3"):
        M.measure_cells(blank, nuclear_channel=3)
    channels_last = np.moveaxis(np.repeat(blank, 2, axis=2)[:, :, :, :16], 1, -1)  # (1, 32, 16, 3)
    with pytest.raises(ValueError, match=r"cells must be \(N, C, H, W\) crops of at least 8 x 8 px, got shape "
                                         r"\(1, 32, 16, 3\); if the channels are last, move them first"):
        M.measure_cells(channels_last)


def test_logistic_classifier_separates_classes_and_tolerates_nan():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 3, (3, 6))
    labels = np.repeat(["a", "b", "c"], 40)
    x = centres[np.searchsorted(["a", "b", "c"], labels)] + rng.normal(size=(120, 6))
    x[::7, 2] = np.nan
    classifier = M.LogisticClassifier().fit(x[::2], labels[::2])
    assert classifier.accuracy(x[1::2], labels[1::2]) > 0.9
    assert classifier.accuracy(x[1::2], rng.permutation(labels[1::2])) < 0.7
    with pytest.raises(ValueError, match="2 classes"):
        M.LogisticClassifier().fit(x[:5], ["a"] * 5)


# --------------------------------------------------------------------------------------------
# Inception


def test_inception_has_the_fid_layout():
    network = InceptionFeatures()
    # Inception-v3 without its auxiliary head and classifier has 21,785,568 parameters.
    assert sum(p.numel() for p in network.parameters()) == 21_785_568
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)


def random_inception_file(path, seed: int = 0) -> dict:
    """A randomly initialised FID-Inception state dict saved like the published one (with fc)."""
    torch.manual_seed(seed)
    network = InceptionFeatures()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # keeps activations O(1)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    state = network.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, FEATURE_DIM), torch.zeros(1008)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    random_inception_file(path)
    return path


def test_inception_loads_a_weights_file_and_gives_2048_d_features(inception_file):
    network = load_inception(inception_file)
    reference = torch.load(inception_file, weights_only=True)
    assert torch.equal(network.Mixed_6b.branch7x7_2.conv.weight, reference["Mixed_6b.branch7x7_2.conv.weight"])
    images = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    together = inception_features(network, images, batch_size=2)
    apart = inception_features(network, images, batch_size=1)
    assert together.shape == (2, FEATURE_DIM) and together.dtype == torch.float64
    assert torch.isfinite(together).all() and together.std() > 0
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-5)  # deterministic, batch-independent
    assert not torch.allclose(together[0], together[1])


def test_bad_inception_files_are_clear_errors(tmp_path, inception_file):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        load_inception(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ValueError, match="text.pth is not a readable torch state dict"):
        load_inception(tmp_path / "text.pth")
    state = torch.load(inception_file, weights_only=True)
    del state["Mixed_7c.branch1x1.conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['Mixed_7c.branch1x1.conv.weight'\]\)"):
        load_inception(tmp_path / "partial.pth")
