"""``ich-model card``: the card made from a cross-validation record and a model repository.

The record is synthetic (``tests.support.cv_record``) but goes through the real chain: ``Records.write``,
``training.oof_report.build_report`` for ``report.json``, ``training.case_model.fit_case_model`` for the
repository's ``case_model.json``, and the shipped ``training/configs/default.toml``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ich import repository, spec
from ich.scoring import CASE_MODEL_FILENAME, CaseModel
from tests.support import cv_record
from training.case_model import DecisionTargets, fit_case_model
from training.cli import main
from training.model_card import MAX_ECE, TARGETS, false_positive_section, render, verdict
from training.oof_report import build_report
from training.records import Records

ROOT = Path(__file__).resolve().parents[3]
VERSION = "2099.01.01-cvtest"
ONNX_BYTES = 2_500_000


@dataclass(frozen=True)
class Record:
    cv: Path
    repo: Path
    report: dict[str, Any]
    model: CaseModel
    cfg: dict[str, Any]
    records: Records


def _write_record(cv: Path, repo: Path) -> Record:
    records = cv_record.synthetic_records()
    records.write(cv)
    shutil.copyfile(ROOT / "training" / "configs" / "default.toml", cv / "config.toml")
    with (cv / "config.toml").open("rb") as fh:
        cfg = tomllib.load(fh)
    (cv / "folds.json").write_text(json.dumps(cv_record.folds_json()))
    targets = DecisionTargets(**cfg["decision"])
    report = build_report(records, targets)
    (cv / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    repository.write_version(repo, VERSION)
    info = {"fitted_on": "every out-of-fold record", "folds": report["folds"]}
    model = fit_case_model(records, targets, info)
    model.save(repo / CASE_MODEL_FILENAME)
    onnx = repository.model_file(repo, spec.BASE_MODELS["all"])
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"\0" * ONNX_BYTES)
    return Record(cv, repo, report, model, cfg, records)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """One record and repository for the module's read-only tests (``build_report`` bootstraps 1000 times)."""
    root = tmp_path_factory.mktemp("card")
    return _write_record(root / "cv", root / "repo")


@pytest.fixture(scope="module")
def card(shipped: Record) -> str:
    return render(shipped.cv, shipped.repo)


@pytest.fixture
def own(shipped: Record, tmp_path: Path) -> Record:
    """A copy of the record and repository that the test may change."""
    shutil.copytree(shipped.cv, tmp_path / "cv")
    shutil.copytree(shipped.repo, tmp_path / "repo")
    return dataclasses.replace(shipped, cv=tmp_path / "cv", repo=tmp_path / "repo")


def _ci(block: dict[str, Any], key: str = "auc_ci") -> str:
    return f"(95% CI {block[key][0]:.3f}-{block[key][1]:.3f})"


def _prop(block: dict[str, Any]) -> str:
    lo, hi = block["ci"]
    return f"{block['value']:.2f} ({block['k']}/{block['n']}; 95% CI {lo:.2f}-{hi:.2f})"


# ----------------------------------------------------------------------------------------- figures
def test_the_record_is_not_degenerate(shipped: Record) -> None:
    """The figures below would prove little on a record where every number is 0, 1 or equal to another."""
    r = shipped.report
    op = r["operating_point"]
    assert r["patients"] == 12 and r["patients_with_hemorrhage"] == 6 and r["folds"] == 3
    assert (op["sensitivity"]["k"], op["sensitivity"]["n"]) == (4, 6)
    assert (op["specificity"]["k"], op["specificity"]["n"]) == (5, 6)
    assert op["missed_cases"] == ["051", "059"] and op["flagged_normal_cases"] == ["060"]
    figures = [
        r["case"]["ich_probability"]["auc"],
        r["case"]["max_slice_probability"]["auc"],
        r["models"]["ensemble"]["slice"]["auc"],
        r["calibration"]["brier"],
        r["calibration"]["ece"],
        r["dice"]["kept_lesions"]["per_patient"],
        r["dice"]["candidates"]["per_patient"],
    ]
    assert all(0.0 < v < 1.0 for v in figures) and len({f"{v:.3f}" for v in figures}) == len(figures)
    assert 0.0 < shipped.model.band[0] <= shipped.model.threshold < shipped.model.band[1] < 1.0


