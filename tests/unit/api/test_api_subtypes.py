"""``subtypes`` and ``uncertainty`` through the whole app (fake engine), the job's SR, the client's models.

The fake engine's base maps are the fused map times 1.0, 0.9, 0.8, 0.7 and 0.6
(``tests.support.fake_engine``), so the spread of the five on any lesion is its peak times the spread of
those factors: the known answer of the uncertainty. The repository's case model gives every lesion
probability 0.5 (all coefficients 0) and its subtype model a conditional epidural probability of 0.8
(intercept only), with identity calibrations: the blob's epidural probability is 0.5 x 0.8 = 0.4, a slice
without a lesion gets the floor 0.001, and the four other subtypes are not measured (null).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ich_client import CaseResult as ClientResult

from api.app import create_app
from api.schemas import CaseResult
from api.settings import Settings
from api.study_queue import report_values
from ich.calibration import PlattCalibration
from ich.scoring import CASE_MODEL_FILENAME, FEATURES, CaseModel
from ich.sr import SUBTYPE_PROBABILITY, UNCERTAINTY, build_measurement_report
from ich.subtypes import SUBTYPE_FEATURES, SUBTYPES, SubtypeFit, SubtypeModel
from ich_devtools.dicom_writer import series_datasets
from tests.support.dicom_results import sr_numbers
from tests.support.dicom_study import blob_volume, study_zip
from tests.support.fake_engine import MEMBER_FACTORS, SCALE, FakeEngine

ZIP = {"content-type": "application/zip"}
FACTORS = np.array(list(MEMBER_FACTORS.values()))
IDENTITY = PlattCalibration(1.0, 0.0)


def _case_model(subtypes: SubtypeModel | None) -> CaseModel:
    n = len(FEATURES)
    return CaseModel(
        mean=(0.0,) * n, scale=(1.0,) * n, coef=(0.0,) * n, intercept=0.0, keep=0.4,
        calibration=IDENTITY, threshold=0.3, band=(0.2, 0.45), subtypes=subtypes,
    )  # fmt: skip


def _epidural_only() -> SubtypeModel:
    n = len(SUBTYPE_FEATURES)
    fit = SubtypeFit(
        mean=(0.0,) * n, scale=(1.0,) * n, coef=(0.0,) * n, intercept=math.log(0.8 / 0.2),
        case_calibration=IDENTITY, slice_calibration=IDENTITY,
    )  # fmt: skip
    reason = "not measured: 2 positive cases (fewer than 6)"
    return SubtypeModel(fits={"epidural": fit}, not_measured={s: reason for s in SUBTYPES if s != "epidural"})


def _repository(model: CaseModel | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="subtypes-repo-"))
    if model is not None:
        model.save(root / CASE_MODEL_FILENAME)
    return root


def _post(repo: Path, hu: np.ndarray) -> dict:
    with TestClient(create_app(Settings(model_repository=repo), engine=FakeEngine(input_size=32))) as client:
        response = client.post("/v1/cases", content=study_zip(hu)[0], headers=ZIP)
    assert response.status_code == 200, response.text
    return response.json()


def test_without_a_subtype_model_subtypes_are_null_and_the_uncertainty_is_the_spread() -> None:
    body = _post(_repository(None), blob_volume())
    assert body["subtypes"] is None and all(s["subtypes"] is None for s in body["slices"])
    assert body["uncertainty"] == pytest.approx(SCALE * FACTORS.std(), abs=1e-5)
    # a negative study: the spread of the five on its top slice (30 HU -> fused 0.2375 everywhere)
    quiet = _post(_repository(None), blob_volume(blob_slice=None))
    assert quiet["uncertainty"] == pytest.approx(SCALE * 0.25 * FACTORS.std(), abs=1e-5)
    assert quiet["uncertainty"] < body["uncertainty"]


def test_a_case_model_without_subtypes_gives_null_subtypes_and_the_same_decision() -> None:
    plain = _post(_repository(_case_model(None)), blob_volume())
    with_subtypes = _post(_repository(_case_model(_epidural_only())), blob_volume())
    assert plain["subtypes"] is None
    for key in ("ich_probability", "ich_detected", "threshold", "indeterminate", "hemorrhage_volume_ml",
                "uncertainty"):  # fmt: skip
        assert plain[key] == with_subtypes[key]
    assert plain["ich_probability"] == pytest.approx(0.5)


def test_subtypes_in_the_case_and_in_each_slice() -> None:
    body = _post(_repository(_case_model(_epidural_only())), blob_volume())
    assert set(body["subtypes"]) == set(SUBTYPES)
    assert body["subtypes"]["epidural"] == pytest.approx(0.4, abs=1e-5)
    assert all(body["subtypes"][s] is None for s in SUBTYPES if s != "epidural")
    per_slice = [s["subtypes"]["epidural"] for s in body["slices"]]
    assert per_slice == pytest.approx([0.001, 0.001, 0.4, 0.001], abs=1e-5)
    assert all(s["subtypes"]["subdural"] is None for s in body["slices"])
    # the client's models read the same fields
    result = ClientResult.model_validate(body)
    assert result.subtypes is not None and result.subtypes.epidural == pytest.approx(0.4, abs=1e-5)
    assert result.subtypes.subdural is None and result.slices[2].subtypes is not None
    assert result.uncertainty == body["uncertainty"]


def test_the_sr_carries_the_measured_subtypes_and_the_uncertainty() -> None:
    body = _post(_repository(_case_model(_epidural_only())), blob_volume())
    values = report_values(CaseResult.model_validate(body))
    assert values.subtypes is not None and values.uncertainty == body["uncertainty"]
    series = series_datasets(
        blob_volume(), pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=5.0, series_number=2
    )
    sr = build_measurement_report(
        series, values, model_version="v-test", series_instance_uid="2.25.1", sop_instance_uid="2.25.2",
        tracking_uid="2.25.3",
    )  # fmt: skip
    numbers = sr_numbers(sr)
    assert numbers[SUBTYPE_PROBABILITY["epidural"].meaning] == pytest.approx(0.4, abs=1e-5)
    assert numbers[UNCERTAINTY.meaning] == pytest.approx(body["uncertainty"])
    # a subtype the model does not measure is not written as a number
    assert not any(SUBTYPE_PROBABILITY[s].meaning in numbers for s in SUBTYPES if s != "epidural")


def test_a_malformed_subtype_part_of_case_model_json_is_refused() -> None:
    d = _case_model(_epidural_only()).to_dict()
    d["subtypes"]["features"] = ["volume"]
    with pytest.raises(ValueError, match="subtype model: features"):
        CaseModel.from_dict(d)
    d = _case_model(_epidural_only()).to_dict()
    del d["subtypes"]["not_measured"]["subdural"]
    with pytest.raises(ValueError, match="every subtype"):
        CaseModel.from_dict(d)
