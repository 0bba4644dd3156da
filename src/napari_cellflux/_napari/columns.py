"""The result on napari's canvas: columns controls | run A | run B | ... of one set of control
cells, each titled above its grid, all shown at one t, and placed so that layers opened later
never cover them.

Each column is one 2-D image layer per channel whose data the widget's t slider swaps for the
frame at that t. The result so has no napari dims axis: napari aligns layers by their last axes,
so a stack opened later (cells, z or fields on its first axis) would share the first axis of a
(T, y, x) result and move with it; here it slides on its own and the result keeps its t.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.theme import get_theme

from napari_cellflux._napari.writer import LAYER_KEY

if TYPE_CHECKING:
    import napari

    from napari_cellflux.generation.result import GenerationResult

SPACING = 16  # px between columns, and between the result and other layers
TITLE_ABOVE = 6  # px between a column's title and its grid
TITLE_SIZE = 13  # points on screen, whatever the zoom
TITLES = "CellFlux titles"
CONTROLS = "controls"
SAME_TIME = 1e-6  # frame times closer than this are one t


@dataclass
class Run:
    """One generated column: the run, its frames tiled per channel, (F, grid_h, grid_w) each,
    its title on the canvas and its full name (a SMILES in full) for tooltips."""

    result: "GenerationResult"
    grids: list[np.ndarray]
    title: str
    full_name: str
    layers: list = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        """A run of the same perturbation in the same mode takes this run's column."""
        return self.result.label, self.result.mode

    def same_cells(self, other: "Run") -> bool:
        """From the same control cells, seed and model: columns of one comparison."""
        mine, theirs = self.result.trajectory.metadata, other.result.trajectory.metadata
        return (
            np.array_equal(self.result.controls, other.result.controls)
            and mine.get("seed") == theirs.get("seed") and mine.get("model_sha256") == theirs.get("model_sha256")
        )


def nearest_frame(times: np.ndarray, t: float) -> int:
    """Index of the frame nearest to flow time ``t``; of frames as near, the last, so that t = 0
    after the controls is a run's noised start where it has one (its frame 1), else its controls."""
    distance = np.abs(np.asarray(times) - t)
    return len(distance) - 1 - int(np.argmin(distance[::-1]))


def timeline(runs: list[Run]) -> tuple[list[str], np.ndarray]:
    """One t for all columns: the controls, then every frame time of any run, in order.
    Returns the K names and a (R, K) table of the frame each run shows at each t (its nearest
    frame, so runs of other steps or modes still stand side by side)."""
    times = sorted({round(float(t), 6) for run in runs for t in run.result.frame_times[1:]})
    names = [runs[0].result.frame_names[0]]
    for t in times:
        owner = next(r.result for r in runs if np.any(np.abs(r.result.frame_times[1:] - t) < SAME_TIME))
        names.append(owner.frame_names[1 + int(np.argmin(np.abs(owner.frame_times[1:] - t)))])
    table = np.array([[0] + [nearest_frame(run.result.frame_times, t) for t in times] for run in runs], dtype=int)
    return names, table


