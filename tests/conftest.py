"""Fixtures for the core-engine tests (helpers live in helpers.py)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers import GOLDEN, STATE_DICT_JSON

# The tests run tiny networks, whose many small parallel regions gain nothing from threads; on a
# busy 2-core machine OpenMP's spinning threads made one parity test 20x slower (125 s vs 6 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def official_state_dict() -> dict:
    """The published parameter names, shapes, counts and order (shared/reference)."""
    return json.loads(STATE_DICT_JSON.read_text())


@pytest.fixture(scope="session")
def golden() -> dict:
    """The authors' parity fixture, loaded with only argparse.Namespace allow-listed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(GOLDEN, map_location="cpu", weights_only=True)
