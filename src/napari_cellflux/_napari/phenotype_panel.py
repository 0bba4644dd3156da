"""The phenotype panel: after Generate, the most changed CellProfiler features of the generated
cells (with their 95% intervals) and the features measured along t, exportable as CSV. Thin: the
measuring is ``phenotype.trajectory.measure_run``, run in a napari thread worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari.qt.threading import create_worker
from qtpy.QtWidgets import QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_cellflux.errors import describe

if TYPE_CHECKING:
    from napari_cellflux.generation.result import GenerationResult
    from napari_cellflux.phenotype.trajectory import RunPhenotype

PLOTTED_ALONG_T = 4  # features drawn along t (all of them go into the CSV)


def _run_job(controls, pixels, times, channels, max_value):
    from napari_cellflux.phenotype.trajectory import measure_run

    return measure_run(controls, pixels, times, channels, max_value=max_value)


class PhenotypePanel(QWidget):
    """``show_result(result)`` measures a run off the Qt thread and plots it; ``export_csv(path)``
    writes the features along t (atomically). ``phenotype`` holds the last measurement."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.phenotype: RunPhenotype | None = None
        self._worker = None
        self._closed = False  # the dock was closed while a measurement ran: its result has nowhere to go
        self.destroyed.connect(self._close)
        self.figure = self.canvas = None  # made on the first plot: matplotlib costs ~0.4 s to import
        self.status = QLabel("Generate cells to see their phenotype")
        self.status.setWordWrap(True)
        self.export_button = QPushButton("Export features along t (CSV)...")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._ask_export)
        layout = QVBoxLayout(self)
        for widget in (self.status, self.export_button):
            layout.addWidget(widget)

    def _new_figure(self):
        """The figure, cleared; the canvas goes between the status line and the export button."""
        if self.figure is None:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=(3.2, 3.6), tight_layout=True)
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.layout().insertWidget(1, self.canvas)
        self.figure.clear()
        return self.figure

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def show_result(self, result: "GenerationResult") -> None:
        """Measure ``result`` (controls, every state) in a thread worker, then draw it."""
        from napari_cellflux.phenotype.effects import MIN_CELLS

        self.export_button.setEnabled(False)
        if len(result.controls) < MIN_CELLS:  # said at once: no worker for a measurement that cannot give intervals
            self._worker, self.phenotype = None, None
            if self.figure is not None:
                self._new_figure()
                self.canvas.draw_idle()
            self.status.setText(f"the run has {len(result.controls)} cells; intervals need at least {MIN_CELLS}: "
                                "generate more cells to see their phenotype")
            return
        self.status.setText(f"measuring {len(result.controls)} cells at {len(result.times)} times ...")
        channels = [c.name for c in result.channels]
        mine: list = []

        def current(handler):  # a newer run's measurement replaces an older one still in flight
            return lambda *value: handler(*value) if self._worker is mine[0] and not self._closed else None

        worker = create_worker(_run_job, result.controls, result.pixels, result.times, channels,
                               float(result.normalization.max_value), _start_thread=False,
                               _connect={"returned": current(self._show), "errored": current(self._fail),
                                         "finished": current(self._finished)})
        mine.append(worker)
        self._worker = worker
        worker.start()

    def _finished(self) -> None:
        self._worker = None

    def _close(self, *_) -> None:
        self._closed = True

    def _fail(self, err: BaseException) -> None:
        self.phenotype = None
        self.status.setText(describe(err) or f"{type(err).__name__}: {err} (a bug: please report it)")

    def _show(self, phenotype: "RunPhenotype | None") -> None:
        self.phenotype = phenotype
        if phenotype is None:
            return
        figure = self._new_figure()
        shifts = phenotype.shifts.iloc[::-1]
        bars, along = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})
        rows = range(len(shifts))
        errors = [(shifts["shift"] - shifts["low"]).clip(lower=0), (shifts["high"] - shifts["shift"]).clip(lower=0)]
        bars.barh(rows, shifts["shift"], xerr=errors, color="tab:blue", ecolor="black", capsize=2)
        bars.set_yticks(list(rows), [name.replace("_", " ", 2) for name in shifts.index], fontsize=6)
        bars.axvline(0, color="grey", linewidth=0.5)
        bars.set_xlabel("shift at t = 1 (robust units), 95% interval", fontsize=7)
        for name in phenotype.shifts.index[:PLOTTED_ALONG_T]:
            along.plot(phenotype.along_t_shift["t"], phenotype.along_t_shift[name], label=name.split("_", 1)[1][:28])
        along.set_xlabel("t", fontsize=7)
        along.set_ylabel("median shift", fontsize=7)
        along.legend(fontsize=5)
        self.canvas.draw_idle()
        self.status.setText(f"most changed features of {phenotype.groups} ({len(phenotype.along_t.columns) - 1} measured)")
        self.export_button.setEnabled(True)

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export features along t", "features_along_t.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> Path:
        """The median of every feature over the cells, one row per time t (atomic write)."""
        from napari_cellflux.phenotype.features import write_table

        if self.phenotype is None:
            raise RuntimeError("nothing measured yet: call show_result first")
        path = write_table(self.phenotype.along_t, Path(path).with_suffix(".csv"))
        self.status.setText(f"wrote {path}")
        return path
