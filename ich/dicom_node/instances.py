"""One DICOM instance as it arrives (C-STORE or a STOW-RS part): checked before anything keeps it.

The bytes come from the network, so they are treated as hostile, the way DICOM parsers' CVEs teach:

- size: an instance larger than ``max_bytes`` as sent is refused;
- deflate bombs: a dataset in the Deflated Explicit VR transfer syntax is inflated with a cap first (a few
  kilobytes of deflate can claim gigabytes), and refused beyond ``max_bytes``;
- pixel bombs: the pixel data an image declares (Rows x Columns x frames x samples x bytes) must fit
  ``max_bytes``, and every compressed frame's own header (JPEG, JPEG-LS, JPEG 2000) must declare the matrix
  the DICOM header does, so that a decoder is never asked to allocate what a forged codestream claims;
- UIDs: the SOP Class, SOP Instance, Study and Series Instance UIDs must be valid UIDs
  (``ich.dicom_uids``), and must match what the C-STORE request announced; none ever becomes a path as it
  is;
- parsing: any failure of the parser is a refusal with the exception's type, never its message (it can
  quote header values).

Instances of the CT storage SOP classes are kept; instances of the other classes a CT study carries (dose
reports, secondary captures, presentation states, this service's own SEG, SR and key images sent back by
the PACS) are accepted and discarded, so a PACS that sends the whole study sees no failures and the
service never analyses its own results.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import pydicom
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.filereader import read_dataset

from ich.dicom_uids import is_valid_uid

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DISCARDED_SOP_CLASSES",
    "STORED_SOP_CLASSES",
    "InstanceRefusedError",
    "ReceivedInstance",
    "Status",
    "inspect_instance",
]


class Status:
    """C-STORE status codes (PS3.4 Annex B.2.3; STOW-RS reports the same in FailureReason)."""

    SUCCESS: Final = 0x0000
    OUT_OF_RESOURCES: Final = 0xA700
    DATASET_MISMATCH: Final = 0xA900
    CANNOT_UNDERSTAND: Final = 0xC000
    SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
    PROCESSING_FAILURE: Final = 0x0110


#: Kept and analysed.
STORED_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {uids.CTImageStorage, uids.EnhancedCTImageStorage, uids.LegacyConvertedEnhancedCTImageStorage}
)
#: Accepted (success) and discarded: what else a CT study holds, this service's own results included.
DISCARDED_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {
        uids.SecondaryCaptureImageStorage,
        uids.SegmentationStorage,
        uids.Comprehensive3DSRStorage,
        uids.ComprehensiveSRStorage,
        uids.EnhancedSRStorage,
        uids.BasicTextSRStorage,
        uids.XRayRadiationDoseSRStorage,
        uids.PatientRadiationDoseSRStorage,
        uids.KeyObjectSelectionDocumentStorage,
        uids.GrayscaleSoftcopyPresentationStateStorage,
        uids.EncapsulatedPDFStorage,
    }
)
#: The JPEG and JPEG-LS syntaxes, whose frames declare their matrix in a start-of-frame marker.
_JPEG_SYNTAXES: Final[tuple[str, ...]] = (
    uids.JPEGLosslessSV1,
    uids.JPEGLossless,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
)
#: The JPEG 2000 syntaxes, whose frames declare their matrix in the SIZ marker.
_J2K_SYNTAXES: Final[tuple[str, ...]] = (uids.JPEG2000Lossless, uids.JPEG2000)
#: What the SCP offers for every SOP class: the uncompressed syntaxes and the compressed ones the pixel
#: decoders read (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE).
ACCEPTED_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    *_JPEG_SYNTAXES,
    *_J2K_SYNTAXES,
    uids.RLELossless,
)
_JPEG_FAMILY: Final = frozenset(_JPEG_SYNTAXES)
_J2K_FAMILY: Final = frozenset(_J2K_SYNTAXES)
_UID_KEYWORDS: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class InstanceRefusedError(Exception):
    """The instance is not kept; ``status`` is the C-STORE status, ``reason`` says why (no patient data)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ReceivedInstance:
    """A checked instance to keep: its UIDs (all valid) and its bytes as a DICOM Part 10 file."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


def _inflated_size(deflated: bytes, cap: int) -> int:
    """Bytes a raw deflate stream inflates to, refusing past ``cap`` without inflating further."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = deflated
    while pending:
        total += len(inflater.decompress(pending, cap + 1 - total))
        if total > cap:
            raise InstanceRefusedError(
                Status.OUT_OF_RESOURCES, f"the deflated dataset inflates beyond the limit of {cap} bytes"
            )
        pending = inflater.unconsumed_tail
        if inflater.eof:
            break
    return total


def _transfer_syntax(data: bytes) -> tuple[str, int]:
    """The transfer syntax and where the dataset starts, read from a Part 10 file's meta information only.

    Read before the dataset, so that a deflated dataset is never inflated by the parser unchecked.
    """
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        raise InstanceRefusedError(Status.CANNOT_UNDERSTAND, "not a DICOM file with file meta information")
    (group_length,) = struct.unpack("<I", data[140:144])
    start = 144 + group_length
    if start > len(data):
        raise InstanceRefusedError(Status.CANNOT_UNDERSTAND, "the file meta information is truncated")
    meta = read_dataset(io.BytesIO(data[144:start]), is_implicit_VR=False, is_little_endian=True)
    return str(meta.get("TransferSyntaxUID", "")), start


def _check_deflate(data: bytes, cap: int) -> str:
    syntax, start = _transfer_syntax(data)
    if syntax == uids.DeflatedExplicitVRLittleEndian:
        _inflated_size(data[start:], cap)
    return syntax