def test_card_carries_the_reports_figures_as_the_report_gives_them(shipped: Record, card: str) -> None:
    r = shipped.report
    case, op, cal, dice = r["case"], r["operating_point"], r["calibration"], r["dice"]
    ens = r["models"]["ensemble"]["slice"]
    lines = [
        "## Figures (out of fold: 12 patients, 6 with hemorrhage, 72 slices, 3 folds)",
        f"| case AUC, calibrated case probability (`ich_probability`) | {case['ich_probability']['auc']:.3f} "
        f"{_ci(case['ich_probability'])} |",
        f"| case AUC, the paper's maximum slice probability | {case['max_slice_probability']['auc']:.3f} "
        f"{_ci(case['max_slice_probability'])} |",
        f"| case sensitivity at the operating point | {_prop(op['sensitivity'])} |",
        f"| case specificity at the operating point | {_prop(op['specificity'])} |",
        f"| normal heads flagged, per 10 | {op['normal_heads_flagged_per_10']:.1f} |",
        f"| cases in the indeterminate band | {_prop(op['indeterminate'])} |",
        f"| slice AUC (SLICE_PROB) | {ens['auc']:.3f} {_ci(ens)} |",
        f"| Dice per patient, reported mask (kept lesions) | {dice['kept_lesions']['per_patient']:.3f} |",
        f"| Dice per patient, all candidates (FUSED > 0.5) | {dice['candidates']['per_patient']:.3f} |",
        f"| Dice pooled over slices (micro), reported mask | {dice['kept_lesions']['micro']:.3f} |",
        f"| Brier score | {cal['brier']:.3f} |",
        f"| expected calibration error (10 bins) | {cal['ece']:.3f} |",
        "Missed hemorrhage cases: 051, 059; normal cases flagged: 060.",
        "Thresholds chosen inside the training folds: "
        + ", ".join(f"{t:.3f}" for t in op["thresholds_by_fold"])
        + ".",
    ]
    for line in lines:
        assert line in card, line
    assert "| case sensitivity at the operating point | 0.67 (4/6; " in card
    assert "| case specificity at the operating point | 0.83 (5/6; " in card
    assert "| normal heads flagged, per 10 | 1.7 |" in card


def test_card_takes_its_figures_from_report_json_not_from_the_records(own: Record) -> None:
    report = copy.deepcopy(own.report)
    report["case"]["ich_probability"].update(auc=0.8766, auc_ci=[0.7012, 0.9543])
    report["operating_point"]["sensitivity"] = {"value": 0.7778, "k": 7, "n": 9, "ci": [0.3999, 0.9719]}
    report["operating_point"]["normal_heads_flagged_per_10"] = 2.5
    report["calibration"].update(ece=0.0432, brier=0.1111)
    report["dice"]["kept_lesions"]["per_patient"] = 0.5556
    (own.cv / "report.json").write_text(json.dumps(report))
    card = render(own.cv, own.repo)
    label = "case AUC, calibrated case probability (`ich_probability`)"
    assert f"| {label} | 0.877 (95% CI 0.701-0.954) |" in card
    assert "| case sensitivity at the operating point | 0.78 (7/9; 95% CI 0.40-0.97) |" in card
    assert "| expected calibration error (10 bins) | 0.043 |" in card
    assert "| Brier score | 0.111 |" in card
    assert "| Dice per patient, reported mask (kept lesions) | 0.556 |" in card
    assert "At the operating point, 2.5 normal heads in 10 were flagged out of fold" in card
    assert "- expected calibration error: 0.043 (bar <= 0.1): met" in card
    assert "- Dice per patient: 0.556 (bar >= 0.45): met" in card
    assert f"{own.report['calibration']['ece']:.3f} |" not in card


