"""The cost of a run is stated before it starts: one timed evaluation, scaled to the run."""

from __future__ import annotations

import pytest
import torch
from plugin_helpers import tiny_model

from napari_cellflux.generation import cost
from napari_cellflux.settings import SamplingConfig

PAPER = SamplingConfig()  # 50 Heun steps = 100 evaluations


class FakeClock:
    """time.perf_counter for cost.py, advanced by a fake generate() that costs ``seconds(n)`` for n cells."""

    def __init__(self, monkeypatch, seconds):
        self.now, self.calls = 0.0, []

        def generate(model, controls, **kwargs):
            self.calls.append((len(controls), kwargs["sampling"].evaluations, kwargs["sampling"].guidance))
            self.now += seconds(len(controls))

        monkeypatch.setattr(cost, "generate", generate)
        monkeypatch.setattr(cost, "perf_counter", lambda: self.now)


def test_the_estimate_scales_one_timed_evaluation_to_the_run(monkeypatch):
    clock = FakeClock(monkeypatch, lambda n: 6.0 * n)  # a dear model: 6 s per cell and evaluation
    estimate = cost.estimate_cost(tiny_model(), torch.zeros(10, 3, 32, 32), 1000, PAPER)
    assert clock.calls == [(1, 1, PAPER.guidance)]  # one cell, one evaluation, the run's guidance; two cells: too dear
    assert estimate.seconds == 6.0 * 1000 * 100 and estimate.probe_cells == 1
    assert estimate.long and "few-step settings" in estimate.advice() and "a GPU" in estimate.advice()
    assert "1000 cells x 100 network evaluations" in estimate.describe()


def test_a_slow_single_cell_on_busy_cores_does_not_inflate_the_estimate(monkeypatch):
    # As the demo on 2 busy cores: one cell 1.7 s, 16 cells 0.35 s (threads waiting on each other).
    clock = FakeClock(monkeypatch, lambda n: 1.7 if n == 1 else 0.3 + 0.003 * n)
    estimate = cost.estimate_cost(tiny_model(), torch.zeros(16, 3, 32, 32), 16, PAPER)
    assert [n for n, _, _ in clock.calls] == [1, 5, 16]  # each probe as large as 10 s allows, up to the batch
    assert estimate.probe_cells == 16 and estimate.seconds == pytest.approx((0.3 + 0.003 * 16) * 100)
    assert not estimate.long  # one cell scaled up said 45 min


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
