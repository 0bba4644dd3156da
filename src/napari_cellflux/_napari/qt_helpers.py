"""Small Qt building blocks shared by the dock widget's sections: margin-less rows and columns,
wrapped notes, spin boxes and the chosen path of a file field."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import FileEdit
from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from napari_cellflux.errors import InputError


def _container(layout_type: type, *widgets: QWidget) -> QWidget:
    """A margin-less widget holding ``widgets`` in a new ``layout_type`` layout."""
    box = QWidget()
    lay = layout_type(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


def column(*widgets: QWidget) -> QWidget:
    return _container(QVBoxLayout, *widgets)


def row(*widgets: QWidget) -> QWidget:
    return _container(QHBoxLayout, *widgets)


def note(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def spin(low: float, high: float, value: float, step: float | None = None) -> QSpinBox | QDoubleSpinBox:
    """A spin box over [low, high]; a float step makes it a QDoubleSpinBox."""
    box = QSpinBox() if step is None else QDoubleSpinBox()
    if step is not None:
        box.setSingleStep(step)
    box.setRange(low, high)
    box.setValue(value)
    return box


def chosen_path(file_edit: FileEdit, what: str) -> Path:
    path = Path(file_edit.value)
    if str(path) in ("", "."):
        raise InputError(f"{what}: choose a file first")
    return path
