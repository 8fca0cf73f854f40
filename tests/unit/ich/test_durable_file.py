"""Durable files: the whole content or nothing, under the final name only, never a dot-file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from ich.durable_file import fsync_directory, write_durably


def test_the_file_holds_the_bytes_and_no_partial_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "upload.zip"
    write_durably(target, b"first")
    write_durably(target, b"second, longer")  # replaced whole, not written over in place
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]


def test_a_partial_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    (tmp_path / ".upload.zip.partial").write_bytes(b"half of it")
    write_durably(tmp_path / "upload.zip", b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]
    assert (tmp_path / "upload.zip").read_bytes() == b"whole"


def test_a_missing_folder_is_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_durably(tmp_path / "gone" / "upload.zip", b"data")
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "gone")
