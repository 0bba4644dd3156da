"""Atomic writes: a reader sees the old file or the complete new one, and no temporary file is left."""

from __future__ import annotations

import os

import pytest

import napari_cellflux.atomic as atomic
from napari_cellflux.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def _boom(*args, **kwargs):
    raise OSError("disk full (simulated)")


def test_writes_bytes_and_text_and_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text() == "héllo\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old" * 100)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_writes_to_a_temporary_file_beside_the_target(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"half")
        others = [p for p in tmp_path.iterdir() if p != target]
        assert len(others) == 1 and others[0].name.startswith(".file.bin.") and others[0].suffix == ".part"
        assert target.read_bytes() == b"old"  # not visible until the block succeeds
    assert target.read_bytes() == b"half"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("existing", [None, b"previous contents"])
def test_error_inside_the_block_leaves_nothing_behind(tmp_path, existing):
    target = tmp_path / "file.bin"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    _assert_untouched(tmp_path, target, existing)


@pytest.mark.parametrize("existing", [None, b"previous contents"])
@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_fsync_or_rename_leaves_nothing_behind(tmp_path, monkeypatch, existing, failing):
    target = tmp_path / "file.bin"
    if existing is not None:
        target.write_bytes(existing)
    monkeypatch.setattr(atomic.os, failing, _boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new contents that must not appear")
    monkeypatch.undo()
    _assert_untouched(tmp_path, target, existing)


def _assert_untouched(directory, target, existing):
    if existing is None:
        assert not target.exists()
        assert list(directory.iterdir()) == []
    else:
        assert target.read_bytes() == existing
        assert [p.name for p in directory.iterdir()] == [target.name]


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "file.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    assert not os.path.exists(target)
