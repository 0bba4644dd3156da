"""The dock widget's input sections, top to bottom: the model, where the control cells come from,
and the perturbation (the mode and the sampler settings: sampling_box.py). A missing or wrong input
raises ValueError naming its section, which the widget shows on its status line."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from magicgui.widgets import FileEdit
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QGroupBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_cellflux._napari.layer_pickers import LabelsChoice, LayerList, PixelSizeBox, describe_layers, layer_pixels
from napari_cellflux._napari.qt_helpers import chosen_path, column, note, row
from napari_cellflux.data import samples
from napari_cellflux.errors import InputError
from napari_cellflux.generation import controls
from napari_cellflux.models.channels import describe

BADGE_COLOR = "#ffd166"  # yellow behind black text: readable on napari's dark and light themes

if TYPE_CHECKING:
    import napari

    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.vocabulary import Vocabulary


class ControlsBox(QGroupBox):
    """Where the control cells come from: synthetic samples, crop layers, a whole field, files, or
    chosen wells of a plate (a LoadData CSV, or a plate map and its images folder)."""

    SOURCES = {
        "sample": "synthetic sample cells",
        "crops": "crop layer(s)",
        "field": "whole-field layer(s)",
        "file": "crops file or folder",
        "plate": "plate (LoadData CSV or plate map)",
    }

    def __init__(self, viewer: "napari.viewer.Viewer"):
        super().__init__("Controls")
        self.source = QComboBox()
        for key, text in self.SOURCES.items():
            self.source.addItem(text, key)
        self.crop_layers = LayerList(viewer)
        self.field_layers = LayerList(viewer)
        self.labels = LabelsChoice(viewer)
        self.file = FileEdit(mode="r", filter="Cell crops (*.npy *.tif *.tiff)")
        # One page per source; only the chosen one is shown (a QStackedWidget would keep the
        # height of the tallest page).
        self._pages = [
            note("Control cells drawn by the synthetic screen generator at the model's crop size."),
            column(
                note("One layer (N, C, H, W) or (N, H, W, C), or one (N, H, W) layer per channel, in channel order:"),
                self.crop_layers,
            ),
            column(
                note("One field (C, H, W), or one layer per channel; cells are cut out on Generate:"),
                self.field_layers,
                row(QLabel("Nuclei:"), self.labels),
            ),
            column(note(".npy / .tif stack of crops, or a folder of them (type a folder's path)"), self.file.native),
            self._plate_page(),
        ]
        self.pixel_size = PixelSizeBox()  # the field's µm per pixel (whole-field and plate sources)
        self._pixel_size_row = row(QLabel("Pixel size:"), self.pixel_size)
        lay = QVBoxLayout(self)
        lay.addWidget(self.source)
        for page in self._pages:
            lay.addWidget(page)
        lay.addWidget(self._pixel_size_row)
        self.source.currentIndexChanged.connect(self._show_page)
        self._show_page(0)

    def _plate_page(self) -> QWidget:
        from napari_cellflux.data.plates import NAME_PATTERNS

        self.plate_file = FileEdit(mode="r", filter="LoadData CSV or plate map (*.csv)")
        self.plate_images = FileEdit(mode="d")
        self.name_pattern = QComboBox()
        self.name_pattern.setEditable(True)  # a built-in name or a regex with groups well, site, channel
        self.name_pattern.addItems(list(NAME_PATTERNS))
        self.plate_channels = QLineEdit()
        self.plate_channels.setPlaceholderText("channels, e.g. DNA=5,ER=4 (default: the model's names)")
        self.wells = QListWidget()
        self.wells.setMaximumHeight(120)
        self.wells_note = note("Choose a CSV to list its wells.")
        self._images_row = column(note("Images folder of the plate map:"), self.plate_images.native,
                                  row(QLabel("File names:"), self.name_pattern))
        self.plate_file.changed.connect(self._list_wells)
        return column(
            note("A CellProfiler LoadData CSV, or a plate map (well,perturbation,is_control) with its images "
                 "folder; the ticked wells' cells are cut out on Generate:"),
            self.plate_file.native, self._images_row, self.plate_channels, self.wells_note, self.wells,
        )

    def _list_wells(self, *_) -> None:
        """List the chosen CSV's wells, the plate map's controls ticked (a LoadData CSV marks none: all)."""
        self.wells.clear()
        path = Path(self.plate_file.value)
        if str(path) in ("", "."):
            return
        try:
            loaddata, wells = controls.plate_wells(path)
        except (InputError, FileNotFoundError) as err:
            self.wells_note.setText(str(err))
            return
        self._images_row.setVisible(not loaddata)
        for well, perturbation, is_control in wells:
            item = QListWidgetItem(f"{well}: {perturbation}{' (control)' if is_control else ''}" if perturbation else well)
            item.setData(Qt.ItemDataRole.UserRole, well)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if is_control or loaddata else Qt.CheckState.Unchecked)
            self.wells.addItem(item)
        kind = "LoadData CSV" if loaddata else "plate map"
        self.wells_note.setText(f"{kind}, {len(wells)} well(s); tick the control wells:")

    def choose_wells(self, wells) -> None:
        """Tick exactly ``wells`` (normalized names, e.g. D06) in the list."""
        for i in range(self.wells.count()):
            item = self.wells.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in wells else Qt.CheckState.Unchecked)

    def chosen_wells(self) -> list[str]:
        items = [self.wells.item(i) for i in range(self.wells.count())]
        return [it.data(Qt.ItemDataRole.UserRole) for it in items if it.checkState() == Qt.CheckState.Checked]

    def _show_page(self, index: int) -> None:
        for i, page in enumerate(self._pages):
            page.setVisible(i == index)
        self._pixel_size_row.setVisible(self.source.itemData(index) in ("field", "plate"))

    def choose(self, key: str) -> None:
        self.source.setCurrentIndex(list(self.SOURCES).index(key))

    def job(self, model: "CellFluxModel", seed: int, n_cells: int) -> Callable[[], np.ndarray]:
        """A function returning the control pixels (N, C, H, W), to run in a worker. Layer data is
        picked up here, on the Qt thread, because napari layers belong to it."""
        key = self.source.currentData()
        if key == "sample":
            # the generator needs >= 2 cells; the run itself takes the first n_cells
            return partial(samples.synthetic_controls, max(n_cells, 2), model.image_size, model.config.in_channels, seed)
        if key == "file":
            return partial(controls.crops_from_file, chosen_path(self.file, "Controls"), model)
        if key == "plate":
            csv = chosen_path(self.plate_file, "Controls")
            wells = self.chosen_wells()
            if not wells:
                raise InputError(f"Controls: tick the control wells of {csv} in the list (choose the CSV again to list them)")
            images = None if str(Path(self.plate_images.value)) in ("", ".") else Path(self.plate_images.value)
            return partial(controls.crops_from_plate, csv, wells, model, images=images,
                           name_pattern=self.name_pattern.currentText().strip() or None,
                           channels=self.plate_channels.text().strip() or None, pixel_size_um=self.pixel_size.pixel_size_um())
        picker = self.crop_layers if key == "crops" else self.field_layers
        layers = picker.selected()
        if not layers:
            raise InputError(f"Controls: select the {self.SOURCES[key]} holding the control cells in the list")
        arrays, source = [layer_pixels(layer) for layer in layers], describe_layers(layers)
        if key == "crops":
            return partial(controls.crops_from_arrays, arrays, model, source)
        labels = self.labels.layer()
        return partial(controls.crops_from_field, arrays, model, source, None if labels is None else layer_pixels(labels),
                       self.pixel_size.pixel_size_um(layers))


class ModelBox(QGroupBox):
    """The zoo's models (bundled first) or a local file, and what the loaded model takes."""

    LOCAL = "local file…"

    def __init__(self):
        super().__init__("Model")
        self.choice = QComboBox()
        self.file = FileEdit(mode="r", filter="CellFlux models (*.safetensors *.pth *.pt)")
        self.load = QPushButton("Load")
        self.info = note("No model loaded.")
        # The demo's compounds carry real drug names for effects the synthetic screen was designed
        # with, so the badge says so beside every result of it.
        self.demo_badge = note("Synthetic demo model: its effects are designed, not learned from real cells.")
        self.demo_badge.setStyleSheet(f"background: {BADGE_COLOR}; color: black; padding: 3px; border-radius: 3px")
        self.demo_badge.setVisible(False)
        self._list_zoo()
        self.choice.addItem(self.LOCAL, None)
        self.choice.currentIndexChanged.connect(self._show_file)
        self._show_file()
        lay = QVBoxLayout(self)
        lay.addWidget(row(self.choice, self.load))
        lay.addWidget(self.file.native)
        lay.addWidget(self.info)
        lay.addWidget(self.demo_badge)

    def _list_zoo(self) -> None:
        from napari_cellflux.models.zoo import ZooError, default_zoo

        try:
            statuses = default_zoo().list_models()
        except (ZooError, ValueError) as err:  # e.g. a malformed mirror URL; local files still work
            self.info.setText(f"Model zoo unavailable: {err}")
            return
        for status in sorted(statuses, key=lambda s: s.kind != "bundled"):
            self.choice.addItem(f"{status.name} ({status.state})", status.name)
            self.choice.setItemData(self.choice.count() - 1, f"{status.description}\n{status.detail}", Qt.ItemDataRole.ToolTipRole)

    def _show_file(self) -> None:
        self.file.native.setVisible(self.choice.currentData() is None)

    def choose_file(self, path: str | Path) -> None:
        self.choice.setCurrentIndex(self.choice.count() - 1)
        self.file.value = path

    def source(self) -> str:
        """A zoo name or a model file path."""
        name = self.choice.currentData()
        return name if name is not None else str(chosen_path(self.file, "Model"))

    def show_model(self, model: "CellFluxModel", source: str) -> None:
        vocab = model.vocabulary
        self.info.setText(
            f"{Path(source).name}: {describe(model.channels)}; {model.image_size} x {model.image_size} px crops; "
            f"{len(vocab)} {vocab.kind} perturbations (sha256 {model.sha256[:12]})"
        )
        self.demo_badge.setVisible(is_synthetic(model, source))


