"""The cost of a run is stated before it starts: one timed evaluation, scaled to the run."""

from __future__ import annotations

import time

import torch

from napari_cellflux.generation import cost
from napari_cellflux.settings import SamplingConfig

from plugin_helpers import tiny_model

PAPER = SamplingConfig()  # 50 Heun steps = 100 evaluations


def test_the_estimate_scales_one_timed_evaluation_to_the_run(monkeypatch):
    calls = []

    def slow_generate(model, controls, **kwargs):
        calls.append((len(controls), kwargs["sampling"].evaluations, kwargs["sampling"].guidance))
        time.sleep(0.05)

    monkeypatch.setattr(cost, "generate", slow_generate)
    estimate = cost.estimate_cost(tiny_model(), torch.zeros(10, 3, 32, 32), 1000, PAPER)
    assert calls == [(cost.PROBE_CELLS, 1, PAPER.guidance)]  # one evaluation, the run's guidance
    per_cell = estimate.probe_seconds / cost.PROBE_CELLS
    assert estimate.seconds == per_cell * 1000 * 100 and estimate.seconds >= 0.05 / 4 * 1000 * 100
    assert estimate.long and "few-step settings" in estimate.advice() and "a GPU" in estimate.advice()
    assert "1000 cells x 100 network evaluations" in estimate.describe()


def test_a_short_run_is_not_announced():
    model = tiny_model()
    estimate = cost.estimate_cost(model, torch.zeros(2, 3, 32, 32), 2, model.sampling)
    assert estimate.probe_cells == 2 and estimate.evaluations == model.sampling.evaluations
    assert not estimate.long  # a tiny model on 2 cells: well under a minute


def test_durations_read_naturally():
    assert cost._duration(42) == "42 s" and cost._duration(600) == "10 min"
    assert cost._duration(3 * 3600) == "3.0 h" and cost._duration(5 * 86400) == "5.0 days"
