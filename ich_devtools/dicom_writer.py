"""Write an HU volume as a valid CT DICOM series: for tests, the example study and the identity test.

Every file is a CT Image Storage instance (pydicom ``Dataset`` with a ``FileMetaDataset``) with generated
UIDs and a synthetic, de-identified patient ("ANONYMOUS"): nothing identifying is ever written, whatever
the source of the pixels. Stored values are integers, as a scanner stores them:

- ``signed=False`` (the default, the most common CT layout): unsigned 16-bit, RescaleIntercept -1024,
  RescaleSlope 1, so a reader that forgets the rescale is off by 1024 HU and tests notice;
- ``signed=True``: signed 16-bit, RescaleIntercept 0.

HU are rounded to the nearest integer; values that do not fit the stored type raise ``ValueError`` rather
than being clipped silently. Slices are laid out along the slice normal from ``origin_mm`` at
``slice_spacing_mm`` (default: the thickness); ``gantry_tilt_deg`` tilts the plane about the patient's x axis
and records GantryDetectorTilt, as a tilted head acquisition does.

Compressed transfer syntaxes: RLE Lossless (pydicom's own encoder), JPEG-LS Lossless (pyjpegls) and JPEG
2000 Lossless (pylibjpeg-openjpeg) through ``Dataset.compress``; JPEG Lossless SV1 (process 14) through
imagecodecs' libjpeg-turbo encoder when that package is installed (a test/dev dependency). JPEG 2000 needs 32
pixels or more a side (openjpeg's default six resolution levels).
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

#: Transfer syntaxes the writer can produce.
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)
#: Synthetic patient written into every file; never a real name or identifier.
ANONYMOUS = "ANONYMOUS"
_UNSIGNED_INTERCEPT = -1024


def _stored_values(hu: np.ndarray, signed: bool) -> np.ndarray:
    """HU -> the integers a scanner would store, checked against the stored type's range."""
    rounded = np.rint(np.asarray(hu, dtype=np.float64))
    if not np.all(np.isfinite(rounded)):
        raise ValueError("HU values must be finite")
    dtype = np.dtype(np.int16) if signed else np.dtype(np.uint16)
    info = np.iinfo(dtype)
    stored = rounded if signed else rounded - _UNSIGNED_INTERCEPT
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        layout = "signed 16-bit" if signed else "unsigned 16-bit with intercept -1024"
        raise ValueError(f"HU {rounded.min():g} to {rounded.max():g} do not fit {layout} storage")
    return stored.astype(dtype)


def _orientation(tilt_deg: float) -> tuple[list[float], np.ndarray]:
    """ImageOrientationPatient for an axial plane tilted about x, and its unit normal."""
    t = np.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    return [float(v) for v in (*row, *col)], normal


def series_datasets(
    hu: np.ndarray,
    *,
    pixel_spacing_mm: tuple[float, float] = (0.5, 0.5),
    slice_thickness_mm: float = 5.0,
    slice_spacing_mm: float | None = None,
    origin_mm: Sequence[float] | None = None,
    gantry_tilt_deg: float = 0.0,
    signed: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "Synthetic head CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    uid_seed: str | None = None,
    acquired: datetime | None = None,
) -> list[Dataset]:
    """Build one CT Image Storage dataset per slice of ``hu``.

    Args:
        hu: [N, H, W] (or [H, W]) Hounsfield units.
        pixel_spacing_mm: (row, column) spacing.
        slice_thickness_mm: SliceThickness.
        slice_spacing_mm: distance between slice centres along the normal (default: the thickness).
        origin_mm: ImagePositionPatient of the first slice (default: the image centred on x = y = 0).
        gantry_tilt_deg: tilt of the slice plane about the x axis, also written as GantryDetectorTilt.
        signed: signed storage with intercept 0 instead of unsigned with intercept -1024.
        transfer_syntax: one of ``SUPPORTED_TRANSFER_SYNTAXES``.
        study_instance_uid: StudyInstanceUID (default: generated).
        series_instance_uid: SeriesInstanceUID (default: generated).
        series_number: SeriesNumber.
        series_description: SeriesDescription.
        image_type: ImageType values (``("DERIVED", "SECONDARY", "LOCALIZER")`` makes a scout).
        modality: Modality (tests write non-CT series with it).
        uid_seed: when given, every generated UID derives from it (the same input gives the same files,
            e.g. for the committed example study); otherwise UIDs are random.
        acquired: study/series/content date and time (default: now).

    Returns:
        Datasets in spatial order (InstanceNumber 1..N), each with ``file_meta``.

    Raises:
        ValueError: a wrong shape, a non-positive spacing, HU outside the stored range or an unsupported
            transfer syntax.
    """
    volume = _checked_volume(hu, pixel_spacing_mm, slice_thickness_mm)
    syntax = UID(transfer_syntax)
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {syntax} ({syntax.name})")
    step = slice_thickness_mm if slice_spacing_mm is None else slice_spacing_mm
    stored = _stored_values(volume, signed)
    orientation, normal = _orientation(gantry_tilt_deg)
    origin = _origin(volume.shape, pixel_spacing_mm, origin_mm)

    def new_uid(role: str) -> str:
        return str(generate_uid(entropy_srcs=[uid_seed, role]) if uid_seed is not None else generate_uid())

    study_uid = study_instance_uid or new_uid("study")
    series_uid = series_instance_uid or new_uid(f"series/{series_number}")
    frame_uid = new_uid(f"frame/{series_number}")
    now = acquired or datetime.now(UTC)
    datasets = []
    for i in range(volume.shape[0]):
        ds = _base_dataset(study_uid, series_uid, frame_uid, new_uid(f"sop/{series_number}/{i}"), now)
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.ImageType = list(image_type)
        ds.InstanceNumber = i + 1
        _set_geometry(ds, origin + i * step * normal, orientation, pixel_spacing_mm, slice_thickness_mm)
        if gantry_tilt_deg:
            ds.GantryDetectorTilt = float(gantry_tilt_deg)
        _set_pixel_module(ds, stored[i], signed)
        _set_pixels(ds, stored[i], syntax)
        datasets.append(ds)
    return datasets


