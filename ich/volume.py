"""The chosen series as a volume of Hounsfield units: pixels decoded, rescaled, stacked in spatial order.

Pixel data is decoded by pydicom's own pixel backend, which hands compressed transfer syntaxes to the
installed plugins (pylibjpeg-libjpeg: JPEG lossless and JPEG-LS; pylibjpeg-openjpeg: JPEG 2000;
pylibjpeg-rle or pydicom's own RLE decoder). HU come from the Modality LUT stage (RescaleSlope and
RescaleIntercept, or a Modality LUT Sequence) via ``pydicom.pixels.apply_rescale``, before any window; the
models only ever see HU, whatever the scanner stored.

A slice that cannot be decoded (corrupt or truncated pixel data, an unsupported codec) is left out with a
reason rather than failing the study; the spacing is then measured again (``ich.slice_geometry``) so the
hole shows as a gap. The step hands on the volume together with the headers of its slices, in its order
(``DecodedSeries``), so nothing downstream has to match headers to slices again.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_rescale
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ich.errors import NoUsableSeriesError
from ich.series import SeriesSelection, Skipped, SliceHeader
from ich.slice_geometry import slice_spacing

logger = logging.getLogger(__name__)

#: Longest decoder message kept in a reason (library messages can be long; they never hold patient data).
_MAX_MESSAGE = 160


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT series in HU, slices sorted along the slice normal (ascending).

    Attributes:
        hu: [N, H, W] float32 Hounsfield units.
        pixel_spacing_mm: (row, column) spacing in mm.
        slice_thickness_mm: spacing between slice centres when positions are known, else SliceThickness.
        series_instance_uid: the series the slices come from.
        sop_instance_uids: one per slice, in the order of ``hu``.
        slice_positions_mm: each slice's position along the normal (empty when the series had none).
        gantry_tilt_deg: the gantry (or orientation) tilt, 0 when untilted.
        warnings: notes on the series (gaps, tilt, missing positions) for the result.
    """

    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    series_instance_uid: str
    sop_instance_uids: list[str]
    slice_positions_mm: tuple[float, ...] = ()
    gantry_tilt_deg: float = 0.0
    warnings: tuple[str, ...] = field(default=())


#: Leading tags of a DICOM dataset written without the Part 10 preamble and "DICM" (group 0002 or 0008,
#: little endian), as some older exports do.
RAW_DATASET_STARTS: tuple[bytes, ...] = (b"\x02\x00", b"\x08\x00")


def is_part10(head: bytes) -> bool:
    """Whether ``head`` (the file's first 132 bytes or more) carries the Part 10 "DICM" marker."""
    return head[128:132] == b"DICM"


def looks_like_raw_dataset(head: bytes) -> bool:
    """Whether a file without the "DICM" marker starts like a bare little-endian DICOM dataset."""
    return len(head) >= 8 and head[:2] in RAW_DATASET_STARTS and head[2:4] != b"\x00\x00"


