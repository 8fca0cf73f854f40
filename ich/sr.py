"""The case finding as a DICOM Structured Report: a TID 1500 Measurement Report built with highdicom.

What a PACS viewer lists beside the CT, in words and numbers, for a reader who never sees the JSON:

- one measurement group (TID 1501, or TID 1411 when a SEG exists, whose "Hemorrhage" segment it then
  references), finding "Hemorrhage" in the brain, with the algorithm (TID 4019: the ensemble and the
  weights' version);
- measurements: the hemorrhage volume in mL (the JSON's ``hemorrhage_volume_ml``, the SEG's voxels), the
  calibrated case probability and the threshold in use, the base models' disagreement (``uncertainty``) and
  the probability of each subtype the model measures (unit "no units", codes of this project's private
  scheme ``99ICH``, since no standard code names an AI's probability of hemorrhage); a subtype it does not
  measure is left out;
- qualitative evaluations: hemorrhage present or absent (``ich_detected``) and whether the case is
  indeterminate (SNOMED Yes/No);
- the TID 1500 "Qualitative Evaluations" container with the text that this is research software, not for
  clinical use; the same words are in the series description.

The SR is a Comprehensive 3D SR in the source study (the patient and study attributes are copied from the CT
headers; empty Type 2 ones are filled as ``ich.seg`` does), in its own series, with the UIDs the caller
gives (derived from the job, ``ich.dicom_uids``). It is marked partial, unverified and not final: no person
has signed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ich import spec
from ich.seg import completed_headers, software_version

__all__ = [
    "INDETERMINATE",
    "NOT_FOR_CLINICAL_USE_TEXT",
    "PROBABILITY",
    "SUBTYPE_PROBABILITY",
    "THRESHOLD",
    "UNCERTAINTY",
    "ReportValues",
    "build_measurement_report",
]

_SCHEME = "99ICH"
#: Calibrated case probability of intracranial hemorrhage (private code).
PROBABILITY = hd.sr.CodedConcept("ICH-P", _SCHEME, "Probability of intracranial hemorrhage")
#: The case probability at or above which hemorrhage is called (private code).
THRESHOLD = hd.sr.CodedConcept("ICH-T", _SCHEME, "Decision threshold of the probability")
#: Whether the probability lies in the band a person should look at first (private code).
INDETERMINATE = hd.sr.CodedConcept("ICH-I", _SCHEME, "Indeterminate (probability in the review band)")
#: The five base models' disagreement on the lesion that decided the case (private code).
UNCERTAINTY = hd.sr.CodedConcept("ICH-U", _SCHEME, "Disagreement of the ensemble's base models")
#: Probability of each hemorrhage subtype (private codes; ``ich.subtypes.SUBTYPES`` keys).
SUBTYPE_PROBABILITY: dict[str, hd.sr.CodedConcept] = {
    name: hd.sr.CodedConcept(f"ICH-{code}", _SCHEME, f"Probability of {name} hemorrhage")
    for name, code in (
        ("epidural", "EDH"),
        ("subdural", "SDH"),
        ("subarachnoid", "SAH"),
        ("intraparenchymal", "IPH"),
        ("intraventricular", "IVH"),
    )
}
MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
HEMORRHAGE = hd.sr.CodedConcept(codes.SCT.Hemorrhage.value, "SCT", "Hemorrhage")
#: TID 1500 row 12: the document-level "Qualitative Evaluations" container.
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: SCT 303653007 "Computed tomography of head".
CT_OF_HEAD = hd.sr.CodedConcept("303653007", "SCT", "Computed tomography of head")
NOT_FOR_CLINICAL_USE_TEXT = (
    "NOT FOR CLINICAL USE. Research software (ICH ensemble), not a medical device; not for diagnosis or "
    "treatment decisions."
)
#: The private coding scheme's declaration (PS3.3 C.12.1.1.4: schemes beginning with "99" are private).
CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=_SCHEME, name="ICH ensemble codes", responsible_organization="ich-ensemble project"
)
#: The software as the SR's observer device; one UID for every report the software writes.
_DEVICE_UID = "2.25.164139420347128866101853437563386421573"


@dataclass(frozen=True)
class ReportValues:
    """The figures of a case result that the SR carries (take them from the JSON result, so both agree)."""

    ich_probability: float
    ich_detected: bool
    indeterminate: bool
    threshold: float
    hemorrhage_volume_ml: float
    #: the case's subtype probabilities (``None`` values: not measured; ``None``: no subtype model)
    subtypes: Mapping[str, float | None] | None = None
    uncertainty: float | None = None

    def __post_init__(self) -> None:
        for name in ("ich_probability", "threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        for name, value in (self.subtypes or {}).items():
            if name not in SUBTYPE_PROBABILITY:
                raise ValueError(f"unknown subtype {name!r}; expected one of {sorted(SUBTYPE_PROBABILITY)}")
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"the {name} probability must lie in [0, 1], got {value!r}")
        if self.uncertainty is not None and not 0.0 <= self.uncertainty <= 1.0:
            raise ValueError(f"uncertainty must lie in [0, 1], got {self.uncertainty!r}")
        if not self.hemorrhage_volume_ml >= 0.0:
            raise ValueError(f"hemorrhage_volume_ml must be >= 0, got {self.hemorrhage_volume_ml!r}")


def _measurements(values: ReportValues, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """Volume (mL), probability, threshold, then the uncertainty and subtype probabilities that exist."""

    def measured(name: hd.sr.CodedConcept, value: float, unit: hd.sr.CodedConcept) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)

    measurements = [
        measured(codes.SCT.Volume, values.hemorrhage_volume_ml, MILLILITER),
        measured(PROBABILITY, values.ich_probability, codes.UCUM.NoUnits),
        measured(THRESHOLD, values.threshold, codes.UCUM.NoUnits),
    ]
    if values.uncertainty is not None:
        measurements.append(measured(UNCERTAINTY, values.uncertainty, codes.UCUM.NoUnits))
    # a subtype the model does not measure is left out rather than written as a number nobody measured
    for name, concept in SUBTYPE_PROBABILITY.items():
        value = (values.subtypes or {}).get(name)
        if value is not None:
            measurements.append(measured(concept, value, codes.UCUM.NoUnits))
    return measurements


def _evaluations(values: ReportValues) -> list[hd.sr.QualitativeEvaluation]:
    """Hemorrhage present or absent, and whether the case is indeterminate."""
    return [
        hd.sr.QualitativeEvaluation(
            name=HEMORRHAGE, value=codes.SCT.Present if values.ich_detected else codes.SCT.Absent
        ),
        hd.sr.QualitativeEvaluation(
            name=INDETERMINATE, value=codes.SCT.Yes if values.indeterminate else codes.SCT.No
        ),
    ]


#: TID 1501 (no SEG) or TID 1411 (a SEG's segment).
_Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def _measurement_group(
    values: ReportValues,
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_uid: str,
    segmentation: Dataset | None,
    source_series_uid: str,
) -> _Group:
    """TID 1501, or TID 1411 referencing the SEG's segment 1 when there is a SEG."""
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier="ICH ensemble: intracranial hemorrhage"
        ),
        "finding_type": HEMORRHAGE,
        "finding_sites": [hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
        "algorithm_id": algorithm,
        "measurements": _measurements(values, algorithm),
        "qualitative_evaluations": _evaluations(values),
    }
    if segmentation is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)  # type: ignore[arg-type]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        # Named explicitly: highdicom's from_segmentation expects the segment in every frame's
        # functional groups, where a one-segment SEG keeps it in the shared ones.
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(segmentation.SOPClassUID),
            sop_instance_uid=str(segmentation.SOPInstanceUID),
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        **common,  # type: ignore[arg-type]
    )


