"""``ich-model evaluate`` on the committed CT-ICH fixture slices with a tiny exported repository."""

from __future__ import annotations

import csv
import json
import math
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ich import metrics, spec  # noqa: E402
from ich.ensemble import EnsembleRunner  # noqa: E402
from ich.preprocess import preprocess_volume  # noqa: E402
from training import evaluate  # noqa: E402
from training.cli import main  # noqa: E402
from training.data.ct_ich import list_patients, read_labels, read_patient  # noqa: E402
from training.export import export_repository  # noqa: E402
from training.networks import InceptionUNet, WeightModel, slice_probability  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ct_ich"
SIZE = 32
OPENING = 3


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    unets = {key: InceptionUNet(width=4, depth=2) for key in spec.MODEL_KEYS}
    weight = WeightModel(hidden=4, opening=OPENING)
    root = tmp_path_factory.mktemp("repo")
    export_repository(unets, weight, root, SIZE, version="eval-test")
    return root


@pytest.fixture(scope="module")
def evaluated(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    assert main(["evaluate", "--data", str(FIXTURE), "--out", str(out), "--repository", str(repo)]) == 0
    return json.loads(out.read_text()), out


def _check_level(block: dict[str, Any]) -> None:
    assert block["n"] > 0
    for key in ("sensitivity", "specificity"):
        assert block[key] is None or 0.0 <= block[key] <= 1.0
    if 0 < block["n_positive"] < block["n"]:
        lo, hi = block["auc_ci"]
        assert 0.0 <= lo <= hi <= 1.0
        assert 0.0 <= block["auc"] <= 1.0
    else:  # AUC undefined with one class: reported as missing, never as a number
        assert block["auc"] is None and block["auc_ci"] is None


def test_report_has_every_key_in_range(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, _ = evaluated
    n_patients = len(list_patients(FIXTURE))
    assert report["meta"]["patients"] == n_patients
    assert report["meta"]["model_version"] == "eval-test" and report["meta"]["input_size"] == SIZE
    assert report["slice"]["n"] == report["meta"]["slices"]
    assert report["case"]["n"] == n_patients
    assert report["slice"]["n_positive"] > 0  # the fixture holds hemorrhage, so Dice is defined
    for block in (report, *report["models"].values()):
        _check_level(block["slice"])
        _check_level(block["case"])
        assert 0.0 <= block["dice"] <= 1.0 and 0.0 <= block["dice_micro"] <= 1.0
        assert block["dice_slices"] > 0
    assert set(report["models"]) == set(spec.MODEL_KEYS)
    assert set(report["per_subtype"]) == {
        "intraventricular", "intraparenchymal", "subarachnoid", "epidural", "subdural"
    }
    for sub in report["per_subtype"].values():
        assert (sub["sensitivity"] is None) == (sub["n_slices"] == 0)
    assert set(report["delong"]) == set(spec.MODEL_KEYS)
    for key, tests in report["delong"].items():
        for level in ("slice", "case"):
            res = tests[level]
            if res is None:  # too few positives or negatives for the test
                continue
            assert 0.0 <= res["p"] <= 1.0
            assert res["auc_model"] == pytest.approx(report["models"][key][level]["auc"], abs=1e-6)
            diff = res["auc_ensemble"] - res["auc_model"]
            if res["z"] is not None and abs(diff) > 1e-9:
                assert math.copysign(1, res["z"]) == math.copysign(1, diff)


def test_plot_and_predictions_beside_report(evaluated: tuple[dict[str, Any], Path], repo: Path) -> None:
    report, out = evaluated
    png = out.with_name(report["meta"]["roc_plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with out.with_name(report["meta"]["predictions"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == list_patients(FIXTURE)
    # case probability = max over the patient's slices of the runner's SLICE_PROB; label = any positive slice
    pid = rows[0]["case"]
    labels = read_labels(FIXTURE / "hemorrhage_diagnosis.csv")
    patient = read_patient(FIXTURE, pid, labels.get(pid))
    result = EnsembleRunner.from_repository(repo).run(preprocess_volume(patient.hu, SIZE))
    assert float(rows[0]["probability"]) == pytest.approx(float(result.slice_prob.max()), abs=1e-6)
    assert int(rows[0]["label"]) == int(patient.slice_labels.max())


def test_base_model_alone_gets_the_ensemble_post_processing(repo: Path) -> None:
    rng = np.random.default_rng(0)
    maps = (rng.random((4, 1, SIZE, SIZE)) * 0.4).astype(np.float32)
    maps[0, 0, 5, 5] = 0.99  # a stray pixel: removed by the opening
    maps[1, 0, 10:16, 10:16] = 0.9  # a blob: kept
    got = evaluate._BaseAlone(repo, None).slice_prob(maps)
    expected = slice_probability(torch.from_numpy(maps), OPENING).numpy().reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0] < 0.5 and got[1] == pytest.approx(0.9, abs=1e-6)


def test_subset_from_split_file(repo: Path, tmp_path: Path) -> None:
    chosen = list_patients(FIXTURE)[:2]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["999"], "val": [int(p) for p in chosen]}))
    out = tmp_path / "val.json"
    argv = ["evaluate", "--data", str(FIXTURE), "--out", str(out), "--repository", str(repo),
            "--split-file", str(split), "--subset", "val", "--bootstrap", "50"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["patients"] == 2 and report["meta"]["subset"] == "val"
    with out.with_name("val_predictions.csv").open(newline="") as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == chosen


def test_patient_ids_match_by_number() -> None:
    assert evaluate.match_patients(["49", "081", "x1"], ["049", "081", "x1"]) == ["049", "081", "x1"]
    with pytest.raises(ValueError, match="50"):
        evaluate.match_patients(["50"], ["049"])


def test_bad_inputs_fail_cleanly(repo: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "r.json")
    assert main(["evaluate", "--data", str(tmp_path), "--out", out, "--repository", str(repo)]) == 2
    assert main(["evaluate", "--data", str(FIXTURE), "--out", out, "--repository", str(repo),
                 "--patients", "12345"]) == 2
    assert main(["evaluate", "--data", str(FIXTURE), "--out", out, "--repository", str(tmp_path)]) == 2
    assert not (tmp_path / "r.json").exists()
    # a patient folder with a slice missing its bone image: a clear failure, no report
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURE, broken)
    pid = list_patients(broken)[0]
    first = min(read_patient(broken, pid).slice_numbers)
    (broken / "Patients_CT" / pid / "bone" / f"{first}.jpg").unlink()
    assert main(["evaluate", "--data", str(broken), "--out", out, "--repository", str(repo)]) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("damage", ["no_csv", "no_subtype_columns"])
