"""The CellFlux dock widget (Plugins > CellFlux): controls -> model -> perturbation -> sampling ->
generate -> result -> export, top to bottom.

Thin by design: Qt layout, thread workers and napari layers only; every computation is a call into
the headless package (api, controls, samples, result, layout). torch is first imported inside a
worker (loading a model), so napari starts fast and the Qt thread never does heavy work.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from magicgui.widgets import FileEdit
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_cellflux._napari.tiling import channel_grids
from napari_cellflux._napari.writer import LAYER_KEY
from napari_cellflux.data import samples
from napari_cellflux.generation import controls
from napari_cellflux.models.channels import describe
from napari_cellflux.settings import DEVICES, GRID_NAMES, SOLVER_NAMES

if TYPE_CHECKING:
    import napari

    from napari_cellflux.generation.result import GenerationResult
    from napari_cellflux.models.model_file import CellFluxModel
    from napari_cellflux.models.vocabulary import Vocabulary
    from napari_cellflux.settings import SamplingConfig

SLIDER_TICKS = 1000  # resolution of the t slider over [0, 1]
SPACING = 16  # world px between the controls grid, the generated grid and other layers


# ---- worker bodies: headless calls only, run off the Qt thread -------------------------------


def _load_job(source: str) -> "CellFluxModel":
    from napari_cellflux.api import load_model

    return load_model(source, device="cpu")  # moved to the chosen device when generating


def _generation_job(model, pixels_job: Callable[[], np.ndarray], condition: dict, options: dict, progress, cancel):
    """Control pixels -> trajectory -> display grids (tiling a long trajectory is not free).
    Returns None when cancelled, so a cancelled run ends quietly and adds nothing."""
    from napari_cellflux.api import GenerationCancelled
    from napari_cellflux.generation.result import generate_from_pixels
    from napari_cellflux.settings import SamplingConfig, SpeedOptions

    pixels = pixels_job()
    try:
        result = generate_from_pixels(
            model, pixels, n_cells=options["n_cells"], device=options["device"],
            sampling=SamplingConfig(**options["sampling"]), seed=options["seed"],
            speed=SpeedOptions(precision="fast"),  # interactive: bf16 wherever the hardware computes it natively
            progress=progress, cancel=cancel, **condition,
        )
    except GenerationCancelled:
        return None
    return result, channel_grids(result.controls), channel_grids(result.pixels)


# ---- small Qt helpers --------------------------------------------------------------------------


def _container(layout_type: type, *widgets: QWidget) -> QWidget:
    """A margin-less widget holding ``widgets`` in a new ``layout_type`` layout."""
    box = QWidget()
    lay = layout_type(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


def _column(*widgets: QWidget) -> QWidget:
    return _container(QVBoxLayout, *widgets)


def _row(*widgets: QWidget) -> QWidget:
    return _container(QHBoxLayout, *widgets)


def _note(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def _chosen_path(file_edit: FileEdit, what: str) -> Path:
    path = Path(file_edit.value)
    if str(path) in ("", "."):
        raise ValueError(f"{what}: choose a file first")
    return path


def _message(err: BaseException) -> str:
    # str(KeyError) adds quotes around the message
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _layer_pixels(layer) -> np.ndarray:
    """The full-resolution data of an image or labels layer."""
    return layer.data[0] if layer.multiscale else layer.data


def _describe_layers(layers: list) -> str:
    names = ", ".join(repr(layer.name) for layer in layers)
    return f"layer {names}" if len(layers) == 1 else f"layers {names}"


def _follow_layers(viewer: "napari.viewer.Viewer", refresh: Callable) -> None:
    """Call ``refresh`` whenever layers are added, removed or moved (renames are not followed:
    the entries keep the layers themselves, so a stale name still picks the right layer)."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
        event.connect(refresh)


def _spin(low: float, high: float, value: float, step: float | None = None) -> QSpinBox | QDoubleSpinBox:
    """A spin box over [low, high]; a float step makes it a QDoubleSpinBox."""
    box = QSpinBox() if step is None else QDoubleSpinBox()
    if step is not None:
        box.setSingleStep(step)
    box.setRange(low, high)
    box.setValue(value)
    return box


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


# ---- sections ----------------------------------------------------------------------------------


