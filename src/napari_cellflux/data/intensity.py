"""Raw microscope intensities -> uint8, with the mapping recorded so it can be reported and reused.

The model sees uint8 crops (IMPA's preprocessing, which CellFlux reads). The mapping is computed
on the whole field, never per crop: per-crop stretching would erase the intensity differences
between cells that a perturbation causes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_cellflux.errors import InputError

MODES = ("percentile", "range", "bit_depth", "auto")
CAMERA_BITS = (8, 10, 12, 14, 16)  # the bit depths cameras write (a 12-bit frame is stored in uint16)


@dataclass(frozen=True)
class IntensityScaling:
    """How a (C, H, W) image is mapped to [0, 255].

    mode "percentile" (default): per channel, the ``low`` / ``high`` percentiles of this image
    (default 1st / 99.8th) map to 0 / 255. Robust for any single field, but it also rescales
    each field on its own, so a perturbation that dims a whole well is partly normalised away.
    mode "range": the fixed values ``low`` / ``high`` (scalars, or one per channel) map to 0 / 255,
    e.g. 0 / 4095 for a 12-bit camera. Use it, or a range recorded from control fields, to keep
    intensity effects comparable across the fields of a screen.
    mode "bit_depth": the camera's full range 0 .. 2^bits - 1, with ``bits`` the smallest of
    CAMERA_BITS that holds the image's largest value (12 for a 12-bit frame in uint16): a fixed
    range, like "range", found from the image; ``low`` / ``high`` are unused.
    mode "auto": "bit_depth" for camera counts (integer pixels), "percentile" (with ``low`` /
    ``high``) for float images, which have no bit depth. The record names the mode used.
    """

    mode: str = "percentile"
    low: float | tuple[float, ...] = 1.0
    high: float | tuple[float, ...] = 99.8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"intensity scaling mode must be one of {MODES}, got {self.mode!r}")
        if self.mode in ("percentile", "auto") and not 0.0 <= float(self.low) < float(self.high) <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")


def scale_to_uint8(image: np.ndarray, scaling: IntensityScaling = IntensityScaling()) -> tuple[np.ndarray, dict]:
    """(C, H, W) image of any numeric dtype -> ((C, H, W) uint8, record).

    The record holds the mode, its parameters and the per-channel values that mapped to 0 and
    255 (``low`` / ``high``); ``IntensityScaling("range", record["low"], record["high"])``
    reproduces the mapping on another image.
    """
    if scaling.mode == "auto":
        scaling = replace(scaling, mode="bit_depth" if np.asarray(image).dtype.kind in "ui" else "percentile")
    data = np.asarray(image, dtype=np.float32)
    channels = data.shape[0]
    if scaling.mode == "percentile":
        low, high = np.percentile(data.reshape(channels, -1), [scaling.low, scaling.high], axis=1)
    elif scaling.mode == "bit_depth":
        top = float(data.max()) if data.size else 0.0
        bits = next((b for b in CAMERA_BITS if top <= 2**b - 1), None)
        if bits is None or float(data.min()) < 0:
            raise InputError(f"the image's values ({float(data.min()):g}..{top:g}) are not a camera's 8..16-bit counts; "
                             "use percentile or range scaling")
        low, high = np.zeros(channels), np.full(channels, 2.0**bits - 1)
    else:
        low = np.broadcast_to(np.asarray(scaling.low, dtype=np.float64), (channels,))
        high = np.broadcast_to(np.asarray(scaling.high, dtype=np.float64), (channels,))
    flat = np.flatnonzero(high <= low)
    if flat.size:
        c = int(flat[0])
        raise InputError(
            f"channel {c}: the intensity range maps {low[c]:g}..{high[c]:g} to 0..255, which is empty "
            "(a blank channel, or low >= high); check the channel or give a fixed range with high > low"
        )
    span = (high - low).astype(np.float32)[:, None, None]
    scaled = (data - low.astype(np.float32)[:, None, None]) / span * 255.0
    pixels = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    record = {
        "mode": scaling.mode,
        "parameters": [_plain(scaling.low), _plain(scaling.high)],
        "low": [float(v) for v in low],
        "high": [float(v) for v in high],
    }
    return pixels, record


def _plain(value: float | tuple[float, ...]) -> float | list[float]:
    return [float(v) for v in value] if isinstance(value, (tuple, list, np.ndarray)) else float(value)
