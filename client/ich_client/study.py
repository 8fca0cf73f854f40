"""Turning what a user has (a zip, a folder, a list of files, bytes) into one zip to upload.

The service takes one zip per study. Folders and file lists are zipped here into a
``SpooledTemporaryFile``: small studies stay in memory, large ones (a thin-slice CT can be 500 MB) spill to
a temporary file, so memory stays bounded whatever the study size. The result is re-readable from the
start, which retries need, and has a known size, which lets the upload send ``Content-Length`` (the
service can then refuse an oversized study before reading it) and drive a progress bar.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Union, cast

logger = logging.getLogger(__name__)

#: What ``analyze`` accepts: a zip path, a folder of DICOM files, a list of files/folders, zip bytes, or a
#: binary file object positioned at the start of a zip.
StudyInput = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, Sequence[Union[str, "os.PathLike[str]"]], IO[bytes]
]

#: Zips up to this size are built in memory; larger ones spill to a temporary file.
DEFAULT_SPOOL_BYTES = 32 * 1024 * 1024
#: Size of each piece read from the zip while uploading.
UPLOAD_CHUNK_BYTES = 256 * 1024
#: DEFLATE level for zipping folders: level 1 gets most of the gain on uncompressed DICOM pixel data at a
#: fraction of the CPU time of the default level 6, and the upload is rarely CPU-bound at level 1.
ZIP_COMPRESS_LEVEL = 1


class PackedStudy:
    """A study as one zip, ready to upload (and to upload again on a retry).

    Use as a context manager, or call ``close()``: a spooled zip may live in a temporary file.

    Attributes:
        name: a short label for messages and output file names (folder name, zip stem, ``"study"``).
        size: the zip's size in bytes.
        files: how many files were zipped by the client (0 when the input already was a zip).
    """

    def __init__(self, name: str, fileobj: IO[bytes], *, owned: bool, files: int = 0) -> None:
        self.name = name
        self._file = fileobj
        self._owned = owned
        self._start = fileobj.tell()
        self.size = fileobj.seek(0, io.SEEK_END) - self._start
        fileobj.seek(self._start)
        self.files = files

    def chunks(
        self,
        chunk_size: int = UPLOAD_CHUNK_BYTES,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[bytes]:
        """Yield the zip from its first byte, calling ``progress(sent, total)`` after each chunk."""
        self._file.seek(self._start)
        sent = 0
        if progress is not None:
            progress(0, self.size)
        while sent < self.size:
            chunk = self._file.read(min(chunk_size, self.size - sent))
            if not chunk:
                raise OSError(f"study {self.name!r} ended after {sent} of {self.size} bytes while uploading")
            sent += len(chunk)
            if progress is not None:
                progress(sent, self.size)
            yield chunk

    def read_all(self) -> bytes:
        """The whole zip in memory (for small studies and tests)."""
        return b"".join(self.chunks())

    def close(self) -> None:
        """Release the temporary storage (files opened by the caller are left open)."""
        if self._owned:
            self._file.close()

    def __enter__(self) -> PackedStudy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pack_study(
    study: StudyInput,
    *,
    spool_bytes: int = DEFAULT_SPOOL_BYTES,
    on_file: Callable[[int, int], None] | None = None,
) -> PackedStudy:
    """Make one uploadable zip out of ``study``.

    Args:
        study: a path to a ``.zip``; a path to a folder (zipped recursively, hidden files and folders such
            as ``.DS_Store`` left out); a path to one non-zip file or a list of files and folders (zipped,
            names relative to their common parent); ``bytes`` of a zip (sent as they are: the service is
            the judge of what is readable); or a binary file object at the start of a zip.
        spool_bytes: zips larger than this spill from memory to a temporary file.
        on_file: called as ``on_file(done, total)`` while zipping, for a progress bar.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a folder or list holds no files, a lone file is a damaged zip or not DICOM, or the
            input type is not supported.
    """
    if isinstance(study, (bytes, bytearray, memoryview)):
        return PackedStudy("study", io.BytesIO(bytes(study)), owned=True)
    if isinstance(study, (str, os.PathLike)):
        path = Path(study)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_file() and zipfile.is_zipfile(path):
            return PackedStudy(_label(path), path.open("rb"), owned=True)
        if path.is_file():
            _check_single_file(path)
        if path.is_dir():
            files = _files_under(path)
            if not files:
                raise ValueError(f"folder {path} holds no files")
            return _zip_files(_label(path), files, spool_bytes, on_file)
        return _zip_files(_label(path.parent), [path], spool_bytes, on_file)
    if hasattr(study, "read"):
        return _from_fileobj(study, spool_bytes)  # type: ignore[arg-type]
    if isinstance(study, Sequence):
        files = _files_of(cast("Sequence[str | os.PathLike[str]]", study))
        if not files:
            raise ValueError("the list of files is empty")
        return _zip_files(_label(files[0].parent), files, spool_bytes, on_file)
    raise ValueError(
        f"unsupported study type {type(study).__name__}: give a zip path, a folder, a list of files, "
        "zip bytes or a binary file object"
    )


#: The first tag of a DICOM file written without the 128-byte preamble (implicit VR, little endian): group
#: 0002 (file meta) or 0008 (identifying), the groups a dataset starts with.
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00")


def _check_single_file(path: Path) -> None:
    """Refuse, before any upload, a lone file that is a broken zip or not DICOM at all.

    Zipped and sent, either would come back from the service as "the archive holds no DICOM files", which
    hides what is wrong with the file the user gave.
    """
    with path.open("rb") as fh:
        head = fh.read(132)
    if path.suffix.lower() == ".zip" or head[:2] == b"PK":
        raise ValueError(f"{path} is not a readable zip archive (damaged or truncated?)")
    if head[128:132] != b"DICM" and head[:2] not in _BARE_DICOM_STARTS:
        raise ValueError(f"{path} is neither a zip archive nor a DICOM file")


def _label(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".zip"):
        name = name[:-4]
    return name or "study"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _files_under(folder: Path) -> list[Path]:
    """Regular files below ``folder`` in a stable order (so that a re-run uploads the same zip)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p, folder))