def _declared_pixel_bytes(ds: Dataset) -> int:
    rows = int(ds.get("Rows") or 0)
    columns = int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    return rows * columns * max(frames, 1) * max(samples, 1) * max(1, (bits + 7) // 8)


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS codestream's start-of-frame marker."""
    if frame[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            return None
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            offset += 2
            continue
        (length,) = struct.unpack(">H", frame[offset + 2 : offset + 4])
        is_sof = (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7
        if is_sof:
            if offset + 9 > len(frame):
                return None
            rows, columns = struct.unpack(">HH", frame[offset + 5 : offset + 9])
            return int(rows), int(columns)
        offset += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ marker."""
    if frame[:4] != b"\xff\x4f\xff\x51" or len(frame) < 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[8:24])
    return int(ysiz - yosiz), int(xsiz - xosiz)


def _check_codestreams(ds: Dataset, syntax: str) -> None:
    """Every compressed frame must declare the matrix the header does (JPEG family and JPEG 2000)."""
    if "PixelData" not in ds or syntax not in _JPEG_FAMILY | _J2K_FAMILY:
        return
    expected = (int(ds.Rows), int(ds.Columns))
    reader = _jpeg_size if syntax in _JPEG_FAMILY else _j2k_size
    frames = int(ds.get("NumberOfFrames") or 1)
    for fragments in generate_fragmented_frames(ds.PixelData, number_of_frames=frames):
        found = reader(fragments[0]) if fragments else None
        if found != expected:
            raise InstanceRefusedError(
                Status.CANNOT_UNDERSTAND,
                "a compressed frame's own header does not declare the image's Rows x Columns",
            )


def _uids(ds: Dataset) -> dict[str, str]:
    values = {kw: str(ds.get(kw, "") or "") for kw in _UID_KEYWORDS}
    bad = [kw for kw, value in values.items() if not is_valid_uid(value)]
    if bad:
        raise InstanceRefusedError(Status.DATASET_MISMATCH, f"missing or invalid UIDs: {', '.join(bad)}")
    return values


def inspect_instance(
    data: bytes,
    *,
    max_bytes: int,
    announced_sop_class: str | None = None,
    announced_sop_instance: str | None = None,
) -> ReceivedInstance | None:
    """Check one received instance; the instance to keep, or None for one accepted and discarded.

    Args:
        data: the instance as a DICOM Part 10 file (a C-STORE's dataset with its file meta information).
        max_bytes: the largest instance as sent, inflated, and as its pixel data declares.
        announced_sop_class: the C-STORE request's Affected SOP Class UID, which the dataset must carry.
        announced_sop_instance: the request's Affected SOP Instance UID, likewise.

    Raises:
        InstanceRefusedError: with the C-STORE status and the reason.
    """
    if len(data) > max_bytes:
        raise InstanceRefusedError(
            Status.OUT_OF_RESOURCES, f"the instance exceeds the limit of {max_bytes} bytes"
        )
    syntax, ds, values = _parse(data, max_bytes)
    _check_announced(values, announced_sop_class, announced_sop_instance)
    sop_class = values["SOPClassUID"]
    if sop_class in DISCARDED_SOP_CLASSES:
        return None
    if sop_class not in STORED_SOP_CLASSES:
        raise InstanceRefusedError(Status.SOP_CLASS_NOT_SUPPORTED, "not a CT image storage SOP class")
    _check_pixels(ds, syntax, max_bytes)
    return ReceivedInstance(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_class_uid=sop_class,
        sop_instance_uid=values["SOPInstanceUID"],
        data=data,
    )


def _parse(data: bytes, max_bytes: int) -> tuple[str, Dataset, dict[str, str]]:
    """The transfer syntax, the dataset and its UIDs; any failure of the parser refuses the instance."""
    try:
        syntax = _check_deflate(data, max_bytes)
        ds = pydicom.dcmread(io.BytesIO(data))
        return syntax, ds, _uids(ds)
    except InstanceRefusedError:
        raise
    except Exception as exc:  # a third-party parser on hostile bytes: any failure refuses the instance
        raise InstanceRefusedError(
            Status.CANNOT_UNDERSTAND, f"the dataset could not be read ({type(exc).__name__})"
        ) from None


def _check_announced(values: dict[str, str], sop_class: str | None, sop_instance: str | None) -> None:
    """The dataset carries the SOP Class and Instance UIDs the C-STORE request announced."""
    if sop_class is not None and values["SOPClassUID"] != sop_class:
        raise InstanceRefusedError(
            Status.DATASET_MISMATCH, "the dataset's SOP Class UID is not the announced one"
        )
    if sop_instance is not None and values["SOPInstanceUID"] != sop_instance:
        raise InstanceRefusedError(
            Status.DATASET_MISMATCH, "the dataset's SOP Instance UID is not the announced one"
        )


def _check_pixels(ds: Dataset, syntax: str, max_bytes: int) -> None:
    """The declared pixel data fits ``max_bytes`` and every compressed frame declares the header's matrix."""
    try:
        declared = _declared_pixel_bytes(ds)
        if declared > max_bytes:
            raise InstanceRefusedError(
                Status.OUT_OF_RESOURCES,
                f"the image declares {declared} bytes of pixel data; the limit is {max_bytes}",
            )
        _check_codestreams(ds, syntax)
    except InstanceRefusedError:
        raise
    except Exception as exc:
        raise InstanceRefusedError(
            Status.CANNOT_UNDERSTAND, f"the image attributes could not be read ({type(exc).__name__})"
        ) from None