class ResultColumns:
    """The runs on the canvas, left to right after the controls, and their layers."""

    def __init__(self, viewer: "napari.viewer.Viewer"):
        self._viewer = viewer
        self.runs: list[Run] = []
        self.names: list[str] = []  # the shared timeline's frame names
        self.table = np.zeros((0, 0), dtype=int)  # (runs, ticks) frame shown by each run
        self._controls: list = []  # the controls column's layers
        self._titles = None  # the Points layer carrying the column titles
        self._left = 0.0  # world x of the controls column
        self._tick = 0
        self._changing = False  # True while the columns add their own layers
        viewer.layers.events.inserted.connect(self._on_inserted)

    # ---- what is shown -----------------------------------------------------------------------

    @property
    def layers(self) -> list:
        """Every layer of the result (controls, runs, titles) still in the viewer."""
        mine = self._controls + [layer for run in self.runs for layer in run.layers] + [self._titles]
        return [layer for layer in mine if layer is not None and layer in self._viewer.layers]

    @property
    def titles(self) -> list[str]:
        return [CONTROLS] + [run.title for run in self.runs]

    def add(self, run: Run) -> str:
        """Show ``run`` as a new column, in place of the column of the same perturbation and mode,
        or as the first of a new comparison when its control cells differ; says which."""
        self._changing = True
        try:
            return self._add(run)
        finally:
            self._changing = False

    def _add(self, run: Run) -> str:
        if self.runs and not run.same_cells(self.runs[0]):
            self.clear()
            how = f"new control cells, seed or model: the previous columns were cleared; {run.title} is the first"
        else:
            how = f"{run.title} added as column {len(self.runs) + 1}"
        if not self.runs:
            self._left = self._free_x(run.result)
            self._controls = self._add_layers(run, [grid[0] for grid in run.grids], CONTROLS, {})
        for i, other in enumerate(self.runs):
            if other.key == run.key:
                self._remove(other.layers)
                self.runs[i] = run
                how = f"{run.title} replaced its column"
                break
        else:
            self.runs.append(run)
        run.layers = self._add_layers(run, [grid[0] for grid in run.grids], run.title,
                                      {LAYER_KEY: run.result, "full_name": run.full_name})
        self.names, self.table = timeline(self.runs)
        self._place()
        self.show(len(self.names) - 1)  # the perturbed cells first
        return how

    def clear(self) -> None:
        self._remove(self.layers)
        self.runs, self._controls, self._titles = [], [], None
        self.names, self.table = [], np.zeros((0, 0), dtype=int)
        self._viewer.scale_bar.visible = False

    def show(self, tick: int) -> None:
        """Every column at the shared timeline's ``tick``: each run's frame nearest to that t."""
        self._tick = tick
        for run, frames in zip(self.runs, self.table):
            for layer, grid in zip(run.layers, run.grids):
                layer.data = grid[frames[tick]]

    def frame_of(self, run: Run) -> int:
        """The frame ``run`` shows now."""
        return int(self.table[self.runs.index(run), self._tick])

    # ---- layers and where they go ------------------------------------------------------------

    def _add_layers(self, run: Run, planes: list[np.ndarray], title: str, metadata: dict) -> list:
        result = run.result
        scale = self._scale(result)
        extra = {} if result.pixel_size_um is None else {"units": ("µm", "µm")}
        return [
            self._viewer.add_image(
                plane, name=f"{title} [{channel.name}]", colormap=channel.color, blending="additive",
                contrast_limits=(0, result.normalization.max_value), scale=scale, metadata=dict(metadata), **extra,
            )
            for channel, plane in zip(result.channels, planes)
        ]

    def _place(self) -> None:
        """Columns left to right from ``self._left``, titles above them, the scale bar in µm where
        the model's pixel size is known."""
        result = self.runs[0].result
        s = self._scale(result)[0]
        width = self.runs[0].grids[0].shape[-1]
        step = (width + SPACING) * s
        for k, column in enumerate([self._controls] + [run.layers for run in self.runs]):
            for layer in column:
                layer.translate = (0.0, self._left + k * step)
        corners = [[-TITLE_ABOVE, k * (width + SPACING)] for k in range(len(self.titles))]
        if self._titles is None or self._titles not in self._viewer.layers:
            extra = {} if result.pixel_size_um is None else {"units": ("µm", "µm")}
            self._titles = self._viewer.add_points(
                ndim=2, name=TITLES, size=1, face_color="transparent", border_color="transparent", border_width=0,
                scale=(s, s), **extra,
                features={"title": np.array([], dtype=object)}, feature_defaults={"title": ""},
                text={"string": "{title}", "size": TITLE_SIZE, "anchor": "lower_left",
                      "color": get_theme(self._viewer.theme).text.as_hex()},
            )
        self._titles.data = np.array(corners, dtype=float)
        self._titles.features = {"title": self.titles}
        self._titles.translate = (0.0, self._left)
        self._viewer.scale_bar.visible = result.pixel_size_um is not None

    def _on_inserted(self, event) -> None:
        """A layer opened later that would cover the result moves the result right of it."""
        mine = self.layers
        if self._changing or not mine or event.value in mine:
            return
        (top, left), (bottom, right) = self._bounds(mine)
        layer = event.value
        (y0, x0), (y1, x1) = layer.extent.world[0][-2:], layer.extent.world[1][-2:]
        if x0 < right + SPACING and x1 > left - SPACING and y0 < bottom and y1 > top:
            self._left = self._free_x(self.runs[0].result)
            self._changing = True
            try:
                self._place()
            finally:
                self._changing = False

    def _free_x(self, result: "GenerationResult") -> float:
        """World x right of every other layer, so the result covers none of them."""
        mine = self.layers
        edges = [layer.extent.world[1][-1] for layer in self._viewer.layers if layer not in mine]
        return float(np.ceil(max(edges))) + 1 + SPACING * self._scale(result)[0] if edges else 0.0

    @staticmethod
    def _bounds(layers: list) -> tuple[tuple[float, float], tuple[float, float]]:
        """((top, left), (bottom, right)) world bounds of ``layers`` in y and x."""
        lows = np.min([layer.extent.world[0][-2:] for layer in layers], axis=0)
        highs = np.max([layer.extent.world[1][-2:] for layer in layers], axis=0)
        return (float(lows[0]), float(lows[1])), (float(highs[0]), float(highs[1]))

    @staticmethod
    def _scale(result: "GenerationResult") -> tuple[float, float]:
        """World units per pixel: µm where the model knows its pixel size, else pixels."""
        s = 1.0 if result.pixel_size_um is None else float(result.pixel_size_um)
        return s, s

    def _remove(self, layers: list) -> None:
        for layer in layers:
            if layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