def _observation_context(manufacturer: str, model_version: str) -> hd.sr.ObservationContext:
    """The software as the observing device."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_DEVICE_UID, name="ICH ensemble", manufacturer_name=manufacturer, model_name=model_version
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _not_for_clinical_use_remark() -> hd.sr.ContainerContentItem:
    """The document-level "Qualitative Evaluations" container holding the research-software text."""
    remark = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    remark.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=NOT_FOR_CLINICAL_USE_TEXT, relationship_type="CONTAINS"
            )
        ]
    )
    return remark


def _check_sources(source_images: Sequence[Dataset], model_version: str) -> None:
    if not source_images:
        raise ValueError("source_images is empty")
    if len({str(ds.StudyInstanceUID) for ds in source_images}) != 1:
        raise ValueError("source images come from more than one study")
    if not model_version:
        raise ValueError("model_version must be a non-empty string")


def build_measurement_report(
    source_images: Sequence[Dataset],
    values: ReportValues,
    *,
    model_version: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    tracking_uid: str,
    segmentation: Dataset | None = None,
    series_number: int = 9902,
    manufacturer: str = "ich-ensemble project",
) -> hd.sr.Comprehensive3DSR:
    """Build the case's TID 1500 Measurement Report.

    Args:
        source_images: headers of the analysed CT slices (pixel data may be absent), all of one study.
        values: the case's figures, as in the JSON result.
        model_version: the weights' version (``model_repository/VERSION``), recorded as the algorithm's.
        series_instance_uid: the SR's series UID.
        sop_instance_uid: the SR's instance UID.
        tracking_uid: the finding's tracking UID.
        segmentation: the case's SEG, when there is one: the group then references its segment 1.
        series_number: SeriesNumber of the SR series (after the SEG's).
        manufacturer: Manufacturer of the SR.

    Raises:
        ValueError: no source images, images of several studies, or an empty model version.
    """
    _check_sources(source_images, model_version)
    algorithm = hd.sr.AlgorithmIdentification(name=spec.ENSEMBLE_MODEL, version=model_version)
    group = _measurement_group(
        values, algorithm, tracking_uid, segmentation, str(source_images[0].SeriesInstanceUID)
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(manufacturer, model_version),
        procedure_reported=CT_OF_HEAD,
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_not_for_clinical_use_remark())
    evidence: list[Dataset] = completed_headers(source_images)
    if segmentation is not None:
        evidence.append(segmentation)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=False,
        is_final=False,
        is_verified=False,
        software_versions=[software_version(), model_version],
        series_description="ICH ensemble report - NOT FOR CLINICAL USE",
        content_qualification="RESEARCH",
        coding_schemes=[CODING_SCHEME],
    )
