"""The model card's subtype and uncertainty sections, from a record made by the real chain (``build_report``,
``training.subtype_model``) on the synthetic subtype record (``tests.support.subtype_record``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ich import repository
from ich.scoring import CASE_MODEL_FILENAME
from tests.support import cv_record
from tests.support.subtype_record import with_subtypes
from tests.unit.training.test_case_model import synthetic_records
from tests.unit.training.test_subtype_model import _with_spread
from training.case_model import DecisionTargets, cross_fit, fit_case_model
from training.model_card import render, subtype_section, uncertainty_section
from training.oof_report import build_report
from training.subtype_model import with_subtypes as fit_with_subtypes

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    base = synthetic_records()
    scored, _ = cross_fit(base, DecisionTargets())
    records = _with_spread(base, {s.case for s in scored if s.detected != bool(s.label)})
    root = tmp_path_factory.mktemp("card-subtypes")
    cv, repo = root / "cv", root / "repo"
    records.write(cv)
    shutil.copyfile(ROOT / "training" / "configs" / "default.toml", cv / "config.toml")
    (cv / "folds.json").write_text(json.dumps(cv_record.folds_json()))
    report = build_report(records, DecisionTargets())
    (cv / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    repository.write_version(repo, "2099.01.01-subtypes")
    fit_with_subtypes(fit_case_model(records, DecisionTargets()), records).save(repo / CASE_MODEL_FILENAME)
    return cv, repo, report


def test_the_card_lists_each_subtype_with_its_auc_and_counts_or_why_not(
    record: tuple[Path, Path, dict[str, Any]],
) -> None:
    cv, repo, report = record
    card = render(cv, repo)
    assert "## Subtypes" in card and "## Uncertainty" in card
    epidural = report["subtypes"]["epidural"]
    low, high = epidural["case"]["auc_ci"]
    row = next(line for line in card.splitlines() if line.startswith("| epidural |"))
    assert f"{epidural['case']['auc']:.3f} (95% CI {low:.3f}-{high:.3f})" in row
    assert f"| {epidural['positive_cases']}/{report['patients']} |" in row
    subdural = next(line for line in card.splitlines() if line.startswith("| subdural |"))
    assert "not measured: 1 positive cases" in subdural and f"1/{report['patients']}" in subdural
    assert (
        "The shipped case model gives epidural, intraparenchymal; the result's other subtypes are null."
        in card
    )


def test_the_card_states_the_uncertaintys_auc_for_wrong_calls(
    record: tuple[Path, Path, dict[str, Any]],
) -> None:
    cv, repo, report = record
    card = render(cv, repo)
    u = report["uncertainty"]
    assert f"with {u['wrong_calls']} wrong calls" in card
    assert "its AUC for a wrong call is 1.000" in card
    assert "`indeterminate` is the band alone" in card


def test_a_record_without_the_figures_says_so() -> None:
    assert "carries no subtype figures" in subtype_section({"patients": 3}, None)
    assert "carries no uncertainty figures" in uncertainty_section({"uncertainty": {"measured": False}})
    report = build_report(with_subtypes(synthetic_records()), DecisionTargets())
    assert "gives no subtypes: `subtypes` is null" in subtype_section(report, None)
