"""``ich-model review select`` by the ensemble's uncertainty (``--uncertain-above``, ``--most-uncertain``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.training.test_review import _fails, _select, _write

#: a and b are difficult by probability; c, d and e are called right and confidently, but the base models
#: disagree on d and e.
PREDICTIONS = (
    "case,probability,label,uncertainty\n"
    "a,0.55,1,0.010000\n"
    "b,0.45,0,0.020000\n"
    "c,0.99,1,0.030000\n"
    "d,0.98,1,0.310000\n"
    "e,0.02,0,0.250000\n"
)


def test_the_uncertain_cases_join_the_worklist_with_their_reason(tmp_path: Path) -> None:
    rows = _select(tmp_path, PREDICTIONS, "--uncertain-above", "0.25")
    assert {r["case"]: r["reasons"] for r in rows} == {
        "a": "difficult_for_ai",
        "b": "difficult_for_ai",
        "d": "uncertain_for_ai",
        "e": "uncertain_for_ai",  # the bound is inclusive
    }
    assert list(rows[0]) == ["case", "probability", "label", "uncertainty", "reasons"]
    assert [r["uncertainty"] for r in rows] == ["0.010000", "0.020000", "0.310000", "0.250000"]


def test_the_most_uncertain_cases_are_chosen_by_rank(tmp_path: Path) -> None:
    rows = _select(tmp_path, PREDICTIONS, "--most-uncertain", "1", "--low", "1", "--high", "0")
    assert [(r["case"], r["reasons"]) for r in rows] == [("d", "uncertain_for_ai")]
    rows = _select(tmp_path, PREDICTIONS, "--most-uncertain", "3")
    assert {r["case"]: r["reasons"] for r in rows}["c"] == "uncertain_for_ai"
    assert {r["case"] for r in rows} == {"a", "b", "c", "d", "e"}


def test_without_the_options_the_column_changes_nothing(tmp_path: Path) -> None:
    assert [r["case"] for r in _select(tmp_path, PREDICTIONS)] == ["a", "b"]


def test_uncertainty_options_need_the_column_and_sane_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "w.csv")
    plain = _write(tmp_path, "plain.csv", "case,probability,label\nx,0.5,1\n")
    _fails(
        capsys,
        ["review", "select", "--predictions", str(plain), "--out", out, "--most-uncertain", "2"],
        "need an uncertainty for every case",
    )
    bad = _write(tmp_path, "bad.csv", "case,probability,label,uncertainty\nx,0.5,1,-1\n")
    _fails(
        capsys, ["review", "select", "--predictions", str(bad), "--out", out], "uncertainty must be a number"
    )
    good = _write(tmp_path, "good.csv", PREDICTIONS)
    _fails(
        capsys,
        ["review", "select", "--predictions", str(good), "--out", out, "--uncertain-above", "nan"],
        "--uncertain-above must be",
    )
