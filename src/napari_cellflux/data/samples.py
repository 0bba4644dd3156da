"""Sample inputs drawn by the synthetic screen generator: control cells and a whole field.

They are made on the fly (nothing to ship, no licence question) at the scale of the bundled demo
model (32-px cells, 3 channels), so they work with it out of the box. No Qt, no napari.
"""

from __future__ import annotations

import numpy as np

from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import Channel, default_channels

DEMO_IMAGE_SIZE = 32
DEMO_CHANNELS = 3


def synthetic_channels(count: int = DEMO_CHANNELS) -> tuple[Channel, ...]:
    """The synthetic screen's channel names (DNA, cytoskeleton, cytoplasm, ...) with display colours."""
    from napari_cellflux.data.synthetic import channel_names

    return tuple(Channel(name, c.color) for name, c in zip(channel_names(count), default_channels(count)))


def _sample_batch(n: int, image_size: int, channels: int, seed: int):
    """The one-batch synthetic screen the samples come from: its config, plan and generator."""
    from napari_cellflux.data.synthetic import SyntheticScreenConfig, plan_screen

    config = SyntheticScreenConfig(  # a screen needs 2 cells (one per split): draw at least 2
        image_size=image_size, channels=channels, batches=1, controls_per_batch=max(n, 2),
        perturbations=(), held_out=(), test_fraction=0.0, seed=seed,
    )
    rng = np.random.default_rng(config.seed)
    return config, plan_screen(config, rng), rng


def synthetic_controls(n: int = 16, image_size: int = DEMO_IMAGE_SIZE, channels: int = DEMO_CHANNELS, seed: int = 0) -> np.ndarray:
    """``n`` DMSO control cells of one synthetic batch as (N, C, S, S) uint8.

    Drawn in memory by the synthetic screen's own planning and drawing, so they carry exactly the
    cells, batch artefacts and pixel noise that ``cellflux synth`` would write for this config.
    """
    from napari_cellflux.data.synthetic import draw_screen

    if n < 1:
        raise InputError(f"ask for at least 1 synthetic control cell, got {n}")
    config, plan, rng = _sample_batch(n, image_size, channels, seed)
    return np.concatenate([pixels for _, pixels in draw_screen(plan, config, rng)])[:n]


def synthetic_field(seed: int = 0):
    """A 256 x 256 synthetic DMSO field of about 24 cells at the demo's scale, with its true
    nucleus labels (:class:`napari_cellflux.data.synthetic_field.SyntheticField`). It belongs to
    the batch of :func:`synthetic_controls` (same gain, background and noise), so cells cut from
    it look to the model like the sample control cells."""
    from napari_cellflux.data.synthetic_field import make_synthetic_field

    config, plan, _ = _sample_batch(2, DEMO_IMAGE_SIZE, DEMO_CHANNELS, seed)
    return make_synthetic_field(
        (256, 256), n_cells=24, channels=DEMO_CHANNELS, cell_size=DEMO_IMAGE_SIZE, seed=seed,
        gain=tuple(plan.gains[0]), offset=tuple(plan.offsets[0]), noise_sigma=config.noise_sigma,
    )
