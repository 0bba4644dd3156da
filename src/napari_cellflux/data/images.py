"""Reading image files (TIFF, .npy) with errors that name the file: a damaged or foreign file is
one clear line, never a library's traceback, and pickled .npy contents are never loaded."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_cellflux.errors import InputError


def read_tiff(path: str | Path) -> np.ndarray:
    """The pixels of a TIFF file, as tifffile reads them."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for a damaged file
        raise unreadable_tiff(path, err) from None


def unreadable_tiff(path: Path, err: Exception) -> InputError:
    """The one line for a TIFF that tifffile could not read: a missing codec (tifffile says
    "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package") names the package to install;
    anything else is a damaged file."""
    if "requires the 'imagecodecs' package" in str(err):
        codec = re.search(r"COMPRESSION\.(\w+)", str(err))
        return InputError(f"{path}: compressed with {codec.group(1) if codec else 'a codec'}, which needs the "
                          "imagecodecs package (missing here): pip install imagecodecs")
    return InputError(f"{path}: not a readable TIFF ({err}); it may be truncated: copy or export it again")


def load_npy(path: Path) -> np.ndarray:
    """A plain numeric .npy array; pickled objects are never loaded (they could run code)."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(f"{path}: holds Python objects, not a numeric array; save the crops as a plain "
                             "uint8 array (numpy.save of an (N, C, H, W) array)") from None
        raise InputError(f"{path}: not a readable .npy array ({err}); it may be truncated: save it again") from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy file ({err}); save it again") from None
    if array.dtype.kind not in "uif":
        raise InputError(f"{path}: holds {array.dtype} values, not pixel numbers; save a numeric array")
    return array
