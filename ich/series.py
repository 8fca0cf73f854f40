"""Choose the one CT series to analyse from a study's headers, and put its slices in spatial order.

A zipped study often holds more than the axial head series: a localizer (scout), reformats, a dose report,
sometimes a second reconstruction. The models were trained on axial slices a few millimetres thick, so the
choice is explicit and every series passed over gets a reason the caller can show.

Rules, in the order they are checked for each series (the first that fails is the reason):

1. Modality is CT.
2. Not a localizer or scout (``ImageType`` holds ``LOCALIZER`` or ``SCOUT``). A series made only of them is
   passed over; a localizer filed inside an axial series is left out of it, with a reason.
3. Single-frame greyscale images (``NumberOfFrames`` absent or 1, ``SamplesPerPixel`` 1). Enhanced
   (multi-frame) CT is not supported yet.
4. Pixel spacing known (``PixelSpacing``, else ``ImagerPixelSpacing``): without it no lesion volume.
5. One orientation, axial: the slice normal (row cosine x column cosine) lies within
   ``MAX_AXIAL_ANGLE_DEG`` of the patient's z axis. A missing ``ImageOrientationPatient`` is taken as
   axial, with a warning.
6. A sensible slice thickness, ``MIN_THICKNESS_MM`` to ``MAX_THICKNESS_MM`` (``SliceThickness``, else the
   spacing between slice positions).

Of the series that pass, the one with the most slices wins; ties go to the thickness nearest the 5 mm the
models were trained on, then to the lower SeriesNumber, then to the UID (deterministic).

Within the chosen series:

- Slices whose matrix (Rows x Columns) or pixel spacing differs from the series' most common one are left
  out, with a reason.
- Slices are sorted by their position along the slice normal (``ImagePositionPatient`` dotted with the
  normal), never by InstanceNumber, which scanners and PACS exports do not keep consistent.
- Missing positions: if some slices have ``ImagePositionPatient`` and others not, those without are left
  out (their place in space is unknown). If none has it, the slices are ordered by InstanceNumber with a
  warning, and the slice spacing falls back to ``SliceThickness``.
- Two slices at the same position (within ``DUPLICATE_TOLERANCE_MM``) or with the same SOPInstanceUID:
  the first (lowest InstanceNumber, then file name) is kept, the others are left out with a reason.
- Irregular spacing (a gap from a missing slice, or mixed spacings) and gantry tilt are reported as
  warnings; the volume is not resampled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

#: Largest angle (degrees) between the slice normal and the patient's z axis still called axial; head CT
#: acquired with gantry tilt is often 15-30 degrees off, reformats to coronal or sagittal are 90.
MAX_AXIAL_ANGLE_DEG = 40.0
#: Slice thickness (mm) the models can make sense of; thinner is mostly noise, thicker blurs small bleeds.
MIN_THICKNESS_MM = 0.5
MAX_THICKNESS_MM = 10.0
#: The slice thickness of the training data (CT-ICH: 5 mm), preferred when two series tie on slice count.
PREFERRED_THICKNESS_MM = 5.0
#: Two slices closer than this along the normal are the same slice.
DUPLICATE_TOLERANCE_MM = 0.01
#: A spacing further than this fraction from the median spacing is irregular (and at least 0.1 mm).
SPACING_TOLERANCE = 0.1
#: Tilt (degrees) below which the gantry is called untilted.
TILT_TOLERANCE_DEG = 0.5
#: Orientations whose normals differ by less than this (degrees) are the same orientation.
ORIENTATION_TOLERANCE_DEG = 1.0

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SliceHeader:
    """One DICOM file's dataset, and where to read the whole file from if the dataset is not all of it.

    Attributes:
        file: the member name in the archive (or the path relative to the folder read).
        dataset: the file parsed once, pixel data undecoded (intake), or its header only.
        source: ``None`` when ``dataset`` is the whole file (nothing is parsed again); else the whole file,
            as bytes (zip members) or as a path (files on disk).
    """

    file: str
    dataset: Dataset
    source: bytes | Path | None = field(repr=False)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why (the result's ``series.skipped``)."""

    file: str
    reason: str