def is_synthetic(model: "CellFluxModel", source: str) -> bool:
    """The zoo's demo, or a model whose training data was the synthetic screen (its file records
    the training config, whose data section says ``synthetic``)."""
    data = model.training.get("data") if isinstance(model.training, dict) else None
    return source == "demo" or bool(isinstance(data, dict) and data.get("synthetic"))


# The control is listed like any perturbation; generating it is the baseline to read a treated
# column against, and shows any change the model makes to untreated cells (docs/modes.md).
CONTROL_TIP = ("The control (untreated): generate it beside a perturbation as the baseline; "
               "whatever it changes in the cells is the model's own drift, not an effect")


class PerturbationBox(QGroupBox):
    """A searchable list of the model's perturbations; for compound models also a SMILES field."""

    def __init__(self):
        super().__init__("Perturbation")
        self._vocabulary: Vocabulary | None = None
        self.search = QLineEdit()
        self.search.setPlaceholderText("search…")
        self.names = QListWidget()
        self.names.setMaximumHeight(120)
        self.smiles = QLineEdit()
        self.smiles.setPlaceholderText("or the SMILES of an unseen compound")
        self.smiles.setToolTip("A compound the model never saw: its fingerprint is used instead of the list's choice")
        self.smiles.setVisible(False)
        self.search.textChanged.connect(self._filter)
        lay = QVBoxLayout(self)
        for w in (self.search, self.names, self.smiles):
            lay.addWidget(w)

    def set_vocabulary(self, vocabulary: "Vocabulary") -> None:
        self._vocabulary = vocabulary
        self.smiles.setVisible(self._takes_smiles())
        self.smiles.clear()
        self.search.clear()
        self._filter("")
        treated = [n for n in vocabulary.names if n != vocabulary.control]
        if treated:  # start on a perturbation that changes something
            self.choose(treated[0])

    def _filter(self, text: str) -> None:
        if self._vocabulary is None:
            return
        current = self.chosen()
        self.names.clear()
        self.names.addItems(self._vocabulary.search(text))
        control = self._vocabulary.control
        for item in self.names.findItems(control, Qt.MatchFlag.MatchExactly) if control else []:
            item.setToolTip(CONTROL_TIP)
        if current:
            self.choose(current)

    def choose(self, name: str) -> None:
        found = self.names.findItems(name, Qt.MatchFlag.MatchExactly)
        if found:
            self.names.setCurrentItem(found[0])

    def chosen(self) -> str | None:
        item = self.names.currentItem()
        return item.text() if item is not None else None

    def _takes_smiles(self) -> bool:
        return self._vocabulary is not None and self._vocabulary.kind == "compound"

    def condition(self) -> dict:
        """generate()'s condition: {"smiles": ...} when a SMILES is typed, else {"perturbation": name}."""
        smiles = self.smiles.text().strip()
        if smiles and self._takes_smiles():
            return {"smiles": smiles}
        name = self.chosen()
        if name is None:
            extra = " or type a SMILES" if self._takes_smiles() else ""
            raise InputError(f"Perturbation: pick a perturbation in the list{extra}")
        return {"perturbation": name}
