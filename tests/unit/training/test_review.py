"""``ich-model review select | score`` through the real CLI entry point (training.cli.main)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from training.cli import main

PREDICTIONS = """case,probability,label,readers_disagreed
a,0.6,1,0
b,0.6000001,1,0
c,0.4,0,0
d,0.3999999,0,0
e,0.9,1,1
f,0.5,0,1
g,0.1,0,
h,0.0,1,0
"""

# Six worklist cases, four readers (A-D), majority 3 of 4. Hand-worked truth:
#   case  label  prob  votes  verdict
#   c1    1      0.55  4/4    confirmed
#   c2    1      0.20  1/4    overturned -> 0
#   c3    0      0.45  2/4    tie, stays 0
#   c4    0      0.70  3/4    overturned -> 1
#   c5    0      0.40  0/4    confirmed
#   c6    1      0.50  2/4    tie, stays 1   (0.50 is a model "hemorrhage" at threshold 0.5)
WORKLIST = """case,probability,label,reasons
c1,0.55,1,difficult_for_ai
c2,0.20,1,difficult_for_ai
c3,0.45,0,difficult_for_ai
c4,0.70,0,difficult_for_ai;difficult_for_humans
c5,0.40,0,difficult_for_ai
c6,0.50,1,difficult_for_humans
"""
CALLS = {  # reader -> calls for c1..c6
    "A": [1, 0, 1, 1, 0, 1],
    "B": [1, 0, 0, 1, 0, 0],
    "C": [1, 1, 1, 0, 0, 0],
    "D": [1, 0, 0, 1, 0, 1],
}


def _reads_csv(
    calls: dict[str, list[int]] = CALLS, cases: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5", "c6")
) -> str:
    rows = ["case,reader,label"]
    rows += [
        f"{case},{reader},{label}"
        for reader, labels in calls.items()
        for case, label in zip(cases, labels, strict=True)
    ]
    return "\n".join(rows) + "\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _select(tmp_path: Path, text: str, *extra: str) -> list[dict[str, str]]:
    pred = _write(tmp_path, "pred.csv", text)
    out = tmp_path / "worklist.csv"
    assert main(["review", "select", "--predictions", str(pred), "--out", str(out), *extra]) == 0
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _score(tmp_path: Path, worklist: str = WORKLIST, reads: str | None = None, *extra: str) -> dict:
    wl = _write(tmp_path, "worklist.csv", worklist)
    rd = _write(tmp_path, "reads.csv", _reads_csv() if reads is None else reads)
    out = tmp_path / "out" / "report.json"
    assert (
        main(["review", "score", "--worklist", str(wl), "--reads", str(rd), "--out", str(out), *extra]) == 0
    )
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------ select


def test_select_default_bounds_are_inclusive(tmp_path: Path) -> None:
    rows = _select(tmp_path, PREDICTIONS)
    assert {r["case"]: r["reasons"] for r in rows} == {
        "a": "difficult_for_ai",  # label 1 at exactly 0.6
        "c": "difficult_for_ai",  # label 0 at exactly 0.4
        "e": "difficult_for_humans",
        "f": "difficult_for_ai;difficult_for_humans",
        "h": "difficult_for_ai",
    }
    assert list(rows[0]) == ["case", "probability", "label", "readers_disagreed", "reasons"]
    # Values are copied, not re-formatted.
    assert [r["probability"] for r in rows] == ["0.6", "0.4", "0.9", "0.5", "0.0"]


def test_select_custom_bounds(tmp_path: Path) -> None:
    rows = _select(tmp_path, PREDICTIONS, "--low", "0.3", "--high", "0.7")
    assert sorted(r["case"] for r in rows) == ["a", "b", "c", "d", "e", "f", "h"]
    rows = _select(tmp_path, PREDICTIONS, "--low", "0.95", "--high", "0.05")
    assert {r["case"]: r["reasons"] for r in rows} == {
        "e": "difficult_for_humans",
        "f": "difficult_for_humans",
        "h": "difficult_for_ai",
    }


def test_select_without_readers_disagreed_column(tmp_path: Path) -> None:
    rows = _select(tmp_path, "case,probability,label\nx,0.59,1\ny,0.41,0\nz,0.61,1\n")
    assert [(r["case"], r["reasons"]) for r in rows] == [("x", "difficult_for_ai"), ("y", "difficult_for_ai")]
    assert "readers_disagreed" not in rows[0]


# ------------------------------------------------------------------------------------------------- score


def test_score_hand_worked_study(tmp_path: Path) -> None:
    report = _score(tmp_path, WORKLIST, None, "--majority", "3")
    assert report["cases"] == 6 and report["n_readers"] == 4 and report["majority"] == 3

    votes = [a["votes_hemorrhage"] for a in report["agreement"]]
    assert votes == [4, 1, 2, 3, 0, 2]
    assert all(a["readers"] == 4 for a in report["agreement"])
    # P-bar = 11/18, P_e = 1/2 -> kappa = 2/9; and statsmodels agrees.
    assert report["fleiss_kappa"] == pytest.approx(2 / 9)
    table = np.stack([4 - np.array(votes), np.array(votes)], axis=1)
    assert report["fleiss_kappa"] == pytest.approx(sm_fleiss_kappa(table, method="fleiss"))
    assert report["unanimous_cases"] == 2

    assert [(c["case"], c["original_label"], c["revised_label"]) for c in report["consensus_changed"]] == [
        ("c2", 1, 0),
        ("c4", 0, 1),
    ]
    assert [c["case"] for c in report["ties"]] == ["c3", "c6"]
    assert all(c["original_label"] == c["revised_label"] for c in report["ties"])
    assert report["no_majority"] == []
    assert [a["status"] for a in report["agreement"]] == [
        "confirmed",
        "overturned",
        "tie",
        "overturned",
        "confirmed",
        "tie",
    ]

    # Reader A [1,0,1,1,0,1] vs original [1,1,0,0,0,1]: TP 2, FN 1, FP 2, TN 1.
    a = report["readers"]["A"]
    assert (a["accuracy"], a["sensitivity"], a["specificity"]) == pytest.approx((3 / 6, 2 / 3, 1 / 3))
    # ... vs revised [1,0,0,1,0,1]: TP 3, TN 2, FP 1.
    ra = report["revised"]["readers"]["A"]
    assert (ra["accuracy"], ra["sensitivity"], ra["specificity"]) == pytest.approx((5 / 6, 1.0, 2 / 3))
    # Model calls (p >= 0.5): [1,0,0,1,0,1]: vs original TP 2, FN 1, TN 2, FP 1; equal to the revised truth.
    m = report["model"]
    assert (m["accuracy"], m["sensitivity"], m["specificity"]) == pytest.approx((4 / 6, 2 / 3, 2 / 3))
    rm = report["revised"]["model"]
    assert (rm["accuracy"], rm["sensitivity"], rm["specificity"]) == (1.0, 1.0, 1.0)
    assert set(report["readers"]) == set(report["revised"]["readers"]) == {"A", "B", "C", "D"}

    summary = (tmp_path / "out" / "report.md").read_text()
    assert "Fleiss' kappa: 0.222" in summary
    assert "| c2 | 1/4 | 1 | 0 |" in summary
    assert "| model | 0.667 | 0.667 | 0.667 | 1.000 | 1.000 | 1.000 |" in summary


def test_score_threshold_option_changes_model_calls(tmp_path: Path) -> None:
    # At 0.6 the model calls only c4 (0.70) hemorrhage: vs original TP 0 of 3, TN 2 of 3.
    m = _score(tmp_path, WORKLIST, None, "--threshold", "0.6")["model"]
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((0.0, 2 / 3))


def test_score_stricter_majority_gives_no_majority(tmp_path: Path) -> None:
    report = _score(tmp_path, WORKLIST, None, "--majority", "4")
    assert report["consensus_changed"] == []
    assert [c["case"] for c in report["no_majority"]] == ["c2", "c4"]
    assert [c["case"] for c in report["ties"]] == ["c3", "c6"]
    assert report["revised"]["model"] == report["model"]


def test_score_undefined_rates_are_null(tmp_path: Path) -> None:
    worklist = "case,probability,label\nc1,0.3,1\nc2,0.7,1\n"
    reads = _reads_csv({"A": [1, 1], "B": [1, 0], "C": [1, 1]}, ("c1", "c2"))
    report = _score(tmp_path, worklist, reads, "--majority", "2")
    assert report["model"]["specificity"] is None
    assert report["model"]["sensitivity"] == pytest.approx(0.5)
    assert report["fleiss_kappa"] is not None


def test_select_then_score_round_trip(tmp_path: Path) -> None:
    rows = _select(tmp_path, PREDICTIONS)
    cases = tuple(r["case"] for r in rows)
    reads = _reads_csv({r: [1] * len(cases) for r in ("x", "y", "z")}, cases)
    report = _score(tmp_path, (tmp_path / "worklist.csv").read_text(), reads, "--majority", "2")
    assert [a["case"] for a in report["agreement"]] == list(cases)
    assert report["agreement"][3]["reasons"] == ["difficult_for_ai", "difficult_for_humans"]
    # All readers say hemorrhage: every label-0 case (c, f) is overturned.
    assert [c["case"] for c in report["consensus_changed"]] == ["c", "f"]
    assert report["fleiss_kappa"] is None  # one label only: kappa undefined


# -------------------------------------------------------------------------------------------- bad inputs


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("case,label\na,1\n", "missing column(s) probability"),
        ("case,probability,label\na,abc,1\n", "line 2: probability must be a number in [0, 1], got 'abc'"),
        ("case,probability,label\na,0.5,1\nb,1.5,0\n", "line 3: probability must be a number in [0, 1]"),
        ("case,probability,label\na,nan,1\n", "probability must be a number in [0, 1], got 'nan'"),
        ("case,probability,label\na,0.5,2\n", "label must be 0 or 1, got '2'"),
        ("case,probability,label\na,0.5,yes\n", "label must be 0 or 1, got 'yes'"),
        ("case,probability,label\na,0.5,1\na,0.4,0\n", "case 'a' appears again"),
        ("case,probability,label,readers_disagreed\na,0.5,1,maybe\n", "readers_disagreed must be 0 or 1"),
        ("case,probability,label\n,0.5,1\n", "empty case"),
        ("case,probability,label\na,0.5,1,extra\n", "more fields than columns"),
        ("", "the file is empty"),
        ("case,probability,label\n", "no data rows"),
    ],
)
def test_select_bad_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    pred = _write(tmp_path, "pred.csv", text)
    _fails(
        capsys, ["review", "select", "--predictions", str(pred), "--out", str(tmp_path / "w.csv")], message
    )
    assert not (tmp_path / "w.csv").exists()


def test_select_bad_options_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _write(tmp_path, "pred.csv", PREDICTIONS)
    out = str(tmp_path / "w.csv")
    _fails(
        capsys,
        ["review", "select", "--predictions", str(pred), "--out", out, "--low", "1.5"],
        "--low must lie",
    )
    _fails(
        capsys,
        ["review", "select", "--predictions", str(pred), "--out", out, "--high", "-0.1"],
        "--high must lie",
    )
    _fails(
        capsys,
        ["review", "select", "--predictions", str(tmp_path / "nope.csv"), "--out", out],
        "No such file or directory",
    )


@pytest.mark.parametrize(
    ("reads", "extra", "message"),
    [
        (_reads_csv() + "c9,A,1\nc8,B,0\n", [], "2 case(s) not on the worklist: 'c9', 'c8'"),
        (
            _reads_csv({"A": [1] * 6, "B": [1] * 6, "C": [1] * 6})
            + _reads_csv({"D": [1, 1, 1, 1]}, ("c1", "c2", "c3", "c4")).split("\n", 1)[1],
            [],
            "reader 'D' is missing 2 case(s): 'c5', 'c6'",
        ),
        (_reads_csv().replace("c3,B,0", "c3,B,2"), [], "label must be 0 or 1, got '2'"),
        (_reads_csv().replace("c3,B,0", "c3,B,no"), [], "label must be 0 or 1, got 'no'"),
        (_reads_csv(), ["--majority", "5"], "--majority 5 is larger than the number of readers (4)"),
        (_reads_csv(), ["--majority", "2"], "--majority 2 is not more than half of 4 readers"),
        (_reads_csv().replace("case,reader,label", "case,rater,label"), [], "missing column(s) reader"),
        (_reads_csv() + "c1,A,1\n", [], "reader 'A' read case 'c1' twice"),
        (_reads_csv({"A": [1] * 6}), ["--majority", "1"], "at least two readers, found 1"),
        (_reads_csv().replace("c2,C,1", "c2,,1"), [], "empty reader"),
        (_reads_csv(), ["--threshold", "2"], "--threshold must lie in [0, 1]"),
    ],
)
def test_score_bad_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reads: str, extra: list[str], message: str
) -> None:
    wl = _write(tmp_path, "worklist.csv", WORKLIST)
    rd = _write(tmp_path, "reads.csv", reads)
    out = tmp_path / "report.json"
    _fails(
        capsys,
        ["review", "score", "--worklist", str(wl), "--reads", str(rd), "--out", str(out), *extra],
        message,
    )
    assert not out.exists()


def test_score_bad_worklist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wl = _write(tmp_path, "worklist.csv", WORKLIST.replace("c3,0.45,0", "c3,0.45x,0"))
    rd = _write(tmp_path, "reads.csv", _reads_csv())
    _fails(
        capsys,
        ["review", "score", "--worklist", str(wl), "--reads", str(rd), "--out", str(tmp_path / "r.json")],
        "line 4: probability must be a number in [0, 1], got '0.45x'",
    )
    _fails(
        capsys,
        ["review", "score", "--worklist", str(wl), "--reads", str(rd), "--out", str(tmp_path / "r.md")],
        "--out is the JSON report",
    )


def test_an_empty_selection_is_said_not_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pred = _write(tmp_path, "pred.csv", "case,probability,label\na,0.2,0\nb,0.9,1\n")
    out = tmp_path / "w.csv"
    argv = ["review", "select", "--predictions", str(pred), "--out", str(out), "--low", "1", "--high", "0"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 0
    assert "no case met the criteria (--low 1.0, --high 0.0" in caplog.text
    assert out.read_text().count("\n") == 1  # the header alone
