"""Export that Fiji and a talk slide read (issue 14): the TIFF carries the channel colours (ImageJ
LUTs) and the pixel size (ImageJ resolution in µm), starts with the real controls; the GIF morph
shows the chosen cells in their colours; an empty path or a folder is refused as a target."""

from __future__ import annotations

import json
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from plugin_helpers import FAST, tiny_model

from napari_cellflux.atomic import check_writable
from napari_cellflux.data.samples import synthetic_controls
from napari_cellflux.data.scale import pixel_size_from_tiff
from napari_cellflux.errors import InputError
from napari_cellflux.generation.export import (
    ANIMATION_SUFFIXES,
    CELL_SIDE_PX,
    FINAL_HOLD_S,
    TIFF_SUFFIXES,
    channel_rgb,
    compose_rgb,
    imagej_lut,
)
from napari_cellflux.generation.result import generate_from_pixels
from napari_cellflux.models.channels import Channel
from napari_cellflux.models.domain import DomainWarning


@pytest.fixture(scope="module")
def cells():
    return synthetic_controls(3, seed=5)


def result_for(cells, pixel_size_um=None, mode="morph"):
    model = tiny_model()
    model.pixel_size_um = pixel_size_um
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)
        return generate_from_pixels(model, cells, device="cpu", perturbation="colchicine", sampling=FAST, mode=mode)


@pytest.fixture(scope="module")
def result(cells):
    return result_for(cells, pixel_size_um=0.65, mode="sample")


def test_an_empty_path_or_a_folder_is_not_an_export_target(tmp_path):
    for empty in ("", ".", " "):
        with pytest.raises(InputError, match="export: give a file name ending in .tif"):
            check_writable(empty, what="export", suffixes=TIFF_SUFFIXES)
    with pytest.raises(InputError, match=f"export {tmp_path} is a folder; give a file name ending in .tif"):
        check_writable(tmp_path, what="export", suffixes=TIFF_SUFFIXES)
    with pytest.raises(InputError, match="is a folder"):  # the old bug: "<folder>.tif" written beside the folder
        check_writable(tmp_path, what="export", suffixes=TIFF_SUFFIXES, add_suffix=True)
    with pytest.raises(InputError, match="is a folder"):
        check_writable(f"{tmp_path}/new/", what="export", suffixes=TIFF_SUFFIXES)
    (tmp_path / "taken.tif").mkdir()
    with pytest.raises(InputError, match="taken.tif is a folder"):
        check_writable(tmp_path / "taken", what="export", suffixes=TIFF_SUFFIXES, add_suffix=True)
    with pytest.raises(InputError, match="--gif .*must end in .gif"):
        check_writable(tmp_path / "morph.png", what="--gif", suffixes=ANIMATION_SUFFIXES)
    assert check_writable(tmp_path / "run", what="export", suffixes=TIFF_SUFFIXES, add_suffix=True) == tmp_path / "run.tif"
    assert check_writable(tmp_path / "run.TIFF", what="export", suffixes=TIFF_SUFFIXES) == tmp_path / "run.TIFF"
    assert list(tmp_path.iterdir()) == [tmp_path / "taken.tif"]


