"""Train/serve identity: a CT-ICH slice gives the very same model input whether it reaches
``ich.preprocess.preprocess_volume`` through the training reader or as a DICOM study through the gateway's
intake.

Training path: ``training.data.ct_ich.read_patient`` (HU recovered from the two JPEG windows) ->
``preprocess_volume``. Serving path: the same HU written as a CT DICOM series (``ich_devtools.dicom_writer``,
as a scanner stores them: integers with a rescale), zipped, read back by ``ich.intake.read_study``
(header-first series choice, sort along the normal, pixel decoding, RescaleSlope/Intercept) ->
``preprocess_volume``. The tensors must be equal element for element (``np.array_equal``), not merely close: a
model must never see a different number for the same pixel because of the road the pixel took.

Fixtures: ``tests/fixtures/ct_ich`` (CT-ICH excerpt, CC BY 4.0; attribution in its NOTICE.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from ich.intake import read_study
from ich.preprocess import preprocess_volume
from ich.spec import DEFAULT_INPUT_SIZE
from ich_devtools.dicom_writer import series_zip

ct_ich = pytest.importorskip("training.data.ct_ich")

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"


@pytest.fixture(scope="module", params=["049", "081"])
def patient(request: pytest.FixtureRequest):  # -> ct_ich.Patient
    labels = ct_ich.read_labels(FIXTURE / "hemorrhage_diagnosis.csv")
    return ct_ich.read_patient(FIXTURE, request.param, labels.get(request.param))


def _served_hu(hu: np.ndarray, spacing_mm: float, **options: Any) -> np.ndarray:
    data = series_zip(
        hu,
        pixel_spacing_mm=(spacing_mm, spacing_mm),
        slice_thickness_mm=ct_ich.SLICE_THICKNESS_MM,
        shuffle=True,
        **options,
    )
    study = read_study(data)
    assert study.skipped == [] and study.passed_over == [] and study.warnings == []
    assert study.volume.pixel_spacing_mm == pytest.approx((spacing_mm, spacing_mm))
    assert study.volume.slice_thickness_mm == pytest.approx(ct_ich.SLICE_THICKNESS_MM)
    return study.volume.hu


@pytest.mark.parametrize("size", [128, DEFAULT_INPUT_SIZE])
def test_training_reader_and_dicom_intake_give_identical_tensors(patient, size: int) -> None:
    hu = patient.hu
    served = _served_hu(hu, patient.pixel_spacing_mm)
    np.testing.assert_array_equal(served, hu)

    trained_input = preprocess_volume(hu, size)
    served_input = preprocess_volume(served, size)

    assert trained_input.shape == (hu.shape[0], 4, size, size)
    assert np.array_equal(trained_input, served_input)
    # not vacuous: every channel carries signal, and one HU more on one pixel changes the input
    assert all(float(trained_input[:, c].std()) > 0.01 for c in range(4))
    nudged = served.copy()
    nudged[0, hu.shape[1] // 2, hu.shape[2] // 2] += 1.0
    assert not np.array_equal(preprocess_volume(nudged, size), trained_input)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_identity_holds_through_compressed_transfer_syntaxes(patient, syntax: str) -> None:
    if syntax == JPEGLSLossless:
        pytest.importorskip("jpeg_ls")
    hu = patient.hu[:1]
    served = _served_hu(hu, patient.pixel_spacing_mm, transfer_syntax=syntax, signed=True)
    assert np.array_equal(preprocess_volume(served, 128), preprocess_volume(hu, 128))


def test_the_reader_gives_integer_hu_the_dicom_storage_keeps(patient) -> None:
    hu = patient.hu
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, np.rint(hu))  # a scanner stores integers; fractions would be lost
    served = _served_hu(hu, patient.pixel_spacing_mm, transfer_syntax=ExplicitVRLittleEndian, signed=True)
    np.testing.assert_array_equal(served, hu)
