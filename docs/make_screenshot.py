"""Regenerate docs/screenshot.png: napari with the CellFlux widget after a run on synthetic sample cells.

    xvfb-run -a python docs/make_screenshot.py            # the bundled demo model (first zoo entry)
    xvfb-run -a python docs/make_screenshot.py MODEL_FILE # any model file
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication
from skimage.io import imsave

OUT = Path(__file__).resolve().parent / "screenshot.png"


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
    widget.perturbation.search.setText("c")
    widget.generate_button.click()
    wait(widget)
    if widget._result is None:
        sys.exit(f"generation failed: {widget.status.text()}")
    widget.slider.setValue(800)
    QApplication.processEvents()
    imsave(OUT, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