def _checked_volume(
    hu: np.ndarray, pixel_spacing_mm: tuple[float, float], slice_thickness_mm: float
) -> np.ndarray:
    """``hu`` as [N, H, W], refused when empty, of another rank, or with a non-positive spacing."""
    volume = np.asarray(hu)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or 0 in volume.shape:
        raise ValueError(f"expected HU of shape [N, H, W] or [H, W], got {np.asarray(hu).shape}")
    if min(pixel_spacing_mm) <= 0 or slice_thickness_mm <= 0:
        raise ValueError("pixel spacing and slice thickness must be positive")
    return volume


def _origin(
    shape: tuple[int, ...], pixel_spacing_mm: tuple[float, float], origin_mm: Sequence[float] | None
) -> np.ndarray:
    """The first slice's position: as given, or the image centred on x = y = 0."""
    if origin_mm is not None:
        return np.asarray([float(v) for v in origin_mm], dtype=np.float64)
    _, rows, columns = shape
    return np.array(
        [-(columns - 1) / 2.0 * pixel_spacing_mm[1], -(rows - 1) / 2.0 * pixel_spacing_mm[0], 0.0]
    )


def _set_geometry(
    ds: Dataset,
    position: np.ndarray,
    orientation: list[float],
    pixel_spacing_mm: tuple[float, float],
    slice_thickness_mm: float,
) -> None:
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = [round(v, 6) for v in orientation]
    ds.SliceLocation = round(float(position[2]), 6)
    ds.PixelSpacing = [float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])]
    ds.SliceThickness = float(slice_thickness_mm)


def _set_pixel_module(ds: Dataset, frame: np.ndarray, signed: bool) -> None:
    """Image Pixel and CT Image attributes of a 16-bit monochrome frame in HU, brain window."""
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = 0 if signed else _UNSIGNED_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 80


def _base_dataset(study_uid: str, series_uid: str, frame_uid: str, sop_uid: str, now: datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PatientName = f"{ANONYMOUS}^"  # a family-name component only: "ANONYMOUS", no given name
    ds.PatientID = ANONYMOUS
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "ich-ensemble dicom_writer"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    return ds


def _set_pixels(ds: Dataset, frame: np.ndarray, syntax: UID) -> None:
    """Store one frame, encoded in ``syntax``."""
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes()
        return
    if syntax == JPEGLosslessSV1:
        _compress_jpeg_lossless(ds, frame)
        return
    # Lossless: the instance stays the same one, so its (possibly seeded) UID stays too.
    ds.compress(syntax, arr=frame, generate_instance_uid=False)


def _compress_jpeg_lossless(ds: Dataset, frame: np.ndarray) -> None:
    """JPEG Lossless, first-order prediction (process 14, selection value 1), via imagecodecs.

    pydicom has no encoder for it; libjpeg-turbo (inside imagecodecs) writes the lossless SOF3 stream.
    Signed values are encoded as their 16-bit pattern, as DICOM stores them.
    """
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("JPEG Lossless encoding needs the imagecodecs package") from exc
    pattern = np.ascontiguousarray(frame).view(np.uint16)
    stream = imagecodecs.jpeg8_encode(pattern, lossless=True, predictor=1, bitspersample=16)
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def write_series(hu: np.ndarray, out_dir: Path, **options: Any) -> list[Path]:
    """Write the series into ``out_dir`` (created if needed), one ``CT0001.dcm``... file per slice.

    Args:
        hu: [N, H, W] (or [H, W]) Hounsfield units.
        out_dir: the folder to write into.
        **options: as :func:`series_datasets` (``pixel_spacing_mm``, ``slice_thickness_mm``,
            ``transfer_syntax``...).

    Returns:
        The paths, in spatial order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(series_datasets(hu, **options)):
        path = out / f"CT{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(ds: Dataset) -> bytes:
    """One dataset as a DICOM Part 10 file in memory."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_zip(
    hu: np.ndarray, *, folder: str = "series", shuffle: bool = False, seed: int = 0, **options: Any
) -> bytes:
    """The series as a zip archive in memory (deflated), as a user would upload it.

    Args:
        hu: [N, H, W] (or [H, W]) Hounsfield units.
        folder: folder name inside the zip.
        shuffle: store the members in a random order under random names, so that only a reader sorting by
            position gets the order back.
        seed: seed for ``shuffle``.
        **options: as :func:`series_datasets`.
    """
    datasets = series_datasets(hu, **options)
    order = list(range(len(datasets)))
    names = [f"{folder}/CT{i + 1:04d}.dcm" for i in order]
    if shuffle:
        rng = random.Random(seed)
        rng.shuffle(order)
        names = [f"{folder}/IM{rng.randrange(16**8):08x}" for _ in order]
    return zip_members(
        {name: dataset_bytes(datasets[index]) for name, index in zip(names, order, strict=True)}
    )


def zip_members(members: dict[str, bytes]) -> bytes:
    """A deflated zip in memory holding ``members`` (name -> bytes) in the given order.

    Member timestamps are fixed (1980-01-01), so the same members always give the same bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()
