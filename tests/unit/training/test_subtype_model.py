"""``training.subtype_model``, the report's subtype and uncertainty figures, on synthetic records with known
answers (``tests.support.subtype_record``: epidural and intraparenchymal cases described as such, one
subdural and one subarachnoid case, no intraventricular one)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ich.scoring import CaseModel
from ich.subtypes import SUBTYPES
from tests.support.subtype_record import subtype_of_cases, with_subtypes
from tests.unit.training.test_case_model import synthetic_records
from training.case_model import DecisionTargets, apply_case_model, cross_fit, fit_case_model
from training.oof_report import build_report, subtype_figures
from training.records import Records
from training.subtype_model import (
    MIN_POSITIVE_CASES,
    apply_subtype_model,
    fit_subtype_model,
    has_subtype_inputs,
)
from training.subtype_model import (
    with_subtypes as fit_with_subtypes,
)

MEASURED = ("epidural", "intraparenchymal")


@pytest.fixture(scope="module")
def records() -> Records:
    return with_subtypes(synthetic_records())


@pytest.fixture(scope="module")
def report(records: Records, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report")
    result = build_report(records, DecisionTargets(), out)
    result["_out"] = str(out)
    return result


def test_the_synthetic_record_has_what_the_fit_needs(records: Records) -> None:
    kinds = [k for k in subtype_of_cases(records).values() if k]
    assert kinds.count("subdural") == 1 and kinds.count("subarachnoid") == 1
    assert kinds.count("epidural") >= MIN_POSITIVE_CASES + 2 and "intraventricular" not in kinds
    assert has_subtype_inputs(records) and not has_subtype_inputs(synthetic_records())


def test_a_fit_measures_the_common_subtypes_and_names_the_rare_ones(records: Records) -> None:
    case_model = fit_case_model(records, DecisionTargets())
    model = fit_subtype_model(records, case_model)
    assert set(model.fits) == set(MEASURED)
    assert model.not_measured["subdural"].startswith("not measured: 1 positive cases")
    assert model.not_measured["subarachnoid"].startswith("not measured: 1 positive cases")
    assert model.not_measured["intraventricular"].startswith("not measured: 0 positive cases")
    # the epidural model leans on bone contact, the intraparenchymal one on depth, as the cases were drawn
    coef = {s: dict(zip(model.to_dict()["features"], model.fits[s].coef, strict=True)) for s in MEASURED}
    assert coef["epidural"]["bone_contact_fraction"] > 0 > coef["intraparenchymal"]["bone_contact_fraction"]
    assert coef["intraparenchymal"]["depth_mm"] > 0 > coef["epidural"]["depth_mm"]


def test_applied_a_not_measured_subtype_is_none_and_the_others_rank_their_cases(records: Records) -> None:
    model = fit_with_subtypes(fit_case_model(records, DecisionTargets()), records)
    scored = apply_subtype_model(model, records)
    kinds = subtype_of_cases(records)
    for s in scored:
        assert s.probabilities["subdural"] is None and s.probabilities["intraventricular"] is None
        assert all(row["subdural"] is None for row in s.slices)
        assert len(s.slices) == next(int(r["slices"]) for r in records.cases if r["case"] == s.case)
    for subtype in MEASURED:
        with_it = [s.probabilities[subtype] for s in scored if kinds[s.case] == subtype]
        others = [s.probabilities[subtype] for s in scored if kinds[s.case] != subtype]
        assert min(with_it) > np.median(others)  # type: ignore[type-var]


def test_the_case_decision_is_the_same_with_or_without_the_subtype_model(records: Records) -> None:
    plain = fit_case_model(records, DecisionTargets())
    with_model = fit_with_subtypes(plain, records)
    assert apply_case_model(plain, records) == apply_case_model(with_model, records)
    assert {k: v for k, v in with_model.to_dict().items() if k != "subtypes"} == plain.to_dict()


def test_the_shipped_model_round_trips_through_json(records: Records, tmp_path: Path) -> None:
    model = fit_with_subtypes(fit_case_model(records, DecisionTargets()), records)
    model.save(tmp_path / "case_model.json")
    loaded = CaseModel.load(tmp_path / "case_model.json")
    assert loaded.subtypes is not None and set(loaded.subtypes.fits) == set(MEASURED)
    assert apply_subtype_model(loaded, records) == apply_subtype_model(model, records)
    assert json.loads((tmp_path / "case_model.json").read_text())["subtypes"]["not_measured"]["subdural"]


def test_report_gives_cross_fitted_aucs_with_intervals_and_counts(report: dict[str, Any]) -> None:
    block = report["subtypes"]
    assert list(block) == list(SUBTYPES)
    for subtype in MEASURED:
        figures = block[subtype]
        assert figures["measured"] is True and figures["reason"] is None
        assert figures["case"]["auc"] > 0.75  # the few true lesions drawn to look false stay missed
        low, high = figures["case"]["auc_ci"]
        assert low <= figures["case"]["auc"] <= high
        assert figures["case"]["n_positive"] == figures["positive_cases"] >= MIN_POSITIVE_CASES
        assert figures["slice"]["n_positive"] == figures["positive_slices"] > figures["positive_cases"]
        assert 0.0 <= figures["brier"] <= 0.25
    for subtype in ("subdural", "subarachnoid", "intraventricular"):
        assert block[subtype]["measured"] is False
        assert block[subtype]["reason"].startswith("not measured:")
        assert "case" not in block[subtype]
    assert block["subdural"]["positive_cases"] == 1 and block["intraventricular"]["positive_cases"] == 0
    assert block["subdural"]["reason"] == "not measured: 1 positive cases (fewer than 6)"


def test_a_subtype_one_fold_could_not_fit_is_not_measured(records: Records) -> None:
    case_model = fit_with_subtypes(fit_case_model(records, DecisionTargets()), records)
    assert case_model.subtypes is not None
    lacking = replace(
        case_model,
        subtypes=replace(
            case_model.subtypes,
            fits={"epidural": case_model.subtypes.fits["epidural"]},
            not_measured={
                **case_model.subtypes.not_measured,
                "intraparenchymal": "not measured: 4 positive cases",
            },
        ),
    )
    scored = apply_subtype_model(case_model, records)
    figures = subtype_figures(records, scored, [case_model, lacking])
    assert figures["epidural"]["measured"] is True
    assert figures["intraparenchymal"] == {
        "measured": False,
        "reason": "not measured: 4 positive cases, in 1 of 2 fitted models",
        "positive_cases": figures["intraparenchymal"]["positive_cases"],
        "positive_slices": figures["intraparenchymal"]["positive_slices"],
    }


def test_records_without_subtype_columns_report_every_subtype_not_measured() -> None:
    records = synthetic_records()
    report = build_report(records, DecisionTargets())
    assert all(not b["measured"] and "no subtype labels" in b["reason"] for b in report["subtypes"].values())
    assert report["uncertainty"] == {"measured": False, "reason": "the records carry no base-model spread"}


# ------------------------------------------------------------------------------------------ uncertainty
def _with_spread(records: Records, uncertain: set[Any], high: float = 0.3, low: float = 0.02) -> Records:
    out = with_subtypes(records)
    for table in (out.lesions, out.cases):
        for row in table:
            column = "model_spread" if table is out.lesions else "slice_spread"
            row[column] = high if row["case"] in uncertain else low
    return out


def test_uncertainty_auc_is_one_when_the_wrong_calls_are_the_uncertain_cases(tmp_path: Path) -> None:
    base = synthetic_records()
    scored, _ = cross_fit(base, DecisionTargets())
    wrong = {s.case for s in scored if s.detected != bool(s.label)}
    assert 0 < len(wrong) < len(scored) / 2
    report = build_report(_with_spread(base, wrong), DecisionTargets(), tmp_path)
    u = report["uncertainty"]
    assert u["measured"] is True and u["wrong_calls"] == len(wrong)
    assert u["auc_for_wrong_call"]["auc"] == 1.0 and u["auc_for_wrong_call"]["n_positive"] == len(wrong)
    assert u["median_uncertainty"] == {"wrong": 0.3, "right": 0.02}
    top = u["by_third"][-1]
    assert top["wrong"]["k"] == min(len(wrong), top["wrong"]["n"])
    assert sum(t["wrong"]["n"] for t in u["by_third"]) == len(scored)
    assert (tmp_path / "uncertainty.png").stat().st_size > 1000
    assert {c["case"]: c["uncertainty"] for c in report["cases"]}[next(iter(wrong))] == 0.3


def test_uncertainty_auc_is_zero_when_only_the_right_calls_are_uncertain() -> None:
    base = synthetic_records()
    scored, _ = cross_fit(base, DecisionTargets())
    right = {s.case for s in scored if s.detected == bool(s.label)}
    report = build_report(_with_spread(base, right), DecisionTargets())
    assert report["uncertainty"]["auc_for_wrong_call"]["auc"] == 0.0


def test_the_deciding_lesion_gives_the_uncertainty(records: Records) -> None:
    """A case's uncertainty is the spread on its highest-probability lesion, not on any other."""
    out = with_subtypes(records)
    model = fit_case_model(out, DecisionTargets())
    case = next(
        r["case"] for r in out.cases if sum(1 for les in out.lesions if les["case"] == r["case"]) >= 2
    )
    rows = [les for les in out.lesions if les["case"] == case]
    from training.case_model import lesion_matrix

    p = model.lesion_probabilities(lesion_matrix(rows)[0])
    for i, row in enumerate(rows):
        row["model_spread"] = 0.4 if i == int(np.argmax(p)) else 0.01
    (scored,) = [s for s in apply_case_model(model, out) if s.case == case]
    assert scored.uncertainty == pytest.approx(0.4)


@pytest.mark.parametrize("labelled", [True, False])
def test_cv_report_ships_the_subtype_part_only_when_something_was_measured(
    records: Records, tmp_path: Path, labelled: bool
) -> None:
    import argparse
    import shutil

    from training.oof_report import run

    (records if labelled else synthetic_records()).write(tmp_path)
    shutil.copyfile(
        Path(__file__).resolve().parents[3] / "training/configs/default.toml", tmp_path / "config.toml"
    )
    args = argparse.Namespace(records_only=True, out=tmp_path, run_dir=None, data=None)
    assert run(args) == 0
    shipped = json.loads((tmp_path / "case_model.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    if labelled:
        assert set(shipped["subtypes"]["fits"]) == set(MEASURED)
        assert report["subtypes"]["epidural"]["measured"] is True
        assert (tmp_path / "uncertainty.png").is_file()
    else:
        assert "subtypes" not in shipped  # the result's `subtypes` stays null
        assert CaseModel.load(tmp_path / "case_model.json").subtypes is None
