"""Training pairs: each treated cell with a control cell of the same batch
(docs/method.md, Data and pre-processing).

With the paper's independent coupling a fresh random control is drawn at every access
(flow matching maps distributions). With the optimal-transport coupling
(:meth:`CellPairDataset.coupled_controls`) the random controls of each group of treated cells
are re-assigned among them so that the summed distance is least, so a model learns to morph a
cell into a treated cell like it rather than towards the treated cells' average.

:func:`same_batch_controls` is the one rule of which controls a cell may get, for training and
evaluation; :func:`draw_controls` draws them in bulk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_cellflux.data.cells import CellTable, load_cell
from napari_cellflux.errors import InputError, UnknownNameError
from napari_cellflux.models.normalization import Normalization
from napari_cellflux.models.vocabulary import Vocabulary


def same_batch_controls(table: CellTable, batches: Iterable[str], split: str | None = None, *,
                        other_split: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rows of ``table.cells`` of the control cells of each of ``batches`` (in that order) in
    ``split`` (None: all), and notes.

    other_split: a batch with no controls in ``split`` takes those of its other split, and a note
    says so (evaluation). A batch left without controls is an error.
    """
    cells = table.cells
    is_control = cells["is_control"].to_numpy()
    in_batch = cells["batch"].to_numpy()
    in_split = is_control if split is None else is_control & (cells["split"].to_numpy() == split)
    pools, notes = {}, []
    for batch in batches:
        pool = np.flatnonzero(in_split & (in_batch == batch))
        if len(pool) == 0 and other_split and split is not None:
            pool = np.flatnonzero(is_control & (in_batch == batch))
            if len(pool):
                notes.append(f"batch {batch}: no control cells in split {split!r}; controls drawn from its other split")
        pools[str(batch)] = pool
    empty = [b for b, rows in pools.items() if len(rows) == 0]
    if empty:
        scope = f" in split {split!r}" if split is not None and not other_split else ""
        more = f" ({len(empty)} such batches)" if len(empty) > 1 else ""
        raise InputError(
            f"{table.source}: batch {empty[0]!r} has treated cells but no control cells{scope}{more}; controls are "
            "drawn from the same batch, so add control cells to it or leave its treated cells out"
        )
    return pools, notes


