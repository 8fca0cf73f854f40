"""``ich-model card``: the card carries the report's figures, the run's settings and an honest verdict."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ich import repository
from training.cli import main
from training.model_card import render, verdict

CONFIG = """
[run]
name = "default"
seed = 7
size = 128

[network]
width = 16
depth = 4
flip_tta = true

[steps.all]
iterations = 1400
lr = 1e-3

[weight]
opening = 1
iterations = 400

[export]
rotate_tta_deg = 8.0
"""


def _block(auc: float, lo: float, hi: float, n: int, n_pos: int) -> dict[str, Any]:
    return {
        "n": n,
        "n_positive": n_pos,
        "auc": auc,
        "auc_ci": [lo, hi],
        "sensitivity": 0.8,
        "specificity": 0.9,
    }


def _report(ensemble_slice: float = 0.931, best_single: float = 0.925) -> dict[str, Any]:
    model = {
        "slice": _block(best_single, 0.8, 0.97, 450, 55),
        "case": _block(0.85, 0.6, 1.0, 15, 7),
        "dice": 0.3,
        "dice_micro": 0.6,
    }
    return {
        "slice": _block(ensemble_slice, 0.851, 0.987, 450, 55),
        "case": _block(0.857, 0.62, 1.0, 15, 7),
        "dice": 0.412,
        "dice_micro": 0.61,
        "dice_slices": 55,
        "dice_patients": 7,
        "dice_by_patient": {"071": 0.6, "085": 0.0, "093": None},
        "per_subtype": {"subdural": {"sensitivity": 0.5, "n_slices": 4}},
        "models": {"all": model, "sdh": {**copy.deepcopy(model), "slice": _block(0.7, 0.5, 0.8, 450, 55)}},
        "delong": {"all": {"slice": {"z": 1.234, "p": 0.0217}, "case": None}},
        "meta": {"model_version": "from-report", "input_size": 128, "threshold": 0.5, "subset": "val"},
    }


@pytest.fixture
def run_and_repo(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(CONFIG)
    (run / "split.json").write_text(json.dumps({"val": ["050", "054"], "train": ["049", "051", "052"]}))
    for step, it in (("all", 1100), ("sdh", 50), ("weight", 1)):
        (run / step).mkdir()
        (run / step / "done.json").write_text(json.dumps({"best": {"iteration": it}}))
    repo = tmp_path / "repo"
    repository.write_version(repo, "2099.01.01-abc")
    onnx = repository.model_file(repo, "ich_unet_all")
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"x" * 2_500_000)
    return run, repo


def test_card_carries_the_figures_settings_and_selected_checkpoints(run_and_repo) -> None:
    run, repo = run_and_repo
    card = render(run, _report(), repo)
    assert card.startswith("# Model card: ICH weighted ensemble (2099.01.01-abc)")
    assert "NOT FOR CLINICAL USE" in card
    assert "| **ensemble** | 0.931 (0.851–0.987) | 80.0% | 90.0% | 0.857 (0.620–1.000) |" in card
    assert "| `sdh` alone | 0.700 (0.500–0.800) |" in card
    assert "| `all` | z = 1.23, p = 0.0217 | n/a |" in card
    assert "`ich_unet_all` 2.50 MB" in card
    assert "`all` iteration 1100, `sdh` iteration 50, `weight` iteration 1" in card
    assert "2 validation patients" in card and "050, 054" in card and "3 training" in card
    assert "test-time flip" in card
    assert "rotated by +-8 degrees" in card
    assert "  - `all`: iterations 1400, lr 0.001" in card
    assert "(per patient, lowest first: 085 0.00, 071 0.60, 093 n/a)." in card


def test_verdict_applies_every_bar() -> None:
    checks = {t.name: t.met for t in verdict(_report())}
    assert checks == {
        "slice AUC": True,
        "case AUC": False,
        "Dice": True,
        "ensemble >= best single (slice AUC, `all`)": True,
    }
    worse = {t.name: t.met for t in verdict(_report(ensemble_slice=0.921, best_single=0.93))}
    assert worse["ensemble >= best single (slice AUC, `all`)"] is False and worse["slice AUC"] is True
    tie = {t.name: t.met for t in verdict(_report(ensemble_slice=0.93, best_single=0.93))}
    assert tie["ensemble >= best single (slice AUC, `all`)"] is True


def test_card_says_not_met_in_words(run_and_repo) -> None:
    run, repo = run_and_repo
    card = render(run, _report(), repo)
    assert "- case AUC: 0.857 against 0.900: **not met**" in card
    assert "- Dice: 0.412 against 0.400: **met**" in card


def test_cli_writes_the_card_and_refuses_a_missing_report(run_and_repo, tmp_path) -> None:
    run, repo = run_and_repo
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report()))
    notes = tmp_path / "notes.md"
    notes.write_text("Re-run of the weight step: bit-identical.\n")
    argv = [
        "card",
        "--run",
        str(run),
        "--report",
        str(report),
        "--repository",
        str(repo),
        "--notes",
        str(notes),
    ]
    assert main(argv) == 0
    card = (repo / "MODEL_CARD.md").read_text()
    assert "0.931 (0.851–0.987)" in card
    assert card.endswith("## Notes\nRe-run of the weight step: bit-identical.\n")
    assert "## Notes" not in render(run, _report(), repo)
    missing = ["card", "--run", str(run), "--report", str(tmp_path / "nope.json"), "--repository", str(repo)]
    assert main(missing) == 2
