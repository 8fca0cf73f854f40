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

from ich.slice_geometry import SliceSpacing, angle_from_z_deg, position_along, slice_normal, slice_spacing

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

    @property
    def slice_count(self) -> int:
        """Slices of the sorted series (0 when it failed a rule)."""
        return 0 if self.selection is None else len(self.selection.slices)


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
    groups, skipped = _group_by_series(headers)
    candidates = [_assess(uid, members) for uid, members in groups.items()]
    if max_slices is not None:
        for candidate in candidates:
            if candidate.selection is not None and candidate.slice_count > max_slices:
                candidate.reason = f"{candidate.slice_count} slices, {slice_cap_note(max_slices)}"
    passed_over = [
        PassedOver(c.uid, c.reason, c.modality, len(c.headers)) for c in candidates if c.reason is not None
    ]
    eligible = sorted((c for c in candidates if c.reason is None and c.selection is not None), key=_rank)
    if not eligible:
        return SelectionResult(None, passed_over, skipped)
    chosen, *others = eligible
    passed_over += [_not_chosen(other, chosen) for other in others]
    return SelectionResult(chosen.selection, passed_over, skipped)


def _group_by_series(headers: Sequence[SliceHeader]) -> tuple[dict[str, list[SliceHeader]], list[Skipped]]:
    """The image headers by SeriesInstanceUID, in the order met; the others skipped with a reason."""
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
    return groups, skipped


def _rank(candidate: _Candidate) -> tuple[int, float, int, str]:
    """Most slices first, then the thickness nearest the training data's, the lower number, the UID."""
    return (
        -candidate.slice_count,
        abs(candidate.thickness_mm - PREFERRED_THICKNESS_MM),
        candidate.series_number,
        candidate.uid,
    )


def _not_chosen(other: _Candidate, chosen: _Candidate) -> PassedOver:
    """Why an eligible series lost to the chosen one."""
    if other.slice_count < chosen.slice_count:
        reason = f"{other.slice_count} usable slice(s); the chosen series has {chosen.slice_count}"
    else:
        reason = (
            f"as many slices as the chosen series; its slice thickness {other.thickness_mm:g} mm is "
            f"further from {PREFERRED_THICKNESS_MM:g} mm or it comes later"
        )
    return PassedOver(other.uid, reason, other.modality, len(other.headers))


class _RuleFailedError(Exception):
    """A series fails one of the rules; the message is the reason it is passed over with."""


def _assess(uid: str, headers: list[SliceHeader]) -> _Candidate:
    """Check one series against the rules; on success, sort it (``selection`` set), else ``reason`` set."""
    first = headers[0].dataset
    candidate = _Candidate(
        uid, headers, _string(first, "Modality"), series_number=_int(first, "SeriesNumber") or 0
    )
    try:
        candidate.selection, candidate.thickness_mm = _selection_of(uid, headers)
    except _RuleFailedError as exc:
        candidate.reason = str(exc)
    return candidate


def _selection_of(uid: str, headers: list[SliceHeader]) -> tuple[SeriesSelection, float]:
    """The series checked against the rules and sorted along its normal, with its slice thickness (mm).

    Raises:
        _RuleFailedError: the first rule the series fails.
    """
    _require_ct(headers)
    excluded: list[Skipped] = []
    warnings: list[str] = []
    headers = _without_scouts(headers, excluded)
    _require_single_frame_greyscale(headers)
    headers = _common_geometry(headers, excluded)
    pixel_spacing = _slice_pixel_spacing(headers[0].dataset)
    if pixel_spacing is None:
        raise _RuleFailedError("no PixelSpacing: the lesion volume could not be measured")
    normal = _series_normal(headers, warnings)
    angle = angle_from_z_deg(normal)
    if angle > MAX_AXIAL_ANGLE_DEG:
        raise _RuleFailedError(f"not axial: slice normal {angle:.0f} degrees from the patient's z axis")
    ordered, positions = _dedupe(*_sort(headers, normal, excluded, warnings), excluded)
    spacing = slice_spacing(positions)
    warnings.extend(spacing.warnings)
    thickness = _slice_thickness(headers[0].dataset, spacing, warnings)
    selection = SeriesSelection(
        series_instance_uid=uid,
        slices=ordered,
        positions_mm=positions,
        slice_spacing_mm=float(spacing.or_else(thickness)),
        pixel_spacing_mm=pixel_spacing,
        gantry_tilt_deg=_gantry_tilt(headers, angle, warnings),
        excluded=excluded,
        warnings=warnings,
        spacing_warnings=list(spacing.warnings),
    )
    return selection, thickness