@dataclass(frozen=True)
class PassedOver:
    """A series that was not chosen, and why (the result's ``series.passed_over``)."""

    series_instance_uid: str
    reason: str
    modality: str | None
    slices: int


@dataclass(frozen=True)
class SeriesSelection:
    """The chosen series, its slices in spatial order, and what was noticed on the way.

    Attributes:
        series_instance_uid: the chosen series.
        slices: headers sorted along the slice normal (ascending), duplicates and misfits removed.
        positions_mm: each slice's position along the normal, same order; empty when positions are missing.
        slice_spacing_mm: the median spacing between slice centres, or SliceThickness when unknown.
        pixel_spacing_mm: (row, column) spacing in mm.
        gantry_tilt_deg: GantryDetectorTilt, else the normal's angle from the z axis (0 when untilted).
        excluded: slices of the chosen series left out, with reasons.
        warnings: notes for the result (gaps, tilt, missing positions); no patient data.
        spacing_warnings: those of ``warnings`` about irregular spacing (redone if slices drop out later).
    """

    series_instance_uid: str
    slices: list[SliceHeader]
    positions_mm: list[float]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    gantry_tilt_deg: float
    excluded: list[Skipped]
    warnings: list[str]
    spacing_warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of :func:`select_series`: the choice (or ``None``), the series passed over, files skipped."""

    selection: SeriesSelection | None
    passed_over: list[PassedOver]
    skipped: list[Skipped]


@dataclass
class _Candidate:
    uid: str
    headers: list[SliceHeader]
    modality: str | None
    reason: str | None = None
    selection: SeriesSelection | None = None
    thickness_mm: float = 0.0
    series_number: int = 0


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: row direction cosine x column direction cosine.

    Raises:
        ValueError: the orientation does not hold six numbers or its cosines are parallel.
    """
    values = np.asarray([float(v) for v in orientation], dtype=np.float64)
    if values.shape != (6,):
        raise ValueError(f"ImageOrientationPatient needs 6 values, got {values.size}")
    normal = np.cross(values[:3], values[3:])
    norm = float(np.linalg.norm(normal))
    if not math.isfinite(norm) or norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return normal / norm


def angle_from_z_deg(normal: np.ndarray) -> float:
    """Angle (degrees, 0-90) between a slice normal and the patient's z axis, whichever way it points."""
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def describe_spacing(positions_mm: Sequence[float]) -> tuple[float | None, list[str]]:
    """Median spacing of sorted positions and a warning when the spacing is irregular.

    Returns:
        (median spacing in mm, or None for fewer than two slices; warnings).
    """
    if len(positions_mm) < 2:
        return None, []
    diffs = np.diff(np.asarray(positions_mm, dtype=np.float64))
    median = float(np.median(diffs))
    tolerance = max(0.1, SPACING_TOLERANCE * median)
    irregular = np.abs(diffs - median) > tolerance
    warnings: list[str] = []
    if irregular.any():
        gaps = int(np.count_nonzero(diffs > median + tolerance))
        warnings.append(
            f"irregular slice spacing: {float(diffs.min()):.2f} to {float(diffs.max()):.2f} mm "
            f"(median {median:.2f} mm, {gaps} gap(s) wider than usual); the volume is not resampled"
        )
    return median, warnings


def _string(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _float_list(ds: Dataset, keyword: str, length: int) -> list[float] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(numbers) != length or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType")
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip().upper() for part in value.split("\\")]
    return [str(part).strip().upper() for part in value]


def _is_image(ds: Dataset) -> bool:
    return _int(ds, "Rows") is not None and _int(ds, "Columns") is not None


def slice_cap_note(max_slices: int) -> str:
    """The end of the reason a series above the slice cap is passed over with (intake looks for it)."""
    return f"more than the limit of {max_slices} per study"