def test_labels_fall_back_to_masks(repo: Path, tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    csv_path = data / "hemorrhage_diagnosis.csv"
    if damage == "no_csv":
        csv_path.unlink()
    else:
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
        csv_path.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    out = tmp_path / "r.json"
    argv = ["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]
    assert main([*argv, "--bootstrap", "20"]) == 0
    report = json.loads(out.read_text())
    with_mask = sum(int(read_patient(data, p).masks.any(axis=(1, 2)).sum()) for p in list_patients(data))
    assert report["slice"]["n_positive"] == with_mask > 0
    assert all(v["n_slices"] == 0 for v in report["per_subtype"].values())


def test_report_figures_for_a_perfect_and_a_useless_scorer() -> None:
    # Two patients; the ensemble scores slices by their label (perfect), model "all" scores all 0.5.
    col = evaluate._Collected()
    labels = np.array([0, 1, 1, 0, 0, 0])
    col.patients = ["a", "a", "a", "b", "b", "b"]
    col.labels = [labels]
    col.subtypes = [np.array([[0] * 5, [0, 1, 0, 0, 0], [0, 1, 0, 0, 1], [0] * 5, [0] * 5, [0] * 5])]
    truth = np.array([0, 9, 4, 0, 0, 0])
    perfect = np.stack([truth, truth, truth], axis=1)  # intersection = |pred| = |truth|
    missed = np.stack([0 * truth, 0 * truth, truth], axis=1)
    for name in col.scorers:
        good = name == evaluate.ENSEMBLE
        col.scorers[name].add(labels * 0.9 + 0.05 if good else np.full(6, 0.5), perfect if good else missed)
    report, _ = evaluate.build_report(col, Namespace(threshold=0.5, bootstrap=100, seed=0))
    assert report["slice"]["auc"] == 1.0 and report["slice"]["auc_ci"] == [1.0, 1.0]
    assert (report["slice"]["sensitivity"], report["slice"]["specificity"]) == (1.0, 1.0)
    assert report["case"]["auc"] == 1.0 and report["case"]["n"] == 2
    assert report["dice"] == 1.0 and report["dice_micro"] == 1.0
    assert report["dice_by_patient"] == {"a": 1.0}  # "b" has no hemorrhage slice, so no Dice
    assert report["per_subtype"]["intraparenchymal"] == {"sensitivity": 1.0, "n_slices": 2}
    assert report["per_subtype"]["epidural"] == {"sensitivity": None, "n_slices": 0}
    useless = report["models"]["all"]
    assert useless["slice"]["auc"] == 0.5 and useless["dice"] == 0.0
    assert (useless["slice"]["sensitivity"], useless["slice"]["specificity"]) == (1.0, 0.0)
    # DeLong on slices by hand: ensemble V10 = [1, 1], V01 = [1]*4; model V10 = [.5, .5], V01 = [.5]*4:
    # the differences are constant, so the variance is 0 and the AUCs differ: z is infinite, p = 0
    assert report["delong"]["all"]["slice"] == {"z": None, "p": 0.0, "auc_ensemble": 1.0, "auc_model": 0.5}
    assert report["delong"]["all"]["case"] is None  # one positive and one negative case: too few
    assert metrics.roc_auc(labels, labels * 0.9 + 0.05) == 1.0
