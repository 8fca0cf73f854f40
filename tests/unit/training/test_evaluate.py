"""``ich-model evaluate`` with a tiny exported repository, on copies of the CT-ICH fixture and DICOM cases."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ich import spec  # noqa: E402
from ich.calibration import PlattCalibration  # noqa: E402
from ich.ensemble import EnsembleRunner  # noqa: E402
from ich.preprocess import preprocess_volume  # noqa: E402
from ich.scoring import CASE_MODEL_FILENAME, FEATURES, NO_LESION_SCORE, CaseModel  # noqa: E402
from tests.support.ct_ich_data import synthetic_ct_ich  # noqa: E402
from training import evaluate  # noqa: E402
from training.cli import main  # noqa: E402
from training.data.ct_ich import list_patients, read_labels, read_patient  # noqa: E402
from training.export import export_repository  # noqa: E402
from training.networks import InceptionUNet, WeightModel, slice_probability  # noqa: E402
from training.records import TABLES, Records  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ct_ich"
SIZE = 32
OPENING = 3
#: 049 and 081 with their hemorrhage, and a normal copy of 049: both classes, so AUCs and a ROC exist.
PATIENTS = {"049": ("049", True), "060": ("049", False), "081": ("081", True)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    unets = {key: InceptionUNet(width=4, depth=2) for key in spec.MODEL_KEYS}
    weight = WeightModel(hidden=4, opening=OPENING)
    root = tmp_path_factory.mktemp("repo")
    export_repository(unets, weight, root, SIZE, version="eval-test")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_ct_ich(tmp_path_factory.mktemp("data") / "ct_ich", PATIENTS)


@pytest.fixture(scope="module")
def evaluated(
    repo: Path, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("eval") / "report.json"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]) == 0
    return json.loads(out.read_text()), out


def _predictions(out: Path) -> list[dict[str, str]]:
    with out.with_name(out.stem + "_predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _in_unit(value: float | None) -> bool:
    return value is not None and 0.0 <= value <= 1.0


def _check_auc(block: dict[str, Any], n: int, n_positive: int) -> None:
    assert (block["n"], block["n_positive"]) == (n, n_positive)
    if 0 < n_positive < n:
        lo, hi = block["auc_ci"]
        assert 0.0 <= lo <= hi <= 1.0 and _in_unit(block["auc"])
    else:  # one class only: reported as missing, never as a number
        assert block["auc"] is None and block["auc_ci"] is None


def _check_proportion(block: dict[str, Any], n: int) -> None:
    assert block["n"] == n and 0 <= block["k"] <= n
    if n:
        lo, hi = block["ci"]
        assert 0.0 <= lo <= block["value"] <= hi <= 1.0
        assert block["value"] == pytest.approx(block["k"] / n, abs=1e-4)
    else:
        assert block["value"] is None and block["ci"] is None


def test_report_has_every_key_in_range(evaluated: tuple[dict[str, Any], Path], data: Path) -> None:
    report, _ = evaluated
    n_slices = sum(len(read_patient(data, p).slice_numbers) for p in PATIENTS)
    n_positive_slices = sum(int(read_patient(data, p).slice_labels.sum()) for p in PATIENTS)
    assert report["patients"] == 3 and report["patients_with_hemorrhage"] == 2
    assert report["slices"] == n_slices
    meta = report["meta"]
    assert meta["model_version"] == "eval-test" and meta["input_size"] == SIZE
    assert meta["decision"] == "maximum slice probability" and meta["threshold"] == 0.5
    assert meta["cases_evaluated"] == 3 and meta["skipped"] == [] and meta["subset"] is None
    assert (meta["files"], meta["predictions"]) == ("report_files", "report_predictions.csv")
    for key in ("ich_probability", "max_slice_probability"):
        _check_auc(report["case"][key], 3, 2)
    # without a case model the case probability is the paper's maximum slice probability
    assert report["case"]["ich_probability"] == report["case"]["max_slice_probability"]
    op = report["operating_point"]
    _check_proportion(op["sensitivity"], 2)
    _check_proportion(op["specificity"], 1)
    _check_proportion(op["indeterminate"], 3)
    assert 0.0 <= op["normal_heads_flagged_per_10"] <= 10.0
    assert set(op["missed_cases"]) <= {"049", "081"} and set(op["flagged_normal_cases"]) <= {"060"}
    assert _in_unit(report["calibration"]["brier"]) and _in_unit(report["calibration"]["ece"])
    assert sum(b["count"] for b in report["calibration"]["bins"]) == 3
    for block in report["dice"].values():
        assert _in_unit(block["per_patient"]) and _in_unit(block["micro"])
        assert block["patients"] == 2 and set(block["by_patient"]) == {"049", "081"}
    assert set(report["models"]) == {"ensemble", *spec.MODEL_KEYS}
    for key, block in report["models"].items():
        _check_auc(block["slice"], n_slices, n_positive_slices)
        _check_auc(block["case_max_slice"], 3, 2)
        if key != "ensemble":
            assert _in_unit(block["dice_candidates"])
            test = block["delong_slice_vs_ensemble"]
            assert test is None or _in_unit(test["p"])
    # every case as decided: detected at the threshold, indeterminate inside the paper's band
    assert [c["case"] for c in report["cases"]] == list(PATIENTS)
    for case in report["cases"]:
        assert case["probability"] == case["max_slice_probability"]
        assert case["label"] == int(PATIENTS[case["case"]][1])
    assert report["definitions"].startswith("* slice label")


def test_records_figures_and_predictions_beside_the_report(
    evaluated: tuple[dict[str, Any], Path], repo: Path, data: Path
) -> None:
    report, out = evaluated
    files = out.with_name(report["meta"]["files"])
    for name in ("reliability.png", "roc.png"):  # a ROC: both classes are present
        assert (files / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f"{t}.csv" for t in TABLES} <= {p.name for p in files.iterdir()}
    records = Records.read(files)
    assert [r["case"] for r in records.cases] == list(PATIENTS)
    assert len(records.slices) == report["slices"]
    rows = _predictions(out)
    assert [r["case"] for r in rows] == list_patients(data) == list(PATIENTS)
    # case probability = max over the patient's slices of the runner's SLICE_PROB; label = any positive slice
    labels = read_labels(data / "hemorrhage_diagnosis.csv")
    runner = EnsembleRunner.from_repository(repo)
    for row in rows:
        patient = read_patient(data, row["case"], labels.get(row["case"]))
        result = runner.run(preprocess_volume(patient.hu, SIZE))
        assert float(row["probability"]) == pytest.approx(float(result.slice_prob.max()), abs=1e-6)
        assert int(row["label"]) == int(patient.slice_labels.max())
        case = next(c for c in report["cases"] if c["case"] == row["case"])
        assert case["detected"] == (float(row["probability"]) >= 0.5)
        assert case["indeterminate"] == (0.4 <= float(row["probability"]) <= 0.6)


def test_base_model_alone_gets_the_ensemble_post_processing(repo: Path) -> None:
    rng = np.random.default_rng(0)
    maps = (rng.random((4, 1, SIZE, SIZE)) * 0.4).astype(np.float32)
    maps[0, 0, 5, 5] = 0.99  # a stray pixel: removed by the opening
    maps[1, 0, 10:16, 10:16] = 0.9  # a blob: kept
    got = evaluate.BaseAlone(repo, None).slice_prob(maps)
    expected = slice_probability(torch.from_numpy(maps), OPENING).numpy().reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0] < 0.5 and got[1] == pytest.approx(0.9, abs=1e-6)


def test_subset_from_split_file(repo: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"subsets": {"train": ["49"], "val": [81]}}))  # numbers, not folder names
    out = tmp_path / "val.json"
    argv = [
        "evaluate",
        "--data",
        str(FIXTURE),
        "--out",
        str(out),
        "--repository",
        str(repo),
        "--split-file",
        str(split),
        "--subset",
        "val",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["subset"] == "val" and report["meta"]["cases_evaluated"] == 1
    assert report["patients"] == 1 and [c["case"] for c in report["cases"]] == ["081"]
    assert [r["case"] for r in _predictions(out)] == ["081"]
    # an unknown subset is a bad input
    bad = tmp_path / "t.json"
    argv = [
        "evaluate",
        "--data",
        str(FIXTURE),
        "--out",
        str(bad),
        "--repository",
        str(repo),
        "--split-file",
        str(split),
        "--subset",
        "test",
    ]
    assert main(argv) == 2 and not bad.exists()


def test_patient_ids_match_by_number() -> None:
    assert evaluate.match_patients(["49", "081", "x1"], ["049", "081", "x1"]) == ["049", "081", "x1"]
    with pytest.raises(ValueError, match="50"):
        evaluate.match_patients(["50"], ["049"])


def test_bad_inputs_fail_cleanly(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    (tmp_path / "empty").mkdir()
    bad = [
        ["--data", str(tmp_path / "empty"), "--repository", str(repo)],  # no cases
        ["--data", str(FIXTURE), "--repository", str(repo), "--patients", "12345"],  # unknown patient
        ["--data", str(FIXTURE), "--repository", str(tmp_path / "empty")],  # not a repository
    ]
    for args in bad:
        assert main(["evaluate", "--out", str(out), *args]) == 2, args
        assert not out.exists() and not out.with_name("r_predictions.csv").exists()
        assert not out.with_name("r_files").exists()
    # a folder none of whose cases can be read: a failure, no report
    data = tmp_path / "unreadable"
    shutil.copytree(FIXTURE, data)
    for jpg in (data / "Patients_CT").rglob("*.jpg"):
        jpg.unlink()
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]) == 1
    assert not out.exists()


def test_unreadable_patient_is_skipped_with_the_reason(repo: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    for jpg in (data / "Patients_CT" / "081").rglob("*.jpg"):  # a damaged copy: the folder emptied
        jpg.unlink()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]) == 0
    report = json.loads(out.read_text())
    (skipped,) = report["meta"]["skipped"]
    assert skipped["case"] == "081" and "081" in skipped["reason"] and "brain image" in skipped["reason"]
    assert report["meta"]["cases_evaluated"] == 1 and report["patients"] == 1
    assert [c["case"] for c in report["cases"]] == ["049"]
    assert [r["case"] for r in _predictions(out)] == ["049"]
    assert report["slices"] == len(read_patient(FIXTURE, "049").slice_numbers)


def test_slice_without_its_bone_image_is_evaluated(
    repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    first = min(read_patient(data, "049").slice_numbers)
    (data / "Patients_CT" / "049" / "bone" / f"{first}.jpg").unlink()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["skipped"] == [] and report["meta"]["cases_evaluated"] == 2
    assert report["slices"] == sum(len(read_patient(FIXTURE, p).slice_numbers) for p in ("049", "081"))
    assert f"patient 049 slice {first}: bone-window image missing" in caplog.text


@pytest.mark.parametrize("damage", ["intact", "no_csv", "no_subtype_columns"])
def test_labels_fall_back_to_masks(repo: Path, tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    # 049 slice 15 is labelled epidural in the CSV; without its mask only the CSV says so
    (data / "Patients_CT" / "049" / "brain" / "15_HGE_Seg.jpg").unlink()
    csv_path = data / "hemorrhage_diagnosis.csv"
    if damage == "no_csv":
        csv_path.unlink()
    elif damage == "no_subtype_columns":
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
        csv_path.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--repository", str(repo)]) == 0
    report = json.loads(out.read_text())
    with_mask = sum(int(read_patient(data, p).masks.any(axis=(1, 2)).sum()) for p in list_patients(data))
    expected = with_mask + 1 if damage == "intact" else with_mask
    assert report["models"]["ensemble"]["slice"]["n_positive"] == expected
    slices = Records.read(out.with_name("r_files")).slices
    labelled = [(r["case"], r["slice"]) for r in slices if r["label"]]
    assert len(labelled) == expected and (("049", 2) in labelled) == (damage == "intact")


def _case_model(threshold: float = 0.5, band: tuple[float, float] = (0.4, 0.6)) -> CaseModel:
    """A hand-set case model: every lesion is unlikely (intercept -5), more so with less agreement."""
    n = len(FEATURES)
    coef = [0.0] * n
    coef[FEATURES.index("agreement")] = 0.5
    return CaseModel(
        mean=(0.0,) * n,
        scale=(1.0,) * n,
        coef=tuple(coef),
        intercept=-5.0,
        keep=0.004,
        calibration=PlattCalibration(a=1.0, b=0.0),
        threshold=threshold,
        band=band,
        info={"made": "by hand"},
    )


def test_the_repository_case_model_decides(repo: Path, tmp_path: Path) -> None:
    with_model = tmp_path / "repo"
    shutil.copytree(repo, with_model)
    model = _case_model()
    model.save(with_model / CASE_MODEL_FILENAME)
    out = tmp_path / "r.json"
    argv = ["evaluate", "--data", str(FIXTURE), "--repository", str(with_model)]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["decision"] == "case model" and report["meta"]["threshold"] == model.threshold
    # the case probability is the calibrated best lesion probability of the recorded lesions
    records = Records.read(out.with_name("r_files"))
    best = {r["case"]: NO_LESION_SCORE for r in records.cases}
    for row in records.lesions:
        x = np.array([[float(row[f]) for f in FEATURES]])
        best[row["case"]] = max(best[row["case"]], float(model.lesion_probabilities(x)[0]))
    rows = _predictions(out)
    assert [r["case"] for r in rows] == ["049", "081"]
    for row in rows:
        expected = model.calibration.apply(best[row["case"]])
        assert float(row["probability"]) == pytest.approx(expected, abs=1e-5)
    # far below the model's threshold: nothing detected
    assert report["operating_point"]["sensitivity"]["value"] == 0.0
    assert all(not c["detected"] for c in report["cases"])
    # --threshold overrides the model's: at 0 every case is called
    out2 = tmp_path / "r2.json"
    assert main([*argv, "--out", str(out2), "--threshold", "0.0"]) == 0
    report2 = json.loads(out2.read_text())
    assert report2["meta"]["decision"] == "case model" and report2["meta"]["threshold"] == 0.0
    assert report2["operating_point"]["sensitivity"]["value"] == 1.0
    assert [r["probability"] for r in _predictions(out2)] == [r["probability"] for r in rows]
    # the model's own threshold, moved below the cases' probabilities, calls them too
    _case_model(threshold=0.0005, band=(0.0, 0.6)).save(with_model / CASE_MODEL_FILENAME)
    out3 = tmp_path / "r3.json"
    assert main([*argv, "--out", str(out3)]) == 0
    report3 = json.loads(out3.read_text())
    assert report3["meta"]["threshold"] == 0.0005
    assert report3["operating_point"]["sensitivity"]["value"] == 1.0


def test_dicom_layout_with_masks(repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    from tests.unit.training.test_dicom_masks import _write_case  # a DICOM series + NIfTI mask on disk

    root = tmp_path / "dicom_cases"
    _write_case(root, flip_k=True)
    _, mask = _write_case(root, flip_k=False)
    (root / "broken").mkdir()  # a case folder without dicom/: skipped with the reason
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(root), "--out", str(out), "--repository", str(repo)]) == 0
    report = json.loads(out.read_text())
    assert [c["case"] for c in report["cases"]] == ["flipped", "plain"]
    assert report["meta"]["cases_evaluated"] == 2 and report["patients_with_hemorrhage"] == 2
    (skipped,) = report["meta"]["skipped"]
    assert skipped["case"] == "broken" and "dicom/" in skipped["reason"]
    assert str(tmp_path) not in skipped["reason"]  # the reason names no case folder
    assert report["slices"] == 2 * len(mask)
    slices = Records.read(out.with_name("r_files")).slices
    for case in ("flipped", "plain"):
        assert [r["label"] for r in slices if r["case"] == case] == mask.any(axis=(1, 2)).astype(int).tolist()
        assert all(r["truth_voxels"] > 0 for r in slices if r["case"] == case and r["label"])
    assert [r["case"] for r in _predictions(out)] == ["flipped", "plain"]
