"""Exponential moving average of the weights; the EMA copy is the one sampled from
(docs/method.md, Training)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, decay = min(max_decay, (1 + n) / (10 + n)).

    n counts updates (incremented before the decay is computed), so early updates follow the
    weights closely and the average settles as training goes on.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.num_updates = 0

    @property
    def decay(self) -> float:
        return min(self.max_decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        weight = 1 - self.decay
        for shadow, param in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(param.detach(), weight)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the averaged weights as they are now (the autoguidance guide keeps one)."""
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["model"])