def test_card_counts_folds_patients_and_flagged_normal_heads(shipped: Record, card: str) -> None:
    assert "Patient-grouped 3-fold cross-validation over all 12 patients" in card
    assert "folds in `" in card and "folds.json`, seed 20261201)" in card
    assert "The shipped weights were then trained on all 12 patients" in card
    assert "Trained on the 12 patients of this copy" in card  # not a figure typed into the prose
    assert "Small data: 12 patients from one hospital" in card
    assert "At the operating point, 1.7 normal heads in 10 were flagged out of fold" in card
    assert "interval (6 normal patients)" in card
    assert "Out of fold, 1.7 normal heads in 10 were flagged." in card


# ---------------------------------------------------------------------------------- operating point
def test_card_states_the_shipped_threshold_and_band_of_case_model_json(shipped: Record, card: str) -> None:
    m = shipped.model
    assert f"The shipped threshold is {m.threshold:.3f} on the calibrated probability" in card
    assert f"the indeterminate band is [{m.band[0]:.3f}, {m.band[1]:.3f}]" in card
    assert "for a case sensitivity of 0.95" in card and "(sensitivity target 1.0)" in card
    assert "at least 0.95 of the normal cases lay below" in card
    assert f"({len(shipped.records.lesions)} out-of-fold candidates)" in card
    assert len(shipped.records.lesions) == 18  # 6 true lesions, 3 + 9 false foci


def test_card_reads_the_operating_point_from_the_repository(own: Record) -> None:
    moved = dataclasses.replace(own.model, threshold=0.4321, band=(0.1234, 0.8766))
    moved.save(own.repo / CASE_MODEL_FILENAME)
    card = render(own.cv, own.repo)
    assert "The shipped threshold is 0.432 on the calibrated probability" in card
    assert "the indeterminate band is [0.123, 0.877]" in card


def test_without_a_case_model_the_card_says_the_papers_rule_decides(own: Record) -> None:
    (own.repo / CASE_MODEL_FILENAME).unlink()
    card = render(own.cv, own.repo)
    assert "The repository carries no case model: it decides by the maximum slice probability at 0.5." in card
    assert "A logistic regression on these features (no case model)" in card
    assert "The shipped threshold is" not in card


# ---------------------------------------------------------------------------------- what it says
def test_card_is_research_only_and_carries_the_attribution(card: str) -> None:
    assert card.startswith(f"# Model card: ICH weighted ensemble ({VERSION})\n")
    assert "**Research use only. NOT FOR CLINICAL USE.**" in card
    assert "Hssayeni M. D." in card and "Data 2020, 5(1):14" in card
    assert "(CC BY 4.0)" in card and "carry this\nattribution" in card
    assert "Not for clinical use, triage, or any decision about a patient." in card


def test_card_lists_the_onnx_files_present(card: str) -> None:
    assert f"ONNX files: `{spec.BASE_MODELS['all']}` {ONNX_BYTES / 1e6:.2f} MB." in card
    assert f"`{spec.BASE_MODELS['sdh']}` " not in card.split("ONNX files:")[1].split("\n")[0]


def test_card_holds_no_diary_or_evaluator_sentence(card: str) -> None:
    text = card.lower()
    for phrase in ("judge", "kept apart", "diary", "evaluator", "## notes", "we tried", "re-run"):
        assert phrase not in text, phrase


# ---------------------------------------------------------------------------------- false positives
def test_false_positive_section_counts_the_normal_patients_candidates(card: str) -> None:
    """Counted by hand in ``tests.support.cv_record``; the hemorrhage patients' false foci stay out."""
    expected = (
        f"Candidate lesions (FUSED > 0.5) in the {cv_record.NORMAL_PATIENTS} normal patients, out of fold: "
        f"{cv_record.NORMAL_CANDIDATES}; {cv_record.EDGE} on slices whose brain area is under half the "
        f"patient's largest (vertex and skull base), {cv_record.NEAR_BONE} within 3 mm of bone (inner table, "
        f"petrous bone, middle cranial fossa), {cv_record.SMALL} under 0.1 mL."
    )
    assert (cv_record.NORMAL_PATIENTS, cv_record.NORMAL_CANDIDATES) == (6, 9)
    assert (cv_record.EDGE, cv_record.NEAR_BONE, cv_record.SMALL) == (5, 6, 4)
    assert expected in card


