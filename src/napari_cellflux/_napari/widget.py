"""The CellFlux dock widget (Plugins > CellFlux): controls -> model -> perturbation -> sampling ->
generate -> result -> export, top to bottom.

Thin by design: Qt layout, thread workers and napari layers only; every computation is a call into
the headless package (api, controls, samples, result, layout). torch is first imported inside a
worker (loading a model), so napari starts fast and the Qt thread never does heavy work.
Here: the sections (sections.py) wired to the workers (jobs.py), the result layers, and the t
slider kept in step with napari's time axis.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from magicgui.widgets import FileEdit
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QGroupBox,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_cellflux._napari.jobs import NeedsConfirmation, generation_job, load_job
from napari_cellflux._napari.qt_helpers import chosen_path, note, row
from napari_cellflux._napari.sections import ControlsBox, ModelBox, PerturbationBox, SamplingBox
from napari_cellflux._napari.writer import LAYER_KEY
from napari_cellflux.errors import InputError, describe

if TYPE_CHECKING:
    import napari

    from napari_cellflux.generation.result import GenerationResult
    from napari_cellflux.models.model_file import CellFluxModel

SLIDER_TICKS = 1000  # resolution of the t slider over [0, 1]
SPACING = 16  # world px between the controls grid, the generated grid and other layers
WARNING_COLOR = "#ff9f1c"  # orange: readable on napari's dark and light themes


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
        # The controls' findings against the model's training controls: a run still goes ahead,
        # so they stay in view beside the result until the next run rather than in a dialog.
        self.domain_warning = note("")
        self.domain_warning.setStyleSheet(f"color: {WARNING_COLOR}")
        self.domain_warning.setVisible(False)
        self.status = note("Load a model to start (the bundled demo works with the synthetic sample cells).")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_TICKS)
        self.time_label = QLabel("t = 1")
        self.export_choice = QComboBox()
        self.export_choice.addItems(["whole trajectory (T, N, C, H, W)", "current t only"])
        self.export_file = FileEdit(mode="w", filter="Fiji hyperstack (*.tif *.tiff)")
        self.export_button = QPushButton("Export TIFF")

        result = QGroupBox("Result")
        QVBoxLayout(result).addWidget(row(QLabel("t"), self.slider, self.time_label))
        export = QGroupBox("Export")
        export_lay = QVBoxLayout(export)
        export_lay.addWidget(self.export_choice)
        export_lay.addWidget(row(self.export_file.native, self.export_button))
        lay = QVBoxLayout(self)
        for w in (
            self.controls, self.model, self.perturbation, self.sampling,
            row(self.generate_button, self.cancel_button), self.domain_warning, self.progress, self.status, result, export,
        ):
            lay.addWidget(w)
        lay.addStretch()

        self.model.load.clicked.connect(self.load_model)
        self.generate_button.clicked.connect(lambda: self.generate())  # not clicked(bool) as "confirmed"
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
        # on_done may start the next run (a long run the user confirmed): only the worker still
        # current may end the busy state.
        mine: list = []

        def finished() -> None:
            if self._worker is mine[0]:
                self._set_busy(False)

        connect = {"returned": on_done, "errored": self._fail, "finished": finished}
        worker = create_worker(job, *args, _start_thread=False, _connect=connect)
        mine.append(worker)
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
        """Report on the status line and as a napari notification: the package's one-line text for
        a user's error (errors.describe), the exception's own for a bug."""
        message = describe(err) or f"{type(err).__name__}: {err} (a bug: please report it)"
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
        self._start(load_job, partial(self._use_model, source), f"Loading {source}… (a published model is downloaded on first use)", source)

    def _use_model(self, source: str, model: "CellFluxModel") -> None:
        self._model = model
        self.model.show_model(model, source)
        self.perturbation.set_vocabulary(model.vocabulary)
        self.sampling.set_defaults(model.sampling)
        self.status.setText("Model ready: choose the controls and a perturbation, then Generate.")

    def generate(self, confirmed: bool = False) -> None:
        """Start a run; mistakes in the inputs are reported before any thread starts. A run
        estimated to take minutes is first put to the user (``confirmed``: they said yes)."""
        try:
            if self._model is None:
                raise InputError("Model: load a model first")
            options = self.sampling.options()
            condition = self.perturbation.condition()
            pixels_job = self.controls.job(self._model, options["seed"], options["n_cells"])
        except ValueError as err:
            self._fail(err)
            return
        self._cancel = threading.Event()
        self._show_domain_check([])
        self._start(
            generation_job, self._show_result, "Generating…",
            self._model, pixels_job, condition, options, self.progressed.emit, self._cancel.is_set, confirmed,
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
                raise InputError("Export: generate cells first")
            path = chosen_path(self.export_file, "Export")
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
        if isinstance(payload, NeedsConfirmation):
            self._confirm_long_run(payload.estimate)
            return
        result, control_grids, generated_grids = payload
        self._show_domain_check(result.domain_messages)
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

    def _confirm_long_run(self, estimate) -> None:
        question = f"{estimate.advice()[0].upper()}{estimate.advice()[1:]}.\n\nStart it anyway?"
        answer = QMessageBox.question(self, "CellFlux: a long run", question)
        if answer == QMessageBox.StandardButton.Yes:
            self.generate(confirmed=True)
        else:
            self.status.setText(f"Not started: {estimate.describe()}. Lower the steps or cells under Sampling.")

    def _show_domain_check(self, messages: list[str]) -> None:
        """List what the check of the controls found (hidden when nothing)."""
        self.domain_warning.setText("\n".join(f"⚠ {m}" for m in messages))
        self.domain_warning.setVisible(bool(messages))

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
