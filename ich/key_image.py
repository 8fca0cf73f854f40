"""The key image: the most certain lesion slice as a DICOM Secondary Capture, outline and text burned in.

A viewer that cannot draw a SEG (many PACS viewers still cannot) shows this picture beside the CT: the slice
in the brain window with the lesion outlined in red and tinted (``ich.overlay.overlay_rgb``, the previews'
picture), and, burned into the pixels (``ich.burn_in``), "NOT FOR CLINICAL USE", the slice number, its
probability, the case's probability and volume, and the R/L marker. Burned-in text is declared
(BurnedInAnnotation YES), and the image references the CT slice it was made from (SourceImageSequence).

Built with highdicom's ``SCImage.from_ref_dataset``: patient and study attributes come from the CT slice, so
the key image lands in the source study, in its own series, with the UIDs the caller gives (derived from the
job). The pixel geometry is the slice's (same matrix, same pixel spacing), so it stays measurable.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ich.burn_in import NOT_FOR_CLINICAL_USE, burn_in, left_edge_marker
from ich.overlay import overlay_rgb
from ich.seg import completed_headers, software_version

__all__ = ["build_key_image", "key_image_lines", "patient_orientation"]

#: Patient directions of the LPS axes, positive then negative (PS3.3 C.7.6.1.1.1).
_DIRECTIONS = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(image_orientation: Sequence[float]) -> tuple[str, str]:
    """PatientOrientation (row direction, column direction) from ImageOrientationPatient.

    Each direction is named by its main axis (an axial slice gives ``("L", "P")``), as the Secondary
    Capture's patient coordinate system asks.

    Raises:
        ValueError: not six finite direction cosines.
    """
    values = np.asarray([float(v) for v in image_orientation], dtype=float)
    if values.shape != (6,) or not np.isfinite(values).all():
        raise ValueError("ImageOrientationPatient must be six finite numbers")
    letters = []
    for vector in (values[:3], values[3:]):
        axis = int(np.argmax(np.abs(vector)))
        positive, negative = _DIRECTIONS[axis]
        letters.append(positive if vector[axis] > 0 else negative)
    return letters[0], letters[1]


def key_image_lines(
    index: int, count: int, slice_probability: float, case_probability: float, volume_ml: float
) -> list[str]:
    """The text burned into a key image: the warning, the slice, its probability, the case's figures."""
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")
    return [
        NOT_FOR_CLINICAL_USE,
        f"slice {index + 1}/{count}  p={slice_probability:.2f}",
        f"case p={case_probability:.2f}  {volume_ml:.1f} mL",
    ]


def build_key_image(
    source: Dataset,
    hu_slice: np.ndarray,
    mask_slice: np.ndarray,
    lines: Sequence[str],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    model_version: str,
    series_number: int = 9903,
    manufacturer: str = "ich-ensemble project",
) -> hd.sc.SCImage:
    """Build the Secondary Capture of one CT slice with its lesion outline and text burned in.

    Args:
        source: the CT slice's header (pixel data may be absent); it needs SOP Class and Instance UIDs,
            Study Instance UID, ImageOrientationPatient and PixelSpacing.
        hu_slice: ``[H, W]`` Hounsfield units of that slice.
        mask_slice: ``[H, W]`` bool lesion mask at the same matrix.
        lines: text burned in at the top left (:func:`key_image_lines`).
        series_instance_uid: the key image's series UID.
        sop_instance_uid: its instance UID.
        model_version: the weights' version, in SoftwareVersions.
        series_number: SeriesNumber of the key image series (after the SEG's and the SR's).
        manufacturer: Manufacturer of the image.

    Raises:
        ValueError: shapes that do not match the header's matrix, or a header without what is needed.
    """
    hu = _checked_slice(source, hu_slice)
    orientation = [float(v) for v in source.ImageOrientationPatient]
    picture = burn_in(overlay_rgb(hu, mask_slice), lines, right_marker=left_edge_marker(orientation))
    spacing = tuple(float(v) for v in source.PixelSpacing)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=completed_headers([source])[0],
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        pixel_spacing=(spacing[0], spacing[1]),  # type: ignore[arg-type]
        patient_orientation=patient_orientation(orientation),
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # explicit VR little endian: what every viewer reads
        series_description="ICH ensemble key image - NOT FOR CLINICAL USE",
        software_versions=[software_version(), model_version],
    )
    _declare_derivation(image, source)
    return image


#: What a key image needs of its source slice's header.
_SOURCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "ImageOrientationPatient",
    "PixelSpacing",
)


def _checked_slice(source: Dataset, hu_slice: np.ndarray) -> np.ndarray:
    """The slice's HU, checked against its header (the attributes needed, the matrix)."""
    missing = [kw for kw in _SOURCE_ATTRIBUTES if source.get(kw) in (None, "")]
    if missing:
        raise ValueError(f"the source slice lacks attributes a key image needs: {missing}")
    hu = np.asarray(hu_slice)
    if hu.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(
            f"hu_slice is {hu.shape} but the source slice is {int(source.Rows)}x{int(source.Columns)}"
        )
    return hu


def _declare_derivation(image: hd.sc.SCImage, source: Dataset) -> None:
    """Burned-in text declared, the source slice referenced, how the picture was made said."""
    image.BurnedInAnnotation = "YES"
    image.ImageComments = "NOT FOR CLINICAL USE: research software, most certain hemorrhage slice outlined"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = DicomSequence([reference])
    image.DerivationDescription = "CT slice in the brain window, lesion mask outlined, text burned in"