def draw_controls(target_batches: np.ndarray, pools: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """int64 (N,): a random control row (with replacement) of each target's batch; one
    ``rng.choice`` per batch, in the order of ``pools``."""
    controls = np.empty(len(target_batches), dtype=np.int64)
    for batch, pool in pools.items():
        mine = np.flatnonzero(target_batches == batch)
        controls[mine] = rng.choice(pool, len(mine), replace=True)
    return controls


COUPLINGS = ("independent", "ot")
# The optimal-transport coupling compares cells on an OT_GRID x OT_GRID average-pooled copy:
# coarse enough that a screen's features fit in memory (192 floats a 3-channel cell), fine
# enough to tell a cell's outline, orientation and position.
OT_GRID = 8


@dataclass(frozen=True)
class PairingConfig:
    """Which cells to use and how to present them; the defaults are the published training setup.

    split: "train", "test" or None (all); controls come from the same split.
    held_out: perturbations whose treated cells are left out (unseen-compound evaluation).
    dequantize: add U[0, 1) to the uint8 pixels before scaling (training; off for evaluation).
    flip_prob: probability of a horizontal and, independently, of a vertical flip, drawn
        separately for control and target: they are unrelated cells, so flipping them together
        would add nothing but a correlation the model should not see.
        With the "ot" coupling the pair is flipped together, as it was matched.
    coupling: "independent" (the paper: any control of the batch) or "ot" (see
        :meth:`CellPairDataset.coupled_controls`).
    control_targets: the share of items whose target is a control cell too (control -> control
        under the control's own name, e.g. DMSO), so that a model learns to leave controls as
        they are; 0 is the paper (treated targets only).
    seed: seeds the draws (controls, dequantisation noise, flips); None follows torch's global RNG.
    """

    split: str | None = "train"
    held_out: tuple[str, ...] = ()
    dequantize: bool = True
    flip_prob: float = 0.3
    coupling: str = "independent"
    control_targets: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_prob <= 1.0:
            raise InputError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0.0 <= self.control_targets < 1.0:
            raise InputError(f"control_targets is a share of the training items, in [0, 1); got {self.control_targets}")
        if self.coupling not in COUPLINGS:
            raise InputError(f"coupling must be one of {', '.join(COUPLINGS)}, got {self.coupling!r}")


class CellPairDataset(Dataset):
    """Treated cells of ``table`` (then, with ``config.control_targets``, some of its control
    cells) with a batch-matched control drawn at every access.

    Item i is a dict: control (C, H, W) float32 in [-1, 1], target (C, H, W) float32 in [-1, 1],
    perturbation (int, row of ``vocabulary``), batch (str), control_id / target_id (int, rows of
    ``self.table.cells``). Pixels are read from disk per item. With the "ot" coupling the
    controls come from :meth:`coupled_controls` through :meth:`item`; ``dataset[i]`` refuses.

    In DataLoader workers each worker seeds its own stream from ``config.seed`` and the worker
    seed torch assigns (new every epoch, fixed by ``torch.manual_seed``), so workers and epochs
    draw different controls.
    """

    def __init__(
        self,
        table: CellTable,
        vocabulary: Vocabulary,
        config: PairingConfig = PairingConfig(),
        normalization: Normalization = Normalization(),
    ) -> None:
        self.table = table.select(config.split, config.held_out)
        self.config = config
        self.normalization = normalization
        cells = self.table.cells
        self.targets = np.flatnonzero(~cells["is_control"].to_numpy())
        if len(self.targets) == 0:
            raise InputError(f"{table.source}: no treated cells in split {config.split!r}; check the split and STATE")
        if config.control_targets > 0:
            self.targets = np.concatenate([self.targets, self._control_targets(config.control_targets)])
        self.perturbation_index = self._vocabulary_rows(vocabulary)
        batches = np.unique(cells["batch"].to_numpy()[self.targets])
        # The table is already cut to the split; the split names it in errors.
        self.controls_by_batch, _ = same_batch_controls(self.table, batches, config.split)
        self.shape = self._expected_shape()
        self._features: dict[int, np.ndarray] = {}
        self._generator: torch.Generator | None = None
        self._generator_pid: int | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return self.item(i, self._rng())

    def item(self, i: int, generator: torch.Generator, control_id: int | None = None) -> dict:
        """Item ``i`` with every random draw taken from ``generator`` (for callers that seed per item);
        ``control_id``: its control (a row of ``self.table.cells``, from :meth:`coupled_controls`)
        instead of a random one."""
        target_id = int(self.targets[i])
        batch = self.table.cells["batch"].iloc[target_id]
        if control_id is None and self.config.coupling == "ot":
            # A random control here would silently undo the matching the option asks for.
            raise InputError("coupling 'ot' matches controls per epoch: pass control_id from coupled_controls(rng) "
                             "to item(i, generator, control_id), as training.data.SeededItems does")
        if control_id is None:
            controls = self.controls_by_batch[batch]
            control_id = int(controls[torch.randint(len(controls), (1,), generator=generator).item()])
        control, flips = self._pixels(control_id, generator)
        target, _ = self._pixels(target_id, generator, flips if self.config.coupling == "ot" else None)
        return {
            "control": control,
            "target": target,
            "perturbation": int(self.perturbation_index[i]),
            "batch": batch,
            "control_id": control_id,
            "target_id": target_id,
        }

    def coupled_controls(self, rng: np.random.Generator) -> np.ndarray:
        """int64 (len(self),): a control row for every item, by minibatch optimal transport.

        For each group of treated cells of one perturbation and batch, as many controls are drawn
        from the batch (with replacement, as the independent coupling does, so each control is as
        likely as before) and assigned to the group's cells one to one, minimising the summed
        squared distance between their pooled pixels (Hungarian algorithm). Draws and
        assignments depend only on ``rng``.
        """
        from scipy.optimize import linear_sum_assignment

        controls = np.empty(len(self.targets), dtype=np.int64)
        batches = self.table.cells["batch"].to_numpy()[self.targets]
        groups: dict[tuple[int, str], list[int]] = {}
        for i, key in enumerate(zip(self.perturbation_index.tolist(), batches.tolist())):
            groups.setdefault(key, []).append(i)
        for (_, batch), items in sorted(groups.items()):
            drawn = rng.choice(self.controls_by_batch[batch], len(items), replace=True)
            a = np.stack([self._feature(int(self.targets[i])) for i in items])
            b = np.stack([self._feature(int(c)) for c in drawn])
            cost = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
            rows, cols = linear_sum_assignment(cost)
            controls[np.asarray(items)[rows]] = drawn[cols]
        return controls

    def _control_targets(self, share: float) -> np.ndarray:
        """int64: rows of controls to use as targets, spread evenly over the split's controls (every
        control before any repeats), so many that they are ``share`` of all items."""
        controls = np.flatnonzero(self.table.cells["is_control"].to_numpy())
        # None at all: same_batch_controls then names the batch and the fix, as without control targets.
        count = round(share / (1.0 - share) * len(self.targets)) if len(controls) else 0
        return controls[(np.arange(count) * len(controls)) // count] if count else controls[:0]

    def _feature(self, position: int) -> np.ndarray:
        """float32 (C * OT_GRID**2,): the cell at ``position`` average-pooled, cached (read once)."""
        if position not in self._features:
            x = torch.from_numpy(self._checked(position)).float()[None]
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, OT_GRID) / self.normalization.max_value
            self._features[position] = pooled.flatten().numpy()
        return self._features[position]

    def _checked(self, position: int) -> np.ndarray:
        path = self.table.cells["path"].iloc[position]
        pixels = load_cell(path)
        if pixels.shape != self.shape:
            raise InputError(
                f"{self.table.where(position)}: cell file {path} has shape (C, H, W) = {pixels.shape}, "
                f"expected {self.shape} like the other cells; re-export it with that size and channel count"
            )
        return pixels

    def _pixels(self, position: int, generator: torch.Generator,
                flips: tuple[bool, bool] | None = None) -> tuple[torch.Tensor, tuple[bool, bool]]:
        """The cell in model space, dequantised and flipped (``flips``: (horizontal, vertical), drawn if None)."""
        x = self.normalization.to_model(self._checked(position), dequantize=self.config.dequantize, generator=generator)
        if flips is None:
            flips = tuple(torch.rand((), generator=generator).item() < self.config.flip_prob for _ in range(2))
        for dim, flip in zip((-1, -2), flips):
            if flip:
                x = x.flip(dim)
        return x, flips

    def _vocabulary_rows(self, vocabulary: Vocabulary) -> np.ndarray:
        names = self.table.cells["perturbation"].to_numpy()[self.targets]
        rows = {}
        for name in dict.fromkeys(names):
            try:
                rows[name] = vocabulary.index(name)
            except KeyError as err:
                position = int(self.targets[names.tolist().index(name)])
                fix = ("set control_targets to 0" if self.table.cells["is_control"].iloc[position]
                       else "list it in held_out")
                raise UnknownNameError(
                    f"{self.table.where(position)}: perturbation {name!r} has no embedding ({err.args[0]}); "
                    f"add its row to the embedding CSV or {fix}"
                ) from None
        return np.array([rows[n] for n in names], dtype=np.int64)

    def _expected_shape(self) -> tuple[int, int, int]:
        first = int(self.targets[0])
        shape = load_cell(self.table.cells["path"].iloc[first]).shape
        if self.table.channels is not None and shape[0] != self.table.channels:
            raise InputError(
                f"{self.table.where(first)}: cell file {self.table.cells['path'].iloc[first]} has {shape[0]} "
                f"channels, expected {self.table.channels}; pass channels= to the reader if the data differ"
            )
        return shape

    def _rng(self) -> torch.Generator:
        # A generator copied into a DataLoader worker would repeat the parent's draws: re-seed per process.
        if self._generator is None or self._generator_pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            base = self.config.seed
            if base is None:
                base = int(torch.randint(2**62, (1,)).item())
            entropy = [base] if info is None else [base, info.seed]
            seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_pid = os.getpid()
        return self._generator
