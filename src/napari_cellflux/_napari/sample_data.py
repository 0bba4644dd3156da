"""napari sample data (File > Open Sample > CellFlux): synthetic control cells and a synthetic
whole field, drawn on the fly at the demo model's scale; one layer per channel."""

from __future__ import annotations

from napari_cellflux.data.samples import synthetic_channels, synthetic_controls, synthetic_field


def _channel_layers(prefix: str, channel_axis: int, count: int) -> dict:
    """Layer options that split an array into one additive layer per named, coloured channel."""
    channels = synthetic_channels(count)
    return {
        "name": [f"{prefix} [{c.name}]" for c in channels],
        "colormap": [c.color for c in channels],
        "channel_axis": channel_axis,
        "blending": "additive",
    }


def control_cells() -> list[tuple]:
    """16 DMSO control cells of the synthetic screen: per channel an (N, H, W) stack."""
    crops = synthetic_controls()
    return [(crops, _channel_layers("control cells", 1, crops.shape[1]), "image")]


def whole_field() -> list[tuple]:
    """A 256 x 256 field of about 24 cells (per channel a layer) and its true nucleus labels."""
    field = synthetic_field()
    return [
        (field.image, _channel_layers("synthetic field", 0, field.image.shape[0]), "image"),
        (field.labels, {"name": "synthetic field nuclei", "visible": False}, "labels"),
    ]
