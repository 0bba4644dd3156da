"""The CellFlux dock widget (Plugins > CellFlux): model -> controls -> perturbation -> mode and
sampling -> generate -> result -> export, top to bottom, in a scrollable column.

Thin by design: Qt layout, thread workers and napari layers only; every computation is a call into
the headless package (api, controls, samples, result, export). torch is first imported inside a
worker (loading a model), so napari starts fast and the Qt thread never does heavy work.
Here: the sections (sections.py, result_box.py) wired to the workers (jobs.py) and to the result
columns on the canvas (columns.py), and the run's progress in napari's activity panel.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QGroupBox, QLabel, QMessageBox, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget

from napari_cellflux._napari.columns import ResultColumns, Run
from napari_cellflux._napari.jobs import NeedsConfirmation, generation_job, load_job
from napari_cellflux._napari.phenotype_panel import PhenotypePanel
from napari_cellflux._napari.qt_helpers import note, row
from napari_cellflux._napari.result_box import ExportBox, ResultBox
from napari_cellflux._napari.sampling_box import ModeChoice, SamplingBox
from napari_cellflux._napari.sections import ControlsBox, ModelBox, PerturbationBox
from napari_cellflux.errors import InputError, describe
from napari_cellflux.generation.export import ANIMATION_SUFFIXES, TIFF_SUFFIXES

if TYPE_CHECKING:
    import napari

    from napari_cellflux.generation.result import GenerationResult
    from napari_cellflux.models.model_file import CellFluxModel

WARNING_COLOR = "#ff9f1c"  # orange: readable on napari's dark and light themes
SMILES_SHOWN = 10  # characters of a SMILES in a column's title; the whole SMILES is in its tooltip


class CellFluxWidget(QWidget):
    """Generate perturbed cells from control cells with a CellFlux model and compare the runs."""

    progressed = Signal(int, int)  # (done, total) steps, emitted from the generation worker thread
    results_changed = Signal()  # a column was added, replaced or cleared (columns.runs)

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__()
        self._viewer = napari_viewer
        self._model: CellFluxModel | None = None
        self._worker = None
        self._cancel: threading.Event | None = None  # set while a generation runs
        self._activity: progress | None = None  # the run's bar in napari's activity panel
        self._smiles: dict[str, int] = {}  # SMILES -> its number in column titles

        self.model = ModelBox()
        self.controls = ControlsBox(napari_viewer)
        self.perturbation = PerturbationBox()
        self.mode = ModeChoice()
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
        self.result = ResultBox()
        self.export = ExportBox()
        self.phenotype = QGroupBox("Phenotype of the last run")
        self.phenotype_panel = PhenotypePanel()
        QVBoxLayout(self.phenotype).addWidget(self.phenotype_panel)
        self.columns = ResultColumns(napari_viewer)

        # Top to bottom; a further section (e.g. a panel reading self.columns.runs on
        # results_changed) is one more entry here.
        sections = [
            self.model, self.controls, self.perturbation, row(QLabel("mode"), self.mode), self.sampling,
            row(self.generate_button, self.cancel_button), self.domain_warning, self.progress, self.status,
            self.result, self.phenotype, self.export,
        ]
        content = QWidget()
        lay = QVBoxLayout(content)
        for section in sections:
            lay.addWidget(section)
        lay.addStretch()
        # Scrolling, not squeezing: with the field source and Sampling both open the sections are
        # taller than a dock, and a squeezed form draws its rows over each other.
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(content)
        self.scroll.setMinimumWidth(content.minimumSizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)

        self.model.load.clicked.connect(self.load_model)
        self.mode.currentIndexChanged.connect(lambda: self.sampling.set_mode(self.mode.mode()))
        self.sampling.set_mode(self.mode.mode())
        self.generate_button.clicked.connect(lambda: self.generate())  # not clicked(bool) as "confirmed"
        self.cancel_button.clicked.connect(self.cancel)
        self.progressed.connect(self._on_progress)
        self.result.slider.valueChanged.connect(self._on_slider)
        self.result.clear_button.clicked.connect(self.clear_results)
        self.export.tiff_button.clicked.connect(self.export_tiff)
        self.export.gif_button.clicked.connect(self.export_gif)
        self.results_changed.connect(self._list_columns)
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
            self.progress.resetFormat()
            if self._activity is not None:
                self._activity.close()
                self._activity = None
        shown = bool(self.columns.runs)
        self.model.load.setEnabled(not busy)
        self.generate_button.setEnabled(not busy and self._model is not None)
        self.export.tiff_button.setEnabled(not busy and shown)
        self.export.gif_button.setEnabled(not busy and shown)
        self.cancel_button.setEnabled(busy and self._cancel is not None and not self._cancel.is_set())

    def _fail(self, err: BaseException) -> None:
        """Report on the status line and as a napari notification: the package's one-line text for
        a user's error (errors.describe), the exception's own for a bug."""
        message = describe(err) or f"{type(err).__name__}: {err} (a bug: please report it)"
        self.status.setText(message)
        show_error(f"CellFlux: {message}")

    def _on_progress(self, done: int, total: int) -> None:
        """Steps done and time left, on the dock's bar and in napari's activity panel (bottom right)."""
        if self._activity is None:
            self._activity = progress(total=total, desc="CellFlux: generating")
        activity = self._activity  # updating it may process the events that end the run
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        if done:
            left = activity.format_dict["elapsed"] / done * (total - done)
            self.progress.setFormat(f"%v/%m steps · about {left:.0f} s left" if left < 120
                                    else f"%v/%m steps · about {left / 60:.0f} min left")
        activity.update(done - activity.n)

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
        self.sampling.set_defaults(model.sampling, has_guide=model.guide is not None)
        self.status.setText("Model ready: choose the controls and a perturbation, then Generate.")

    def generate(self, confirmed: bool = False) -> None:
        """Start a run; mistakes in the inputs are reported before any thread starts. A run
        estimated to take minutes is first put to the user (``confirmed``: they said yes)."""
        try:
            if self._model is None:
                raise InputError("Model: load a model first")
            options = {**self.sampling.options(), "mode": self.mode.mode()}
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

    def clear_results(self) -> None:
        self.columns.clear()
        self.results_changed.emit()
        self.status.setText("Results cleared; the next run starts a new comparison.")

    def export_tiff(self) -> None:
        try:
            run = self._export_run()
            path = self.export.target(TIFF_SUFFIXES)
        except ValueError as err:
            self._fail(err)
            return
        index = None if self.export.choice.currentIndex() == 0 else self.columns.frame_of(run)
        self._start(run.result.write_tiff, self._exported, f"Writing {path}…", path, index)

    def export_gif(self) -> None:
        try:
            run = self._export_run()
            path = self.export.target(ANIMATION_SUFFIXES)
            cells = self.export.chosen_cells(len(run.result.controls))
        except ValueError as err:
            self._fail(err)
            return
        self._start(run.result.write_animation, self._exported, f"Writing {path}…", path, cells)

    def _export_run(self) -> Run:
        if not self.columns.runs:
            raise InputError("Export: generate cells first")
        return self.columns.runs[self.export.chosen_run()]

    def _exported(self, path: Path) -> None:
        self.status.setText(f"Wrote {path}")
        show_info(f"CellFlux: wrote {path}")

    # ---- results ---------------------------------------------------------------------------------

    def _show_result(self, payload) -> None:
        if payload is None:
            self.status.setText("Cancelled; no layers were added.")
            return
        if isinstance(payload, NeedsConfirmation):
            self._confirm_long_run(payload.estimate)
            return
        result, grids = payload
        self._show_domain_check(result.domain_messages)
        title, full_name = self._names(result)
        how = self.columns.add(Run(result, grids, title, full_name))
        self.results_changed.emit()
        self.phenotype.setTitle(f"Phenotype of {title}")
        self.phenotype_panel.show_result(result)  # measured off the Qt thread
        self._viewer.reset_view()
        n, frames = len(result.controls), len(result.frame_names)
        self.status.setText(
            f"{n} cells under {full_name}, {frames} frames from the controls (t = 0) to t = 1; {how}. "
            "Move t to morph; every column shows its frame nearest that t."
        )

    def _names(self, result: "GenerationResult") -> tuple[str, str]:
        """A column's title and full name: the perturbation, or "SMILES k: <start>…" for an unseen
        compound; "(sampled)" after either for a run of mode sample."""
        smiles = result.trajectory.metadata.get("smiles")
        if smiles:
            k = self._smiles.setdefault(smiles, len(self._smiles) + 1)
            short = smiles if len(smiles) <= SMILES_SHOWN + 1 else smiles[:SMILES_SHOWN] + "…"
            title, full_name = f"SMILES {k}: {short}", f"SMILES {k}: {smiles}"
        else:
            title = full_name = result.label
        suffix = " (sampled)" if result.mode == "sample" else ""
        return title + suffix, full_name + suffix

    def _list_columns(self) -> None:
        runs = self.columns.runs
        self.result.show_timeline(self.columns.names, self.columns.titles if runs else [])
        self.export.list_runs([r.title for r in runs], [r.full_name for r in runs])
        self._set_busy(self.busy)

    def _on_slider(self, tick: int) -> None:
        self.columns.show(tick)
        self.result.label_frame(tick)

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