def select_series(headers: Sequence[SliceHeader], *, max_slices: int | None = None) -> SelectionResult:
    """Group headers by SeriesInstanceUID and choose the series to analyse (rules in the module docstring).

    Args:
        headers: every DICOM file of the study, header only.
        max_slices: most slices a chosen series may have; a longer one is passed over with the reason, so
            its pixels are never decoded (what bounds a study's memory). None: no cap.

    Returns:
        The selection (``None`` when no series qualifies), the series passed over with reasons, and files
        skipped before grouping (not an image, no SeriesInstanceUID).
    """
    skipped: list[Skipped] = []
    groups: dict[str, list[SliceHeader]] = {}
    for header in headers:
        ds = header.dataset
        if not _is_image(ds):
            modality = _string(ds, "Modality") or "unknown modality"
            skipped.append(Skipped(header.file, f"not an image (no Rows/Columns; {modality})"))
            continue
        uid = _string(ds, "SeriesInstanceUID")
        if uid is None:
            skipped.append(Skipped(header.file, "no SeriesInstanceUID"))
            continue
        groups.setdefault(uid, []).append(header)

    candidates = [_assess(uid, members) for uid, members in groups.items()]
    for candidate in candidates:
        if max_slices is not None and candidate.selection is not None:
            count = len(candidate.selection.slices)
            if count > max_slices:
                candidate.reason = f"{count} slices, {slice_cap_note(max_slices)}"
    eligible = [c for c in candidates if c.reason is None and c.selection is not None]
    passed_over = [
        PassedOver(c.uid, c.reason, c.modality, len(c.headers)) for c in candidates if c.reason is not None
    ]
    if not eligible:
        return SelectionResult(None, passed_over, skipped)

    def rank(c: _Candidate) -> tuple[int, float, int, str]:
        assert c.selection is not None
        return (
            -len(c.selection.slices),
            abs(c.thickness_mm - PREFERRED_THICKNESS_MM),
            c.series_number,
            c.uid,
        )

    eligible.sort(key=rank)
    chosen = eligible[0]
    assert chosen.selection is not None
    n_chosen = len(chosen.selection.slices)
    for other in eligible[1:]:
        assert other.selection is not None
        n_other = len(other.selection.slices)
        if n_other < n_chosen:
            reason = f"{n_other} usable slice(s); the chosen series has {n_chosen}"
        else:
            reason = (
                f"as many slices as the chosen series; its slice thickness {other.thickness_mm:g} mm is "
                f"further from {PREFERRED_THICKNESS_MM:g} mm or it comes later"
            )
        passed_over.append(PassedOver(other.uid, reason, other.modality, len(other.headers)))
    return SelectionResult(chosen.selection, passed_over, skipped)


