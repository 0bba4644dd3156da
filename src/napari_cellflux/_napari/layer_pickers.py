"""The dock's layer pickers: lists of image layers, the nucleus labels layer, reading the chosen
layers' data, and a field's pixel size (typed, or the layer's own µm scale)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QComboBox, QDoubleSpinBox, QListWidget, QListWidgetItem

if TYPE_CHECKING:
    import napari


def layer_pixels(layer) -> np.ndarray:
    """The full-resolution data of an image or labels layer."""
    return layer.data[0] if layer.multiscale else layer.data


def describe_layers(layers: list) -> str:
    names = ", ".join(repr(layer.name) for layer in layers)
    return f"layer {names}" if len(layers) == 1 else f"layers {names}"


def _follow_layers(viewer: "napari.viewer.Viewer", refresh: Callable) -> None:
    """Call ``refresh`` whenever layers are added, removed or moved (renames are not followed:
    the entries keep the layers themselves, so a stale name still picks the right layer)."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
        event.connect(refresh)


class LayerList(QListWidget):
    """The viewer's image layers, in layer-list order (bottom to top), with multi-selection.
    Several selected single-channel layers are taken as channels in that order."""

    def __init__(self, viewer: "napari.viewer.Viewer"):
        super().__init__()
        self._viewer = viewer
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setMaximumHeight(96)
        _follow_layers(viewer, self._refresh)
        self._refresh()

    def _refresh(self, event=None) -> None:
        chosen = {id(layer) for layer in self.selected()}  # the selection survives layer changes
        self.clear()
        for layer in self._viewer.layers:
            if isinstance(layer, Image):
                item = QListWidgetItem(layer.name)
                item.setData(Qt.ItemDataRole.UserRole, layer)
                self.addItem(item)
                item.setSelected(id(layer) in chosen)

    def selected(self) -> list:
        items = (self.item(i) for i in range(self.count()))
        return [item.data(Qt.ItemDataRole.UserRole) for item in items if item.isSelected()]

    def select(self, layers: list) -> None:
        wanted = {id(layer) for layer in layers}
        for i in range(self.count()):
            item = self.item(i)
            item.setSelected(id(item.data(Qt.ItemDataRole.UserRole)) in wanted)


class LabelsChoice(QComboBox):
    """'segment nuclei' or one of the viewer's labels layers as the nucleus segmentation."""

    SEGMENT = "segment nuclei (first channel)"

    def __init__(self, viewer: "napari.viewer.Viewer"):
        super().__init__()
        self._viewer = viewer
        _follow_layers(viewer, self._refresh)
        self._refresh()

    def _refresh(self, event=None) -> None:
        current = self.layer()
        self.clear()
        self.addItem(self.SEGMENT, None)
        for layer in self._viewer.layers:
            if isinstance(layer, Labels):
                self.addItem(layer.name, layer)
                if layer is current:
                    self.setCurrentIndex(self.count() - 1)

    def layer(self):
        return self.currentData()


class PixelSizeBox(QDoubleSpinBox):
    """µm per pixel of a whole field, so cells are cut at the model's physical scale as `cellflux
    extract --pixel-size` cuts them; 0 shows FROM_METADATA: the layer's own scale where it is in µm."""

    FROM_METADATA = "from the layer / TIFF"

    def __init__(self):
        super().__init__()
        self.setRange(0.0, 100.0)
        self.setDecimals(3)
        self.setSingleStep(0.05)
        self.setSuffix(" µm")
        self.setSpecialValueText(self.FROM_METADATA)
        self.setToolTip(
            "µm per pixel of the field. The field is rescaled to the model's pixel size before cells are cut, so a "
            f"crop covers what the model learned. '{self.FROM_METADATA}': the layer's scale where it is in µm "
            "(napari-cellflux's reader sets it from the TIFF), for plates the TIFFs' metadata; else the field is "
            "taken to be at the model's pixel size, with a warning.")

    def pixel_size_um(self, layers: list | None = None) -> float | None:
        """The value set, else the first layer's scale where its units are µm, else None (unknown)."""
        if self.value() > 0:
            return float(self.value())
        for layer in (layers or [])[:1]:
            if str(layer.units[-1]) == "micrometer":
                return float(layer.scale[-1])
        return None
