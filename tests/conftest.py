"""Fixtures for the core-engine tests (helpers live in helpers.py), and the ``--slow`` option."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers import GOLDEN, STATE_DICT_JSON

# The tests run tiny networks, whose many small parallel regions gain nothing from threads; on a
# busy 2-core machine OpenMP's spinning threads made one parity test 20x slower (125 s vs 6 s).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    # Deselected rather than skipped: the default run reports them once, not one SKIPPED line each.
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def official_state_dict() -> dict:
    """The published parameter names, shapes, counts and order (fixtures/SOURCES.md)."""
    return json.loads(STATE_DICT_JSON.read_text())


@pytest.fixture(scope="session")
def golden() -> dict:
    """The authors' parity fixture, loaded with only argparse.Namespace allow-listed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.fixture
def viewer_and_widget(make_napari_viewer, qtbot):
    """A napari viewer with the CellFlux dock widget open (the widget tests' starting point); at the
    end, the phenotype panel's measurement of the last run is let finish before the viewer closes."""
    from plugin_helpers import PLUGIN

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "CellFlux")
    yield viewer, widget
    qtbot.waitUntil(lambda: not widget.phenotype_panel.busy, timeout=120_000)