def _require_ct(headers: list[SliceHeader]) -> None:
    modalities = {(_string(h.dataset, "Modality") or "").upper() for h in headers}
    if modalities != {"CT"}:
        shown = ", ".join(sorted(m or "none" for m in modalities))
        raise _RuleFailedError(f"modality {shown}, not CT")


def _without_scouts(headers: list[SliceHeader], excluded: list[Skipped]) -> list[SliceHeader]:
    """The series less its localizers (each left out with a reason); a series of localizers only fails."""
    scouts = [h for h in headers if {"LOCALIZER", "SCOUT"} & set(_image_type(h.dataset))]
    if len(scouts) == len(headers):
        raise _RuleFailedError("localizer (scout) images, not axial slices")
    excluded.extend(Skipped(h.file, "localizer (scout) image inside the series") for h in scouts)
    scout_ids = {id(h) for h in scouts}
    return [h for h in headers if id(h) not in scout_ids]


def _require_single_frame_greyscale(headers: list[SliceHeader]) -> None:
    if any((_int(h.dataset, "NumberOfFrames") or 1) > 1 for h in headers):
        raise _RuleFailedError(
            "multi-frame (enhanced) CT images are not supported; export single-frame slices"
        )
    if any((_int(h.dataset, "SamplesPerPixel") or 1) != 1 for h in headers):
        raise _RuleFailedError("colour images (SamplesPerPixel > 1), not greyscale CT")


def _slice_thickness(first: Dataset, spacing: SliceSpacing, warnings: list[str]) -> float:
    """SliceThickness, else the median spacing, else the training data's (with a warning), within range."""
    thickness = _float(first, "SliceThickness")
    if thickness is None or thickness <= 0:
        thickness = spacing.median_mm
    if thickness is None:
        thickness = PREFERRED_THICKNESS_MM
        warnings.append(f"slice thickness unknown (one slice, no SliceThickness): {thickness:g} mm assumed")
    if not MIN_THICKNESS_MM <= thickness <= MAX_THICKNESS_MM:
        raise _RuleFailedError(
            f"slice thickness {thickness:g} mm outside {MIN_THICKNESS_MM:g}-{MAX_THICKNESS_MM:g} mm"
        )
    return thickness


def _slice_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _float_list(ds, keyword, 2)
        if values is not None and values[0] > 0 and values[1] > 0:
            return (values[0], values[1])
    return None


def _series_normal(headers: list[SliceHeader], warnings: list[str]) -> np.ndarray:
    """The series' slice normal.

    Raises:
        _RuleFailedError: an orientation is invalid, or the slices have more than one.
    """
    normals: list[np.ndarray] = []
    for header in headers:
        values = _float_list(header.dataset, "ImageOrientationPatient", 6)
        if values is None:
            continue
        try:
            normals.append(slice_normal(values))
        except ValueError:
            raise _RuleFailedError(
                "invalid ImageOrientationPatient (row and column cosines parallel)"
            ) from None
    if not normals:
        warnings.append("ImageOrientationPatient missing: axial orientation assumed")
        return slice_normal(_AXIAL)
    reference = normals[0]
    cos_tol = math.cos(math.radians(ORIENTATION_TOLERANCE_DEG))
    if any(abs(float(np.dot(reference, n))) < cos_tol for n in normals[1:]):
        raise _RuleFailedError("slices of more than one orientation in one series")
    if len(normals) < len(headers):
        warnings.append("ImageOrientationPatient missing on some slices: the others' orientation assumed")
    return reference


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
            placed.append((position_along(position, normal), header))
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
