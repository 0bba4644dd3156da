"""Regenerate docs/screenshot.png: napari with the CellFlux widget after two runs in morph mode on
the same synthetic sample cells, side by side: controls | colchicine | camptothecin, titled.

    xvfb-run -a python docs/make_screenshot.py            # the bundled demo model (first zoo entry)
    xvfb-run -a python docs/make_screenshot.py MODEL_FILE # any model file (its first two perturbations)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from napari.qt.threading import WorkerBase
from qtpy.QtWidgets import QApplication
from skimage.io import imsave

OUT = Path(__file__).resolve().parent / "screenshot.png"
PERTURBATIONS = ("colchicine", "camptothecin")  # the demo's: elongated, then brighter DNA


def wait(widget) -> None:
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def main(model_file: str | None = None) -> None:
    viewer = napari.Viewer()
    viewer.window.resize(1500, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cellflux", "CellFlux")
    if model_file:
        widget.model.choose_file(model_file)
    widget.model.load.click()
    wait(widget)
    names = widget._model.vocabulary.names
    chosen = [p for p in PERTURBATIONS if p in names] or [n for n in names if n != widget._model.vocabulary.control][:2]
    for name in chosen:  # morph mode, the widget's default
        widget.perturbation.choose(name)
        widget.generate(confirmed=True)  # as Generate, without asking first on a busy machine
        wait(widget)
        if not widget.columns.runs:
            sys.exit(f"generation failed: {widget.status.text()}")
    viewer.reset_view()
    QApplication.processEvents()
    imsave(OUT, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    print(f"wrote {OUT}")
    # The phenotype panel may still be measuring: without napari's event loop nothing else waits
    # for its worker, which would then signal into a deleted Qt object at exit and abort.
    WorkerBase.await_workers()
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
