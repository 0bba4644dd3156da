"""Mapping between stored pixel values and the model's [-1, 1] space (docs/method.md, Data and
pre-processing)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Normalization:
    """x_model = (x / max_value - 0.5) / 0.5; in training x = pixels + U[0, 1) (dequantisation).

    ``max_value`` is the stored range (255 for the published uint8 crops).
    """

    max_value: float = 255.0

    def to_model(
        self, pixels: np.ndarray | torch.Tensor, *, dequantize: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Stored pixels (any shape, values in [0, max_value]) -> float32 tensor in [-1, 1].

        ``dequantize`` adds U[0, 1) before scaling, as the authors do for training data.
        """
        x = torch.as_tensor(pixels).float()
        if dequantize:
            x = x + torch.rand(x.shape, generator=generator, device=x.device)
        return (x / self.max_value - 0.5) / 0.5

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """Model space [-1, 1] -> uint8 (max_value 255) or uint16 pixels, clipped to the range."""
        dtype = np.uint8 if self.max_value <= 255 else np.uint16
        pixels = ((x.detach().float().cpu() * 0.5 + 0.5) * self.max_value).round()
        return pixels.clamp(0, self.max_value).numpy().astype(dtype)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Normalization":
        return cls(**values)