def _assess(uid: str, headers: list[SliceHeader]) -> _Candidate:
    """Check one series against the rules; on success, sort it (``selection`` set), else ``reason`` set."""
    first = headers[0].dataset
    modality = _string(first, "Modality")
    candidate = _Candidate(uid, headers, modality, series_number=_int(first, "SeriesNumber") or 0)

    modalities = {(_string(h.dataset, "Modality") or "").upper() for h in headers}
    if modalities != {"CT"}:
        shown = ", ".join(sorted(m or "none" for m in modalities))
        candidate.reason = f"modality {shown}, not CT"
        return candidate
    scouts = [h for h in headers if {"LOCALIZER", "SCOUT"} & set(_image_type(h.dataset))]
    if len(scouts) == len(headers):
        candidate.reason = "localizer (scout) images, not axial slices"
        return candidate
    excluded = [Skipped(h.file, "localizer (scout) image inside the series") for h in scouts]
    scout_ids = {id(h) for h in scouts}
    headers = [h for h in headers if id(h) not in scout_ids]
    if any((_int(h.dataset, "NumberOfFrames") or 1) > 1 for h in headers):
        candidate.reason = "multi-frame (enhanced) CT images are not supported; export single-frame slices"
        return candidate
    if any((_int(h.dataset, "SamplesPerPixel") or 1) != 1 for h in headers):
        candidate.reason = "colour images (SamplesPerPixel > 1), not greyscale CT"
        return candidate

    headers = _common_geometry(headers, excluded)
    first = headers[0].dataset
    spacing = _slice_pixel_spacing(first)
    if spacing is None:
        candidate.reason = "no PixelSpacing: the lesion volume could not be measured"
        return candidate

    warnings: list[str] = []
    normal, orientation_reason = _series_normal(headers, warnings)
    if orientation_reason is not None:
        candidate.reason = orientation_reason
        return candidate
    assert normal is not None
    angle = angle_from_z_deg(normal)
    if angle > MAX_AXIAL_ANGLE_DEG:
        candidate.reason = f"not axial: slice normal {angle:.0f} degrees from the patient's z axis"
        return candidate

    ordered, positions = _sort(headers, normal, excluded, warnings)
    ordered, positions = _dedupe(ordered, positions, excluded)

    median, spacing_warnings = describe_spacing(positions)
    warnings.extend(spacing_warnings)
    thickness = _float(first, "SliceThickness")
    if thickness is None or thickness <= 0:
        thickness = median
    if thickness is None:
        thickness = PREFERRED_THICKNESS_MM
        warnings.append(f"slice thickness unknown (one slice, no SliceThickness): {thickness:g} mm assumed")
    if not MIN_THICKNESS_MM <= thickness <= MAX_THICKNESS_MM:
        candidate.reason = (
            f"slice thickness {thickness:g} mm outside {MIN_THICKNESS_MM:g}-{MAX_THICKNESS_MM:g} mm"
        )
        return candidate
    slice_spacing = median if median is not None and median > 0 else thickness

    tilt = _gantry_tilt(headers, angle, warnings)
    candidate.thickness_mm = thickness
    candidate.selection = SeriesSelection(
        series_instance_uid=uid,
        slices=ordered,
        positions_mm=positions,
        slice_spacing_mm=float(slice_spacing),
        pixel_spacing_mm=spacing,
        gantry_tilt_deg=tilt,
        excluded=excluded,
        warnings=warnings,
        spacing_warnings=spacing_warnings,
    )
    return candidate


def _slice_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _float_list(ds, keyword, 2)
        if values is not None and values[0] > 0 and values[1] > 0:
            return (values[0], values[1])
    return None


def _series_normal(headers: list[SliceHeader], warnings: list[str]) -> tuple[np.ndarray | None, str | None]:
    """The series' slice normal, or a reason why it has none usable."""
    normals: list[np.ndarray] = []
    for header in headers:
        values = _float_list(header.dataset, "ImageOrientationPatient", 6)
        if values is None:
            continue
        try:
            normals.append(slice_normal(values))
        except ValueError:
            return None, "invalid ImageOrientationPatient (row and column cosines parallel)"
    if not normals:
        warnings.append("ImageOrientationPatient missing: axial orientation assumed")
        return slice_normal(_AXIAL), None
    reference = normals[0]
    cos_tol = math.cos(math.radians(ORIENTATION_TOLERANCE_DEG))
    if any(abs(float(np.dot(reference, n))) < cos_tol for n in normals[1:]):
        return None, "slices of more than one orientation in one series"
    if len(normals) < len(headers):
        warnings.append("ImageOrientationPatient missing on some slices: the others' orientation assumed")
    return reference, None