class ControlsBox(QGroupBox):
    """Where the control cells come from: synthetic samples, crop layers, a whole field, or files."""

    SOURCES = {
        "sample": "synthetic sample cells",
        "crops": "crop layer(s)",
        "field": "whole-field layer(s)",
        "file": "crops file or folder",
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
            _note("Control cells drawn by the synthetic screen generator at the model's crop size."),
            _column(
                _note("One layer (N, C, H, W) or (N, H, W, C), or one (N, H, W) layer per channel, in channel order:"),
                self.crop_layers,
            ),
            _column(
                _note("One field (C, H, W), or one layer per channel; cells are cut out on Generate:"),
                self.field_layers,
                _row(QLabel("Nuclei:"), self.labels),
            ),
            _column(_note(".npy / .tif stack of crops, or a folder of them (type a folder's path)"), self.file.native),
        ]
        lay = QVBoxLayout(self)
        lay.addWidget(self.source)
        for page in self._pages:
            lay.addWidget(page)
        self.source.currentIndexChanged.connect(self._show_page)
        self._show_page(0)

    def _show_page(self, index: int) -> None:
        for i, page in enumerate(self._pages):
            page.setVisible(i == index)

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
            return partial(controls.crops_from_file, _chosen_path(self.file, "Controls"), model)
        picker = self.crop_layers if key == "crops" else self.field_layers
        layers = picker.selected()
        if not layers:
            raise ValueError(f"Controls: select the {self.SOURCES[key]} holding the control cells in the list")
        arrays, source = [_layer_pixels(layer) for layer in layers], _describe_layers(layers)
        if key == "crops":
            return partial(controls.crops_from_arrays, arrays, model, source)
        labels = self.labels.layer()
        return partial(controls.crops_from_field, arrays, model, source, None if labels is None else _layer_pixels(labels))


class ModelBox(QGroupBox):
    """The zoo's models (bundled first) or a local file, and what the loaded model takes."""

    LOCAL = "local file…"

    def __init__(self):
        super().__init__("Model")
        self.choice = QComboBox()
        self.file = FileEdit(mode="r", filter="CellFlux models (*.safetensors *.pth *.pt)")
        self.load = QPushButton("Load")
        self.info = _note("No model loaded.")
        self._list_zoo()
        self.choice.addItem(self.LOCAL, None)
        self.choice.currentIndexChanged.connect(self._show_file)
        self._show_file()
        lay = QVBoxLayout(self)
        lay.addWidget(_row(self.choice, self.load))
        lay.addWidget(self.file.native)
        lay.addWidget(self.info)

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
        return name if name is not None else str(_chosen_path(self.file, "Model"))

    def show_model(self, model: "CellFluxModel", source: str) -> None:
        vocab = model.vocabulary
        self.info.setText(
            f"{Path(source).name}: {describe(model.channels)}; {model.image_size} x {model.image_size} px crops; "
            f"{len(vocab)} {vocab.kind} perturbations (sha256 {model.sha256[:12]})"
        )


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
            raise ValueError(f"Perturbation: pick a perturbation in the list{extra}")
        return {"perturbation": name}


class SamplingBox(QCollapsible):
    """Solver settings (the model's defaults after loading), seed, number of cells, device."""

    def __init__(self):
        super().__init__("Sampling (advanced)")
        self.solver, self.grid, self.device = QComboBox(), QComboBox(), QComboBox()
        for combo, names in ((self.solver, SOLVER_NAMES), (self.grid, GRID_NAMES), (self.device, DEVICES)):
            combo.addItems(names)
        self.steps = _spin(1, 1000, 50)
        self.guidance = _spin(0.0, 10.0, 0.2, step=0.05)
        self.noise = _spin(0.0, 5.0, 0.5, step=0.05)
        self.seed = _spin(0, 2**31 - 1, 0)
        self.cells = _spin(1, 100_000, 16)
        form = QWidget()
        lay = QFormLayout(form)
        for label, widget in (
            ("solver", self.solver), ("time grid", self.grid), ("steps", self.steps), ("guidance", self.guidance),
            ("noise level", self.noise), ("seed", self.seed), ("number of cells", self.cells), ("device", self.device),
        ):
            lay.addRow(label, widget)
        self.addWidget(form)

    def set_defaults(self, sampling: "SamplingConfig") -> None:
        self.solver.setCurrentText(sampling.solver)
        self.grid.setCurrentText(sampling.grid)
        self.steps.setValue(sampling.steps)
        self.guidance.setValue(sampling.guidance)
        self.noise.setValue(sampling.noise_level)

    def options(self) -> dict:
        return {
            "sampling": {
                "solver": self.solver.currentText(), "grid": self.grid.currentText(), "steps": self.steps.value(),
                "guidance": self.guidance.value(), "noise_level": self.noise.value(),
            },
            "seed": self.seed.value(),
            "n_cells": self.cells.value(),
            "device": self.device.currentText(),
        }


