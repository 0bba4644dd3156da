"""Effects against controls (phenotype.effects): robust shifts against an independent computation,
bootstrap intervals that cover the truth, permutation p-values that tell identical from shifted
groups, the minimum cell count, and nearest perturbations by cosine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from napari_cellflux.errors import InputError
from napari_cellflux.phenotype.effects import (
    MIN_CELLS,
    EffectOptions,
    activity_map,
    energy_effect,
    feature_shifts,
    nearest,
)

QUICK = EffectOptions(bootstraps=300, permutations=199)


def test_shift_is_the_median_difference_in_control_mad_units():
    rng = np.random.default_rng(0)
    controls = rng.normal(5.0, 2.0, (301, 3))
    treated = rng.normal(5.0, 2.0, (201, 3)) + [0.0, 3.0, -4.0]
    shifts = feature_shifts(treated, controls, QUICK, ["a", "b", "c"])
    expected = (np.median(treated, axis=0) - np.median(controls, axis=0)) / stats.median_abs_deviation(
        controls, axis=0, scale="normal")
    np.testing.assert_allclose(shifts["shift"], expected, rtol=1e-12)
    truth = np.array([0.0, 1.5, -2.0])  # the shifts in units of the controls' SD (2)
    assert ((shifts["low"] < truth) & (truth < shifts["high"])).all()
    assert shifts.loc["b", "low"] > 0 and shifts.loc["c", "high"] < 0


def test_intervals_are_reproducible_by_seed():
    rng = np.random.default_rng(1)
    controls, treated = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    first = feature_shifts(treated, controls, EffectOptions(bootstraps=200, seed=3))
    pd.testing.assert_frame_equal(first, feature_shifts(treated, controls, EffectOptions(bootstraps=200, seed=3)))
    assert not first["low"].equals(feature_shifts(treated, controls, EffectOptions(bootstraps=200, seed=4))["low"])


def test_too_few_cells_for_an_interval_says_how_many_are_needed():
    rng = np.random.default_rng(2)
    with pytest.raises(InputError, match=f"at least {MIN_CELLS}"):
        feature_shifts(rng.normal(size=(MIN_CELLS - 1, 2)), rng.normal(size=(50, 2)), QUICK, what="perturbation 'x'")
    with pytest.raises(InputError, match="control set"):
        energy_effect(rng.normal(size=(20, 2)), rng.normal(size=(3, 2)), QUICK)


def test_permutation_p_values_tell_identical_from_shifted_groups():
    rng = np.random.default_rng(3)
    controls = rng.normal(size=(40, 20))
    same = controls[rng.permutation(40)[:30]]  # cells of the controls themselves
    shifted = rng.normal(size=(30, 20)) + 1.0
    null, hit = energy_effect(same, controls, QUICK), energy_effect(shifted, controls, QUICK)
    assert null.p_value > 0.2 and hit.p_value <= 1 / 100
    assert hit.low > 0 and hit.low <= hit.size <= hit.high
    assert null.low < 0.2 * hit.size
    # copairs' mAP of phenotypic activity: at chance for the controls' own cells, near 1 when shifted.
    (null_map, null_p), (hit_map, hit_p) = activity_map(same, controls, QUICK), activity_map(shifted, controls, QUICK)
    assert null_p > 0.05 and hit_p < 0.01 and hit_map > 0.9 > null_map


def test_nearest_perturbations_by_cosine_of_profiles():
    features = ["f1", "f2", "f3"]
    reference = pd.DataFrame([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.7, 0.7, 0.0]], index=["a", "b", "c"], columns=features)
    query = pd.Series([0.0, 1.0, 0.1], index=features)
    found = nearest(query, reference, k=2)
    assert [name for name, _ in found] == ["b", "c"]
    assert found[0][1] == pytest.approx(1.0 / np.sqrt(1.01))
    assert [n for n, _ in nearest(query, reference, k=2, exclude="b")] == ["c", "a"]
    with pytest.raises(InputError, match="share no feature"):
        nearest(pd.Series([1.0], index=["other"]), reference)
