"""The dock's Result and Export sections: the one t slider of every column, the columns shown and
a button clearing them; what to export (which run, all frames or the current t, which cells for
the animation) and where. A wrong input raises InputError naming the section."""

from __future__ import annotations

import re
from pathlib import Path

from magicgui.widgets import FileEdit
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QGroupBox, QLabel, QLineEdit, QPushButton, QSlider, QVBoxLayout

from napari_cellflux._napari.qt_helpers import note, row
from napari_cellflux.atomic import check_writable
from napari_cellflux.errors import InputError
from napari_cellflux.generation.export import ANIMATION_SUFFIXES, TIFF_SUFFIXES

NO_RESULT = "t = 0 (no result yet)"
CELLS = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")  # "3" or "0-3"


class ResultBox(QGroupBox):
    """The t slider walks the frames of the shared timeline (controls at t = 0 first); the label
    names the frame; Clear results removes every column."""

    def __init__(self):
        super().__init__("Result")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Flow time t of every column: t = 0 the control cells, t = 1 the perturbed cells")
        self.time_label = QLabel(NO_RESULT)
        self.columns = note("Columns: none yet. Runs from the same control cells and seed stand side by side.")
        self.clear_button = QPushButton("Clear results")
        self.clear_button.setToolTip("Remove every result column from the viewer (the next run starts a new comparison)")
        lay = QVBoxLayout(self)
        lay.addWidget(row(QLabel("t"), self.slider, self.time_label))
        lay.addWidget(self.columns)
        lay.addWidget(self.clear_button)
        self.show_timeline([], [])

    def show_timeline(self, names: list[str], titles: list[str]) -> None:
        """The slider over ``names`` (one frame per step, on the last: t = 1), the columns listed."""
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(len(names) - 1, 0))
        self.slider.setValue(self.slider.maximum())
        self.slider.blockSignals(False)
        self.slider.setEnabled(bool(names))
        self.clear_button.setEnabled(bool(names))
        self._names = names
        self.label_frame(self.slider.value())
        if titles:
            self.columns.setText("Columns: " + " | ".join(titles))

    def label_frame(self, tick: int) -> None:
        self.time_label.setText(f"{self._names[tick]} · frame {tick}/{len(self._names) - 1}" if self._names else NO_RESULT)


class ExportBox(QGroupBox):
    """Which run, all its frames or the current t only, to a Fiji TIFF; the chosen cells' morph
    to an animated GIF."""

    def __init__(self):
        super().__init__("Export")
        self.run = QComboBox()
        self.run.setToolTip("The result column to export")
        self.choice = QComboBox()
        self.choice.addItems(["all frames (F, N, C, H, W)", "current t only"])
        self.choice.setToolTip("TIFF: every frame from the controls (t = 0) to t = 1, or only the frame shown now")
        self.cells = QLineEdit()
        self.cells.setPlaceholderText("GIF cells, e.g. 0,3,5 or 0-3 (empty: all)")
        self.cells.setToolTip("Cells are numbered from 0, row by row in the grid")
        self.file = FileEdit(mode="w", filter="Fiji TIFF or animated GIF (*.tif *.tiff *.gif)")
        self.tiff_button = QPushButton("Export TIFF")
        self.tiff_button.setToolTip("A Fiji hyperstack (frame, cell, channel) in the channels' colours, in µm where known")
        self.gif_button = QPushButton("Export GIF")
        self.gif_button.setToolTip("An animated morph of the chosen cells for slides, one frame per t")
        lay = QVBoxLayout(self)
        lay.addWidget(row(QLabel("run"), self.run))
        lay.addWidget(self.choice)
        lay.addWidget(self.cells)
        lay.addWidget(self.file.native)
        lay.addWidget(row(self.tiff_button, self.gif_button))

    def list_runs(self, titles: list[str], full_names: list[str]) -> None:
        """The runs to choose from, the newest chosen; a SMILES in full in the item's tooltip."""
        self.run.clear()
        for i, (title, full) in enumerate(zip(titles, full_names)):
            self.run.addItem(title, i)
            self.run.setItemData(i, full, Qt.ItemDataRole.ToolTipRole)
        self.run.setCurrentIndex(len(titles) - 1)

    def chosen_run(self) -> int:
        if self.run.currentIndex() < 0:
            raise InputError("Export: generate cells first")
        return self.run.currentIndex()

    def target(self, suffixes: tuple[str, ...]) -> Path:
        """The chosen file for a TIFF (``suffixes`` = TIFF_SUFFIXES) or GIF: the other format's
        suffix is swapped, a missing one added; an empty path or a folder is an error."""
        text = self.file.line_edit.value.strip()  # as typed: the field's value makes "" the working folder
        other = ANIMATION_SUFFIXES if suffixes == TIFF_SUFFIXES else TIFF_SUFFIXES
        if Path(text).suffix.lower() in other and not Path(text).is_dir():
            text = str(Path(text).with_suffix(suffixes[0]))
        return check_writable(text, what="Export", suffixes=suffixes, add_suffix=True)

    def chosen_cells(self, n: int) -> list[int] | None:
        """The cells typed for the GIF (None: all ``n``)."""
        text = self.cells.text().strip()
        if not text:
            return None
        chosen = []
        for part in text.split(","):
            found = CELLS.fullmatch(part)
            if found is None:
                raise InputError(f"Export: cells {text!r}: write cell numbers like 0,3,5 or 0-3")
            first, last = int(found[1]), int(found[2] or found[1])
            if last < first:
                raise InputError(f"Export: cells {text!r}: a range runs upwards, e.g. 0-3")
            chosen += range(first, last + 1)
        if max(chosen) >= n:
            raise InputError(f"Export: cells {text!r}: the run has {n} cells, numbered 0 to {n - 1}")
        return chosen