def _files_of(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        files.extend(_files_under(path) if path.is_dir() else [path])
    # The same file listed twice (or through two spellings) would become a duplicate member.
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.keys())


def _zip_files(
    name: str,
    files: list[Path],
    spool_bytes: int,
    on_file: Callable[[int, int], None] | None,
) -> PackedStudy:
    resolved = [f.resolve() for f in files]
    base = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    # Not a `with` block: on success the open spool is handed to PackedStudy, which closes it.
    spool = tempfile.SpooledTemporaryFile(max_size=spool_bytes, prefix="ich-study-", suffix=".zip")  # noqa: SIM115
    try:
        with zipfile.ZipFile(
            spool, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_COMPRESS_LEVEL
        ) as archive:
            for done, path in enumerate(resolved, start=1):
                archive.write(path, arcname=path.relative_to(base).as_posix())
                if on_file is not None:
                    on_file(done, len(resolved))
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    logger.debug("zipped %d files into %d bytes", len(resolved), spool.tell() or 0)
    return PackedStudy(name, spool, owned=True, files=len(resolved))


def _from_fileobj(fileobj: IO[bytes], spool_bytes: int) -> PackedStudy:
    name = Path(str(getattr(fileobj, "name", "study"))).name or "study"
    label = name[:-4] if name.lower().endswith(".zip") else name
    if fileobj.seekable():
        return PackedStudy(label, fileobj, owned=False)
    # A pipe or socket cannot be rewound for a retry: copy it once into bounded storage.
    spool = tempfile.SpooledTemporaryFile(max_size=spool_bytes, prefix="ich-study-", suffix=".zip")  # noqa: SIM115
    while chunk := fileobj.read(UPLOAD_CHUNK_BYTES):
        spool.write(chunk)
    spool.seek(0)
    return PackedStudy(label, spool, owned=True)
