"""Writing generated runs for Fiji and for slides, atomically: the TIFF hyperstack (channel
colours as ImageJ LUTs, the pixel size as ImageJ resolution in µm) and the animated morph (GIF),
checked by ``atomic.check_writable`` as every output is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from napari_cellflux.atomic import atomic_write
from napari_cellflux.errors import InputError
from napari_cellflux.models.channels import Channel

TIFF_SUFFIXES = (".tif", ".tiff")
ANIMATION_SUFFIXES = (".gif",)
# Channel.color is a napari colormap name; these are the ones the package gives channels
# (models/channels.py), as RGB in [0, 1]. Any other colour is exported grey, and "#rrggbb" as given.
RGB = {
    "gray": (1.0, 1.0, 1.0), "grey": (1.0, 1.0, 1.0), "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
}
CELL_SIDE_PX = 128  # cells of an animation are enlarged (nearest neighbour) to about this size for slides
MAX_COLUMNS = 8
FINAL_HOLD_S = 1.0  # the loop rests on the perturbed cells


def channel_rgb(channel: Channel) -> tuple[float, float, float]:
    """The channel's colour as RGB in [0, 1] (grey for a colormap name not in RGB)."""
    color = channel.color.strip().lower()
    if len(color) == 7 and color.startswith("#"):
        try:
            return tuple(int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
        except ValueError:
            pass
    return RGB.get(color, RGB["gray"])


def imagej_lut(channel: Channel) -> np.ndarray:
    """(3, 256) uint8: the ImageJ lookup table from black to the channel's colour."""
    ramp = np.arange(256, dtype=np.float64)
    return np.stack([np.round(ramp * c) for c in channel_rgb(channel)]).astype(np.uint8)


def write_frames_tiff(
    path: str | Path,
    frames: np.ndarray,
    names: list[str],
    channels: tuple[Channel, ...] | list[Channel],
    metadata: dict,
    pixel_size_um: float | None = None,
) -> Path:
    """Write (F, N, C, H, W) stored pixels as an ImageJ hyperstack (T = frame, Z = cell,
    C = channel), shown as a composite in the channels' colours (LUTs).

    ``names`` (F,) label the frames ("controls (t = 0)", ...) in the ImageJ slice labels; the
    run's metadata (JSON, with the frame names) goes to the ImageJ "Info" property. Where
    ``pixel_size_um`` (µm per pixel) is known it is the ImageJ resolution with unit "um", so
    Fiji's scale bar and measurements are in µm.
    """
    import tifffile

    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise InputError(f"frames must be (F, N, C, H, W), got shape {frames.shape}")
    f, n, c = frames.shape[:3]
    if c != len(channels):
        raise InputError(f"frames have {c} channels but {len(channels)} channels were given")
    if len(names) != f:
        raise InputError(f"frames have {f} frames but {len(names)} frame names were given")
    info = json.dumps({**metadata, "frames": list(names), "channels": [ch.name for ch in channels],
                       "pixel_size_um": pixel_size_um})
    labels = [f"{names[i]}, cell {j}, {ch.name}" for i in range(f) for j in range(n) for ch in channels]
    imagej = {"axes": "TZCYX", "Labels": labels, "Info": info, "mode": "composite",
              "LUTs": [imagej_lut(ch) for ch in channels]}
    options = {}
    if pixel_size_um is not None:
        imagej["unit"] = "um"
        options["resolution"] = (1 / pixel_size_um, 1 / pixel_size_um)  # pixels per µm
    path = Path(path)
    with atomic_write(path) as out:
        tifffile.imwrite(out, frames, imagej=True, metadata=imagej, **options)
    return path


def compose_rgb(cells: np.ndarray, channels: tuple[Channel, ...] | list[Channel], max_value: float) -> np.ndarray:
    """(N, C, H, W) stored pixels -> (N, H, W, 3) uint8: each channel in its colour, added (as
    napari's additive blending), clipped at white."""
    colours = np.array([channel_rgb(ch) for ch in channels], dtype=np.float32)  # (C, 3)
    scaled = np.asarray(cells, dtype=np.float32) / max_value
    rgb = np.einsum("nchw,ck->nhwk", scaled, colours)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def check_fps(fps: float, what: str = "fps") -> None:
    """Frames per second of an animation: a number in (0, 50] (GIF delays are whole 10 ms)."""
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 50):
        raise InputError(f"{what} must be a number in (0, 50] frames per second, got {fps!r}")


def write_animation(path: str | Path, frames: np.ndarray, names: list[str], channels, max_value: float,
                    fps: float = 4.0) -> Path:
    """Write (F, N, C, H, W) stored pixels as a looping GIF: one frame per trajectory frame, the
    cells side by side (at most MAX_COLUMNS a row), enlarged to about CELL_SIDE_PX, each frame's
    name written above them; the last frame is held FINAL_HOLD_S."""
    import imageio.v3 as iio

    frames = np.asarray(frames)
    check_fps(fps)
    if len(names) != len(frames):
        raise InputError(f"frames have {len(frames)} frames but {len(names)} frame names were given")
    images = [_frame_image(compose_rgb(cells, channels, max_value), name) for cells, name in zip(frames, names)]
    step_ms = 1000 / fps
    durations = [step_ms] * (len(images) - 1) + [max(step_ms, 1000 * FINAL_HOLD_S)]
    path = Path(path)
    with atomic_write(path) as out:
        iio.imwrite(out, np.stack(images), extension=".gif", duration=durations, loop=0)
    return path


def _frame_image(rgb: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W, 3) cells -> one (H', W', 3) image: a grid of enlarged cells under a title strip
    (widened to the title where the grid is narrower)."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w, _ = rgb.shape
    scale = max(1, CELL_SIDE_PX // max(h, w))
    gap = 2 * scale
    columns = min(n, MAX_COLUMNS)
    rows = -(-n // columns)
    title = max(14, scale * 4)
    font = ImageFont.load_default(size=title - 3)
    width = max(columns * (w * scale + gap) - gap, int(np.ceil(font.getlength(name))) + 4)
    canvas = np.zeros((title + rows * (h * scale + gap) - gap, width, 3), np.uint8)
    for i, cell in enumerate(rgb):
        y, x = title + (i // columns) * (h * scale + gap), (i % columns) * (w * scale + gap)
        canvas[y:y + h * scale, x:x + w * scale] = cell.repeat(scale, 0).repeat(scale, 1)
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((2, 1), name, fill=(255, 255, 255), font=font)
    return np.asarray(image)
