"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Durability (fsync) is a separate choice: the files that index a dataset (CSVs, manifests,
model files, training state) are fsynced, so after a crash an index never names data that is
not on disk; the many small per-cell files a dataset indexes are not (fsync per file made a
synthetic screen 6x slower), since a crash before their index is written loses nothing indexed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it over ``path`` (after an fsync
    of the file and, after the rename, of its folder, if ``durable``).

    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name opened with "x" gets the usual umask permissions (mkstemp would force 0600)
    # and is a real path, which writers such as tifffile need.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "x" + mode.replace("w", "")) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # OSError, not only FileNotFoundError: on a read-only or full disk the clean-up fails too,
        # and its error must not hide the one that says what went wrong.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    with atomic_write(path, "wb", durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def check_writable(path: str | os.PathLike, *, what: str = "output", suffixes: tuple[str, ...] = (),
                   folder: bool = False, add_suffix: bool = False) -> Path:
    """``path`` if a file (or with ``folder``, a folder) can be written there; else an InputError
    that says why. Called before long work, so a bad ``--out`` fails in a second, not after minutes.
    A file needs a name: an empty path, a folder or a path ending in a separator is refused (not
    "<folder>.tif" beside it); its name must end in one of ``suffixes``, or with ``add_suffix``
    (the widget's file field) gets ``suffixes[0]`` appended."""
    from napari_cellflux.errors import InputError

    text = os.fspath(path)
    file_name = f"a file name ending in {suffixes[0]}" if suffixes else "a file name"
    if text.strip() in ("", "."):
        hint = f"{file_name}, e.g. cells{suffixes[0]}" if suffixes and not folder else "a path to write to"
        raise InputError(f"{what}: give {hint}")
    path = Path(text)
    if not folder:
        if path.is_dir() or text.endswith(("/", os.sep)):
            example = f", e.g. {path / ('cells' + suffixes[0])}" if suffixes else ""
            raise InputError(f"{what} {text} is a folder; give {file_name}{example}")
        if add_suffix and path.suffix.lower() not in suffixes:
            return check_writable(path.with_name(path.name + suffixes[0]), what=what, suffixes=suffixes)
        if suffixes and path.suffix.lower() not in suffixes:
            raise InputError(f"{what} {path}: the name must end in {' or '.join(suffixes)}")
    elif path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file; give a folder")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {path}: {parent} is a file, not a folder; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: cannot write in {parent} (read-only or no permission); choose another folder")
    return path
