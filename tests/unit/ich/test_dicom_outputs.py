"""A job's DICOM results (``ich.dicom_outputs``): SEG, TID 1500 SR and key image, with derived UIDs.

Built on a synthetic CT series from ``ich_devtools.dicom_writer`` and read back with pydicom and highdicom:
all three in the source study, each in its own series with UIDs derived from the job (the same job gives the
same UIDs, another job others), the SR's figures as given, referencing the SEG; the key image is the slice's
matrix with the outline and the warning burned in; a negative case has an SR and nothing else.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from ich.burn_in import NOT_FOR_CLINICAL_USE
from ich.dicom_outputs import build_dicom_outputs
from ich.dicom_uids import derived_uid, is_valid_uid, uid_digest
from ich.key_image import patient_orientation
from ich.overlay import OUTLINE_RGB, overlay_rgb
from ich.sr import INDETERMINATE, NOT_FOR_CLINICAL_USE_TEXT, PROBABILITY, ReportValues
from ich_devtools.dicom_writer import series_datasets
from tests.support.dicom_results import sr_numbers, sr_texts

N, SIZE = 6, 96


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    return series_datasets(hu, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=5.0, series_number=2)


def lesion_mask() -> np.ndarray:
    mask = np.zeros((N, SIZE, SIZE), bool)
    mask[2:4, 40:60, 50:70] = True
    return mask


SLICE_PROB = np.array([0.05, 0.1, 0.93, 0.8, 0.1, 0.05])
POSITIVE = ReportValues(
    ich_probability=0.912345,
    ich_detected=True,
    indeterminate=False,
    threshold=0.42,
    hemorrhage_volume_ml=1.234,
)


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_uids_are_checked_and_derived() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.2") and is_valid_uid("2.25.0")
    for bad in ("", "1", "1..2", "1.02", "1.2.", "../1.2", "1.2 3", "1." + "2" * 64, None, 1.2):
        assert not is_valid_uid(bad), bad
    one = derived_uid("job-1", "seg/series")
    assert one == derived_uid("job-1", "seg/series") and is_valid_uid(one) and one.startswith("2.25.")
    assert len({one, derived_uid("job-1", "seg/instance"), derived_uid("job-2", "seg/series")}) == 3
    assert len(uid_digest(one)) == 64 and uid_digest(one) != uid_digest(derived_uid("job-2", "seg/series"))
    with pytest.raises(ValueError):
        uid_digest("../../etc/passwd")


def test_a_positive_case_gets_seg_sr_and_key_image_in_the_source_study(series: list[pydicom.Dataset]) -> None:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    outputs = build_dicom_outputs(
        series, hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="job-a", model_version="v-test"
    )
    assert outputs.notes == ()
    encoded = outputs.encoded()
    assert set(encoded) == {"seg", "sr", "key-images"}
    seg, sr, key = (read(encoded[kind]) for kind in ("seg", "sr", "key-images"))
    study = str(series[0].StudyInstanceUID)
    for ds, kind in ((seg, "seg"), (sr, "sr"), (key, "key-image")):
        assert ds.StudyInstanceUID == study and ds.PatientID == series[0].PatientID
        assert ds.SeriesInstanceUID == derived_uid("job-a", f"{kind}/series") != series[0].SeriesInstanceUID
        assert ds.SOPInstanceUID == derived_uid("job-a", f"{kind}/instance")
        assert "NOT FOR CLINICAL USE" in ds.SeriesDescription
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, key.SeriesInstanceUID}) == 3

    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID

    report = hd.sr.srread(io.BytesIO(encoded["sr"]))
    assert (
        report.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
        and report.ContentQualification == "RESEARCH"
    )
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    numbers = sr_numbers(sr)
    assert numbers[codes.SCT.Volume.meaning] == pytest.approx(1.234, abs=1e-9)
    assert numbers[PROBABILITY.meaning] == pytest.approx(0.912345, abs=1e-9)
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations == {"Hemorrhage": "Present", INDETERMINATE.meaning: "No"}
    assert NOT_FOR_CLINICAL_USE_TEXT in sr_texts(sr)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {s.SeriesInstanceUID for s in evidence} == {series[0].SeriesInstanceUID, seg.SeriesInstanceUID}

    assert key.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and key.BurnedInAnnotation == "YES"
    assert key.SourceImageSequence[0].ReferencedSOPInstanceUID == series[2].SOPInstanceUID  # p = 0.93
    pixels = key.pixel_array
    assert pixels.shape == (SIZE, SIZE, 3) and key.PixelSpacing == series[2].PixelSpacing
    assert (pixels == OUTLINE_RGB).all(axis=2).any()  # the outline
    plain = overlay_rgb(hu[2], lesion_mask()[2])
    assert (pixels[: SIZE // 4] != plain[: SIZE // 4]).any()  # the burned-in text at the top
    assert NOT_FOR_CLINICAL_USE in key.ImageComments.upper()


def test_the_same_job_gives_the_same_objects_and_another_job_others(series: list[pydicom.Dataset]) -> None:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    first = build_dicom_outputs(
        series, hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="j", model_version="v"
    )
    again = build_dicom_outputs(
        series, hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="j", model_version="v"
    )
    other = build_dicom_outputs(
        series, hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="k", model_version="v"
    )
    for a, b, c in ((first.seg, again.seg, other.seg), (first.sr, again.sr, other.sr)):
        assert a is not None and b is not None and c is not None
        assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID


def test_a_negative_case_gets_an_sr_only(series: list[pydicom.Dataset]) -> None:
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    values = ReportValues(
        ich_probability=0.1, ich_detected=False, indeterminate=False, threshold=0.42, hemorrhage_volume_ml=0.0
    )
    outputs = build_dicom_outputs(
        series, hu, np.zeros((N, SIZE, SIZE), bool), SLICE_PROB, values, job_id="neg", model_version="v"
    )
    assert set(outputs.encoded()) == {"sr"} and outputs.notes == ()
    sr = read(outputs.encoded()["sr"])
    assert sr_numbers(sr)[codes.SCT.Volume.meaning] == 0.0
    report = hd.sr.srread(io.BytesIO(outputs.encoded()["sr"]))
    assert report.content.get_volumetric_roi_measurement_groups() == []


def test_a_series_that_cannot_carry_a_seg_still_gets_its_sr(series: list[pydicom.Dataset]) -> None:
    stripped = []
    for ds in series:
        copy = pydicom.Dataset()
        copy.update(ds)
        copy.file_meta = ds.file_meta
        del copy.FrameOfReferenceUID
        stripped.append(copy)
    hu = np.full((N, SIZE, SIZE), 30.0, np.float32)
    outputs = build_dicom_outputs(
        stripped, hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="x", model_version="v"
    )
    assert outputs.seg is None and outputs.sr is not None and outputs.key_image is not None
    assert any("no DICOM SEG" in note and "FrameOfReferenceUID" in note for note in outputs.notes)
    lost = build_dicom_outputs((), hu, lesion_mask(), SLICE_PROB, POSITIVE, job_id="x", model_version="v")
    assert lost.encoded() == {} and "unique SOP Instance UIDs" in lost.notes[0]


def test_patient_orientation_names_the_main_axes() -> None:
    assert patient_orientation([1, 0, 0, 0, 1, 0]) == ("L", "P")
    assert patient_orientation([-1, 0, 0, 0, -0.9, 0.1]) == ("R", "A")
    assert patient_orientation([0, 1, 0, 0, 0, -1]) == ("P", "F")
    with pytest.raises(ValueError):
        patient_orientation([1, 0, 0])


def test_report_values_are_checked() -> None:
    with pytest.raises(ValueError, match="ich_probability"):
        ReportValues(
            ich_probability=1.5, ich_detected=True, indeterminate=False, threshold=0.5, hemorrhage_volume_ml=1
        )
    with pytest.raises(ValueError, match="hemorrhage_volume_ml"):
        ReportValues(
            ich_probability=0.5,
            ich_detected=True,
            indeterminate=False,
            threshold=0.5,
            hemorrhage_volume_ml=-1,
        )
