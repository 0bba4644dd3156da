"""Channel names and colours."""

from __future__ import annotations

import pytest

from napari_cellflux.models.channels import DATASET_CHANNELS, Channel, default_channels, describe, parse_channels


def test_published_screens_have_the_documented_channel_counts():
    """docs/method.md, Datasets: BBBC021 3 channels (DNA, tubulin, actin), RxRx1 6, cpg0000 5."""
    assert [c.name for c in DATASET_CHANNELS["bbbc021"]] == ["DNA", "tubulin", "actin"]
    assert len(DATASET_CHANNELS["rxrx1"]) == 6 and len(DATASET_CHANNELS["cpg0000"]) == 5
    for channels in DATASET_CHANNELS.values():
        assert len({c.color for c in channels}) == len(channels)


def test_default_channels_are_named_and_coloured_distinctly():
    channels = default_channels(4)
    assert [c.name for c in channels] == ["channel 1", "channel 2", "channel 3", "channel 4"]
    assert len({c.color for c in channels}) == 4


def test_parse_channels():
    assert parse_channels("BBBC021") == DATASET_CHANNELS["bbbc021"]
    assert parse_channels("DNA:blue, tubulin:green,actin:red") == (
        Channel("DNA", "blue"), Channel("tubulin", "green"), Channel("actin", "red"))
    mixed = parse_channels("DNA,Mito:yellow")
    assert mixed[0] == Channel("DNA", default_channels(2)[0].color) and mixed[1] == Channel("Mito", "yellow")
    with pytest.raises(ValueError, match="expected e.g."):
        parse_channels(" , ")


def test_describe_and_dict():
    assert describe(DATASET_CHANNELS["bbbc021"]) == "3 channels (DNA, tubulin, actin)"
    assert Channel("DNA", "blue").to_dict() == {"name": "DNA", "color": "blue"}
    assert Channel(**Channel("x").to_dict()) == Channel("x", "gray")
