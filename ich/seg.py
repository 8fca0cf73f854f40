"""The lesion mask as a DICOM Segmentation: what a PACS viewer shows over the source CT series.

The ensemble's fused map lives on the model's ``S x S`` grid; a SEG must match the source images pixel for
pixel, so :func:`resize_mask_to_source` brings the map back to each slice's ``H x W`` matrix first.

Resize choice: the *probability map* is resized bilinearly (``scipy.ndimage.zoom``, order 1, with the same
pixel-area grid alignment as ``ich.preprocess``) and only then thresholded at ``spec.MASK_THRESHOLD``.
Nearest-neighbour upsampling of the thresholded mask would draw each model pixel as a 2 x 2 (for 512 / 256)
block with staircase edges; thresholding the interpolated map gives a smooth contour at the source
resolution while keeping the area close to the model-space area the reported volume is counted on. Bilinear
values never exceed the slice's maximum, so a slice without model pixels above the threshold stays empty.

:func:`build_segmentation` wraps ``highdicom.seg.Segmentation`` (BINARY, one segment "Hemorrhage"). What it
needs from ``source_images`` (the headers of the chosen series, sorted like the volume):

- No pixel data: highdicom reads only the headers, so datasets read with ``stop_before_pixels`` are fine.
- Required (a ``ValueError`` names the ones missing): SOPClassUID, SOPInstanceUID, StudyInstanceUID,
  SeriesInstanceUID, Modality, FrameOfReferenceUID, ImagePositionPatient, ImageOrientationPatient,
  PixelSpacing, Rows, Columns; every slice single-frame with the same matrix.
- Type 2 attributes highdicom copies into the SEG (PatientName, PatientID, PatientBirthDate, PatientSex,
  StudyDate, StudyTime, StudyID, AccessionNumber, ReferringPhysicianName) are often stripped by
  anonymisation; when absent they are added *empty* (what Type 2 allows) to private copies, never to the
  caller's datasets. A missing or empty SliceThickness is taken from the distance between slice positions.

An empty mask yields ``None`` by default: a SEG that segments nothing carries no finding, viewers show an
empty layer, and highdicom would have to store every (blank) frame. ``allow_empty=True`` encodes it anyway
(all frames), for callers that must always return an object. Otherwise only frames with lesion pixels are
stored (highdicom's ``omit_empty_frames``); each stored frame references its source image.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from scipy import ndimage

from ich import spec

__all__ = [
    "HEMORRHAGE_CATEGORY",
    "HEMORRHAGE_TYPE",
    "SEGMENT_LABEL",
    "build_segmentation",
    "completed_headers",
    "resize_mask_to_source",
    "software_version",
]

#: Segmented property category: SCT 49755003 "Morphologically abnormal structure".
HEMORRHAGE_CATEGORY: hd.sr.CodedConcept = hd.sr.CodedConcept(
    codes.SCT.MorphologicallyAbnormalStructure.value, "SCT", "Morphologically abnormal structure"
)
#: Segmented property type: SCT 50960005 "Hemorrhage".
HEMORRHAGE_TYPE: hd.sr.CodedConcept = hd.sr.CodedConcept(codes.SCT.Hemorrhage.value, "SCT", "Hemorrhage")
#: Anatomic region of the segment: SCT 12738006 "Brain".
BRAIN_REGION: hd.sr.CodedConcept = hd.sr.CodedConcept(codes.SCT.Brain.value, "SCT", "Brain")
SEGMENT_LABEL = "Hemorrhage"

_DISTRIBUTION = "ich-ensemble"
#: Manufacturer of the SEG (the software's developer; the SR names the same).
_MANUFACTURER = "ich-ensemble project"
#: SeriesNumber of the SEG series: high, so viewers list it after the CT (the SR follows at 9902).
_SERIES_NUMBER = 9901
#: DeviceSerialNumber, required by the Enhanced General Equipment module; the software has none.
_DEVICE_SERIAL_NUMBER = "none"
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Type 2 attributes highdicom copies from the source; keyword -> VR for an empty fill.
_TYPE2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "StudyID": "SH",
    "AccessionNumber": "SH",
    "ReferringPhysicianName": "PN",
}


def resize_mask_to_source(
    fused: np.ndarray,
    shape: tuple[int, int],
    *,
    threshold: float = spec.MASK_THRESHOLD,
    keep_slices: np.ndarray | None = None,
) -> np.ndarray:
    """Bring the fused probability maps back to the source matrix and threshold them.

    Args:
        fused: ``[N, 1, S, S]`` (or ``[N, S, S]``) fused maps from the ensemble, values in [0, 1].
        shape: the source matrix ``(H, W)`` (``CTVolume.hu.shape[1:]``).
        threshold: pixels strictly above it are lesion (the same rule as ``ich.aggregate``).
        keep_slices: optional ``[N]`` bool; slices marked False come back empty. Pass the slices the
            aggregation counted (``findings.mask.any(axis=(1, 2))``) so the SEG shows exactly the slices
            whose volume was reported and not the strays the weight model's post-processing discards.

    Returns:
        ``[N, H, W]`` bool mask.

    Raises:
        ValueError: on a wrong rank or shape, non-finite values, or a threshold outside [0, 1].
    """
    arr = np.asarray(fused)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"fused must be [N, 1, S, S], got shape {arr.shape}")
        arr = arr[:, 0]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"fused must be [N, 1, S, S] or [N, S, S], got shape {np.asarray(fused).shape}")
    height, width = (int(v) for v in shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"shape must be two positive sizes, got {shape!r}")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    maps = arr.astype(np.float32, copy=False)
    if not np.isfinite(maps).all():
        raise ValueError("fused holds non-finite values")
    n = maps.shape[0]
    keep = np.ones(n, dtype=bool) if keep_slices is None else np.asarray(keep_slices, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"keep_slices must have shape ({n},), got {keep.shape}")

    out = np.zeros((n, height, width), dtype=bool)
    src_h, src_w = maps.shape[1:]
    zoom = (height / src_h, width / src_w)
    limit = np.float32(threshold)
    # Linear interpolation never exceeds its inputs' maximum, so a slice with no value above the threshold
    # comes back empty without being resized (most slices of a study; the resize is the costly part).
    above = maps.reshape(n, -1).max(axis=1) > limit
    for i in np.flatnonzero(keep & above):
        # Same grid convention as ich.preprocess.resize_channel (pixel areas aligned, edges repeated).
        resized = ndimage.zoom(maps[i], zoom, order=1, mode="nearest", grid_mode=True)
        if resized.shape != (height, width):  # zoom rounds the output shape; it is exact in practice
            raise ValueError(f"resize gave {resized.shape}, expected {(height, width)}")
        out[i] = resized > limit
    return out


def software_version() -> str:
    """This software's version (the installed distribution's), for SoftwareVersions."""
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _check_sources(source_images: Sequence[Dataset], mask_shape: tuple[int, ...], model_version: str) -> None:
    if not model_version:
        raise ValueError("model_version must be a non-empty string")
    if len(source_images) == 0:
        raise ValueError("source_images is empty")
    n, height, width = mask_shape
    if len(source_images) != n:
        raise ValueError(f"{len(source_images)} source images for a mask of {n} slices")
    missing: set[str] = set()
    for ds in source_images:
        missing.update(kw for kw in _REQUIRED if ds.get(kw) in (None, ""))
    if missing:
        raise ValueError(f"source images lack attributes a SEG needs: {sorted(missing)}")
    for i, ds in enumerate(source_images):
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source image {i} is multi-frame; only single-frame series are supported")
        if (int(ds.Rows), int(ds.Columns)) != (height, width):
            raise ValueError(
                f"source image {i} is {int(ds.Rows)}x{int(ds.Columns)} but the mask is {height}x{width}"
            )
    uids = [str(ds.SOPInstanceUID) for ds in source_images]
    if len(set(uids)) != len(uids):
        raise ValueError("source images repeat a SOP Instance UID")
    if len({str(ds.StudyInstanceUID) for ds in source_images}) != 1:
        raise ValueError("source images come from more than one study")


def _slice_spacing(source_images: Sequence[Dataset]) -> float | None:
    """Distance between the first two slice centres along the normal (None for a single slice)."""
    if len(source_images) < 2:
        return None
    orientation = np.asarray(source_images[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    first = np.asarray(source_images[0].ImagePositionPatient, dtype=float)
    second = np.asarray(source_images[1].ImagePositionPatient, dtype=float)
    spacing = abs(float(np.dot(second - first, normal)))
    return spacing if spacing > 0 else None


def completed_headers(source_images: Sequence[Dataset]) -> list[Dataset]:
    """The sources, with empty Type 2 and a derived SliceThickness where absent (copies only then)."""
    spacing = _slice_spacing(source_images)
    out: list[Dataset] = []
    for ds in source_images:
        absent = [kw for kw in _TYPE2 if kw not in ds]
        no_thickness = ds.get("SliceThickness") in (None, "")
        if not absent and not no_thickness:
            out.append(ds)
            continue
        # A new Dataset with its own element dict; add_new replaces entries, so the caller's elements
        # (shared until replaced) are never modified.
        header = Dataset()
        header.update(ds)
        for kw in absent:
            header.add_new(Tag(kw), _TYPE2[kw], "")
        if no_thickness:
            if spacing is None:
                raise ValueError("SliceThickness is missing and cannot be derived from a single slice")
            header.add_new(Tag("SliceThickness"), "DS", f"{spacing:.6g}")
        out.append(header)
    return out


def build_segmentation(
    source_images: Sequence[Dataset],
    mask: np.ndarray,
    *,
    model_version: str,
    series_description: str = "ICH ensemble hemorrhage mask",
    allow_empty: bool = False,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation | None:
    """Build a BINARY DICOM SEG with one "Hemorrhage" segment over the source CT series.

    Args:
        source_images: headers of the series' single-frame CT images, sorted like the volume
            (``mask[i]`` covers ``source_images[i]``); pixel data may be absent. See the module docstring
            for the attributes highdicom needs.
        mask: ``[N, H, W]`` bool lesion mask at the source matrix (``resize_mask_to_source``).
        model_version: the ensemble's version (``model_repository/VERSION``): AlgorithmVersion and one of
            the SoftwareVersions, so a finding can be traced to the weights that made it.
        series_description: SeriesDescription shown in the PACS series list.
        allow_empty: encode an all-empty mask (every frame) instead of returning None.
        series_instance_uid: the SEG's series UID (default: a new one); a job's SEG takes one derived from
            the job (``ich.dicom_uids.derived_uid``), so that sending it twice does not add a series.
        sop_instance_uid: the SEG's instance UID (default: a new one).

    Returns:
        The SEG dataset (write it with ``seg.save_as(path)`` or ``dcmwrite``), or None when the mask is
        empty and ``allow_empty`` is False.

    Raises:
        ValueError: a mask that is not ``[N, H, W]`` binary, or source images that do not match it or lack
            the attributes listed in the module docstring.
    """
    arr = _binary_mask(mask)
    _check_sources(source_images, arr.shape, model_version)
    if not arr.any() and not allow_empty:
        return None
    seg = hd.seg.Segmentation(
        source_images=completed_headers(source_images),
        pixel_array=arr,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_hemorrhage_segment(model_version)],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_DISTRIBUTION,
        # SoftwareVersions is multi-valued: pydicom takes a list (a tuple is refused for LO), while
        # highdicom annotates the argument as str or a 1-tuple.
        software_versions=[software_version(), model_version],  # type: ignore[arg-type]
        device_serial_number=_DEVICE_SERIAL_NUMBER,
        content_label="HEMORRHAGE",
        content_qualification="RESEARCH",  # research software, not a product: not for clinical use
        content_description="Intracranial hemorrhage, weighted U-Net ensemble",
        # An empty mask only gets here with allow_empty; say so rather than let highdicom warn and revert.
        omit_empty_frames=bool(arr.any()),
    )
    seg.SeriesDescription = series_description
    return seg


def _binary_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` as ``[N, H, W]`` bool; integer 0/1 is accepted, anything else refused."""
    arr = np.asarray(mask)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"mask must be [N, H, W], got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"mask must be bool (or integer 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def _hemorrhage_segment(model_version: str) -> hd.seg.SegmentDescription:
    """Segment 1, "Hemorrhage" in the brain, found automatically by the ensemble of ``model_version``."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.ENSEMBLE_MODEL,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
        source=_MANUFACTURER,
        parameters={"mask_threshold": f"{spec.MASK_THRESHOLD:g}", "resize": "bilinear map, then threshold"},
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=HEMORRHAGE_CATEGORY,
        segmented_property_type=HEMORRHAGE_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[BRAIN_REGION],
        display_color=hd.color.CIELabColor.from_rgb(255, 0, 0),
    )
