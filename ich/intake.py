"""A zipped study in, the CT volume to analyse out: read in memory, never extracted to disk.

The zip comes from outside, so it is treated as hostile:

- Caps (``IntakeLimits``): the compressed size, the number of members, and the total uncompressed size,
  checked twice: against the sizes the archive declares (before reading anything) and against the bytes
  actually inflated (counted while reading, because a zip bomb's headers lie).
- Refused outright (``UnsafeArchiveError``, 400): a member whose path is absolute or climbs out with
  ``..``, and a member that is a symbolic link (Unix mode in ``external_attr``). Nothing is written to disk,
  so neither could do harm here, but no honest export holds them, and the rest of such an archive is not
  trusted either.
- Skipped with a reason (``series.skipped``): nested archives (a zip, gzip, tar, 7z or rar inside the zip
  is never opened: that is how bombs nest), encrypted members, members that fail to inflate, files that are
  not DICOM (no ``DICM`` marker at byte 128, as DICOM Part 10 files have, and not starting like a bare
  dataset without preamble, which older exports write and which is read too), DICOM files whose header
  does not parse, files that are not images.
- Skipped quietly: directories and the operating systems' litter (``__MACOSX/``, ``.DS_Store``,
  ``Thumbs.db``).

Each file is parsed once, its pixel data kept undecoded; series selection reads the headers and only the
chosen series' pixels are decoded (``ich.volume``). Nothing here logs patient data: file names can hold
patient names, so logs carry counts and reasons only.
"""

from __future__ import annotations

import io
import logging
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.dataset import Dataset