def test_false_positive_section_without_any_normal_candidate(shipped: Record) -> None:
    normals = {c for c, y in cv_record.LABELS.items() if y == 0}
    records = dataclasses.replace(
        shipped.records, lesions=[r for r in shipped.records.lesions if r["case"] not in normals]
    )
    assert len(records.lesions) == 9
    text = false_positive_section(records, shipped.report, shipped.model)
    assert text == "No lesion candidate was found in any normal patient."


# ---------------------------------------------------------------------------------- training settings
def test_card_lists_every_steps_settings_from_the_config(shipped: Record, card: str) -> None:
    cfg = shipped.cfg
    lines = card.splitlines()
    for step in (*spec.MODEL_KEYS, "weight"):
        table = cfg["weight"] if step == "weight" else cfg["steps"][step]
        prefix = f"  - `{step}`: "
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, step
        assert found[0] == prefix + ", ".join(f"{k} {v}" for k, v in table.items())
        assert len(table) >= 5  # the default config's steps are not empty
    run = cfg["run"]
    assert (
        f"Configuration `training/configs/{run['name']}.toml` (seed {run['seed']}, input size {run['size']}, "
        f"forward passes in {run['amp']}, network "
        + ", ".join(f"{k} {v}" for k, v in cfg["network"].items())
        + ")"
    ) in card
    assert f"resized to\n{run['size']}x{run['size']}" in card
    assert f"--config training/configs/{run['name']}.toml" in card


def test_card_gives_the_shipped_runs_duration(shipped: Record, tmp_path: Path) -> None:
    (tmp_path / "train.log").write_text(
        "2026-12-01 10:00:00 INFO training.train: start\n"
        "  a continuation line\n"
        "2026-12-01 11:30:00 INFO training.train: done\n"
    )
    card = render(shipped.cv, shipped.repo, tmp_path)
    assert f"Shipped run: `{tmp_path}` (90 min on this machine's CPU)." in card
    assert "Shipped run:" not in render(shipped.cv, shipped.repo, tmp_path / "absent")


# ----------------------------------------------------------------------------------------- verdict
def _at_the_bars() -> dict[str, Any]:
    """A report whose every figure sits exactly on its bar."""
    return {
        "operating_point": {
            "sensitivity": {"value": TARGETS["case sensitivity"]},
            "specificity": {"value": TARGETS["case specificity"]},
        },
        "case": {"ich_probability": {"auc": TARGETS["case AUC"]}},
        "models": {"ensemble": {"slice": {"auc": TARGETS["slice AUC"]}}},
        "dice": {"kept_lesions": {"per_patient": TARGETS["Dice per patient"]}},
        "calibration": {"ece": MAX_ECE},
    }


_WHERE: dict[str, tuple[str, ...]] = {
    "case sensitivity": ("operating_point", "sensitivity", "value"),
    "case specificity": ("operating_point", "specificity", "value"),
    "case AUC": ("case", "ich_probability", "auc"),
    "slice AUC": ("models", "ensemble", "slice", "auc"),
    "Dice per patient": ("dice", "kept_lesions", "per_patient"),
    "expected calibration error": ("calibration", "ece"),
}


def _with(name: str, value: float | None) -> dict[str, Any]:
    report = _at_the_bars()
    *path, last = _WHERE[name]
    block = report
    for key in path:
        block = block[key]
    block[last] = value
    return report


def test_the_bars() -> None:
    assert TARGETS == {
        "case sensitivity": 0.90,
        "case specificity": 0.70,
        "case AUC": 0.93,
        "slice AUC": 0.93,
        "Dice per patient": 0.45,
    }
    assert MAX_ECE == 0.10


