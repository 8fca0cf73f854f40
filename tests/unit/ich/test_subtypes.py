"""``ich.subtypes``: the rule from lesions to case and slice probabilities, the JSON, and the shipped case
model without a subtype part."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ich.calibration import PlattCalibration
from ich.scoring import CASE_MODEL_FILENAME, NO_LESION_SCORE, CaseModel
from ich.subtypes import (
    NO_LESION_SCORE as SUBTYPE_FLOOR,
)
from ich.subtypes import (
    SUBTYPE_FEATURES,
    SUBTYPES,
    SubtypeFit,
    SubtypeModel,
    raw_scores,
)

ROOT = Path(__file__).resolve().parents[3]
F = len(SUBTYPE_FEATURES)


def _fit(
    coef: dict[str, float], intercept: float = 0.0, calibration: PlattCalibration | None = None
) -> SubtypeFit:
    cal = calibration or PlattCalibration(1.0, 0.0)
    return SubtypeFit(
        mean=(0.0,) * F,
        scale=(1.0,) * F,
        coef=tuple(coef.get(name, 0.0) for name in SUBTYPE_FEATURES),
        intercept=intercept,
        case_calibration=cal,
        slice_calibration=cal,
    )


def _model() -> SubtypeModel:
    """Subdural: logistic in bone contact; intraparenchymal: logistic in depth; the others not measured."""
    return SubtypeModel(
        fits={
            "subdural": _fit({"bone_contact_fraction": 4.0}, -2.0),
            "intraparenchymal": _fit({"depth_mm": 0.5}, -3.0),
        },
        not_measured={
            s: "not measured: 2 positive cases" for s in ("epidural", "subarachnoid", "intraventricular")
        },
    )


def _x(contact: float, depth: float) -> np.ndarray:
    row = np.zeros(F)
    row[SUBTYPE_FEATURES.index("bone_contact_fraction")] = contact
    row[SUBTYPE_FEATURES.index("depth_mm")] = depth
    return row


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_raw_scores_take_the_highest_joint_probability_per_case_and_slice() -> None:
    case, slices = raw_scores(np.array([0.2, 0.7, 0.4]), [(0, 1), (3, 3), (1, 2)], 5)
    assert case == 0.7
    assert slices.tolist() == [0.2, 0.4, 0.4, 0.7, NO_LESION_SCORE]
    assert raw_scores(np.zeros(0), [], 3) == (NO_LESION_SCORE, pytest.approx(np.full(3, NO_LESION_SCORE)))
    assert SUBTYPE_FLOOR == NO_LESION_SCORE


def test_a_crescent_like_candidate_is_subdural_and_a_deep_one_intraparenchymal() -> None:
    model = _model()
    x = np.stack([_x(0.9, 0.0), _x(0.0, 12.0)])
    scores = model.score(x, np.array([0.8, 0.5]), [(0, 0), (2, 3)], 4)
    sdh = 0.8 * _sigmoid(4.0 * 0.9 - 2.0)  # the crescent is the subdural's highest joint probability
    iph = 0.5 * _sigmoid(0.5 * 12.0 - 3.0)
    assert scores.case["subdural"] == pytest.approx(sdh)
    assert scores.case["intraparenchymal"] == pytest.approx(iph)
    deep_sdh = 0.5 * _sigmoid(-2.0)  # the deep candidate's subdural joint, on its slices 2-3
    assert [s["subdural"] for s in scores.slices] == pytest.approx([sdh, NO_LESION_SCORE, deep_sdh, deep_sdh])
    for name in ("epidural", "subarachnoid", "intraventricular"):
        assert scores.case[name] is None and all(s[name] is None for s in scores.slices)
    # a false focus (hemorrhage probability 0.01) cannot be a confident subdural, however it lies
    focus = model.score(_x(1.0, 0.0)[None], np.array([0.01]), [(0, 0)], 1)
    assert focus.case["subdural"] is not None and focus.case["subdural"] < 0.01


def test_the_calibrations_map_the_raw_scores() -> None:
    cal = PlattCalibration(2.0, 1.0)
    model = SubtypeModel(
        fits={"epidural": _fit({}, 0.0, cal)}, not_measured={s: "n" for s in SUBTYPES if s != "epidural"}
    )
    scores = model.score(_x(0.0, 0.0)[None], np.array([0.6]), [(1, 1)], 2)
    assert scores.case["epidural"] == pytest.approx(cal.apply(0.3))
    assert [s["epidural"] for s in scores.slices] == pytest.approx(
        [cal.apply(NO_LESION_SCORE), cal.apply(0.3)]
    )


def test_the_model_round_trips_and_names_every_subtype_once() -> None:
    model = _model()
    d = json.loads(json.dumps(model.to_dict()))
    assert list(d["fits"]) == ["subdural", "intraparenchymal"] and d["features"] == list(SUBTYPE_FEATURES)
    back = SubtypeModel.from_dict(d)
    x = np.stack([_x(0.5, 3.0)])
    assert back.score(x, np.array([0.9]), [(0, 0)], 1) == model.score(x, np.array([0.9]), [(0, 0)], 1)
    with pytest.raises(ValueError, match="every subtype"):
        SubtypeModel(fits={}, not_measured={"epidural": "n"})
    with pytest.raises(ValueError, match="scales positive"):
        SubtypeFit((0.0,) * F, (0.0,) * F, (0.0,) * F, 0.0, PlattCalibration(1, 0), PlattCalibration(1, 0))


def test_the_shipped_subtype_part_fits_what_the_record_measured_and_round_trips_unchanged() -> None:
    path = ROOT / "model_repository" / CASE_MODEL_FILENAME
    model = CaseModel.load(path)
    assert model.to_dict() == json.loads(path.read_text())
    report = json.loads((ROOT / "training" / "cv" / "default" / "report.json").read_text())
    measured = {name for name, block in report["subtypes"].items() if block["measured"]}
    assert model.subtypes is not None
    assert set(model.subtypes.fits) == measured
    assert set(model.subtypes.not_measured) == set(SUBTYPES) - measured