def _common_geometry(headers: list[SliceHeader], excluded: list[Skipped]) -> list[SliceHeader]:
    """Keep the slices of the most common matrix and pixel spacing; a volume needs one of each."""
    shapes = [(_int(h.dataset, "Rows"), _int(h.dataset, "Columns")) for h in headers]
    spacings = [_slice_pixel_spacing(h.dataset) for h in headers]
    keys = [
        (shape, None if sp is None else (round(sp[0], 4), round(sp[1], 4)))
        for shape, sp in zip(shapes, spacings, strict=True)
    ]
    (common_shape, common_spacing), _ = Counter(keys).most_common(1)[0]
    kept: list[SliceHeader] = []
    for header, (shape, spacing) in zip(headers, keys, strict=True):
        if shape != common_shape:
            reason = (
                f"matrix {shape[0]}x{shape[1]} differs from the series' {common_shape[0]}x{common_shape[1]}"
            )
        elif spacing != common_spacing:
            reason = f"pixel spacing {_show(spacing)} differs from the series' {_show(common_spacing)}"
        else:
            kept.append(header)
            continue
        excluded.append(Skipped(header.file, reason))
    return kept


def _show(spacing: tuple[float, float] | None) -> str:
    return "missing" if spacing is None else f"{spacing[0]:g} x {spacing[1]:g} mm"


def _tie_key(header: SliceHeader) -> tuple[int, str]:
    number = _int(header.dataset, "InstanceNumber")
    return (number if number is not None else 2**31, header.file)


def _sort(
    headers: list[SliceHeader], normal: np.ndarray, excluded: list[Skipped], warnings: list[str]
) -> tuple[list[SliceHeader], list[float]]:
    """Sort along the normal; fall back to InstanceNumber only when no slice has a position."""
    placed: list[tuple[float, SliceHeader]] = []
    unplaced: list[SliceHeader] = []
    for header in headers:
        position = _float_list(header.dataset, "ImagePositionPatient", 3)
        if position is None:
            unplaced.append(header)
        else:
            placed.append((float(np.dot(np.asarray(position), normal)), header))
    if not placed:
        if len(unplaced) > 1:
            warnings.append(
                "ImagePositionPatient missing: slices ordered by InstanceNumber, spacing from SliceThickness"
            )
        return sorted(unplaced, key=_tie_key), []
    for header in unplaced:
        excluded.append(Skipped(header.file, "no ImagePositionPatient while the other slices have one"))
    placed.sort(key=lambda item: (item[0], *_tie_key(item[1])))
    return [h for _, h in placed], [p for p, _ in placed]


def _dedupe(
    headers: list[SliceHeader], positions: list[float], excluded: list[Skipped]
) -> tuple[list[SliceHeader], list[float]]:
    """Drop repeated SOPInstanceUIDs and repeated positions, keeping the first of each."""
    seen_uids: dict[str, str] = {}
    kept: list[SliceHeader] = []
    kept_positions: list[float] = []
    for i, header in enumerate(headers):
        uid = _string(header.dataset, "SOPInstanceUID")
        if uid is not None and uid in seen_uids:
            excluded.append(Skipped(header.file, f"duplicate SOPInstanceUID (same as {seen_uids[uid]})"))
            continue
        if positions and kept_positions and abs(positions[i] - kept_positions[-1]) < DUPLICATE_TOLERANCE_MM:
            excluded.append(Skipped(header.file, f"duplicate slice position (same as {kept[-1].file})"))
            continue
        if uid is not None:
            seen_uids[uid] = header.file
        kept.append(header)
        if positions:
            kept_positions.append(positions[i])
    return kept, kept_positions


def _gantry_tilt(headers: list[SliceHeader], normal_angle_deg: float, warnings: list[str]) -> float:
    """Tilt in degrees from GantryDetectorTilt, else from the orientation; a warning when tilted."""
    tilt = _float(headers[0].dataset, "GantryDetectorTilt")
    if tilt is not None and abs(tilt) > TILT_TOLERANCE_DEG:
        warnings.append(f"gantry tilt {tilt:.1f} degrees (GantryDetectorTilt); slices are not re-aligned")
        return tilt
    if normal_angle_deg > TILT_TOLERANCE_DEG:
        warnings.append(
            f"slices tilted {normal_angle_deg:.1f} degrees from the axial plane; slices are not re-aligned"
        )
        return normal_angle_deg
    return 0.0