# ---- the widget --------------------------------------------------------------------------------


class CellFluxWidget(QWidget):
    """Generate perturbed cells from control cells with a CellFlux model and explore the trajectory."""

    progressed = Signal(int, int)  # (done, total) steps, emitted from the generation worker thread

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__()
        self._viewer = napari_viewer
        self._model: CellFluxModel | None = None
        self._result: GenerationResult | None = None
        self._layers: list = []  # the last run's layers; the next run replaces them
        self._worker = None
        self._cancel: threading.Event | None = None  # set while a generation runs
        self._moving_dims = False  # True while the t slider moves napari's time axis

        self.controls = ControlsBox(napari_viewer)
        self.model = ModelBox()
        self.perturbation = PerturbationBox()
        self.sampling = SamplingBox()
        self.generate_button = QPushButton("Generate")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = _note("Load a model to start (the bundled demo works with the synthetic sample cells).")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_TICKS)
        self.time_label = QLabel("t = 1")
        self.export_choice = QComboBox()
        self.export_choice.addItems(["whole trajectory (T, N, C, H, W)", "current t only"])
        self.export_file = FileEdit(mode="w", filter="Fiji hyperstack (*.tif *.tiff)")
        self.export_button = QPushButton("Export TIFF")

        result = QGroupBox("Result")
        QVBoxLayout(result).addWidget(_row(QLabel("t"), self.slider, self.time_label))
        export = QGroupBox("Export")
        export_lay = QVBoxLayout(export)
        export_lay.addWidget(self.export_choice)
        export_lay.addWidget(_row(self.export_file.native, self.export_button))
        lay = QVBoxLayout(self)
        for w in (
            self.controls, self.model, self.perturbation, self.sampling,
            _row(self.generate_button, self.cancel_button), self.progress, self.status, result, export,
        ):
            lay.addWidget(w)
        lay.addStretch()

        self.model.load.clicked.connect(self.load_model)
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button.clicked.connect(self.cancel)
        self.progressed.connect(self._on_progress)
        self.slider.valueChanged.connect(self._on_slider)
        self.export_button.clicked.connect(self.export)
        napari_viewer.dims.events.current_step.connect(self._on_dims)
        self._set_busy(False)

    # ---- running things in workers -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _start(self, job: Callable, on_done: Callable, message: str, *args) -> None:
        """Run ``job(*args)`` in a napari thread worker; ``on_done(value)`` or ``_fail(error)`` then
        run on the Qt thread (handling "errored" also stops the worker re-raising the error)."""
        connect = {"returned": on_done, "errored": self._fail, "finished": lambda: self._set_busy(False)}
        worker = create_worker(job, *args, _start_thread=False, _connect=connect)
        self._worker = worker
        self.status.setText(message)
        self.progress.setRange(0, 0)  # "busy" until a step count is known
        self._set_busy(True)
        worker.start()

    def _set_busy(self, busy: bool) -> None:
        if not busy:
            self._worker, self._cancel = None, None
            self.progress.setRange(0, 1)
        self.model.load.setEnabled(not busy)
        self.generate_button.setEnabled(not busy and self._model is not None)
        self.export_button.setEnabled(not busy and self._result is not None)
        self.cancel_button.setEnabled(busy and self._cancel is not None and not self._cancel.is_set())
        self.slider.setEnabled(self._result is not None)

    def _fail(self, err: BaseException) -> None:
        """Report on the status line and as a napari notification."""
        message = _message(err)
        self.status.setText(message)
        show_error(f"CellFlux: {message}")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    # ---- actions ---------------------------------------------------------------------------------

    def load_model(self) -> None:
        try:
            source = self.model.source()
        except ValueError as err:
            self._fail(err)
            return
        self._start(_load_job, partial(self._use_model, source), f"Loading {source}… (a published model is downloaded on first use)", source)

    def _use_model(self, source: str, model: "CellFluxModel") -> None:
        self._model = model
        self.model.show_model(model, source)
        self.perturbation.set_vocabulary(model.vocabulary)
        self.sampling.set_defaults(model.sampling)
        self.status.setText("Model ready: choose the controls and a perturbation, then Generate.")

    def generate(self) -> None:
        """Start a run; mistakes in the inputs are reported before any thread starts."""
        try:
            if self._model is None:
                raise ValueError("Model: load a model first")
            options = self.sampling.options()
            condition = self.perturbation.condition()
            pixels_job = self.controls.job(self._model, options["seed"], options["n_cells"])
        except ValueError as err:
            self._fail(err)
            return
        self._cancel = threading.Event()
        self._start(
            _generation_job, self._show_result, "Generating…",
            self._model, pixels_job, condition, options, self.progressed.emit, self._cancel.is_set,
        )

    def cancel(self) -> None:
        if self._cancel is None:
            return
        self._cancel.set()  # generate() stops after the current step
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling…")

    def export(self) -> None:
        try:
            if self._result is None:
                raise ValueError("Export: generate cells first")
            path = _chosen_path(self.export_file, "Export")
        except ValueError as err:
            self._fail(err)
            return
        if path.suffix.lower() not in (".tif", ".tiff"):
            path = path.with_name(path.name + ".tif")
        index = None if self.export_choice.currentIndex() == 0 else self._slider_index()
        self._start(self._result.write_tiff, self._exported, f"Writing {path}…", path, index)

    def _exported(self, path: Path) -> None:
        self.status.setText(f"Wrote {path}")
        show_info(f"CellFlux: wrote {path}")

    # ---- result layers -------------------------------------------------------------------------

    def _show_result(self, payload) -> None:
        if payload is None:
            self.status.setText("Cancelled; no layers were added.")
            return
        result, control_grids, generated_grids = payload
        self._result = None  # the time-axis handlers rest while layers change
        for layer in self._layers:
            if layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
        self._layers = []
        left = self._free_x()
        right = left + control_grids[0].shape[-1] + SPACING
        for channel, controls_grid, generated in zip(result.channels, control_grids, generated_grids):
            style = {"colormap": channel.color, "blending": "additive", "contrast_limits": (0, result.normalization.max_value)}
            self._layers.append(self._viewer.add_image(
                controls_grid, name=f"controls [{channel.name}]", translate=(0, left), **style))
            self._layers.append(self._viewer.add_image(
                generated, name=f"{result.label} [{channel.name}]", translate=(0, 0, right),
                axis_labels=("t", "y", "x"), metadata={LAYER_KEY: result}, **style))
        self._result = result
        self._go_to(1.0)  # the perturbed cells first
        self._viewer.reset_view()
        n, t = result.controls.shape[0], len(result.times)
        self.status.setText(
            f"{n} cells under {result.label}, {t} states from t = {result.times[0]:.3f} to 1 "
            "(controls left, generated right). Move t to morph."
        )

    def _free_x(self) -> float:
        """World x right of every layer in the viewer, so the result covers none of them."""
        edges = [layer.extent.world[1][-1] for layer in self._viewer.layers]
        return float(np.ceil(max(edges))) + 1 + SPACING if edges else 0.0

    # ---- the t slider and napari's time axis ---------------------------------------------------

    def _showing(self) -> bool:
        """A result is on screen: its layers are all still in the viewer."""
        return self._result is not None and all(layer in self._viewer.layers for layer in self._layers)

    def _time_axis(self) -> int:
        return self._viewer.dims.ndim - 3  # generated layers are (T, y, x), aligned to the last axes

    def _slider_index(self) -> int:
        """The grid state nearest to the slider's t."""
        return self._result.trajectory.index_at(self.slider.value() / SLIDER_TICKS)

    def _set_slider(self, t: float) -> None:
        """Move the slider to ``t`` without reacting to it."""
        self.slider.blockSignals(True)
        self.slider.setValue(round(t * SLIDER_TICKS))
        self.slider.blockSignals(False)

    def _go_to(self, t: float) -> None:
        self._set_slider(t)
        self._on_slider(self.slider.value())

    def _on_slider(self, value: int) -> None:
        """t chosen in the widget -> the nearest grid state on napari's time axis."""
        if not self._showing():
            return
        index = self._slider_index()
        self._moving_dims = True
        try:
            self._viewer.dims.set_current_step(self._time_axis(), index)
        finally:
            self._moving_dims = False
        self._label_time(index)

    def _on_dims(self, event=None) -> None:
        """napari's time axis moved -> the slider follows, snapped to that state's t."""
        if not self._showing() or self._moving_dims:
            return
        times = self._result.times
        index = min(int(self._viewer.dims.current_step[self._time_axis()]), len(times) - 1)
        self._set_slider(float(times[index]))
        self._label_time(index)

    def _label_time(self, index: int) -> None:
        times = self._result.times
        self.time_label.setText(f"t = {times[index]:.3f} (state {index}/{len(times) - 1})")