def test_a_report_at_every_bar_meets_them_all() -> None:
    targets = verdict(_at_the_bars())
    assert [t.name for t in targets] == list(_WHERE)
    assert all(t.met for t in targets)
    assert [t.at_most for t in targets] == [False] * 5 + [True]
    assert {t.name: t.goal for t in targets} == {**TARGETS, "expected calibration error": MAX_ECE}


@pytest.mark.parametrize("name", list(TARGETS))
def test_just_below_a_bar_is_not_met(name: str) -> None:
    result = {t.name: t.met for t in verdict(_with(name, TARGETS[name] - 0.0001))}
    assert result == {n: n != name for n in _WHERE}
    above = {t.name: t.met for t in verdict(_with(name, min(1.0, TARGETS[name] + 0.05)))}
    assert all(above.values())


def test_the_calibration_error_is_an_at_most_bar() -> None:
    assert all(t.met for t in verdict(_with("expected calibration error", 0.0)))
    result = {t.name: t.met for t in verdict(_with("expected calibration error", MAX_ECE + 0.0001))}
    assert result == {n: n != "expected calibration error" for n in _WHERE}


@pytest.mark.parametrize("name", list(_WHERE))
def test_a_missing_figure_is_not_met(name: str) -> None:
    targets = {t.name: t for t in verdict(_with(name, None))}
    assert targets[name].met is False and targets[name].value is None
    assert all(t.met for n, t in targets.items() if n != name)


def test_card_writes_the_verdict_of_its_report(shipped: Record, card: str) -> None:
    targets = verdict(shipped.report)
    assert {t.name: t.met for t in targets} == {
        "case sensitivity": False,  # 4/6
        "case specificity": True,  # 5/6
        "case AUC": shipped.report["case"]["ich_probability"]["auc"] >= 0.93,
        "slice AUC": shipped.report["models"]["ensemble"]["slice"]["auc"] >= 0.93,
        "Dice per patient": shipped.report["dice"]["kept_lesions"]["per_patient"] >= 0.45,
        "expected calibration error": shipped.report["calibration"]["ece"] <= 0.10,
    }
    for t in targets:
        sign = "<=" if t.at_most else ">="
        outcome = "met" if t.met else "**not met**"
        assert f"- {t.name}: {t.value:.3f} (bar {sign} {t.goal:g}): {outcome}\n" in card, t.name
    assert "- case sensitivity: 0.667 (bar >= 0.9): **not met**" in card
    assert "- case specificity: 0.833 (bar >= 0.7): met" in card


def test_card_says_n_a_for_a_missing_figure(own: Record) -> None:
    report = copy.deepcopy(own.report)
    report["calibration"]["ece"] = None
    (own.cv / "report.json").write_text(json.dumps(report))
    card = render(own.cv, own.repo)
    assert "| expected calibration error (10 bins) | n/a |" in card
    assert "- expected calibration error: n/a (bar <= 0.1): **not met**" in card


# --------------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_card_into_the_repository(own: Record) -> None:
    assert main(["card", "--cv", str(own.cv), "--repo", str(own.repo)]) == 0
    written = (own.repo / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert written == render(own.cv, own.repo)
    assert "NOT FOR CLINICAL USE" in written and f"({VERSION})" in written


def test_cli_writes_the_card_where_out_says(own: Record, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere.md"
    assert main(["card", "--cv", str(own.cv), "--repo", str(own.repo), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render(own.cv, own.repo)
    assert not (own.repo / "MODEL_CARD.md").exists()


@pytest.mark.parametrize("missing", ["report.json", "config.toml", "folds.json"])
def test_cli_refuses_an_incomplete_record_and_writes_nothing(own: Record, missing: str) -> None:
    (own.cv / missing).unlink()
    assert main(["card", "--cv", str(own.cv), "--repo", str(own.repo)]) == 2
    assert not (own.repo / "MODEL_CARD.md").exists()
