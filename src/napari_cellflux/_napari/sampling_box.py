"""The dock widget's run settings: the mode (what a run answers) and the sampler, each option with
a tooltip saying what it changes; the fields a mode or model cannot use are disabled and say why."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QWidget
from superqt import QCollapsible

from napari_cellflux._napari.qt_helpers import spin
from napari_cellflux.settings import DEVICES, GRID_NAMES, MODES, SOLVER_NAMES

if TYPE_CHECKING:
    from napari_cellflux.settings import SamplingConfig


class ModeChoice(QComboBox):
    """What a run answers (settings.MODES): morph each cell from its clean control, or sample
    treated cells from control + noise, the paper's sampling. The widget starts on morph: it is
    for watching each cell change."""

    def __init__(self):
        super().__init__()
        for i, (name, description) in enumerate(MODES.items()):
            self.addItem(description.partition(":")[0], name)
            self.setItemData(i, description, Qt.ItemDataRole.ToolTipRole)
        self.setCurrentIndex(list(MODES).index("morph"))
        self.currentIndexChanged.connect(self._describe)
        self._describe()

    def _describe(self) -> None:
        self.setToolTip(MODES[self.mode()])

    def mode(self) -> str:
        return self.currentData()


# What each sampling option changes, shown as its tooltip.
SAMPLING_TIPS = {
    "solver": "How each step follows the flow: euler takes 1 network evaluation a step, midpoint and heun 2, "
              "more accurate for the same steps",
    "time grid": "Where the steps fall between t = 0 and 1: uniform evenly; edm (the paper's) crowded near t = 1, "
                 "where the fine detail forms",
    "steps": "Solver steps from t = 0 to 1: more follow the flow more closely and take proportionally longer; "
             "the t slider gets one frame per step",
    "guidance": "Classifier-free guidance w: v = (1 + w) v(perturbation) - w v(unconditional); 0 = none, "
                "higher exaggerates the perturbation's effect. Shows the model's value for the chosen mode",
    "noise level": "Sample mode: the start is control + level x Gaussian noise (the paper's 0.5); higher frees the "
                   "generated cells further from their controls' shapes. Keep the model's own (the level it was "
                   "trained with): at another it removes noise that is not there, and fine texture with it",
    "autoguidance": "Sample mode: push away from the model file's guide, a less-trained snapshot of the same run: "
                    "v = (1 + a) v - a v_guide. It restores fine texture that sampling from noise loses; "
                    "0 = none, above 0 each step costs twice",
    "seed": "The random numbers: which synthetic sample cells are drawn and, in sample mode, the noise added; "
            "the same seed gives the same result",
    "number of cells": "How many control cells to carry: the first N of the chosen controls",
    "device": "Where the network runs: auto takes a CUDA GPU, else Apple MPS, else the CPU",
}
MORPH_NOISE_TIP = "Morph mode starts from the clean control cells (noise level 0); choose sample treated cells to set it"
MORPH_AUTOGUIDANCE_TIP = ("Morph mode runs without autoguidance: the controls' own fine detail is there from the start "
                          "(a model with a morph network mixes in the share of its main network the file recommends); "
                          "choose sample treated cells to set it")
NO_GUIDE_TIP = "This model file carries no guide network, so it samples without autoguidance"


class SamplingBox(QCollapsible):
    """Solver settings (the model's defaults after loading), seed, number of cells, device."""

    def __init__(self):
        super().__init__("Sampling (advanced)")
        self.solver, self.grid, self.device = QComboBox(), QComboBox(), QComboBox()
        for combo, names in ((self.solver, SOLVER_NAMES), (self.grid, GRID_NAMES), (self.device, DEVICES)):
            combo.addItems(names)
        self.steps = spin(1, 1000, 50)
        self.guidance = spin(0.0, 10.0, 0.2, step=0.05)
        self.noise = spin(0.0, 5.0, 0.5, step=0.05)
        self.autoguidance = spin(0.0, 10.0, 0.0, step=0.25)
        self.has_guide, self.morph = False, False
        self.defaults: SamplingConfig | None = None  # the model's, for each mode's guidance
        self.seed = spin(0, 2**31 - 1, 0)
        self.cells = spin(1, 100_000, 16)
        form = QWidget()
        lay = QFormLayout(form)
        self.fields = {
            "solver": self.solver, "time grid": self.grid, "steps": self.steps, "guidance": self.guidance,
            "noise level": self.noise, "autoguidance": self.autoguidance, "seed": self.seed, "number of cells": self.cells, "device": self.device,
        }
        for label, widget in self.fields.items():
            widget.setToolTip(SAMPLING_TIPS[label])
            lay.addRow(label, widget)
        self.addWidget(form)

    def set_mode(self, mode: str) -> None:
        """Morph ignores the noise level and autoguidance (it starts from the clean controls): the
        fields say so. The guidance shown becomes the model's for the new mode, unless the user changed it."""
        if self.defaults is not None:
            untouched = self.guidance.value() == round(self._default_guidance(self.mode), self.guidance.decimals())
            if untouched:
                self.guidance.setValue(self._default_guidance(mode))
        self.morph = mode == "morph"
        self.noise.setEnabled(not self.morph)
        self.noise.setToolTip(MORPH_NOISE_TIP if self.morph else SAMPLING_TIPS["noise level"])
        self._show_autoguidance()

    def set_defaults(self, sampling: SamplingConfig, has_guide: bool) -> None:
        self.solver.setCurrentText(sampling.solver)
        self.grid.setCurrentText(sampling.grid)
        self.steps.setValue(sampling.steps)
        self.defaults = sampling
        self.guidance.setValue(self._default_guidance(self.mode))
        self.noise.setValue(sampling.noise_level)
        self.autoguidance.setValue(sampling.autoguidance)
        self.has_guide = has_guide
        self._show_autoguidance()

    @property
    def mode(self) -> str:
        return "morph" if self.morph else "sample"

    def _default_guidance(self, mode: str) -> float:
        """The model's guidance for ``mode`` (its morph_guidance in morph)."""
        return self.defaults.for_mode(mode).guidance

    def _show_autoguidance(self) -> None:
        self.autoguidance.setEnabled(self.has_guide and not self.morph)
        tip = MORPH_AUTOGUIDANCE_TIP if self.morph else SAMPLING_TIPS["autoguidance"] if self.has_guide else NO_GUIDE_TIP
        self.autoguidance.setToolTip(tip)

    def options(self) -> dict:
        return {
            "sampling": {
                "solver": self.solver.currentText(), "grid": self.grid.currentText(), "steps": self.steps.value(),
                "guidance": self.guidance.value(), "noise_level": self.noise.value(),
                "autoguidance": self.autoguidance.value() if self.has_guide else 0.0,
            },
            "seed": self.seed.value(),
            "n_cells": self.cells.value(),
            "device": self.device.currentText(),
        }
