"""``ich-model evaluate`` with a case model that carries a subtype model: the per-subtype figures, the
uncertainty figures and the predictions' ``uncertainty`` column (the exported tiny repository of
``tests.unit.training.test_evaluate`` on the CT-ICH fixture: 049 epidural, 081 subdural)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from ich.calibration import PlattCalibration
from ich.scoring import CASE_MODEL_FILENAME, FEATURES
from ich.subtypes import SUBTYPE_FEATURES, SUBTYPES, SubtypeFit, SubtypeModel
from tests.unit.training.test_evaluate import FIXTURE, _case_model, _predictions, repo  # noqa: F401
from training.cli import main
from training.records import Records, subtype_label_column

IDENTITY = PlattCalibration(1.0, 0.0)


def _epidural_only() -> SubtypeModel:
    n = len(SUBTYPE_FEATURES)
    fit = SubtypeFit((0.0,) * n, (1.0,) * n, (0.0,) * n, math.log(0.8 / 0.2), IDENTITY, IDENTITY)
    return SubtypeModel({"epidural": fit}, {s: "not measured: by hand" for s in SUBTYPES if s != "epidural"})


def test_evaluate_reports_subtypes_and_uncertainty(repo: Path, tmp_path: Path) -> None:  # noqa: F811
    with_model = tmp_path / "repo"
    shutil.copytree(repo, with_model)
    model = replace(_case_model(), subtypes=_epidural_only())
    model.save(with_model / CASE_MODEL_FILENAME)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(FIXTURE), "--repository", str(with_model), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    records = Records.read(out.with_name("r_files"))
    assert [r[subtype_label_column("epidural")] for r in records.cases] == [1, 0]
    assert [r[subtype_label_column("subdural")] for r in records.cases] == [0, 1]
    epidural = report["subtypes"]["epidural"]
    assert epidural["measured"] is True and (epidural["case"]["n"], epidural["case"]["n_positive"]) == (2, 1)
    assert report["subtypes"]["subdural"] == {
        "measured": False,
        "reason": "not measured: 1 positive cases (fewer than 6)",
        "positive_cases": 1,
        "positive_slices": sum(r[subtype_label_column("subdural")] for r in records.slices),
    }
    # each case's uncertainty is the spread on its most probable candidate, in the predictions and the report
    rows = _predictions(out)
    spreads = {}
    for case in ("049", "081"):
        lesions = [r for r in records.lesions if r["case"] == case]
        if lesions:
            x = np.array([[float(r[f]) for f in FEATURES] for r in lesions])
            spreads[case] = float(lesions[int(np.argmax(model.lesion_probabilities(x)))]["model_spread"])
        else:
            spreads[case] = float(next(r for r in records.cases if r["case"] == case)["slice_spread"])
    assert {r["case"]: float(r["uncertainty"]) for r in rows} == pytest.approx(spreads, abs=1e-6)
    assert report["uncertainty"]["measured"] is True
    assert (out.with_name("r_files") / "uncertainty.png").is_file()