from ich.errors import InvalidArchiveError, NoUsableSeriesError, StudyTooLargeError, UnsafeArchiveError
from ich.series import PassedOver, Skipped, SliceHeader, select_series, slice_cap_note
from ich.volume import CTVolume, is_part10, load_volume, looks_like_raw_dataset, parse_dicom

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Bytes inflated per read; small enough that a bomb is caught within a chunk of the cap.
_CHUNK = MIB
#: Most reasons a 422 lists (a zip of thousands of JPEGs would otherwise answer with thousands).
MAX_REASONS = 100
#: Names the operating systems leave in archives; skipped without a reason.
_LITTER_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_LITTER_DIRS = frozenset({"__macosx"})
#: Leading bytes of archive formats that are never opened inside the study archive.
_ARCHIVE_MAGIC: tuple[bytes, ...] = (
    b"PK\x03\x04",  # zip
    b"PK\x05\x06",  # empty zip
    b"\x1f\x8b",  # gzip
    b"BZh",  # bzip2
    b"\xfd7zXZ\x00",  # xz
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
    b"Rar!\x1a\x07",  # RAR
)
_ARCHIVE_SUFFIXES = frozenset({".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_DICOM = "not a DICOM file (no DICM marker at byte 128, nor a bare DICOM dataset)"
#: Header values series selection reads.
_SELECTION_KEYWORDS = (
    "Modality",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "GantryDetectorTilt",
)


@dataclass(frozen=True)
class IntakeLimits:
    """Caps on one uploaded study; the gateway fills them from its settings.

    The defaults are the gateway's (``api.settings``), so that a study read here without settings (tests,
    benchmarks, tools) meets the caps a default gateway applies; a test keeps the two in step.

    Attributes:
        max_upload_bytes: largest compressed archive (the request body).
        max_uncompressed_bytes: largest total of inflated member bytes.
        max_members: most members (files and folders) in the archive.
        max_slices: most slices of the analysed series (None: no cap); a longer series is passed over
            before its pixels are decoded.
    """

    max_upload_bytes: int = 512 * MIB
    max_uncompressed_bytes: int = 2048 * MIB
    max_members: int = 5000
    max_slices: int | None = 400

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_uncompressed_bytes", "max_members"):
            if getattr(self, name) <= 0:
                raise ValueError(f"IntakeLimits.{name} must be positive, got {getattr(self, name)}")
        if self.max_slices is not None and self.max_slices <= 0:
            raise ValueError(f"IntakeLimits.max_slices must be positive, got {self.max_slices}")


@dataclass(frozen=True)
class Study:
    """What intake found: the volume to analyse and an account of everything else.

    Attributes:
        volume: the chosen CT series in HU.
        skipped: files not used, with reasons (non-DICOM, unreadable, duplicates, undecodable...).
        passed_over: series not chosen, with reasons.
        warnings: notes on the chosen series (gaps, tilt, missing positions).
        source_headers: the headers (no pixel data) of the slices in ``volume``, in its order; what a DICOM
            SEG of the result references (``ich.seg.build_segmentation``).
    """

    volume: CTVolume
    skipped: list[Skipped]
    passed_over: list[PassedOver]
    warnings: list[str]
    source_headers: tuple[Dataset, ...] = ()


def read_study(data: bytes | bytearray, limits: IntakeLimits | None = None) -> Study:
    """Read a zipped study from memory and choose the series to analyse.

    Args:
        data: the zip archive's bytes (read in place, never copied whole).
        limits: caps on the archive (defaults: ``IntakeLimits()``).

    Raises:
        InvalidArchiveError: not a readable zip (400).
        UnsafeArchiveError: a member path escapes the archive, or a member is a link (400).
        StudyTooLargeError: a cap is exceeded (413).
        NoUsableSeriesError: no usable CT series (422), with the reasons.
    """
    limits = limits or IntakeLimits()
    headers, skipped = _read_archive(data, limits)
    return study_from_headers(headers, skipped, max_slices=limits.max_slices)


def read_files(paths: Iterable[Path], root: Path | None = None) -> Study:
    """Read a study from DICOM files on disk (tests, tools): the same rules as a zip, without the caps.

    Args:
        paths: the files; anything that is not DICOM is skipped with a reason.
        root: names in the result are relative to it when given.

    Raises:
        NoUsableSeriesError: no usable CT series, with the reasons.
    """
    headers: list[SliceHeader] = []
    skipped: list[Skipped] = []
    for path in sorted(Path(p) for p in paths):
        name = path.relative_to(root).as_posix() if root is not None else path.as_posix()
        if _is_litter(name):
            continue
        try:
            with path.open("rb") as handle:
                head = handle.read(132)
        except OSError as exc:
            skipped.append(Skipped(name, f"could not be read ({type(exc).__name__})"))
            continue
        if not (is_part10(head) or looks_like_raw_dataset(head)):
            skipped.append(Skipped(name, _NOT_DICOM))
            continue
        header = _parse_header(name, path, skipped)
        if header is not None:
            headers.append(header)
    return study_from_headers(headers, skipped)


def read_folder(root: Path) -> Study:
    """Read every file under ``root`` (recursively) as a study; see :func:`read_files`."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return read_files((p for p in root.rglob("*") if p.is_file() and not p.is_symlink()), root=root)


def study_from_headers(
    headers: list[SliceHeader], skipped: list[Skipped], *, max_slices: int | None = None
) -> Study:
    """Choose the series among ``headers`` (at most ``max_slices`` long), decode it, gather every reason.

    Raises:
        NoUsableSeriesError: no series qualifies or none of its slices decodes.
    """
    result = select_series(headers, max_slices=max_slices)
    skipped = [*skipped, *result.skipped]
    if result.selection is None:
        raise _refusal(headers, skipped, result.passed_over, max_slices)
    try:
        decoded = load_volume(result.selection)
    except NoUsableSeriesError as exc:
        reasons = [*exc.reasons, *_series_reasons(result.passed_over)]
        raise NoUsableSeriesError(exc.detail, _capped(reasons)) from None
    skipped = [*skipped, *result.selection.excluded, *decoded.failed]
    volume = decoded.volume
    logger.info(
        "study read: %d slices used, %d files skipped, %d series passed over",
        volume.hu.shape[0],
        len(skipped),
        len(result.passed_over),
    )
    return Study(
        volume=volume,
        skipped=skipped,
        passed_over=result.passed_over,
        warnings=list(volume.warnings),
        source_headers=decoded.headers if _referenceable(volume.sop_instance_uids) else (),
    )


def _referenceable(sop_instance_uids: list[str]) -> bool:
    """Whether a DICOM SEG can reference the slices: each has its own SOP Instance UID."""
    return "" not in sop_instance_uids and len(set(sop_instance_uids)) == len(sop_instance_uids)


def _series_reasons(passed_over: list[PassedOver]) -> list[dict[str, str]]:
    return [{"series_instance_uid": p.series_instance_uid, "reason": p.reason} for p in passed_over]


def _refusal(
    headers: list[SliceHeader], skipped: list[Skipped], passed_over: list[PassedOver], max_slices: int | None
) -> NoUsableSeriesError:
    """The 422 of a study with no series to analyse, every series' and file's reason listed."""
    reasons = [*_series_reasons(passed_over), *({"file": s.file, "reason": s.reason} for s in skipped)]
    logger.info("study refused: %d series passed over, %d files skipped", len(passed_over), len(skipped))
    return NoUsableSeriesError(_refusal_detail(headers, passed_over, max_slices), _capped(reasons))


def _refusal_detail(headers: list[SliceHeader], passed_over: list[PassedOver], max_slices: int | None) -> str:
    if not headers:
        return "no usable CT series: the archive holds no DICOM files"
    if max_slices is not None and any(p.reason.endswith(slice_cap_note(max_slices)) for p in passed_over):
        return (
            f"no usable CT series: every CT series that qualifies has more than {max_slices} slices "
            "(the gateway's ICH_MAX_SLICES)"
        )
    return "no usable CT series: no series is axial CT with a sensible slice thickness"


def _capped(reasons: list[dict[str, str]]) -> list[dict[str, str]]:
    if len(reasons) <= MAX_REASONS:
        return reasons
    rest = len(reasons) - MAX_REASONS + 1
    return [*reasons[: MAX_REASONS - 1], {"file": "...", "reason": f"and {rest} more not listed"}]


def check_archive(data: bytes | bytearray, limits: IntakeLimits | None = None) -> None:
    """The checks that need no decompression (a readable zip, the caps, safe member names), nothing more.

    What ``POST /v1/studies`` runs before it stores a study: cheap, so the 202 comes fast, and the same
    errors ``read_study`` raises first.

    Raises:
        InvalidArchiveError, UnsafeArchiveError, StudyTooLargeError: as ``read_study``.
    """
    _open_archive(data, limits or IntakeLimits()).close()


class _BufferReader(io.RawIOBase):
    """A seekable, read-only file over a buffer, without the copy ``io.BytesIO`` makes of a bytearray.

    Each read slices only what is asked for, and no buffer export outlives a read, so the caller may empty
    its bytearray once intake is done.
    """

    def __init__(self, data: bytes | bytearray) -> None:
        super().__init__()
        self._data = data
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = max(0, origin + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._position + size
        chunk = bytes(self._data[self._position : end])
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(chunk)] = chunk
        return len(chunk)


def _open_archive(data: bytes | bytearray, limits: IntakeLimits) -> zipfile.ZipFile:
    """Open the zip and check the caps and member names."""
    if len(data) > limits.max_upload_bytes:
        raise StudyTooLargeError(
            f"archive is {len(data)} bytes; the limit is {limits.max_upload_bytes}",
            limit_name="compressed_bytes",
            limit=limits.max_upload_bytes,
        )
    try:
        archive = zipfile.ZipFile(_BufferReader(data))
        infos = archive.infolist()
    except Exception as exc:  # on hostile bytes zipfile also raises ValueError, NotImplementedError
        raise InvalidArchiveError(f"not a readable zip archive ({type(exc).__name__})") from None

    if len(infos) > limits.max_members:
        raise StudyTooLargeError(
            f"archive has {len(infos)} members; the limit is {limits.max_members}",
            limit_name="members",
            limit=limits.max_members,
        )
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_uncompressed_bytes:
        raise StudyTooLargeError(
            f"archive declares {declared} uncompressed bytes; the limit is {limits.max_uncompressed_bytes}",
            limit_name="uncompressed_bytes",
            limit=limits.max_uncompressed_bytes,
        )
    for info in infos:
        _check_member(info)
    return archive


def _read_archive(data: bytes | bytearray, limits: IntakeLimits) -> tuple[list[SliceHeader], list[Skipped]]:
    """Open the zip, check the caps and member names, read every member's header."""
    archive = _open_archive(data, limits)
    infos = archive.infolist()
    headers: list[SliceHeader] = []
    skipped: list[Skipped] = []
    budget = [limits.max_uncompressed_bytes]
    with archive:
        for info in infos:
            name = info.filename
            if info.is_dir() or _is_litter(name):
                continue
            if PurePosixPath(name).suffix.lower() in _ARCHIVE_SUFFIXES:
                skipped.append(Skipped(name, "nested archive: not opened (zip the DICOM files themselves)"))
                continue
            if info.flag_bits & 0x1:
                skipped.append(Skipped(name, "encrypted member: cannot be read"))
                continue
            payload = _inflate(archive, info, budget, limits.max_uncompressed_bytes, skipped)
            if payload is None:
                continue
            if payload.startswith(_ARCHIVE_MAGIC):
                skipped.append(Skipped(name, "nested archive: not opened (zip the DICOM files themselves)"))
                continue
            if not (is_part10(payload) or looks_like_raw_dataset(payload)):
                skipped.append(Skipped(name, _NOT_DICOM))
                continue
            header = _parse_header(name, payload, skipped)
            if header is not None:
                headers.append(header)
    return headers, skipped


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuse absolute paths, paths climbing out with ``..`` and symbolic links."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
        raise UnsafeArchiveError(f"member path escapes the archive: {name!r}")
    mode = info.external_attr >> 16  # Unix mode bits, where the archiver recorded them
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"member is a symbolic link: {name!r}")


def _inflate(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: list[int], cap: int, skipped: list[Skipped]
) -> bytes | None:
    """Read one member, counting inflated bytes against the study's remaining budget.

    Raises:
        StudyTooLargeError: the inflated bytes exceed the cap, whatever the headers declared.
    """
    chunks: list[bytes] = []
    read = 0
    try:
        with archive.open(info) as member:
            while True:
                chunk = member.read(_CHUNK)
                if not chunk:
                    break
                read += len(chunk)
                if read > budget[0] or read > info.file_size:
                    raise StudyTooLargeError(
                        f"archive inflates beyond its declared sizes or the limit of {cap} bytes",
                        limit_name="uncompressed_bytes",
                        limit=cap,
                    )
                chunks.append(chunk)
    except StudyTooLargeError:
        raise
    except Exception as exc:  # bad CRC, broken deflate stream, bad offsets (ValueError), unknown method...
        skipped.append(Skipped(info.filename, f"member could not be decompressed ({type(exc).__name__})"))
        return None
    budget[0] -= read
    return b"".join(chunks)


def _is_litter(name: str) -> bool:
    parts = [p for p in re.split(r"[\\/]", name) if p]
    if not parts:
        return True
    return parts[-1].lower() in _LITTER_NAMES or any(p.lower() in _LITTER_DIRS for p in parts[:-1])


def _parse_header(name: str, source: bytes | Path, skipped: list[Skipped]) -> SliceHeader | None:
    """Parse a file once, pixel data left undecoded; an unparsable file is skipped, not fatal.

    The header is what series selection reads; the chosen slices' pixels are decoded from the same dataset
    (``ich.volume.load_volume``), so no file is parsed twice. A file whose header parses but whose pixel
    data does not (truncated) is kept as a header with its source, so it is left out later with the
    decoder's reason, as any slice whose pixels fail.
    """
    try:
        dataset = parse_dicom(source)
        whole: bytes | Path | None = None
    except Exception:  # third-party parser on untrusted bytes: try the header alone
        try:
            dataset = parse_dicom(source, stop_before_pixels=True)
            whole = source
        except Exception as exc:  # any failure skips the file
            skipped.append(Skipped(name, f"DICOM header could not be read ({type(exc).__name__})"))
            return None
    try:  # values convert lazily: convert the ones selection reads now, so a bad one skips this file only
        for keyword in _SELECTION_KEYWORDS:
            dataset.get(keyword)
    except Exception as exc:
        skipped.append(Skipped(name, f"DICOM header has an invalid value ({type(exc).__name__})"))
        return None
    if "SOPInstanceUID" not in dataset and "SOPClassUID" not in dataset:
        skipped.append(Skipped(name, "DICOM header could not be read (no SOP Class or Instance UID)"))
        return None
    return SliceHeader(file=name, dataset=dataset, source=whole)