def test_writers_refuse_a_folder(result, tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        result.write_tiff(tmp_path)
    with pytest.raises(InputError, match="is a folder"):
        result.write_animation(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_luts_are_each_channels_colour():
    blue = imagej_lut(Channel("DNA", "blue"))
    assert blue.shape == (3, 256) and blue.dtype == np.uint8
    np.testing.assert_array_equal(blue[2], np.arange(256)) and np.testing.assert_array_equal(blue[:2], 0)
    np.testing.assert_array_equal(imagej_lut(Channel("x", "magenta"))[1], 0)
    assert channel_rgb(Channel("x", "#ff8000")) == (1.0, 128 / 255, 0.0)
    assert channel_rgb(Channel("x", "viridis")) == channel_rgb(Channel("x", "gray")) == (1.0, 1.0, 1.0)


def test_tiff_opens_with_colours_scale_and_the_controls_first(result, cells, tmp_path):
    path = result.write_tiff(tmp_path / "run.tif")
    with tifffile.TiffFile(path) as tif:
        frames = tif.asarray()
        meta = tif.imagej_metadata
        assert tif.series[0].axes == "TZCYX"
    np.testing.assert_array_equal(frames[0], cells)
    np.testing.assert_array_equal(frames, result.frames)
    assert meta["mode"] == "composite" and meta["unit"] == "um"
    luts = [np.asarray(lut) for lut in meta["LUTs"]]
    assert len(luts) == 3
    for lut, channel in zip(luts, result.channels):
        np.testing.assert_array_equal(lut, imagej_lut(channel))
    assert pixel_size_from_tiff(path) == (pytest.approx(0.65, rel=1e-6), "tiff:imagej")  # what Fiji and our reader see
    info = json.loads(meta["Info"])
    assert info["pixel_size_um"] == 0.65 and info["frames"] == result.frame_names and info["mode"] == "sample"
    assert info["frame_times"] == pytest.approx(list(result.frame_times)) and info["precision"] == "fp32"
    assert meta["Labels"][3 * 3] == f"{result.frame_names[1]}, cell 0, DNA"  # frame 1: the noised start


def test_tiff_without_a_known_pixel_size_has_no_scale(cells, tmp_path):
    path = result_for(cells, pixel_size_um=None).write_tiff(tmp_path / "run.tif")
    with tifffile.TiffFile(path) as tif:
        assert "unit" not in tif.imagej_metadata
    assert pixel_size_from_tiff(path) is None


def test_one_frame_by_index(result, cells, tmp_path):
    first = result.write_tiff(tmp_path / "first.tif", index=0)
    np.testing.assert_array_equal(tifffile.imread(first), cells)
    last = result.write_tiff(tmp_path / "last.tif", index=-1)
    with tifffile.TiffFile(last) as tif:
        assert json.loads(tif.imagej_metadata["Info"])["frames"] == ["t = 1 (perturbed)"]
        np.testing.assert_array_equal(tif.asarray(), result.frames[-1])


def test_compose_adds_each_channel_in_its_colour():
    channels = (Channel("DNA", "blue"), Channel("tubulin", "green"), Channel("actin", "red"))
    cells = np.zeros((1, 3, 2, 2), np.uint8)
    cells[0, 0, 0, 0] = 255  # DNA only: blue
    cells[0, :, 1, 1] = 255  # all three: white
    cells[0, 2, 0, 1] = 51  # a fifth of full actin: dark red
    rgb = compose_rgb(cells, channels, 255)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [0, 0, 255] and rgb[0, 1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0, 1].tolist() == [51, 0, 0] and rgb[0, 1, 0].tolist() == [0, 0, 0]


def test_gif_of_chosen_cells_has_one_frame_per_frame(result, tmp_path):
    path = result.write_animation(tmp_path / "morph.gif", cells=[2, 0], fps=5)
    gif = iio.imread(path)
    assert gif.shape[0] == len(result.frames) and gif.shape[-1] == 3
    scale = CELL_SIDE_PX // 32
    height, width = gif.shape[1:3]
    assert height > 32 * scale and width >= 2 * 32 * scale  # two enlarged cells side by side under a title
    # the first cell shown is cell 2 at t = 0, in its colours (GIF palettes round a little)
    top = height - 32 * scale
    shown = gif[0, top:, :32 * scale].astype(np.int16)
    want = compose_rgb(result.frames[0, [2]], result.channels, 255)[0].repeat(scale, 0).repeat(scale, 1)
    assert np.abs(shown - want).mean() < 8
    assert not np.array_equal(gif[0], gif[-1])  # it morphs
    durations = [iio.immeta(path, index=i)["duration"] for i in (0, len(result.frames) - 1)]
    assert durations == [200, 1000 * FINAL_HOLD_S]


def test_gif_bad_cells_and_fps(result, tmp_path):
    with pytest.raises(InputError, match="choose cell indices from 0 to 2"):
        result.write_animation(tmp_path / "a.gif", cells=[3])
    with pytest.raises(InputError, match="choose cell indices"):
        result.write_animation(tmp_path / "a.gif", cells=[])
    with pytest.raises(InputError, match="fps must be a number in"):
        result.write_animation(tmp_path / "a.gif", fps=0)
    assert list(tmp_path.iterdir()) == []
