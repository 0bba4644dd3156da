"""The phenotype panel (_napari/phenotype_panel.py) under pytest-qt: a run of a tiny model is
measured in a worker, its most changed features are plotted with intervals, the features along t
are exported as CSV, and too small a run is reported on the panel's status line."""

from __future__ import annotations

import numpy as np
import pandas as pd
from plugin_helpers import TWO_STEPS, tiny_model

from napari_cellflux._napari.phenotype_panel import PhenotypePanel
from napari_cellflux.data.samples import synthetic_controls
from napari_cellflux.generation.result import generate_from_pixels

TIMEOUT_MS = 60_000


def run(cells: int):
    return generate_from_pixels(tiny_model(seed=7), synthetic_controls(cells, 32, 3, seed=0), device="cpu",
                                perturbation="colchicine", sampling=TWO_STEPS, seed=0)


def test_panel_shows_the_most_changed_features_and_exports_them_along_t(qtbot, tmp_path):
    result = run(12)
    panel = PhenotypePanel()
    qtbot.addWidget(panel)
    assert not panel.export_button.isEnabled()
    panel.show_result(result)
    assert panel.busy  # measured off the Qt thread
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    shifts = panel.phenotype.shifts
    assert 0 < len(shifts) <= 8 and ((shifts["low"] <= shifts["shift"]) & (shifts["shift"] <= shifts["high"])).all()
    assert len(panel.figure.axes) == 2 and len(panel.figure.axes[0].patches) == len(shifts)
    assert panel.export_button.isEnabled()
    path = panel.export_csv(tmp_path / "along_t.csv")
    table = pd.read_csv(path)
    np.testing.assert_allclose(table["t"], result.times)
    assert set(shifts.index) <= set(table.columns) and "Nuclei_AreaShape_Area" in table
    assert "wrote" in panel.status.text()


def test_panel_says_how_many_cells_an_interval_needs(qtbot):
    panel = PhenotypePanel()
    qtbot.addWidget(panel)
    panel.show_result(run(4))
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert "at least 10" in panel.status.text() and panel.phenotype is None
    assert not panel.export_button.isEnabled()