def parse_dicom(source: bytes | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse a DICOM file from bytes or a path: Part 10, or a bare dataset without preamble.

    A bare dataset has no file meta information, so no transfer syntax; pydicom detects the encoding
    (implicit or explicit VR, byte order) while reading, and that is recorded as the transfer syntax so the
    (necessarily uncompressed) pixel data can be decoded.
    """
    fileobj: io.BytesIO | Path
    if isinstance(source, bytes):
        head, fileobj = source[:132], io.BytesIO(source)
    else:
        with source.open("rb") as handle:
            head = handle.read(132)
        fileobj = source
    bare = not is_part10(head)
    ds = pydicom.dcmread(fileobj, stop_before_pixels=stop_before_pixels, force=bare)
    # Nothing is deferred, so the reader's file object is not needed again; kept, it would hold the whole
    # file's bytes for as long as the dataset lives (a SEG's source headers outlive the volume).
    ds.buffer = None
    if bare and "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            raise ValueError("encoding of the bare dataset could not be determined")
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def read_dataset(header: SliceHeader) -> Dataset:
    """The whole dataset (pixel data included) of ``header``: already parsed, or parsed from its source."""
    if header.source is None:
        return header.dataset
    return parse_dicom(header.source)


def _release_pixels(header: SliceHeader) -> None:
    """Drop the raw pixel bytes of a dataset parsed whole, once decoded: the headers outlive the volume
    (a DICOM SEG references them) and need none."""
    if header.source is None and "PixelData" in header.dataset:
        del header.dataset.PixelData


def decode_hu(ds: Dataset) -> np.ndarray:
    """Decode one single-frame slice and rescale it to HU.

    Returns:
        [Rows, Columns] float32 HU.

    Raises:
        ValueError: the decoded array is not one greyscale frame of Rows x Columns.
        Exception: whatever pydicom or a plugin raises for pixel data it cannot decode.
    """
    pixels = ds.pixel_array
    expected = (int(ds.Rows), int(ds.Columns))
    if pixels.shape != expected:
        raise ValueError(f"decoded shape {pixels.shape} is not Rows x Columns {expected}")
    hu = np.asarray(apply_rescale(pixels, ds), dtype=np.float32)
    if not np.isfinite(hu).all():  # e.g. a RescaleSlope of "inf": never hand non-numbers to the models
        raise ValueError("rescaled values are not all finite")
    return hu


def _reason(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return f"pixel data could not be decoded ({type(exc).__name__}: {message})"


@dataclass(frozen=True, eq=False)
class DecodedSeries:
    """What the volume step hands on: the volume and, in its slice order, the headers of its slices.

    Attributes:
        volume: the series in HU.
        headers: one header per slice of ``volume``, same order, pixel data let go; what a DICOM SEG of
            the result references.
        failed: slices of the selection left out because their pixel data could not be decoded.
    """

    volume: CTVolume
    headers: tuple[Dataset, ...]
    failed: list[Skipped]


def load_volume(selection: SeriesSelection) -> DecodedSeries:
    """Decode the chosen series into a :class:`CTVolume`, its headers alongside.

    Args:
        selection: the series chosen by :func:`ich.series.select_series`.

    Raises:
        NoUsableSeriesError: not one slice of the series could be decoded.
    """
    slices: list[np.ndarray] = []
    headers: list[Dataset] = []
    positions: list[float] = []
    failed: list[Skipped] = []
    for i, header in enumerate(selection.slices):
        hu = _decode_slice(header, failed)
        if hu is None:
            continue
        slices.append(hu)
        headers.append(header.dataset)
        if selection.positions_mm:
            positions.append(selection.positions_mm[i])
    if not slices:
        reasons = [{"file": s.file, "reason": s.reason} for s in failed]
        raise NoUsableSeriesError("no slice of the chosen CT series could be decoded", reasons)
    spacing_mm, warnings = _spacing_after_failures(selection, positions, failed)
    volume = CTVolume(
        hu=np.stack(slices).astype(np.float32, copy=False),
        pixel_spacing_mm=selection.pixel_spacing_mm,
        slice_thickness_mm=float(spacing_mm),
        series_instance_uid=selection.series_instance_uid,
        sop_instance_uids=[str(ds.get("SOPInstanceUID", "")) for ds in headers],
        slice_positions_mm=tuple(positions),
        gantry_tilt_deg=selection.gantry_tilt_deg,
        warnings=tuple(warnings),
    )
    return DecodedSeries(volume, tuple(headers), failed)


def _decode_slice(header: SliceHeader, failed: list[Skipped]) -> np.ndarray | None:
    """One slice in HU, its raw pixel bytes let go; None, with the reason in ``failed``, when it fails."""
    try:
        hu = decode_hu(read_dataset(header))
    except Exception as exc:  # untrusted input meets third-party decoders: any failure drops the slice
        logger.debug("slice left out: %s", type(exc).__name__)
        failed.append(Skipped(header.file, _reason(exc)))
        return None
    finally:
        _release_pixels(header)
    return hu


def _spacing_after_failures(
    selection: SeriesSelection, positions: list[float], failed: list[Skipped]
) -> tuple[float, list[str]]:
    """The slice spacing and warnings of the decoded slices: the selection's, unless slices dropped out.

    Holes left by undecodable slices change the spacing, so it is measured again on the positions kept.
    """
    warnings = list(selection.warnings)
    spacing_mm = selection.slice_spacing_mm
    if failed and positions:
        warnings = [w for w in warnings if w not in selection.spacing_warnings]
        spacing = slice_spacing(positions)
        warnings.extend(spacing.warnings)
        spacing_mm = spacing.or_else(selection.slice_spacing_mm)
    if failed:
        warnings.append(f"{len(failed)} slice(s) left out: pixel data could not be decoded")
    return spacing_mm, warnings
