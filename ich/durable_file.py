"""Files that a crash cannot leave half-written: what the gateway acknowledges is on disk.

The bytes go to a dot-file beside the target, are fsynced, and the dot-file is renamed into place; the
folder is then fsynced so that the rename itself is on disk. A crash at any point leaves either no file or
the whole one (and at worst a stray ``.<name>.partial``, which the readers skip).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_directory", "write_durably"]


def fsync_directory(path: Path) -> None:
    """Make the entries of folder ``path`` (a file created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through ``.<name>.partial``, fsynced, renamed, the folder fsynced."""
    partial = final.with_name(f".{final.name}.partial")
    with partial.open("wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, final)
    fsync_directory(final.parent)
