"""The cost of a run is stated before it starts: one timed evaluation, scaled to the run."""

from __future__ import annotations

import time

import torch
from plugin_helpers import tiny_model

from napari_cellflux.generation import cost
from napari_cellflux.settings import SamplingConfig

PAPER = SamplingConfig()  # 50 Heun steps = 100 evaluations


def test_the_estimate_scales_one_timed_evaluation_to_the_run(monkeypatch):
    calls = []

    def slow_generate(model, controls, **kwargs):  # a dear model: 1.5 s per cell and evaluation
        calls.append((len(controls), kwargs["sampling"].evaluations, kwargs["sampling"].guidance))
        time.sleep(1.5 * len(controls))

    monkeypatch.setattr(cost, "generate", slow_generate)
    estimate = cost.estimate_cost(tiny_model(), torch.zeros(10, 3, 32, 32), 1000, PAPER)
    assert calls == [(1, 1, PAPER.guidance)]  # one cell, one evaluation, the run's guidance; no batch: too dear
    assert estimate.seconds == estimate.probe_seconds * 1000 * 100 and estimate.seconds >= 1.5 * 1000 * 100
    assert estimate.long and "few-step settings" in estimate.advice() and "a GPU" in estimate.advice()
    assert "1000 cells x 100 network evaluations" in estimate.describe()


def test_a_cheap_model_is_timed_on_a_whole_warm_batch_when_the_run_may_be_long():
    model = tiny_model()
    estimate = cost.estimate_cost(model, torch.zeros(8, 3, 32, 32), 10**7, model.sampling, batch_size=6)
    assert estimate.probe_cells == 6 and estimate.evaluations == model.sampling.evaluations


def test_a_short_run_costs_one_timed_cell():
    model = tiny_model()
    estimate = cost.estimate_cost(model, torch.zeros(8, 3, 32, 32), 100, model.sampling, batch_size=6)
    assert estimate.probe_cells == 1 and estimate.evaluations == model.sampling.evaluations
    assert not estimate.long  # a tiny model on 100 cells: well under a minute


def test_durations_read_naturally():
    assert cost._duration(42) == "42 s" and cost._duration(600) == "10 min"
    assert cost._duration(3 * 3600) == "3.0 h" and cost._duration(5 * 86400) == "5.0 days"
